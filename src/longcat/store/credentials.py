"""API keys and passwords: how they are made and how they are stored (only as hashes)."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import string

KEY_PREFIX = "ak_"
_ALPHABET = string.ascii_letters + string.digits


def new_api_key() -> str:
    """`ak_` + 40 random base62 characters (about 238 bits)."""
    return KEY_PREFIX + "".join(secrets.choice(_ALPHABET) for _ in range(40))


def hash_key(key: str) -> str:
    """Keys carry enough entropy that a fast hash is safe, and it keeps auth off the CPU's hot path."""
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


def key_hint(key: str) -> str:
    return f"{key[:7]}…{key[-4:]}"


# scrypt parameters: about 50 ms per check on this class of machine, 16 MiB of memory.
_N, _R, _P = 2**14, 8, 1


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_N, r=_R, p=_P, maxmem=64 * 1024 * 1024)
    return f"scrypt${_N}${_R}${_P}${salt.hex()}${digest.hex()}"


def verify_password(password: str, stored: str | None) -> bool:
    if not stored:
        return False
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        got = hashlib.scrypt(
            password.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p), maxmem=64 * 1024 * 1024
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got.hex(), digest)


def new_password() -> str:
    return secrets.token_urlsafe(12)
