"""Finding workers through a Pyro4 name server instead of listing their URIs."""

from __future__ import annotations

import logging
from typing import Union

from .options import resolve_hmac_key

logger = logging.getLogger(__name__)

__all__ = ["list_workers"]


def list_workers(
    ns: str = "127.0.0.1:9090", prefix: str = "ezpool.", hmac_key: Union[str, bytes, None] = None
) -> list[str]:
    """URIs of the workers registered under ``prefix`` (``serve --ns``), sorted by name.

    ``ns`` is the name server's ``HOST[:PORT]``; the key defaults to
    ``$EZPOOL_HMAC_KEY``, as for workers. Pass the result as ``workers=``.
    """
    from . import _pyro

    try:
        found = _pyro.list_registered(ns, prefix, resolve_hmac_key(hmac_key))
    except _pyro.PyroError as exc:
        raise _pyro.translate(exc, f"name server {ns}") from None
    return [found[name] for name in sorted(found)]
