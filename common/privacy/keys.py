"""Site signing keys (ECDSA P-384): load them, fingerprint them, sign and verify a digest in a named context."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from semiofed.common.errors import SemiofedError

CURVE = ec.SECP384R1
SIGNATURE_HASH = hashes.SHA384

PrivateKey = ec.EllipticCurvePrivateKey
PublicKey = ec.EllipticCurvePublicKey


class KeyFileError(SemiofedError):
    """A key file is missing, unreadable, or not an ECDSA P-384 key."""


def _check_curve(key: PrivateKey | PublicKey, source: str) -> None:
    if not isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)) or not isinstance(key.curve, CURVE):
        raise KeyFileError(f"key {source} is not an ECDSA P-384 key",
                           "give the key made by `semiofed site init` (keys/site_key.pem, keys/site_key.pub)")


def load_site_private_key(path: Path) -> PrivateKey:
    """The site's signing key from its PKCS8 PEM file (keys/site_key.pem)."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise KeyFileError(f"site private key {path} is missing", "restore the site's keys/ folder from backup") from None
    except OSError as exc:
        raise KeyFileError(f"site private key {path} is unreadable ({exc})", "check the file's owner and permissions") from exc
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"site private key {path} is not an unencrypted PEM private key ({exc})",
                           "restore keys/site_key.pem from backup") from exc
    _check_curve(key, str(path))
    return key  # type: ignore[return-value]


def load_public_key(source: Path | str | bytes) -> PublicKey:
    """A site's public key: an OpenSSH line (`ecdsa-sha2-nistp384 AAAA...`) or PEM, as bytes, text, or a file path."""
    if isinstance(source, bytes):
        data, name = source, "given as bytes"
    elif isinstance(source, str) and source.lstrip().startswith(("ecdsa-sha2-", "-----BEGIN")):
        data, name = source.encode("ascii", "replace"), "given as text"
    else:
        name = str(source)
        try:
            data = Path(source).read_bytes()
        except FileNotFoundError:
            raise KeyFileError(f"site public key {name} is missing",
                               "give the site's keys/site_key.pub (the site sends it to the coordinator and auditor)") from None
        except OSError as exc:
            raise KeyFileError(f"site public key {name} is unreadable ({exc})", "check the path and permissions") from exc
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            key = serialization.load_pem_public_key(data)
        else:
            key = serialization.load_ssh_public_key(data.strip())
    except (ValueError, TypeError, IndexError) as exc:
        raise KeyFileError(f"site public key {name} is not an OpenSSH or PEM public key ({exc})",
                           "give the site's keys/site_key.pub, one line starting with ecdsa-sha2-nistp384") from exc
    _check_curve(key, name)
    return key  # type: ignore[return-value]


def public_key_fingerprint(key: PublicKey | PrivateKey) -> str:
    """The key's fingerprint as `ssh-keygen -l` prints it: SHA256:<base64 of the OpenSSH key blob's sha256>."""
    public = key.public_key() if isinstance(key, ec.EllipticCurvePrivateKey) else key
    line = public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    blob = base64.b64decode(line.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode("ascii").rstrip("=")


def sign_digest(private_key: PrivateKey, context: bytes, hex_digest: str) -> str:
    """Base64 DER ECDSA P-384/SHA-384 signature over `context || digest`.

    The context names what is signed (a ledger entry, a ledger head), so a
    signature made for one can never be replayed as the other.
    """
    signature = private_key.sign(context + bytes.fromhex(hex_digest), ec.ECDSA(SIGNATURE_HASH()))
    return base64.b64encode(signature).decode("ascii")


def verify_digest(public_key: PublicKey, context: bytes, hex_digest: str, signature: str) -> bool:
    """True when `signature` is the key's signature over `context || digest`; False for anything else."""
    try:
        raw = base64.b64decode(signature, validate=True)
        public_key.verify(raw, context + bytes.fromhex(hex_digest), ec.ECDSA(SIGNATURE_HASH()))
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True
