"""`longcat serve --workers N`: a parent process and N workers serving one listening socket.

The parent binds the socket, migrates the database and makes the first-start account (cli.py,
before it gets here), then starts the workers, each a fresh interpreter running the whole app on its own event loop. It serves nothing itself: it restarts a worker that dies (with
backoff), and on SIGTERM / SIGINT it drains them all and exits 0.

Why one socket shared by every worker, rather than one socket per worker with SO_REUSEPORT:
with SO_REUSEPORT the kernel hashes each new connection to one worker's own accept queue, and
when that worker stops (to drain, or because it died) the connections waiting in its queue are
reset, although other workers could have served them. With one shared socket there is one accept
queue: a draining or dead worker simply stops taking from it and the others carry on, so
restarting one worker loses no connection; and once every process has closed the socket, new
connections are refused at once instead of waiting in a queue nobody reads.

What each worker keeps to itself is listed in the README ("Running several processes"): with
Redis, rate limits, concurrency slots, quotas, revocations and the replay memories are shared.
"""

from __future__ import annotations

import ctypes
import logging
import os
import pickle
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

from longcat.config import ConfigError, Settings

log = logging.getLogger("longcat.supervisor")

# A worker that keeps dying is restarted after 0.5 s, 1 s, 2 s … at most this long.
MAX_BACKOFF = 30.0
FIRST_BACKOFF = 0.5
# A worker that lived this long before dying was healthy: its replacement starts without delay.
HEALTHY_AFTER = 30.0
# How long the first workers may take to start (load the catalog, connect to the database).
START_TIMEOUT = 120.0
# Past the workers' own deadline (shutdown_grace, then uvicorn's last resort 3 s later).
KILL_MARGIN = 10.0
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def check_workers(settings: Settings) -> None:
    """Refuse, in one line, a worker count this configuration cannot serve correctly."""
    n = settings.workers
    if n <= 1:
        return
    if not settings.redis_url:
        raise ConfigError(
            f"workers = {n} needs redis_url: without Redis each process counts rate limits, concurrency "
            f"and quota reservations on its own, so {n} workers would allow {n} times every limit"
        )
    embedded = [m.id for m in settings.models if m.engine == "embedded"]
    if embedded:
        raise ConfigError(
            f"workers = {n} cannot serve the embedded model {', '.join(repr(i) for i in embedded)}: every worker "
            f"would load it again ({n} copies of its weights and KV cache, {n} sets of threads on the same cores); "
            "run it in one `longcat serve` (workers = 1) and attach that to the workers as an openai_compat "
            "model (base_url = \"http://127.0.0.1:<port>/openai/v1\")"
        )


def bind(host: str, port: int) -> socket.socket:
    """The listening socket every worker accepts from."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def prepare_metrics_dir(settings: Settings) -> None:
    """Prometheus' multiprocess mode reads every process's samples from one directory, which
    must start empty; an operator's own choice of directory is left as it is."""
    if os.environ.get(MULTIPROC_ENV):
        return
    path = (settings.data_dir / "metrics-multiproc").resolve()
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    os.environ[MULTIPROC_ENV] = str(path)  # inherited by every worker


def mark_dead(pid: int) -> None:
    """Let Prometheus' multiprocess collector forget a worker's live gauges (when it is installed)."""
    try:
        from prometheus_client import multiprocess
    except ImportError:
        return
    try:
        multiprocess.mark_process_dead(pid)
    except Exception as exc:  # noqa: BLE001 - metrics must never stop the supervisor
        log.debug("mark_process_dead(%d) failed: %s", pid, exc)


# ------------------------------------------------------------------------------------ workers

# The worker's command: its settings, the socket's and the readiness pipe's file descriptors
# arrive pickled on standard input (with the parent's sys.path, so it imports the same code).
_WORKER_CODE = (
    "import pickle, sys; job = pickle.load(sys.stdin.buffer); sys.path[:] = job['path']; "
    "from longcat.supervisor import worker_main; worker_main(job)"
)


