"""llama.cpp's own HTTP server (the code of `llama-server`) serving the bundled SmolLM2 GGUF, as a
process of its own, for the `openai_compat` tests and `bench/upstream.py`.

    python -m tests.support.llamacpp_server --port 8080 [--parallel 1] [--ctx 8192] [--jinja]
        [--threads 2] [--alias smollm2] [--model path.gguf] [--verbose]

It runs through `xllamacpp` (a prebuilt wheel of llama.cpp's server core; `Server(params)` with
a host and a port starts the same HTTP routes as `llama-server`: `/v1/chat/completions`,
`/v1/completions`, `/v1/models`, `/health`, `/tokenize`, `/apply-template`, `/slots`, …), so
no compiler is needed. It prints `listening on http://…` once it serves, then runs until
SIGTERM or SIGINT. `--ctx` is the whole KV cache, shared by the `--parallel` slots (as
`llama-server --ctx-size`): each slot gets ctx / parallel tokens.

`LlamaCppServer` starts one from a test and waits until `/health` says it is ready.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def serve(args: argparse.Namespace) -> int:
    import xllamacpp

    if args.model:
        model = args.model
    else:
        from longcat.engines.embedded import bundled_model_path

        model = str(bundled_model_path())
    params = xllamacpp.CommonParams()
    params.model.path = model
    params.n_parallel = args.parallel
    params.n_ctx = args.ctx
    params.cpuparams.n_threads = args.threads
    params.cpuparams_batch.n_threads = args.threads
    params.use_jinja = args.jinja
    params.verbosity = 1 if args.verbose else -1
    params.hostnames = ["127.0.0.1"]  # loopback only
    params.port = args.port
    params.ui = False
    if args.alias:
        params.model_alias = {args.alias}

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    server = xllamacpp.Server(params)
    address = server.listening_address
    print(f"listening on {address if '://' in address else 'http://' + address}", flush=True)
    stop.wait()
    print("stopping", flush=True)
    del server
    # The server core's threads need not be joined: the process is ending.
    os._exit(0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--parallel", type=int, default=1, help="slots (llama-server --parallel)")
    parser.add_argument("--ctx", type=int, default=8192, help="KV cache tokens, shared by the slots (--ctx-size)")
    parser.add_argument("--jinja", action="store_true", help="the model's own Jinja chat template (native tool calls)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--alias", default="", help="the model name /v1/models reports (--alias)")
    parser.add_argument("--model", default="", help="a GGUF file (default: the bundled SmolLM2-135M-Instruct)")
    parser.add_argument("--verbose", action="store_true")
    return serve(parser.parse_args(argv))


class LlamaCppServer:
    """`python -m tests.support.llamacpp_server` on a loopback port, for a test to start, ask,
    kill and restart."""

    def __init__(self, log_path: Path, port: int, *options: str) -> None:
        self.port = port
        self.log_path = log_path
        self.options = options
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120) -> LlamaCppServer:
        import httpx

        cmd = [sys.executable, "-m", "tests.support.llamacpp_server", "--port", str(self.port), *self.options]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
        with open(self.log_path, "a") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the llama.cpp server exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"the llama.cpp server did not start in {timeout} s:\n{self.log()[-3000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL, at once: the server dies mid-reply."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def post(self, path: str, body: dict[str, Any], timeout: float = 120) -> dict[str, Any]:
        import httpx

        r = httpx.post(self.url + path, json=body, timeout=timeout)
        r.raise_for_status()
        return r.json()

    def chat(self, **body: Any) -> dict[str, Any]:
        """A chat completion asked directly, not streamed: the server's own text and usage."""
        return self.post("/v1/chat/completions", {**body, "stream": False})


if __name__ == "__main__":
    sys.exit(main())
