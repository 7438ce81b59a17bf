"""The embedded engine under concurrent streams, against llama.cpp's own server, in one run.

    .venv/bin/python bench/engine.py [--tokens 128] [--streams 1,4,8] [--rounds 5] [--skip-llama-server]

For 1, 4 and 8 simultaneous streams of `--tokens` tokens each (`ignore_eos`, so every stream
generates exactly that many), prints the aggregate tokens/s and the longest time to first
token, for:

- the platform's HTTP API (SSE, `POST /openai/v1/chat/completions`, auth, limits, quota and
  metering on), with its default slots;
- `llama-server --parallel 8` built from the llama.cpp sources vendored in the llama-cpp-python
  sdist (built once and cached under ~/.cache/longcat-bench; skipped with a message where it
  cannot be built);
- llama.cpp's server core alone through xllamacpp (what the embedded engine runs on), over its
  own HTTP listener with 8 slots: the platform's overhead.

All three run at once, each idle while another is measured: every target is warmed up through all
its slots, then each round measures every cell on every target in turn (the order rotating from
round to round, every prompt new so none is a cache hit), and each cell printed is
the median round (with the range of all rounds), so a slow spell of the machine (this one's speed
drifts by 10-20 % over minutes) falls on every target alike. Every figure is printed as a ratio
against llama-server (or, when it is skipped, against the core alone). Then the prompt cache:
time to first token of the second turn of a 4,000-token conversation, served from the account's
cached prefix vs computed afresh (another account).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.server import Server, free_port, write_config  # noqa: E402

MODEL = "LongCat-2.0-Preview"
CACHE = Path.home() / ".cache" / "longcat-bench"
SDIST = "llama-cpp-python==0.3.36"
TOPICS = ["a lighthouse", "the sea", "a mountain", "a city at night", "a forest", "a desert", "a river", "the moon"]


@dataclass
class Run:
    tokens: int
    seconds: float
    ttft_max: float

    @property
    def rate(self) -> float:
        return self.tokens / self.seconds


async def _stream(client: httpx.AsyncClient, url: str, body: dict, headers: dict) -> tuple[int, float]:
    """(tokens, seconds to first token) of one streamed chat completion."""
    started = time.perf_counter()
    first = None
    tokens = 0
    async with client.stream("POST", url, json=body, headers=headers) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            usage = chunk.get("usage")
            if usage:
                tokens = usage["completion_tokens"]
            if chunk.get("choices") and chunk["choices"][0].get("delta", {}).get("content"):
                first = first or time.perf_counter()
    return tokens, (first or time.perf_counter()) - started


async def concurrent(url: str, headers: dict, model: str, streams: int, tokens: int, tag: str = "") -> Run:
    """`tag` opens every prompt: a new tag, a prompt no slot has cached (time to first token is
    then that of a short prompt, not of a cache hit)."""
    bodies = [
        {
            "model": model,
            "messages": [{"role": "user", "content": f"{tag}Write a long story about {TOPICS[i % len(TOPICS)]}."}],
            "max_tokens": tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
            "ignore_eos": True,
            "temperature": 0.7,
            "seed": i,
        }
        for i in range(streams)
    ]
    limits = httpx.Limits(max_connections=streams + 2)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        started = time.perf_counter()
        results = await asyncio.gather(*[_stream(client, url, body, headers) for body in bodies])
        seconds = time.perf_counter() - started
    return Run(sum(n for n, _ in results), seconds, max(t for _, t in results))


def warm_up(url: str, headers: dict, model: str, streams: int, tokens: int) -> None:
    """Every slot once: the first run through fresh KV-cache memory is slower (page faults)."""
    asyncio.run(concurrent(url, headers, model, streams, tokens))


def run_once(url: str, headers: dict, model: str, streams: int, tokens: int, tag: str) -> Run:
    time.sleep(1)  # llama.cpp's threads spin a while after work: start each run on idle cores
    return asyncio.run(concurrent(url, headers, model, streams, tokens, tag))


def median_run(runs: list[Run]) -> Run:
    """The round with the median rate (its own time to first token with it)."""
    return sorted(runs, key=lambda r: r.rate)[len(runs) // 2]


# ------------------------------------------------------------------ the baselines


def build_llama_server() -> Path | None:
    """llama-server from the llama.cpp sources in the llama-cpp-python sdist, built once."""
    binary = CACHE / "llama-server-0.3.36" / "llama-server"
    if binary.exists():
        return binary
    if not shutil.which("cmake"):
        print("  (llama-server skipped: cmake is not installed)")
        return None
    CACHE.mkdir(parents=True, exist_ok=True)
    work = CACHE / "build-0.3.36"
    try:
        if not (work / "src").exists():
            subprocess.run([sys.executable, "-m", "pip", "download", "-q", SDIST, "--no-deps", "--no-binary", ":all:", "-d", str(work)], check=True)
            archive = next(work.glob("llama_cpp_python-*.tar.gz"))
            with tarfile.open(archive) as tar:
                tar.extractall(work / "src", filter="data")
        source = next((work / "src").glob("llama_cpp_python-*/vendor/llama.cpp"))
        print("  building llama-server from the sdist's llama.cpp (once; several minutes on 2 cores) ...", flush=True)
        # Portable CPU flags: a native build of these sources crashes on some AVX-512 machines.
        flags = ["-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_CURL=OFF", "-DGGML_NATIVE=OFF", "-DGGML_AVX2=ON", "-DGGML_FMA=ON",
                 "-DGGML_F16C=ON", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=ON",
                 "-DBUILD_SHARED_LIBS=OFF"]
        subprocess.run(["cmake", "-S", str(source), "-B", str(work / "build"), *flags], check=True, capture_output=True)
        subprocess.run(["cmake", "--build", str(work / "build"), "--target", "llama-server", f"-j{os.cpu_count() or 1}"],
                       check=True, capture_output=True)
        binary.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(work / "build" / "bin" / "llama-server", binary)
        return binary
    except (subprocess.CalledProcessError, StopIteration, OSError) as exc:
        print(f"  (llama-server skipped: it could not be built here: {exc})")
        return None


def wait_ready(url: str, proc: subprocess.Popen, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{what} did not start in {timeout} s")


def start_llama_server(binary: Path, port: int, threads: int, log: Path) -> subprocess.Popen:
    from longcat.engines.embedded import bundled_model_path

    cmd = [str(binary), "-m", str(bundled_model_path()), "--host", "127.0.0.1", "--port", str(port), "--parallel", "8",
           "-c", str(8192 * 8), "-t", str(threads), "--no-webui"]
    return subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT)


CORE_SCRIPT = """
import signal, sys, threading, xllamacpp
from longcat.engines.embedded import bundled_model_path
p = xllamacpp.CommonParams()
p.model.path = str(bundled_model_path())
p.n_parallel = 8; p.n_ctx = 8192 * 8; p.n_batch = p.n_ubatch = 128
p.cpuparams.n_threads = p.cpuparams_batch.n_threads = int(sys.argv[2])
p.verbosity = -1; p.hostnames = ["127.0.0.1"]; p.port = int(sys.argv[1])
server = xllamacpp.Server(p)
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
stop.wait()
"""


def start_core(port: int, threads: int, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", CORE_SCRIPT, str(port), str(threads)], stdout=log.open("w"), stderr=subprocess.STDOUT)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


# ------------------------------------------------------------------ prompt cache


def prompt_cache(server: Server, key_a: str, key_b: str) -> tuple[float, float, int]:
    """Seconds to the first token of turn two of a ~4,000-token conversation: from account A's
    cache, and for account B, whose identical request cannot use A's cache."""
    filler = " ".join(f"Fact {i}: the lighthouse lamp number {i} was lit at dusk." for i in range(260))
    turn1 = [{"role": "system", "content": "You answer questions about the notes."}, {"role": "user", "content": filler + "\nSummarise."}]

    def ttft(key: str, messages: list) -> tuple[float, dict]:
        body = {"model": MODEL, "messages": messages, "max_tokens": 4, "stream": True, "stream_options": {"include_usage": True}}
        started = time.perf_counter()
        first, usage = None, {}
        with httpx.stream("POST", server.base_url + "/openai/v1/chat/completions", json=body,
                          headers={"Authorization": f"Bearer {key}"}, timeout=600) as r:
            r.raise_for_status()
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    chunk = json.loads(line[6:])
                    usage = chunk.get("usage") or usage
                    if chunk.get("choices") and chunk["choices"][0]["delta"].get("content") is not None:
                        first = first or time.perf_counter()
        return (first or time.perf_counter()) - started, usage

    ttft(key_a, turn1)
    turn2 = turn1 + [{"role": "assistant", "content": "The notes list lamps."}, {"role": "user", "content": "Which lamp was first?"}]
    cached, usage = ttft(key_a, turn2)
    fresh, _ = ttft(key_b, turn2)
    return cached, fresh, usage.get("prompt_tokens", 0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--streams", default="1,4,8")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--skip-llama-server", action="store_true")
    args = parser.parse_args()
    streams = [int(s) for s in args.streams.split(",")]
    threads = os.cpu_count() or 1
    # name -> (url, headers, model); all run at once, idle between their turns.
    targets: dict[str, tuple[str, dict, str]] = {}
    procs: list[subprocess.Popen] = []
    server: Server | None = None

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        try:
            binary = None if args.skip_llama_server else build_llama_server()
            if binary is not None:
                port = free_port()
                proc = start_llama_server(binary, port, threads, tmp_path / "llama-server.log")
                procs.append(proc)
                try:
                    wait_ready(f"http://127.0.0.1:{port}", proc, "llama-server")
                    targets["llama-server --parallel 8"] = (f"http://127.0.0.1:{port}/v1/chat/completions", {}, "smollm2")
                except RuntimeError as exc:
                    print(f"  (llama-server skipped: {exc}; see its log below)\n{(tmp_path / 'llama-server.log').read_text()[-2000:]}")

            port = free_port()
            proc = start_core(port, threads, tmp_path / "core.log")
            procs.append(proc)
            wait_ready(f"http://127.0.0.1:{port}", proc, "xllamacpp")
            targets["llama.cpp core alone (xllamacpp, 8 slots)"] = (f"http://127.0.0.1:{port}/v1/chat/completions", {}, "smollm2")

            config = write_config(tmp_path / "config.toml", f'[[models]]\nid = "{MODEL}"\nengine = "embedded"\n')
            server = Server(tmp_path / "data", config, free_port()).start()
            key = server.new_key("bench@example.com")
            auth = {"Authorization": f"Bearer {key}"}
            detail = httpx.get(server.base_url + f"/openai/v1/models/{MODEL}", headers=auth).json()
            slots = (detail.get("engine") or detail.get("serving") or {}).get("slots", "?")
            targets[f"platform HTTP API ({slots} slots)"] = (server.base_url + "/openai/v1/chat/completions", auth, MODEL)

            # Rounds of every cell for every target in turn, so a slow spell of the machine falls
            # on all of them alike; each cell is the median round.
            for url, headers, model in targets.values():
                warm_up(url, headers, model, max(streams), args.tokens)
            rounds: dict[str, dict[int, list[Run]]] = {name: {n: [] for n in streams} for name in targets}
            names = list(targets)
            for r in range(args.rounds):
                order = names[r % len(names):] + names[: r % len(names)]  # no target always first
                for n in streams:
                    for name in order:
                        url, headers, model = targets[name]
                        run = run_once(url, headers, model, n, args.tokens, tag=f"({r + 1}.{n}) ")
                        rounds[name][n].append(run)
                print(f"  round {r + 1} of {args.rounds} done", flush=True)
            results = {name: {n: median_run(runs) for n, runs in cells.items()} for name, cells in rounds.items()}

            for p in procs:  # the prompt cache below runs on idle cores
                stop(p)
            cached, fresh, prompt = prompt_cache(server, key, server.new_key("bench-other@example.com"))
        finally:
            for p in procs:
                stop(p)
            if server is not None:
                server.stop()

    base_name = next(iter(results))
    base = results[base_name]
    print(f"\nengine benchmark: SmolLM2-135M-Instruct Q4_1, {threads} threads, {args.tokens} tokens per stream (ignore_eos), "
          f"median of {args.rounds} interleaved rounds")
    print(f"  ratios against: {base_name}")
    print(f"  {'':44s}" + "".join(f"{f'{n} stream' + ('s' if n > 1 else ''):>28s}" for n in streams))
    for name, runs in results.items():
        cells = "".join(
            f"{runs[n].rate:8.1f} tok/s {runs[n].rate / base[n].rate:4.2f}x {runs[n].ttft_max:5.2f}s" for n in streams
        )
        print(f"  {name:44s}{cells}")
    print("  (each cell: aggregate tokens/s, ratio to the baseline, longest time to first token)")
    spread = {name: {n: (min(r.rate for r in rs), max(r.rate for r in rs)) for n, rs in cells.items()} for name, cells in rounds.items()}
    for name, cells in spread.items():
        print(f"  {name:44s}" + "".join(f"{f'range {lo:.0f}-{hi:.0f}':>28s}" for lo, hi in cells.values()))
    print(f"\nprompt cache: second turn of a {prompt:,}-token conversation, time to first token")
    print(f"  cached prefix (same account): {cached:6.2f} s   computed afresh (another account): {fresh:6.2f} s   "
          f"speed-up {fresh / cached:5.1f}x (goal >= 5x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
