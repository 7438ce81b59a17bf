"""Usage page render time for an account with 100,000 usage records.

    .venv/bin/python bench/console_usage.py [--records 100000] [--runs 30] [--postgres]

Builds the real app in process (SQLite in a temporary data dir, or a fresh PostgreSQL database),
writes the records through the same `UsageStore.write_batch` the gateway uses (30 days, 5 keys,
3 models), signs in, and times the server's answer to GET /usage (the whole page: quota, 30-day
chart, breakdowns, the first 50 rows and the totals row) through an in-process ASGI transport.
The baseline, measured in the same run, is the same page for an account with no records; the
ratio shows what the data costs. It also times the page with the console's usage-log indexes
dropped, the 1 s live poll when nothing changed (204), a filtered page and the CSV export.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from longcat.app import create_app  # noqa: E402
from longcat.config import load_settings  # noqa: E402
from longcat.gateway.clock import beijing_day  # noqa: E402
from longcat.store.usage import UsageRecord  # noqa: E402

MODELS = ("LongCat-2.0-Preview", "mock-echo", "mock-thinking")
STATUSES = ("ok",) * 17 + ("length", "client_closed", "engine_error")
CONFIG = '[[models]]\nid = "LongCat-2.0-Preview"\nengine = "mock"\n[[models]]\nid = "mock-echo"\nengine = "mock"\n[[models]]\nid = "mock-thinking"\nengine = "mock"\n'
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


async def sign_up(client: httpx.AsyncClient, email: str) -> None:
    token = CSRF.search((await client.get("/login")).text).group(1)
    r = await client.post("/register", data={"csrf_token": token, "email": email, "password": "correct horse battery"})
    assert r.status_code == 303, r.text


async def fill(app, account_id: int, key_ids: list[int], n: int) -> None:
    usage = app.state.usage
    now = time.time()
    rng = random.Random(7)
    batch = []
    for _ in range(n):
        at = now - rng.random() * 29 * 86400
        inp, out = rng.randint(20, 4000), rng.randint(1, 1500)
        batch.append(UsageRecord(
            request_id=f"req_{uuid.uuid4().hex[:24]}", account_id=account_id, key_id=rng.choice(key_ids), model=rng.choice(MODELS),
            endpoint=rng.choice(("chat.completions", "messages", "responses")), stream=rng.random() < 0.6, input_tokens=inp,
            output_tokens=out, cached_tokens=inp // 3 if rng.random() < 0.2 else 0, billed_tokens=inp + out, status=rng.choice(STATUSES),
            latency_ms=rng.randint(30, 9000), day=beijing_day(at), created_at=at, base_quota=5_000_000,
        ))
        if len(batch) == 5000:
            await usage.write_batch(batch)
            batch = []
    await usage.write_batch(batch)


async def timed(client: httpx.AsyncClient, path: str, runs: int, expect: int = 200) -> float:
    samples = []
    for _ in range(runs):
        t = time.perf_counter()
        r = await client.get(path)
        samples.append((time.perf_counter() - t) * 1000)
        assert r.status_code == expect, (path, r.status_code, r.text[:200])
    return statistics.median(samples)


async def main(records: int, runs: int, database_url: str, data_dir: Path) -> None:
    cfg = data_dir / "config.toml"
    cfg.write_text(CONFIG)
    settings = load_settings(cfg, env={}, data_dir=str(data_dir), database_url=database_url or None, login_rpm_ip=0, login_rpm_account=0)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as big, \
                httpx.AsyncClient(transport=transport, base_url="http://bench") as empty:
            await sign_up(big, "big@example.com")
            await sign_up(empty, "empty@example.com")
            token = CSRF.search((await big.get("/keys")).text).group(1)
            keys = []
            for i in range(5):
                r = await big.post("/api/v1/keys", json={"name": f"key {i}"}, headers={"X-CSRF-Token": token})
                keys.append(r.json()["key"]["id"])
            account_id = (await big.get("/api/v1/account")).json()["id"]
            t = time.perf_counter()
            await fill(app, account_id, keys, records)
            print(f"wrote {records:,} usage records in {time.perf_counter() - t:.1f} s ({settings.resolved_database_url.split(':')[0]})")

            await timed(big, "/usage", 3)  # warm caches and templates
            await timed(empty, "/usage", 3)
            baseline = await timed(empty, "/usage", runs)
            full = await timed(big, "/usage", runs)
            version = re.search(r"since=([0-9.]+)", (await big.get("/usage/live")).text).group(1)
            live = await timed(big, f"/usage/live?since={version}", runs, expect=204)
            filtered = await timed(big, f"/usage?key={keys[2]}&model=mock-echo&status=ok&page=7", runs)
            deep = await timed(big, "/usage?page=1500", max(5, runs // 3))
            t = time.perf_counter()
            csv = await big.get("/usage.csv")
            csv_ms = (time.perf_counter() - t) * 1000
            rows = csv.text.count("\n") - 2

            # The same page computed the way it would be without the console's rollup and index:
            # a GROUP BY over the records themselves and an OFFSET over whole rows.
            from sqlalchemy import func, select

            from longcat.store.schema import usage_records as u

            engine = app.state.db
            async with engine.begin() as conn:
                await conn.exec_driver_sql("DROP INDEX ix_usage_records_account_log")
            naive = select(u.c.key_id, u.c.model, func.count(), func.sum(u.c.input_tokens), func.sum(u.c.output_tokens),
                           func.sum(u.c.cached_tokens), func.sum(u.c.billed_tokens)).where(u.c.account_id == account_id).group_by(u.c.key_id, u.c.model)
            rows_q = select(u).where(u.c.account_id == account_id).order_by(u.c.id.desc()).limit(50).offset(0)
            samples = []
            for _ in range(max(5, runs // 3)):
                t = time.perf_counter()
                async with engine.connect() as conn:
                    (await conn.execute(naive)).all()
                    (await conn.execute(rows_q)).all()
                samples.append((time.perf_counter() - t) * 1000)
            unindexed = statistics.median(samples)

    print(f"GET /usage, account with no records (baseline)   : {baseline:7.1f} ms")
    print(f"GET /usage, account with {records:,} records    : {full:7.1f} ms   ratio {full / baseline:.2f}x baseline   "
          f"{'under' if full < 100 else 'OVER'} the 100 ms budget")
    print(f"  filtered by key + model + status, page 7        : {filtered:7.1f} ms")
    print(f"  page 1500 (the oldest rows)                     : {deep:7.1f} ms")
    print(f"  live poll, nothing changed (204)                : {live:7.1f} ms")
    print(f"  CSV export of all {rows:,} rows                 : {csv_ms:7.0f} ms")
    print(f"  for comparison, the same sums and rows read straight from the records (no rollup, no index): "
          f"{unindexed:.1f} ms of queries alone")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--postgres", action="store_true", help="use a fresh database on 127.0.0.1:5432 instead of SQLite")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url, name = "", ""
        if args.postgres:
            name = f"lc_bench_{uuid.uuid4().hex[:8]}"
            psql = ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "test", "-q", "-c"]
            subprocess.run([*psql, f"CREATE DATABASE {name}"], check=True, capture_output=True)
            url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
        try:
            asyncio.run(main(args.records, args.runs, url, Path(tmp)))
        finally:
            if name:
                subprocess.run([*psql, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"], capture_output=True, check=False)
