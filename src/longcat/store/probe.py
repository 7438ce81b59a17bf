"""Start-up checks that the database and Redis answer, so that an unreachable one stops the
server with one line (which URL, password masked, and why) instead of a traceback, or a server
that starts and then fails every request."""

from __future__ import annotations

import asyncio

from longcat.config import mask_url

PROBE_TIMEOUT = 10.0


class Unreachable(Exception):
    """A service the settings name does not answer; the message is one line, fit to print."""


def _reason(exc: BaseException, url: str) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within {PROBE_TIMEOUT:g} s"
    # SQLAlchemy wraps the driver's error and appends the statement and a link; the driver's own
    # message is the part that says why.
    cause = getattr(exc, "orig", None) or exc
    text = " ".join(str(cause).split()) or type(cause).__name__
    text = text.split(" [SQL:")[0].split(" (Background on this error")[0]
    # Never echo a password, even if a driver put the URL in its message.
    password = _password(url)
    return text.replace(password, "***") if password else text


def _password(url: str) -> str:
    from urllib.parse import urlsplit

    try:
        return urlsplit(url).password or ""
    except ValueError:
        return ""


async def check_database(url: str, timeout: float = PROBE_TIMEOUT) -> None:
    """Connect and run `SELECT 1`; raises `Unreachable`."""
    from sqlalchemy import text

    from longcat.store.db import create_engine

    try:
        engine = create_engine(url)
    except Exception as exc:  # noqa: BLE001 - a bad URL or a missing driver: one line, not a traceback
        raise Unreachable(f"database {mask_url(url)}: {_reason(exc, url)}") from None
    try:
        async with asyncio.timeout(timeout):
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001
        raise Unreachable(f"database {mask_url(url)} is unreachable: {_reason(exc, url)}") from None
    finally:
        await engine.dispose()


async def check_redis(url: str, timeout: float = PROBE_TIMEOUT) -> None:
    """PING; raises `Unreachable`."""
    import redis.asyncio as aioredis

    try:
        client = aioredis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    except Exception as exc:  # noqa: BLE001
        raise Unreachable(f"redis {mask_url(url)}: {_reason(exc, url)}") from None
    try:
        async with asyncio.timeout(timeout):
            await client.ping()
    except Exception as exc:  # noqa: BLE001
        raise Unreachable(f"redis {mask_url(url)} is unreachable: {_reason(exc, url)}") from None
    finally:
        await client.aclose()


async def check_services(database_url: str, redis_url: str) -> None:
    """The database, then Redis if there is one."""
    await check_database(database_url)
    if redis_url:
        await check_redis(redis_url)
