"""Finding workers through a name server (python -m ezpool.nameserver) instead of listing their URIs.

A worker started with ``serve --ns`` registers as ``<prefix><name>.<host>.<port>``
and stamps its entry's metadata every few seconds (``ezpool._worker.registration``):
``ezpool.seen=<unix time>`` says when it last did, ``ezpool.refresh=<seconds>``
how often it does. An entry whose stamp is older than its TTL belongs to a worker
that died without unregistering: ``list_workers`` leaves it out, and live workers
remove it. Entries without a stamp (registered by hand, or by an older EzPool)
are nobody's to judge and are always listed.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Optional, Union

from ._core.logs import get_logger
from .security import StrPath, client_tls_context, resolve_key

logger = get_logger(__name__)

__all__ = ["list_workers", "DEFAULT_REFRESH", "TTL_REFRESHES", "stamped", "is_stale", "last_seen"]

#: Seconds between a worker's checks of its registration (``serve --ns-refresh``).
DEFAULT_REFRESH = 5.0
#: An entry expires after this many of its worker's refresh intervals without a stamp.
TTL_REFRESHES = 3
#: Seconds a name server may take to answer one exchange.
NS_TIMEOUT = 5.0

_SEEN = "ezpool.seen="
_REFRESH = "ezpool.refresh="


def list_workers(
    ns: str = "127.0.0.1:9090",
    prefix: str = "ezpool.",
    hmac_key: Union[str, bytes, None] = None,
    ttl: Optional[float] = None,
    insecure: bool = False,
    tls_ca: Optional[StrPath] = None,
    tls_cert: Optional[StrPath] = None,
    tls_key: Optional[StrPath] = None,
) -> list[str]:
    """URIs of the live workers registered under ``prefix`` (``serve --ns``), sorted by name.

    ``ns`` is the name server's ``HOST[:PORT]``; the key is found as for workers
    (``hmac_key``, else ``$EZPOOL_HMAC_KEY``, else your per-user key file), and a
    name server without it is refused unless ``insecure=True``. An entry whose worker has not stamped it
    for ``ttl`` seconds is left out; by default ``ttl`` is three of that worker's
    refresh intervals (15 s for the default ``--ns-refresh 5``). A name server that
    cannot be reached or refuses is a ``WorkerUnavailable`` naming its address.
    A name server served over TLS (``nameserver --tls-cert``) is reached with
    ``tls_ca`` (and ``tls_cert``/``tls_key`` where it asks for a client
    certificate), as for ``Pool``. Pass the result as ``workers=``.
    """
    from . import _pyro

    uri = _pyro.name_server_uri(ns)
    key = resolve_key(hmac_key, insecure=insecure)
    tls = client_tls_context(tls_ca, tls_cert, tls_key) if (tls_ca or tls_cert or tls_key) else None
    try:
        with _pyro.NameServer(uri, key, NS_TIMEOUT, tls) as server:
            found = server.entries(prefix)
    except _pyro.PyroError as exc:
        raise _pyro.translate(exc, ns, what="name server") from None
    now = time.time()
    live = {name: uri for name, (uri, metadata) in found.items() if not is_stale(metadata, now, ttl)}
    if len(live) < len(found):
        logger.debug("left out %d expired entries under %r at %s", len(found) - len(live), prefix, ns)
    return [live[name] for name in sorted(live)]


def stamped(metadata: Iterable[str], now: float, refresh: float) -> set[str]:
    """``metadata`` with EzPool's stamps set to ``now`` and ``refresh``; the rest is kept."""
    kept = {item for item in metadata if not item.startswith((_SEEN, _REFRESH))}
    return kept | {f"{_SEEN}{now:.3f}", f"{_REFRESH}{refresh:g}"}


def last_seen(metadata: Iterable[str]) -> Optional[float]:
    """When the worker last stamped this entry (unix time), or ``None`` if it never did."""
    return _number(metadata, _SEEN)


def is_stale(metadata: Iterable[str], now: float, ttl: Optional[float] = None) -> bool:
    """Whether an entry's stamp is older than ``ttl`` (default: three of its refresh intervals)."""
    items = list(metadata)
    seen = _number(items, _SEEN)
    if seen is None:
        return False
    if ttl is None:
        ttl = TTL_REFRESHES * (_number(items, _REFRESH) or DEFAULT_REFRESH)
    return now - seen > ttl


def _number(metadata: Iterable[str], key: str) -> Optional[float]:
    for item in metadata:
        if item.startswith(key):
            try:
                return float(item[len(key) :])
            except ValueError:
                return None
    return None
