"""What the gateway, translation and soak benchmarks share: the stub upstream, the platform in
front of it with every feature on, LiteLLM's proxy in its own cached venv, and `wrk`.

Pinning on a 2-core machine (`taskset`): the system under test (the platform, or LiteLLM's proxy)
gets CPU 0 to itself; the stub upstream and the load generator (`wrk`, one thread) share CPU 1.
The stub answers tens of thousands of requests a second on its share, so it is never the limit;
the load generator's cost is the same for every target. Baseline and targets run in the same
invocation, one after the other, so every ratio compares like with like.

Every process started here is stopped by its own PID, and every load run is bounded in time.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
# LONGCAT_BENCH_SRC measures other sources (e.g. another checkout's `src`, for a before/after).
SRC = Path(os.environ.get("LONGCAT_BENCH_SRC", ROOT / "src")).resolve()
# Measure this checkout's sources, whatever the venv's editable install points at.
sys.path.insert(0, str(SRC))
sys.path.insert(1, str(ROOT))

SUT_CPU = "0"  # the platform / LiteLLM
LOAD_CPU = "1"  # the stub and wrk
CACHE = Path(os.environ.get("LONGCAT_BENCH_CACHE", Path.home() / ".cache" / "longcat-bench"))
LITELLM_SPEC = os.environ.get("LONGCAT_BENCH_LITELLM", "litellm[proxy]")
LITELLM_MASTER = "sk-bench-master"

MODEL = "stub"
PROMPT = "Write one short sentence about lighthouses, please."


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env_with_src(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LONGCAT_")}
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def pinned(cpu: str, cmd: list[str]) -> list[str]:
    return ["taskset", "-c", cpu, *cmd] if shutil.which("taskset") and (os.cpu_count() or 1) >= 2 else cmd


def wait_http(url: str, proc: subprocess.Popen, timeout: float, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}" + (f":\n{log.read_text()[-3000:]}" if log else ""))
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not answer within {timeout:.0f} s")


def stop(proc: subprocess.Popen | None, timeout: float = 15) -> None:
    """Stop one process we started, by its PID: SIGTERM, then SIGKILL."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def machine() -> str:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()
    return f"{os.cpu_count()} cores ({model or 'unknown CPU'}), load average {load[0]:.2f} at the start"


# ------------------------------------------------------------------------------------ processes


class Stub:
    """bench/stub.py in its own process on the load CPU."""

    def __init__(self, chunks: int = 16) -> None:
        self.port = free_port()
        cmd = pinned(LOAD_CPU, [sys.executable, str(ROOT / "bench" / "stub.py"), "--port", str(self.port), "--chunks", str(chunks)])
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_http(f"http://127.0.0.1:{self.port}/v1/models", self.proc, 20, "the stub upstream")

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def stop(self) -> None:
        stop(self.proc)


PLATFORM_CONFIG = """
# Everything on: authentication, rate limits (high enough never to refuse a benchmark), the
# daily quota (reserved and settled for every request), usage records committed before a reply ends.
key_rpm = 1000000000
key_tpm = 1000000000000
key_concurrency = 100000
account_rpm = 1000000000
account_tpm = 1000000000000
account_concurrency = 100000
daily_quota = 1000000000000
daily_quota_cap = 1000000000000
engine_queue_limit = 10000

[[models]]
id = "stub"
engine = "openai_compat"
base_url = "{base_url}"
context_window = 100000
max_output = 100000
max_connections = 256
"""


