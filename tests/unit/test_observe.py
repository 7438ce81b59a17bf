"""The observability pieces on their own: request ids, labels, log formats, engine load, readiness."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from dataclasses import dataclass

import pytest
from prometheus_client import generate_latest

from longcat.config import ModelConfig
from longcat.engines.base import Engine
from longcat.httpkit import client_address
from longcat.observe import health, metrics
from longcat.observe.access import Access, current, request_id_from
from longcat.observe.logs import JSONFormatter, TextFormatter, wants_json


def test_incoming_request_ids_are_kept_only_when_sane():
    assert request_id_from(b"abc-123_X.y:z") == "abc-123_X.y:z"
    assert request_id_from(b"x" * 128) == "x" * 128
    for bad in (None, b"", b"x" * 129, b"has space", b"semi;colon", b"new\nline", "é".encode(), b"<script>"):
        assert request_id_from(bad) is None, bad


def test_replica_labels_are_host_and_port_only():
    assert metrics.replica_label("http://user:secret@10.0.0.5:8001/v1?key=abc") == "10.0.0.5:8001"
    assert metrics.replica_label("https://api.example.com/anthropic") == "api.example.com:443"
    assert metrics.replica_label("http://[::1]:9000/v1") == "[::1]:9000"
    assert metrics.replica_label("http://host:notaport/") == "invalid"


def test_client_address_believes_forwarded_for_only_from_trusted_proxies():
    assert client_address("10.1.1.1", "1.2.3.4, 5.6.7.8", "") == "10.1.1.1"
    assert client_address("10.1.1.1", "1.2.3.4, 5.6.7.8", "10.0.0.0/8") == "5.6.7.8"
    assert client_address("192.168.1.1", "1.2.3.4", "10.0.0.0/8") == "192.168.1.1"
    assert client_address("10.1.1.1", "", "10.0.0.0/8") == "10.1.1.1"


def _record(msg: str, *args, fields=None, exc_info=None, name="longcat.test") -> logging.LogRecord:
    record = logging.LogRecord(name, logging.WARNING, __file__, 1, msg, args, exc_info)
    if fields is not None:
        record.fields = fields
    return record


def _access(rid: str) -> Access:
    return Access(request_id=rid, internal_id=rid, method="POST", client="127.0.0.1", started=0.0)


def test_json_lines_name_the_request_they_were_logged_in():
    fmt = JSONFormatter()
    token = current.set(_access("req_abc"))
    try:
        try:
            raise ValueError("boom")
        except ValueError:
            import sys

            line = fmt.format(_record("engine %s failed", "m", exc_info=sys.exc_info()))
    finally:
        current.reset(token)
    assert "\n" not in line
    data = json.loads(line)
    assert (data["level"], data["logger"], data["msg"], data["request_id"]) == ("warning", "longcat.test", "engine m failed", "req_abc")
    assert "ValueError: boom" in data["exc"] and data["ts"].endswith("Z")
    assert "request_id" not in json.loads(fmt.format(_record("outside any request")))


def test_access_fields_go_into_the_object_or_after_the_text():
    fields = {"request_id": "r1", "status": 429, "error": "rate_limit_exceeded", "stream": False}
    data = json.loads(JSONFormatter().format(_record("POST /x 429", fields=fields, name="longcat.access")))
    assert {k: data[k] for k in fields} == fields and data["msg"] == "POST /x 429"
    text = TextFormatter().format(_record("POST /x 429", fields={**fields, "note": "two words"}))
    assert text.endswith('POST /x 429 request_id=r1 status=429 error=rate_limit_exceeded stream=False note="two words"')


def test_auto_format_is_text_on_a_terminal_and_json_elsewhere():
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert wants_json("auto", io.StringIO()) and not wants_json("auto", Terminal())
    assert wants_json("json", Terminal()) and not wants_json("text", io.StringIO())


@dataclass
class Replica:
    replica: str
    inflight: int
    healthy: bool
    circuit_open: bool


class Loaded(Engine):
    """An engine with slots and replicas to report (what the embedded and upstream engines expose)."""

    def __init__(self, model_id: str, reason: str | None = None, hang: bool = False) -> None:
        super().__init__(ModelConfig(id=model_id, engine="test", context_window=100, max_output=10))
        self.reason, self.hang = reason, hang

    def describe(self):
        return {"type": "test"}

    async def count_tokens(self, request):
        return 0

    def stream(self, request, ctx):
        raise NotImplementedError

    def occupancy(self):
        return 3, 2

    def replica_stats(self):
        return [Replica("10.0.0.5:8001", 4, True, False), Replica("10.0.0.6:8001", 0, False, True)]

    async def readiness(self):
        if self.hang:
            await asyncio.sleep(60)
        return self.reason


def test_engine_load_is_read_at_scrape_time():
    metrics.watch({"big": Loaded("big"), "plain": Loaded("plain")})
    try:
        text = generate_latest(metrics.REGISTRY).decode()
    finally:
        metrics.watch({})
    assert 'longcat_engine_queue_depth{model="big"} 3.0' in text
    assert 'longcat_engine_slots_busy{model="plain"} 2.0' in text
    assert 'longcat_upstream_inflight{model="big",replica="10.0.0.5:8001"} 4.0' in text
    assert 'longcat_upstream_healthy{model="big",replica="10.0.0.6:8001"} 0.0' in text
    assert 'longcat_upstream_circuit_open{model="big",replica="10.0.0.6:8001"} 1.0' in text


def test_engines_without_slots_or_replica_stats_report_nothing():
    class Bare(Loaded):
        def occupancy(self):
            return None

    Bare.replica_stats = None  # type: ignore[assignment]  (an upstream engine before replica_stats existed)
    assert list(metrics.load_samples({"bare": Bare("bare")})) == []


def test_readiness_names_every_failed_check(tmp_path, monkeypatch):
    from longcat.store.db import create_engine

    monkeypatch.setattr(health, "CHECK_TIMEOUT", 0.2)
    db = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'ready.db'}")

    async def run():
        try:
            engines = {"ok": Loaded("ok"), "down": Loaded("down", reason="its upstream server does not answer"),
                       "stuck": Loaded("stuck", hang=True)}
            return await health.readiness(db, None, engines, draining=True)
        finally:
            await db.dispose()

    ready, body = asyncio.run(run())
    assert not ready and body["status"] == "not_ready"
    assert body["checks"] == {
        "database": "ok",
        "model:ok": "ok",
        "model:down": "its upstream server does not answer",
        "model:stuck": "the engine did not answer within 0.2 s",
        "draining": "the server is shutting down",
    }


@pytest.mark.parametrize("status", [200, 401, 429, 503])
def test_request_done_counts_with_bounded_labels(status):
    before = metrics.REQUESTS.labels("/t", "m", str(status))._value.get()
    metrics.request_done("/t", "m", status, 0.01, 0.005, (10, 3, 4))
    assert metrics.REQUESTS.labels("/t", "m", str(status))._value.get() == before + 1


_WORKER = """
import asyncio, sys
from types import SimpleNamespace
from longcat.observe import metrics

