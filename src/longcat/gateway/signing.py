"""Signatures on what the platform hands to clients and must recognise when it comes back.

Thinking blocks are the case in point: a client replays the reasoning a model wrote, and the
platform checks the text is unaltered before a model reads it again as its own words. The
signature is an HMAC-SHA256 over a purpose tag and the text, keyed with the server's secret, so
replicas that share the key verify each other's signatures and nobody else can forge one.

Pure functions of (key, text): protocol encoders and decoders receive `sign_thinking` and
`verify_thinking` as plain callables and never see the key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

# Bumped if the scheme ever changes, so old signatures are recognised as old, not as forged.
VERSION = "lc1"


def sign(key: bytes, purpose: str, text: str) -> str:
    """`lc1.<base64url MAC>`; `purpose` keeps a signature for one use from validating another."""
    mac = hmac.new(key, purpose.encode() + b"\x00" + text.encode("utf-8", "surrogatepass"), hashlib.sha256).digest()
    return f"{VERSION}." + base64.urlsafe_b64encode(mac).rstrip(b"=").decode("ascii")


def verify(key: bytes, purpose: str, text: str, signature: str) -> bool:
    """True only for a signature this key made for this purpose and exactly this text."""
    if not isinstance(signature, str) or not signature.startswith(VERSION + "."):
        return False
    return hmac.compare_digest(sign(key, purpose, text), signature)


class Signer:
    """The server's key bound to the purposes the wire formats need."""

    __slots__ = ("_key",)

    def __init__(self, key: bytes) -> None:
        if not key:
            raise ValueError("a signing key must not be empty")
        self._key = key

    def sign_thinking(self, text: str) -> str:
        return sign(self._key, "thinking", text)

    def verify_thinking(self, text: str, signature: str) -> bool:
        return verify(self._key, "thinking", text, signature)
