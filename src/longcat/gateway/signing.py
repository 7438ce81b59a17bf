"""Signatures and seals on what the platform hands to clients and must recognise when it
comes back.

Reasoning is the case in point: a client replays the reasoning a model wrote, and the platform
must know the text is the model's own, unaltered, before a model reads it again as its own
thoughts (reasoning a client wrote itself would be a way to steer the model past its rules).
- Anthropic thinking blocks carry a signature: an HMAC-SHA256 over a purpose tag, the account
  and the text, keyed with the server's secret, so replicas that share the key verify each
  other's signatures, nobody else can forge one, and it holds for its account only.
- Responses reasoning items carry `encrypted_content`: the text sealed with AES-256-GCM under a
  key derived from the secret, bound to the account it was written for. Nobody can read it or
  make one; it opens only for that account.
- Chat has no field for either; see `gateway.provenance`.

Protocol encoders and decoders receive these as plain callables and never see the key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os

# Bumped if the scheme ever changes, so old signatures are recognised as old, not as forged.
# lc2: the account is part of what is signed.
VERSION = "lc2"


def sign(key: bytes, purpose: str, text: str) -> str:
    """`lc1.<base64url MAC>`; `purpose` keeps a signature for one use from validating another."""
    mac = hmac.new(key, purpose.encode() + b"\x00" + text.encode("utf-8", "surrogatepass"), hashlib.sha256).digest()
    return f"{VERSION}." + base64.urlsafe_b64encode(mac).rstrip(b"=").decode("ascii")


def verify(key: bytes, purpose: str, text: str, signature: str) -> bool:
    """True only for a signature this key made for this purpose and exactly this text."""
    if not isinstance(signature, str) or not signature.startswith(VERSION + "."):
        return False
    return hmac.compare_digest(sign(key, purpose, text), signature)


SEAL_VERSION = "lcs1."


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Signer:
    """The server's key bound to the purposes the wire formats need."""

    __slots__ = ("_key", "_aead")

    def __init__(self, key: bytes) -> None:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        if not key:
            raise ValueError("a signing key must not be empty")
        self._key = key
        # A key of its own for sealing, so no MAC above is ever computed with the cipher's key.
        self._aead = AESGCM(hmac.new(key, b"longcat seal v1", hashlib.sha256).digest())

    def seal(self, purpose: str, text: str, account: int | str) -> str:
        """`text` encrypted and authenticated for `purpose` and `account`: `lcs1.<base64url>`."""
        nonce = os.urandom(12)
        sealed = self._aead.encrypt(nonce, text.encode("utf-8", "surrogatepass"), f"{purpose}:{account}".encode())
        return SEAL_VERSION + _b64(nonce + sealed)

    def open(self, purpose: str, value: object, account: int | str) -> str | None:
        """The text `seal` sealed for this purpose and account; None for anything else."""
        from cryptography.exceptions import InvalidTag

        if not isinstance(value, str) or not value.startswith(SEAL_VERSION) or len(value) > 4 * 2**20:
            return None
        try:
            blob = _unb64(value[len(SEAL_VERSION) :])
            if len(blob) < 12 + 16:
                return None
            plain = self._aead.decrypt(blob[:12], blob[12:], f"{purpose}:{account}".encode())
            return plain.decode("utf-8", "surrogatepass")
        except (InvalidTag, binascii.Error, ValueError, UnicodeDecodeError):
            return None

    def sign_thinking(self, text: str, account: int | str = "") -> str:
        """Thinking `text` signed as written for `account`: it verifies for that account only."""
        return sign(self._key, f"thinking:{account}", text)

    def verify_thinking(self, text: str, signature: str, account: int | str = "") -> bool:
        return verify(self._key, f"thinking:{account}", text, signature)
