"""The Standard Webhooks signature (https://www.standardwebhooks.com/, "Signature scheme").

A secret is ``whsec_`` and the base64 of 24 to 64 random bytes. The signed content is
``{webhook-id}.{webhook-timestamp}.{body}``; its signature is ``v1,`` and the base64 of its
HMAC-SHA256 under the secret's bytes. The ``webhook-signature`` header carries one signature
per secret, space-separated: with two secrets (a rotation) a receiver that knows either
verifies the message.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from collections.abc import Sequence

__all__ = ["PREFIX", "decode_secret", "new_secret", "sign"]

PREFIX = "whsec_"
#: Bytes of a secret: the specification's bounds, and what a new one gets.
MIN_BYTES, MAX_BYTES, NEW_BYTES = 24, 64, 32


def new_secret() -> str:
    """A new random secret, ``whsec_…``."""
    return PREFIX + base64.b64encode(secrets.token_bytes(NEW_BYTES)).decode()


def decode_secret(text: str) -> bytes:
    """The key of a ``whsec_…`` secret; ValueError (never naming the secret) if it is not one."""
    if not text.startswith(PREFIX):
        raise ValueError(f"a secret starts with {PREFIX}")
    try:
        key = base64.b64decode(text[len(PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"a secret is {PREFIX} and base64") from None
    if not MIN_BYTES <= len(key) <= MAX_BYTES:
        raise ValueError(f"a secret holds {MIN_BYTES} to {MAX_BYTES} bytes, not {len(key)}")
    return key


def sign(keys: Sequence[bytes], msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value of a message: one ``v1,`` signature per key."""
    content = f"{msg_id}.{timestamp}.".encode() + body
    return " ".join(
        "v1," + base64.b64encode(hmac.new(key, content, hashlib.sha256).digest()).decode()
        for key in keys
    )