class Engine:
    def occupancy(self):
        return 3, 2
    def replica_stats(self):
        return [SimpleNamespace(replica="10.0.0.5:8001", inflight=4, healthy=True, circuit_open=False)]

metrics.watch({"big": Engine()})
metrics.request_done("/openai/v1/chat/completions", "big", 200, 0.05, 0.01, (7, 2, 0))
metrics.inflight("big", 1)

async def one_tick():
    task = asyncio.create_task(metrics.sample_forever(interval=60))
    await asyncio.sleep(0.05)
    task.cancel()

asyncio.run(one_tick())
sys.stdout.write(metrics.render().decode())
"""


def test_two_processes_sharing_a_multiprocess_dir_add_up(tmp_path):
    """Two workers (prometheus-client's multiprocess mode): counters and live gauges add up, and
    a worker reported dead no longer counts in the live ones."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    runs = [subprocess.run([sys.executable, "-c", _WORKER], env=env, capture_output=True, text=True, timeout=60) for _ in range(2)]
    assert all(r.returncode == 0 for r in runs), [r.stderr for r in runs]
    text = runs[1].stdout
    assert 'longcat_requests_total{endpoint="/openai/v1/chat/completions",model="big",status="200"} 2.0' in text
    assert 'longcat_tokens_total{kind="input",model="big"} 14.0' in text
    assert 'longcat_inflight_requests{model="big"} 2.0' in text
    assert 'longcat_engine_queue_depth{model="big"} 6.0' in text
    assert 'longcat_upstream_inflight{model="big",replica="10.0.0.5:8001"} 8.0' in text
    assert 'longcat_upstream_healthy{model="big",replica="10.0.0.5:8001"} 1.0' in text
    assert "process_resident_memory_bytes" not in text  # one worker's figures would mislead
    pids = {p.name.rsplit("_", 1)[-1].split(".")[0] for p in tmp_path.glob("gauge_livesum_*.db")}
    assert len(pids) == 2
    render = "from longcat.observe import metrics; import sys; metrics.worker_exited(int(sys.argv[1])); print(metrics.render().decode())"
    after = subprocess.run([sys.executable, "-c", render, sorted(pids)[0]], env=env, capture_output=True, text=True, timeout=60)
    assert 'longcat_inflight_requests{model="big"} 1.0' in after.stdout, after.stderr
    assert 'longcat_requests_total{endpoint="/openai/v1/chat/completions",model="big",status="200"} 2.0' in after.stdout
