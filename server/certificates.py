"""TLS material for the coordinator: a private CA and the SuperLink's server certificate (made with `cryptography`)."""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from semiofed.common.errors import SemiofedError
from semiofed.common.files import write_bytes_atomic

# Long enough for a study, short enough that a leaked key expires (docs/deployment.md: renewing certificates).
CA_DAYS = 3650
SERVER_DAYS = 825
DEFAULT_SANS = ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True)
class TlsFiles:
    """Where a coordinator's TLS files live."""

    ca_certificate: Path
    ca_key: Path
    server_certificate: Path
    server_key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "semiofed"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        if not host or any(c.isspace() or c in "/:" for c in host):
            raise SemiofedError(f"'{host}' is not a host name or IP address for the certificate",
                                "give --san with a DNS name (coordinator.hospital.org) or an IP address") from None
        return x509.DNSName(host)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def make_ca(files: TlsFiles, *, name: str = "semiofed coordinator CA") -> x509.Certificate:
    """Create a self-signed CA (ECDSA P-384) that signs the SuperLink certificate."""
    key = ec.generate_private_key(ec.SECP384R1())
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name)).issuer_name(_name(name))
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA384())
    )
    write_bytes_atomic(files.ca_key, _pem_key(key))
    write_bytes_atomic(files.ca_certificate, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    return cert


def make_server_certificate(files: TlsFiles, sans: Sequence[str] = DEFAULT_SANS) -> x509.Certificate:
    """Issue the SuperLink's certificate for `sans` (host names and IPs), signed by the CA."""
    try:
        ca_cert = x509.load_pem_x509_certificate(files.ca_certificate.read_bytes())
        ca_key = serialization.load_pem_private_key(files.ca_key.read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise SemiofedError(f"the coordinator CA ({files.ca_certificate}) is missing or unreadable ({exc})",
                            "run `semiofed coordinator init --dir DIR` first") from exc
    names = list(dict.fromkeys(sans))
    if not names:
        raise SemiofedError("no host names for the SuperLink certificate", "give --san HOST at least once")
    key = ec.generate_private_key(ec.SECP384R1())
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(names[0])).issuer_name(ca_cert.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=SERVER_DAYS))
        .add_extension(x509.SubjectAlternativeName([_san(h) for h in names]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()), critical=False)  # type: ignore[arg-type]
        .sign(ca_key, hashes.SHA384())  # type: ignore[arg-type]
    )
    write_bytes_atomic(files.server_key, _pem_key(key))
    write_bytes_atomic(files.server_certificate, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    return cert


def certificate_sans(path: Path) -> list[str]:
    """The host names and IPs a certificate is valid for."""
    cert = x509.load_pem_x509_certificate(Path(path).read_bytes())
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(v) for v in ext.get_values_for_type(x509.DNSName)] + [str(v) for v in ext.get_values_for_type(x509.IPAddress)]
