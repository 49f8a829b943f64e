"""The server's VAPID key pair (RFC 8292), which signs every Web Push request.

The private key is ``SCHEDULER_VAPID_PRIVATE_KEY`` (PEM text) when set; otherwise one is
made on first use and kept in ``DATA_DIR / "vapid_private.pem"`` (mode 0600), so that
browser subscriptions, which are bound to the public key, survive restarts. Browsers get
the public key as the URL-safe base64 ``applicationServerKey``.
"""

from __future__ import annotations

import base64
import functools
import os
import tempfile
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from py_vapid import Vapid

KEY_FILENAME = "vapid_private.pem"


def vapid() -> Vapid:
    """The signing key, as pywebpush takes it (``vapid_private_key=``)."""
    configured = getattr(settings, "SCHEDULER_VAPID_PRIVATE_KEY", "") or ""
    if configured.strip():
        return _from_pem(configured, "SCHEDULER_VAPID_PRIVATE_KEY")
    path = Path(settings.DATA_DIR) / KEY_FILENAME
    return _from_pem(_key_file_text(path), str(path))


def application_server_key() -> str:
    """The public key as browsers want it: the uncompressed P-256 point, base64url, unpadded."""
    point = vapid().public_key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    return base64.urlsafe_b64encode(point).rstrip(b"=").decode("ascii")


def subject() -> str:
    """The ``sub`` claim: a mailto: or https: contact for push services."""
    return str(getattr(settings, "SCHEDULER_VAPID_SUBJECT", "") or "mailto:admin@localhost")


@functools.lru_cache(maxsize=4)
def _from_pem(text: str, source: str) -> Vapid:
    # Environment files often carry a PEM on one line with literal "\n" escapes.
    if "\n" not in text.strip() and "\\n" in text:
        text = text.replace("\\n", "\n")
    try:
        key = serialization.load_pem_private_key(text.strip().encode(), password=None)
    except (ValueError, TypeError):
        raise ImproperlyConfigured(f"{source} is not an unencrypted PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise ImproperlyConfigured(f"the VAPID key in {source} must be an EC P-256 key")
    return Vapid(private_key=key)


def _key_file_text(path: Path) -> str:
    """The key file's PEM, made once: written to a private temporary file and linked into
    place, so a concurrent reader never sees a half-written key and two processes racing
    to create it end up sharing the one that won."""
    if not path.exists():
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".vapid-")  # mode 0600
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(pem)
                handle.flush()
                os.fsync(handle.fileno())
            os.link(temporary, path)
        except FileExistsError:
            pass  # another process made it first: use theirs
        finally:
            os.unlink(temporary)
    return path.read_text()
