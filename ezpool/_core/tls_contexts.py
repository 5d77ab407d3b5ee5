"""TLS contexts for workers and clients: TLS 1.2 or later, verified, with private keys kept private.

``ezpool.security`` gives them to the rest of EzPool; ``python -m ezpool.tls init``
makes the files they read.
"""

from __future__ import annotations

import argparse
import os
import ssl
from pathlib import Path
from typing import Optional, Union

from ..errors import SecurityError
from .private import check_private

__all__ = [
    "server_tls_context",
    "client_tls_context",
    "add_server_tls_flags",
    "server_tls_from_flags",
]

StrPath = Union[str, "os.PathLike[str]"]


def server_tls_context(
    cert: StrPath,
    key: Optional[StrPath],
    ca: Optional[StrPath] = None,
    require_client_cert: bool = False,
) -> ssl.SSLContext:
    """A TLS 1.2+ server context presenting ``cert`` (private key in ``key``).

    With ``require_client_cert``, a client must present a certificate signed by
    ``ca`` (required then). A ``ca`` alone verifies the certificates clients
    choose to present.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_identity(context, cert, key)
    if require_client_cert and ca is None:
        raise SecurityError(
            "require_client_cert needs ca=: the certificate of the authority that signs client "
            "certificates (see python -m ezpool.tls init)"
        )
    if ca is not None:
        _load_ca(context, ca)
        context.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    return context


def client_tls_context(
    ca: Optional[StrPath] = None,
    cert: Optional[StrPath] = None,
    key: Optional[StrPath] = None,
    check_hostname: bool = True,
) -> ssl.SSLContext:
    """A TLS 1.2+ client context that verifies the server and its host name.

    The server's certificate must be signed by ``ca`` (``None``: the system's
    trusted authorities) and name the host connected to (``check_hostname=False``:
    any host, for workers that dial in from wherever they run, known by the CA's
    signature and the key). ``cert`` and ``key`` are the client's own certificate,
    for servers that require one.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and check_hostname
    context.check_hostname = check_hostname
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if ca is None:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    else:
        _load_ca(context, ca)
    if cert is not None:
        _load_identity(context, cert, key)
    elif key is not None:
        raise SecurityError(f"a client key ({os.fspath(key)}) needs its certificate: give cert= too")
    return context


def _readable(path: StrPath, what: str) -> str:
    """``path`` as a str, after checking that it can be opened for reading."""
    shown = os.fspath(path)
    try:
        with open(shown, "rb"):
            pass
    except OSError as exc:
        raise SecurityError(f"cannot read the TLS {what} {shown}: {exc.strerror or exc}") from None
    return shown


def _load_identity(context: ssl.SSLContext, cert: StrPath, key: Optional[StrPath]) -> None:
    certfile = _readable(cert, "certificate")
    keyfile = None if key is None else _readable(key, "private key")
    _check_private_key(keyfile, certfile)

    def no_prompt() -> str:
        # Without a callback, OpenSSL would prompt on the terminal for the pass phrase.
        raise SecurityError(
            f"the TLS private key {keyfile or certfile} is encrypted; EzPool needs it unencrypted "
            "(and readable only by you: chmod 600)"
        )

    try:
        context.load_cert_chain(certfile, keyfile, password=no_prompt)
    except ssl.SSLError as exc:
        raise SecurityError(
            f"cannot use the TLS certificate {certfile} with the private key {keyfile or certfile}: "
            f"{exc.reason or exc} (are they PEM files that belong together?)"
        ) from None


def _load_ca(context: ssl.SSLContext, ca: StrPath) -> None:
    cafile = _readable(ca, "CA certificate")
    try:
        context.load_verify_locations(cafile=cafile)
    except ssl.SSLError as exc:
        raise SecurityError(f"no usable CA certificate in {cafile}: {exc.reason or exc}") from None


def _check_private_key(keyfile: Optional[str], certfile: str) -> None:
    """Refuse a TLS private key that another user may read or change, as a key file is refused.

    Without ``keyfile`` the key is in ``certfile``, if anywhere (a certificate
    alone is public). The file may be a symbolic link (certificate tools make
    them): the file it points to is judged.
    """
    if keyfile is None:
        with open(certfile, "rb") as file:
            if b"PRIVATE KEY-----" not in file.read():
                return
    path = keyfile or certfile
    check_private(os.stat(path), path, "the TLS private key")


def add_server_tls_flags(parser: argparse.ArgumentParser, what: str) -> None:
    """The ``--tls-*`` flags of a command that serves (``what``: "worker", "name server")."""
    parser.add_argument("--tls-cert", type=Path, metavar="PEM", help="serve over TLS with this certificate")
    parser.add_argument("--tls-key", type=Path, metavar="PEM", help="the private key of --tls-cert")
    parser.add_argument("--tls-ca", type=Path, metavar="PEM", help="CA that signed the clients' certificates")
    parser.add_argument(
        "--tls-require-client-cert", action="store_true",
        help="accept only clients with a certificate signed by --tls-ca",
    )
    parser.set_defaults(tls_what=what)


def server_tls_from_flags(args: argparse.Namespace) -> Optional[ssl.SSLContext]:
    """The TLS context the ``--tls-*`` flags ask for (``None``: plain TCP); a ``SecurityError``
    says which flags do not go together."""
    if (args.tls_cert is None) != (args.tls_key is None):
        raise SecurityError("--tls-cert and --tls-key go together")
    if args.tls_require_client_cert and args.tls_ca is None:
        raise SecurityError("--tls-require-client-cert needs --tls-ca, the CA of the clients' certificates")
    if args.tls_cert is None:
        if args.tls_ca is not None:
            raise SecurityError(
                f"--tls-ca needs --tls-cert and --tls-key, the {args.tls_what}'s own certificate"
            )
        return None
    return server_tls_context(args.tls_cert, args.tls_key, args.tls_ca, args.tls_require_client_cert)