class Platform:
    """`longcat serve` (SQLite, in-process counters: the default deployment) on the SUT CPU."""

    def __init__(self, upstream: str, tmp: Path, extra_env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.data = tmp / "data"
        self.config = tmp / "config.toml"
        self.config.write_text(PLATFORM_CONFIG.replace("{base_url}", upstream))
        self.env = env_with_src(extra_env)
        self.key = self._new_key("bench@example.com")
        self.log = tmp / "platform.log"
        cmd = [sys.executable, "-m", "longcat", "serve", "--data-dir", str(self.data), "--config", str(self.config),
               "--port", str(self.port)]
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(pinned(SUT_CPU, cmd), stdout=out, stderr=subprocess.STDOUT, env=self.env)
        wait_http(f"http://127.0.0.1:{self.port}/health", self.proc, 60, "the platform", self.log)

    def _cli(self, *args: str) -> str:
        cmd = [sys.executable, "-m", "longcat", *args, "--data-dir", str(self.data), "--config", str(self.config)]
        return subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=60, env=self.env).stdout

    def _new_key(self, email: str) -> str:
        self._cli("users", "create", email)
        return self._cli("keys", "create", email, "--name", "bench").strip().splitlines()[-1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        stop(self.proc, 30)


LITELLM_CONFIG = """
model_list:
  - model_name: stub
    litellm_params:
      model: openai/stub
      api_base: {base_url}
      api_key: sk-upstream
general_settings:
  master_key: {master}
litellm_settings:
  telemetry: false
"""


def litellm_venv() -> tuple[Path | None, str]:
    """LiteLLM's proxy in a venv of its own under the cache (never the project's), installed
    with pip on first use. Returns (its `litellm` executable or None, why not)."""
    venv = CACHE / "litellm-venv"
    exe = venv / "bin" / "litellm"
    stamp = venv / ".installed"
    if exe.exists() and stamp.exists():
        return exe, ""
    try:
        CACHE.mkdir(parents=True, exist_ok=True)
        print(f"installing {LITELLM_SPEC} into {venv} (once; cached afterwards)…", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
        subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", LITELLM_SPEC], check=True, timeout=900,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        stamp.write_text(LITELLM_SPEC + "\n")
        return exe, ""
    except (subprocess.SubprocessError, OSError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        return None, f"{type(exc).__name__}: {detail.decode(errors='replace').strip().splitlines()[-1:] or exc}"


def litellm_version(exe: Path) -> str:
    try:
        out = subprocess.run([str(exe.parent / "python"), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
                             capture_output=True, text=True, timeout=60)
        return out.stdout.strip() or "?"
    except subprocess.SubprocessError:
        return "?"


class LiteLLM:
    """LiteLLM's proxy: one worker, master key only (no database), on the SUT CPU."""

    def __init__(self, exe: Path, upstream: str, tmp: Path) -> None:
        self.port = free_port()
        config = tmp / "litellm.yaml"
        config.write_text(LITELLM_CONFIG.replace("{base_url}", upstream).replace("{master}", LITELLM_MASTER))
        self.log = tmp / "litellm.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LONGCAT_", "PYTHONPATH"))}
        env.update({"LITELLM_TELEMETRY": "False", "LITELLM_LOG": "ERROR", "DISABLE_SCHEMA_UPDATE": "true"})
        cmd = [str(exe), "--config", str(config), "--host", "127.0.0.1", "--port", str(self.port), "--num_workers", "1"]
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(pinned(SUT_CPU, cmd), stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp)
        wait_http(f"http://127.0.0.1:{self.port}/health/liveliness", self.proc, 180, "LiteLLM's proxy", self.log)
        self.key = LITELLM_MASTER

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        stop(self.proc, 20)


# ------------------------------------------------------------------------------------ wrk

_LUA = """wrk.method = "POST"
wrk.body = {body}
wrk.headers["Content-Type"] = "application/json"
{auth}
"""


def lua_script(tmp: Path, name: str, body: str, key: str | None, header: str = "Authorization") -> Path:
    auth = ""
    if key:
        value = f"Bearer {key}" if header == "Authorization" else key
        auth = f'wrk.headers["{header}"] = "{value}"'
    path = tmp / f"{name}.lua"
    # A Lua long string holds the JSON body as is.
    path.write_text(_LUA.format(body=f"[==[{body}]==]", auth=auth))
    return path


@dataclass
class WrkResult:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int  # non-2xx answers and socket errors

    def cell(self) -> str:
        return f"{self.rps:,.0f} req/s, p50 {self.p50_ms:.2f} ms, p99 {self.p99_ms:.2f} ms"


def _ms(text: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s|m)", text)
    if not m:
        return float("nan")
    value, unit = float(m.group(1)), m.group(2)
    return value * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def wrk(url: str, script: Path, connections: int, seconds: float) -> WrkResult:
    """One bounded `wrk` run (one thread, on the load CPU)."""
    cmd = pinned(LOAD_CPU, ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "10s", "--latency", "-s", str(script), url])
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    lat = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", out, re.M))
    n = int(re.search(r"(\d+) requests in", out).group(1))
    errors = 0
    if m := re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out):
        errors += int(m.group(1))
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out):
        errors += sum(int(x) for x in m.groups())
    return WrkResult(rps, _ms(lat.get("50", "nan")), _ms(lat.get("99", "nan")), n, errors)


def have_wrk() -> bool:
    return shutil.which("wrk") is not None


def tmpdir() -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix="longcat-bench-")
