"""Whether an upstream engine's replicas can be reached, for readiness checks.

One quick GET per replica (any HTTP answer below 500 counts: the server is there), bounded to
`TIMEOUT` seconds, and its result kept for `TTL` seconds, so probes arriving every second cost
the upstreams one request per replica every few seconds at most. Concurrent checks share one
probe. The probe has a connection of its own: a pool saturated by real traffic must not make a
busy engine look unreachable.
"""

from __future__ import annotations

import asyncio
import ssl
import time

import httpx

TIMEOUT = 1.0
TTL = 5.0


class ReplicaProbe:
    def __init__(self, headers: dict[str, str], verify: ssl.SSLContext | bool = True, timeout: float = TIMEOUT, ttl: float = TTL) -> None:
        self.headers = headers  # the engine's own (its credentials: never logged)
        self.verify = verify
        self.timeout = timeout
        self.ttl = ttl
        self._client: httpx.AsyncClient | None = None
        self._checked = -1e18
        self._result: str | None = None
        self._lock = asyncio.Lock()

    async def check(self, urls: list[str]) -> str | None:
        """None when at least one of `urls` answers, else why not (no address in it)."""
        if time.monotonic() - self._checked < self.ttl:
            return self._result
        async with self._lock:
            if time.monotonic() - self._checked >= self.ttl:
                if self._client is None:
                    self._client = httpx.AsyncClient(headers=self.headers, verify=self.verify, timeout=self.timeout)
                answered = await asyncio.gather(*(self._answers(self._client, url) for url in urls))
                self._result = None if any(answered) else (
                    f"none of its {len(urls)} replicas answers" if len(urls) > 1 else "its upstream server does not answer"
                )
                self._checked = time.monotonic()
        return self._result

    async def _answers(self, client: httpx.AsyncClient, url: str) -> bool:
        try:
            response = await client.get(url)
        except httpx.HTTPError:
            return False
        return response.status_code < 500

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()
