"""Readiness: whether this process should be sent traffic now.

Ready means the database answers, Redis answers (when configured), every model's engine can
serve (`Engine.readiness`), and the process is not shutting down. Each check is bounded in time,
so a hung dependency makes the answer "not ready", never a hung probe. What a failed check says
is its kind of failure, never an address or a credential: the endpoint needs no authentication.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Mapping
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

CHECK_TIMEOUT = 2.0
OK = "ok"


async def _bounded(work: Awaitable[str | None], what: str) -> str:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT):
            reason = await work
    except TimeoutError:
        return f"{what} did not answer within {CHECK_TIMEOUT:g} s"
    except Exception as exc:
        return f"{what} failed ({type(exc).__name__})"
    return reason or OK


async def _database(db: AsyncEngine) -> None:
    async with db.connect() as conn:
        await conn.execute(text("SELECT 1"))


async def _redis(redis: Any) -> None:
    await redis.ping()


async def readiness(
    db: AsyncEngine, redis: Any | None, engines: Mapping[str, Any], draining: bool
) -> tuple[bool, dict[str, Any]]:
    """(ready, the JSON body): each check named, with "ok" or what is wrong."""
    names = ["database"]
    work = [_bounded(_database(db), "the database")]
    if redis is not None:
        names.append("redis")
        work.append(_bounded(_redis(redis), "Redis"))
    for model_id, engine in engines.items():
        names.append(f"model:{model_id}")
        work.append(_bounded(engine.readiness(), "the engine"))
    results = await asyncio.gather(*work)
    checks: dict[str, str] = dict(zip(names, results, strict=True))
    checks["draining"] = "the server is shutting down" if draining else OK
    ready = all(v == OK for v in checks.values())
    return ready, {"status": "ready" if ready else "not_ready", "checks": checks}
