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


# scrypt at OWASP's parameters (n=2**17, r=8, p=1): about 0.1 s and 128 MiB per hash, so
# callers on an event loop hash in a worker thread and bound how many run at once. The
# parameters are stored with each hash, so older hashes keep verifying after a change.
_N, _R, _P = 2**17, 8, 1
_DKLEN = 64
# Python refuses scrypt beyond `maxmem`; 128 * r * n bytes is what these parameters need.
_MAXMEM = 2**28
# A stored hash is trusted data, but bound it anyway: nobody should make a check take minutes.
_MAX_N = 2**20


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode("utf-8", "surrogatepass"), salt=salt, n=_N, r=_R, p=_P, maxmem=_MAXMEM, dklen=_DKLEN)
    return f"scrypt${_N}${_R}${_P}${salt.hex()}${digest.hex()}"


def verify_password(password: str, stored: str | None) -> bool:
    if not stored:
        return False
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt" or int(n) > _MAX_N:
            return False
        got = hashlib.scrypt(
            password.encode("utf-8", "surrogatepass"),
            salt=bytes.fromhex(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            maxmem=_MAXMEM,
            dklen=len(digest) // 2,
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got.hex(), digest)


# Verified when an email has no account, so a wrong email costs the same time as a wrong password.
DUMMY_HASH = "scrypt$131072$8$1$" + "00" * 16 + "$" + "00" * 64


def new_password() -> str:
    return secrets.token_urlsafe(12)
