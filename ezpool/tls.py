"""``python -m ezpool.tls init DIR --host HOST ...``: a private certificate authority for a cluster.

One command writes everything a cluster needs for mutual TLS into ``DIR``::

    ca.pem,     ca-key.pem       the authority (keep ca-key.pem private; it signs)
    server.pem, server-key.pem   for every worker: names each --host (IP or DNS)
    client.pem, client-key.pem   for the clients that may use the workers

``DIR`` is created with mode 0700 and the key files get mode 0600; existing
files are never overwritten, and an existing ``DIR`` that another user owns or
may write is refused (they could replace ``ca.pem``). The ``cryptography``
package does the work (``pip install "ezpool[tls]"``); it is imported only when
this command runs.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Union

from ._core.cli import command_line
from ._core.private import make_private_dir
from .errors import SecurityError

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

__all__ = ["main"]

#: The files ``init`` writes, in order; the ``-key`` ones are private.
FILES = ("ca.pem", "ca-key.pem", "server.pem", "server-key.pem", "client.pem", "client-key.pem")

_INSTALL_HINT = 'pip install "ezpool[tls]"'


@command_line
def main(argv: Optional[list[str]] = None) -> int:
    """Run the command line; returns the exit status."""
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        import cryptography  # noqa: F401
    except ImportError:
        print(f"ezpool.tls: the cryptography package is missing: {_INSTALL_HINT}", file=sys.stderr)
        return 1
    directory = Path(args.dir).absolute()
    try:
        _init(directory, args.host, args.days)
    except _Refused as exc:
        print(f"ezpool.tls: error: {exc}", file=sys.stderr)
        return 1
    _print_usage(directory, args.host)
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ezpool.tls", description="Make a private certificate authority for EzPool."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    init = commands.add_parser("init", help="write a CA, a server and a client certificate into DIR")
    init.add_argument("dir", metavar="DIR", help="directory to write into (created with mode 0700)")
    init.add_argument(
        "--host",
        action="append",
        required=True,
        type=_host,
        help="an address or DNS name the workers are reached at; repeat for every one",
    )
    init.add_argument(
        "--days", type=_days, default=825, help="days the certificates stay valid (default 825)"
    )
    return parser


def _host(text: str) -> str:
    """An IP address (normalised; brackets around IPv6 allowed) or an ASCII DNS name."""
    text = text.strip()
    address = _address(text.strip("[]"))
    if address is not None:
        return str(address)
    if text and text.isascii() and all(c.isalnum() or c in "-._*" for c in text):
        return text
    raise argparse.ArgumentTypeError(
        f"{text!r} is neither an IP address nor an ASCII DNS name (write an IDN name as xn--...)"
    )


def _days(text: str) -> int:
    try:
        days = int(text)
    except ValueError:
        days = 0
    if days < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of days, at least 1, got {text!r}")
    return days


class _Refused(Exception):
    """``init`` will not write into DIR; the message says why."""


def _init(directory: Path, hosts: list[str], days: int) -> None:
    """Write the six files into ``directory``; on any failure, remove what this call wrote."""
    taken = [name for name in FILES if os.path.lexists(directory / name)]
    if taken:
        raise _Refused(
            f"{directory} already holds {', '.join(taken)}; refusing to overwrite: remove them, or choose "
            "another directory"
        )
    try:
        make_private_dir(directory, "the certificates and keys")
    except OSError as exc:
        raise _Refused(f"cannot create {directory}: {exc.strerror or exc}") from None
    except SecurityError as exc:
        raise _Refused(str(exc)) from None
    contents = _make_certificates(hosts, days)
    written: list[Path] = []
    try:
        for name in FILES:
            _write_new(directory / name, contents[name], private=name.endswith("-key.pem"))
            written.append(directory / name)
    except OSError as exc:
        for path in written:
            path.unlink()
        raise _Refused(f"cannot write {exc.filename or directory}: {exc.strerror or exc}") from None


def _write_new(path: Path, data: bytes, private: bool) -> None:
    """Write ``data`` to a new file ``path`` (never an existing one): mode 0600 if private, else 0644."""
    mode = 0o600 if private else 0o644
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with open(fd, "wb") as file:
        os.fchmod(fd, mode)  # exactly, whatever the umask
        file.write(data)


def _make_certificates(hosts: list[str], days: int) -> dict[str, bytes]:
    """The PEM contents of the six files: a CA and the server and client certificates it signs."""
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    # A random part in the CA's name tells apart the CAs of different clusters.
    ca_name = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, f"EzPool private CA {os.urandom(4).hex()}")]
    )
    ca = (
        _builder(ca_name, ca_name, ca_key, ca_key, now, days)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(signing=True), critical=True)
        .sign(ca_key, _sha256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = (
        _builder(_common_name(hosts[0]), ca_name, server_key, ca_key, now, days)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(signing=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(_names(hosts)), critical=False)
        .sign(ca_key, _sha256())
    )
    client_key = ec.generate_private_key(ec.SECP256R1())
    client = (
        _builder(_common_name("ezpool client"), ca_name, client_key, ca_key, now, days)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(signing=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, _sha256())
    )
    return {
        "ca.pem": _cert_pem(ca),
        "ca-key.pem": _key_pem(ca_key),
        "server.pem": _cert_pem(server),
        "server-key.pem": _key_pem(server_key),
        "client.pem": _cert_pem(client),
        "client-key.pem": _key_pem(client_key),
    }


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    issuer_key: ec.EllipticCurvePrivateKey,
    now: datetime.datetime,
    days: int,
) -> x509.CertificateBuilder:
    """A certificate valid from a few minutes ago (clock skew) for ``days``, with key identifiers."""
    from cryptography import x509

    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False
        )
    )


def _key_usage(signing: bool) -> x509.KeyUsage:
    from cryptography import x509

    return x509.KeyUsage(
        digital_signature=not signing,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=signing,
        crl_sign=signing,
        encipher_only=False,
        decipher_only=False,
    )


def _common_name(text: str) -> x509.Name:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text[:64])])


def _names(hosts: list[str]) -> list[x509.GeneralName]:
    """Subject alternative names: an IP address entry for an address, a DNS entry for a name."""
    from cryptography import x509

    names: list[x509.GeneralName] = []
    for host in dict.fromkeys(hosts):
        address = _address(host)
        names.append(x509.IPAddress(address) if address is not None else x509.DNSName(host))
    return names


def _address(host: str) -> Union[ipaddress.IPv4Address, ipaddress.IPv6Address, None]:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _sha256() -> hashes.SHA256:
    from cryptography.hazmat.primitives import hashes

    return hashes.SHA256()


def _cert_pem(certificate: x509.Certificate) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return certificate.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _print_usage(directory: Path, hosts: list[str]) -> None:
    def at(name: str) -> str:
        return str(directory / name)

    host = hosts[0]
    print(f"Wrote {', '.join(FILES)} into {directory}")
    print("Keep ca-key.pem private. Give each worker host ca.pem, server.pem and server-key.pem;")
    print("give each client ca.pem, client.pem and client-key.pem.")
    print()
    print("Serve a worker (on each host, with its own --host):")
    print(
        f"  python -m ezpool.serve MODULE:NAME --host {shlex.quote(host)}"
        f" --tls-cert {shlex.quote(at('server.pem'))} --tls-key {shlex.quote(at('server-key.pem'))}"
        f" --tls-ca {shlex.quote(at('ca.pem'))} --tls-require-client-cert"
    )
    print("Use the workers from a client:")
    print(f"  Pool(tls_ca={at('ca.pem')!r}, tls_cert={at('client.pem')!r}, tls_key={at('client-key.pem')!r})")


if __name__ == "__main__":
    sys.exit(main())