def _die_with_parent(parent: int) -> None:
    """Linux: a worker gets SIGTERM (and drains) if the parent is killed outright."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # it died before the call
        os.kill(os.getpid(), signal.SIGTERM)


def worker_main(job: dict[str, Any]) -> None:
    """One worker: the whole app on its own event loop, accepting from the shared socket."""
    from longcat.app import create_app
    from longcat.cli import configure_logging
    from longcat.serving import build_server

    _die_with_parent(job["parent"])
    settings: Settings = job["settings"]
    configure_logging(settings.log_level, settings.log_format, process_ids=True)
    sock = socket.socket(fileno=job["socket_fd"])
    ready_fd = job["ready_fd"]

    def started() -> None:
        log.info("worker %d accepting connections", job["number"])
        os.write(ready_fd, b"r")
        os.close(ready_fd)

    app = create_app(settings)
    server = build_server(
        app,
        settings,
        on_exit=lambda: app.state.gateway.request_shutdown(settings.shutdown_grace),
        on_started=started,
        # Ctrl-C reaches every process of the terminal's group; the parent answers it for all
        # of them (with SIGTERM), so a worker's drain is never cut short by a second signal.
        ignore_sigint=True,
    )
    server.run(sockets=[sock])


@dataclass
class _Slot:
    number: int
    process: subprocess.Popen | None = None
    ready_fd: int | None = None  # the read end of its readiness pipe, until it is ready or gone
    started_at: float = 0.0
    ready: bool = False
    failures: int = 0  # deaths in a row, each soon after its start
    restart_at: float | None = None  # a replacement is due then

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


class Supervisor:
    def __init__(self, settings: Settings, sock: socket.socket) -> None:
        self.settings = settings
        self.sock = sock
        self.slots = [_Slot(i + 1) for i in range(settings.workers)]
        self.stopping: int | None = None  # the signal that asked for the stop
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)

    # ------------------------------------------------------------------ signals

    def _on_signal(self, signum: int, _frame: Any) -> None:
        if self.stopping is None:
            self.stopping = signum
        else:
            log.info("already draining (up to %g s); a second signal does not cut it short", self.settings.shutdown_grace)

    def _install_signals(self) -> None:
        # Every signal writes a byte to the wake-up socket, so `_wait` returns at once: a stop,
        # or a worker's exit (SIGCHLD).
        signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        signal.signal(signal.SIGCHLD, lambda *_: None)

    def _wait(self, timeout: float) -> None:
        fds = [self._wake_r.fileno()] + [s.ready_fd for s in self.slots if s.ready_fd is not None]
        try:
            select.select(fds, [], [], max(0.0, timeout))
        except InterruptedError:
            pass
        try:
            while self._wake_r.recv(512):
                pass
        except (BlockingIOError, InterruptedError):
            pass
        for slot in self.slots:
            self._check_ready(slot)

    # ------------------------------------------------------------------ workers

    def _spawn(self, slot: _Slot) -> None:
        ready_r, ready_w = os.pipe()
        os.set_blocking(ready_r, False)
        job = {
            "settings": self.settings,
            "socket_fd": self.sock.fileno(),
            "ready_fd": ready_w,
            "parent": os.getpid(),
            "number": slot.number,
            "path": list(sys.path),
        }
        slot.process = subprocess.Popen(
            [sys.executable, "-c", _WORKER_CODE], stdin=subprocess.PIPE, pass_fds=(self.sock.fileno(), ready_w)
        )
        os.close(ready_w)
        assert slot.process.stdin is not None
        slot.process.stdin.write(pickle.dumps(job))
        slot.process.stdin.close()
        slot.ready_fd = ready_r
        slot.ready = False
        slot.started_at = time.monotonic()
        slot.restart_at = None
        log.info("worker %d starting (pid %d)", slot.number, slot.process.pid)

    def _check_ready(self, slot: _Slot) -> None:
        if slot.ready_fd is None:
            return
        try:
            got = os.read(slot.ready_fd, 16)
        except BlockingIOError:
            return
        os.close(slot.ready_fd)
        slot.ready_fd = None
        if got:  # else: it closed the pipe by dying before it was ready
            slot.ready = True
            if slot.failures:
                log.info("worker %d (pid %d) is serving again", slot.number, slot.process.pid)

    def _reap(self, slot: _Slot) -> None:
        """A worker exited on its own: log it, and schedule its replacement with backoff."""
        proc = slot.process
        code = proc.wait()
        mark_dead(proc.pid)
        if slot.ready_fd is not None:
            os.close(slot.ready_fd)
            slot.ready_fd = None
        how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
        lived = time.monotonic() - slot.started_at
        slot.failures = 1 if lived >= HEALTHY_AFTER else slot.failures + 1
        delay = min(MAX_BACKOFF, FIRST_BACKOFF * 2 ** (slot.failures - 1))
        log.warning("worker %d (pid %d) %s after %.1f s; restarting it in %.1f s", slot.number, proc.pid, how, lived, delay)
        slot.process = None
        slot.restart_at = time.monotonic() + delay

    # ------------------------------------------------------------------ the loop

    def run(self) -> int:
        self._install_signals()
        try:
            for slot in self.slots:
                self._spawn(slot)
            if not self._start_all():
                self._stop_all()
                return 1
            if self.stopping is None:
                log.info("%d workers serving http://%s:%d (pids %s)", len(self.slots), self.settings.host, self.settings.port,
                         ", ".join(str(s.process.pid) for s in self.slots if s.process))
            while self.stopping is None:
                due = [s.restart_at for s in self.slots if s.restart_at is not None]
                self._wait(min([1.0] + [t - time.monotonic() for t in due]))
                if self.stopping is not None:
                    break
                for slot in self.slots:
                    if slot.process is not None and slot.process.poll() is not None:
                        self._reap(slot)
                    if slot.process is None and slot.restart_at is not None and slot.restart_at <= time.monotonic():
                        self._spawn(slot)
            return self._stop_all()
        finally:
            signal.set_wakeup_fd(-1)

    def _start_all(self) -> bool:
        """Wait for every first worker to be ready; False if one fails (the log says why)."""
        deadline = time.monotonic() + START_TIMEOUT
        while self.stopping is None:
            failed = [s for s in self.slots if s.process.poll() is not None]
            if failed:
                s = failed[0]
                log.error("worker %d (pid %d) failed to start (exit status %s); stopping", s.number, s.process.pid,
                          s.process.returncode)
                return False
            if all(s.ready for s in self.slots):
                return True
            if time.monotonic() > deadline:
                log.error("the workers did not start within %.0f s; stopping", START_TIMEOUT)
                return False
            self._wait(0.5)
        return True  # a signal came while starting: run() goes straight to the drain

    def _stop_all(self) -> int:
        """Drain: stop accepting, let every worker finish what it serves, then exit 0."""
        grace = self.settings.shutdown_grace
        live = [s for s in self.slots if s.running]
        if self.stopping is not None:
            log.info("received %s: draining %d worker(s) (in-flight requests get %g s)",
                     signal.Signals(self.stopping).name, len(live), grace)
        # The parent's copy of the socket goes first; each worker closes its own as it starts to
        # drain, and once the last one has, new connections are refused.
        self.sock.close()
        for slot in live:
            try:
                slot.process.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace + KILL_MARGIN
        while any(s.running for s in self.slots) and time.monotonic() < deadline:
            self._wait(min(1.0, deadline - time.monotonic()))
        clean = True
        for slot in self.slots:
            proc = slot.process
            if proc is None:
                continue
            if proc.poll() is None:
                log.error("worker %d (pid %d) did not stop within %.0f s; killing it", slot.number, proc.pid, grace + KILL_MARGIN)
                proc.kill()
            code = proc.wait()
            mark_dead(proc.pid)
            if slot.ready_fd is not None:
                os.close(slot.ready_fd)
                slot.ready_fd = None
            if code != 0:
                clean = False
                log.warning("worker %d (pid %d) ended with status %s", slot.number, proc.pid, code)
        log.info("all workers stopped")
        return 0 if clean else 1


def serve_workers(settings: Settings) -> int:
    """Bind, start the workers and supervise them until a signal; returns the exit status."""
    sock = bind(settings.host, settings.port)
    prepare_metrics_dir(settings)
    settings.resolved_secret_key()  # made once here, not raced for by the workers
    return Supervisor(settings, sock).run()
