"""`audioguard worker --processes N / --gpus all`: several worker processes under one supervisor.

Each child is a normal `audioguard worker` process: its own consumer-group member (or
subscriber), its own model, its own torch threads (cores / children unless
`torch_threads` is set), its own drain. The GIL and torch's one intra-op pool per process
are why: one process cannot keep two cores busy with the model while its loop, fetch
threads and scorer share one interpreter; two processes can.

The supervisor:

- starts the children (`ChildSpec`: index, argv, extra environment) and logs which child
  (index, pid) did what;
- restarts a child that died unexpectedly, with exponential backoff; a child that dies
  within `RestartPolicy.min_uptime_seconds` of its start counts as a start-up failure, and
  after `max_startup_failures` of them in a row the supervisor stops everything and exits
  `EXIT_GAVE_UP` (a config error must not crash-loop forever inside one pod);
- stops everything and exits 3 (`EXIT_FATAL`, the worker's own fatal code) when a child
  exits 3: a fatal error (bad config, tampered model, breaker tripped) is the
  orchestrator's to handle, as it is for a single worker;
- forwards SIGTERM / SIGINT to every child and waits for their drain under one deadline
  (`drain_seconds + close_seconds` + a margin); a child still running then is killed;
- optionally serves the pod-facing /healthz, /readyz and /metrics (`SupervisorHealth`):
  each child listens on a free loopback port of its own, the supervisor asks them and
  serves the union of their metrics with a `worker_process` label.

`visible_gpus()` lists the CUDA devices for `--gpus all` without importing torch here (a
subprocess asks torch, which honours CUDA_VISIBLE_DEVICES); each child then sees one.

This module must never import torch or an SDK, and never leave a child running when it
returns (children also get SIGTERM from the kernel if the supervisor dies, on Linux).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Final

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from services import metrics
from services.errors import FatalError
from services.health import HealthServer, Readiness, start_health_server

__all__ = [
    "EXIT_FATAL",
    "EXIT_GAVE_UP",
    "SHUTDOWN_MARGIN_SECONDS",
    "ChildSpec",
    "RestartPolicy",
    "Supervisor",
    "child_environments",
    "visible_gpus",
]

log = logging.getLogger(__name__)

#: a child's fatal error (services.cli.worker returns 3 for FatalError)
EXIT_FATAL: Final = 3
#: children kept dying at start-up; the supervisor gave up instead of crash-looping
EXIT_GAVE_UP: Final = 4
#: the supervisor's shutdown deadline is the children's own (drain_seconds + close_seconds) plus
#: this, for their start-up and exit; the pod's terminationGracePeriodSeconds must exceed the sum
SHUTDOWN_MARGIN_SECONDS: Final = 5.0
#: label that tells the children's series apart in the supervisor's /metrics
PROCESS_LABEL: Final = "worker_process"


@dataclass(frozen=True)
class RestartPolicy:
    """When a dead child is started again, and when the supervisor stops trying."""

    initial_backoff_seconds: float = 1.0
    max_backoff_seconds: float = 30.0
    #: a child that dies sooner than this after its start failed to start
    min_uptime_seconds: float = 30.0
    #: consecutive start-up failures of one child after which everything stops (EXIT_GAVE_UP)
    max_startup_failures: int = 5

    def backoff(self, failures: int) -> float:
        return float(min(self.max_backoff_seconds, self.initial_backoff_seconds * 2 ** max(0, failures - 1)))


@dataclass(frozen=True)
class ChildSpec:
    """One child: its index (in logs and the `worker_process` label), argv and extra env."""

    index: int
    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)


@dataclass
class _Child:
    spec: ChildSpec
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restart_at: float | None = 0.0  # None: not to be started again
    startup_failures: int = 0
    restarts: int = 0
    port: int | None = None
    exit_code: int | None = None


def _free_loopback_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _describe(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def _die_with_parent() -> None:
    # Linux: the kernel sends SIGTERM (a clean drain) to the child when the supervisor's
    # thread that started it dies, so a SIGKILLed supervisor leaves no orphan consuming.
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


class Supervisor:
    """Runs `children` until `stop` is set or a child's fate ends the run; see the module doc.

    `run()` blocks on the calling thread (call it from the main thread: the parent-death
    signal is tied to the thread that started a child) and returns the exit code: 0 when every
    child drained and exited 0 after the stop, EXIT_FATAL when a child exited fatally,
    EXIT_GAVE_UP after repeated start-up failures, 1 when a child failed its drain.
    """

    def __init__(
        self,
        children: Sequence[ChildSpec],
        *,
        shutdown_seconds: float,
        policy: RestartPolicy | None = None,
        with_health: bool = False,
        poll_seconds: float = 0.1,
    ) -> None:
        if not children:
            raise ValueError("a supervisor needs at least one child")
        self.policy = policy or RestartPolicy()
        self.shutdown_seconds = shutdown_seconds
        self.with_health = with_health
        self.poll_seconds = poll_seconds
        self._children = [_Child(spec) for spec in children]
        self._lock = threading.Lock()
        self.stopping = False
        self._deadline = float("inf")

    # -- what the health endpoint reads --------------------------------------------------
    def child_ports(self) -> list[tuple[int, int | None, bool]]:
        """(index, health port, process running) of every child."""
        with self._lock:
            return [
                (c.spec.index, c.port, c.proc is not None and c.proc.poll() is None) for c in self._children
            ]

    def pids(self) -> dict[int, int | None]:
        with self._lock:
            return {c.spec.index: (c.proc.pid if c.proc is not None else None) for c in self._children}

    def restarts(self) -> dict[int, int]:
        with self._lock:
            return {c.spec.index: c.restarts for c in self._children}

    # -- the loop --------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> int:
        result = 0
        try:
            while True:
                now = time.monotonic()
                if stop.is_set() and not self.stopping:
                    log.info("stopping: forwarding SIGTERM to every child")
                    self._begin_stop()
                for child in self._children:
                    code = self._reap(child)
                    if code is None:
                        continue
                    if self.stopping:
                        # -SIGTERM: told to stop before its handler was installed, before any work
                        if code not in (0, -signal.SIGTERM):
                            result = max(result, EXIT_FATAL if code == EXIT_FATAL else 1)
                        continue
                    outcome = self._on_unexpected_exit(child, code, now)
                    if outcome:
                        result = outcome
                        self._begin_stop()
                if self.stopping:
                    if all(c.proc is None for c in self._children):
                        return result
                    if now > self._deadline:
                        self._kill_remaining()
                        result = max(result, 1)
                else:
                    for child in self._children:
                        if child.proc is None and child.restart_at is not None and now >= child.restart_at:
                            self._start(child)
                stop.wait(self.poll_seconds)
        finally:
            self._kill_remaining()

    def _start(self, child: _Child) -> None:
        env = dict(os.environ)
        env.update(child.spec.env)
        if self.with_health:
            # a fresh port per start: a restarted child cannot trip over its predecessor's socket
            child.port = _free_loopback_port()
            env.update(AUDIOGUARD_METRICS_PORT=str(child.port), AUDIOGUARD_METRICS_HOST="127.0.0.1")
        proc = subprocess.Popen(
            list(child.spec.argv),
            env=env,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        with self._lock:
            child.proc, child.started_at, child.restart_at = proc, time.monotonic(), None
        log.info(
            "child started",
            extra={
                "child": child.spec.index,
                "pid": proc.pid,
                "restarts": child.restarts,
                "port": child.port,
            },
        )

    def _reap(self, child: _Child) -> int | None:
        if child.proc is None:
            return None
        code = child.proc.poll()
        if code is None:
            return None
        pid = child.proc.pid
        with self._lock:
            child.proc, child.exit_code = None, code
        level = logging.INFO if code == 0 and self.stopping else logging.WARNING
        log.log(
            level,
            "child exited",
            extra={"child": child.spec.index, "pid": pid, "code": code, "how": _describe(code)},
        )
        return code

    def _on_unexpected_exit(self, child: _Child, code: int, now: float) -> int:
        """Schedule the restart of a child that died on its own; or the code that ends the run."""
        if code == EXIT_FATAL:
            log.error(
                "child stopped on a fatal error; stopping every child",
                extra={"child": child.spec.index, "code": code},
            )
            return EXIT_FATAL
        if now - child.started_at < self.policy.min_uptime_seconds:
            child.startup_failures += 1
        else:
            child.startup_failures = 1  # ran a while: a new crash starts a new count
        if child.startup_failures > self.policy.max_startup_failures:
            log.error(
                "child keeps dying at start-up; giving up",
                extra={"child": child.spec.index, "failures": child.startup_failures - 1, "code": code},
            )
            return EXIT_GAVE_UP
        delay = self.policy.backoff(child.startup_failures)
        with self._lock:
            child.restart_at = now + delay
            child.restarts += 1
        metrics.WORKER_RESTARTS.labels(str(child.spec.index)).inc()
        log.warning(
            "restarting child",
            extra={"child": child.spec.index, "in_seconds": round(delay, 2), "how": _describe(code)},
        )
        return 0

    def _begin_stop(self) -> None:
        self.stopping = True
        self._deadline = time.monotonic() + self.shutdown_seconds
        for child in self._children:
            child.restart_at = None
            if child.proc is not None and child.proc.poll() is None:
                child.proc.send_signal(signal.SIGTERM)
                log.info("child told to drain", extra={"child": child.spec.index, "pid": child.proc.pid})

    def _kill_remaining(self) -> None:
        for child in self._children:
            proc = child.proc
            if proc is not None and proc.poll() is None:
                log.error(
                    "child still running at the shutdown deadline; killing it",
                    extra={"child": child.spec.index, "pid": proc.pid},
                )
                proc.kill()
                proc.wait()
                with self._lock:
                    child.proc, child.exit_code = None, proc.returncode


# -- the pod-facing health endpoint ---------------------------------------------------------
def _get(url: str, timeout: float) -> tuple[int, str] | None:
    """(status, body) of a GET, or None when nothing answered."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            return int(answer.status), answer.read().decode(errors="replace")
    except urllib.error.HTTPError as error:
        return int(error.code), error.read().decode(errors="replace")
    except OSError:
        return None


class _ChildrenCollector:
    """The union of every child's /metrics, each series labelled with its child's index;
    families of the same name are merged, so the exposition stays valid."""

    def __init__(self, supervisor: Supervisor, own: CollectorRegistry, timeout: float) -> None:
        self._supervisor = supervisor
        self._own = own
        self._timeout = timeout

    def collect(self) -> Iterator[Metric]:
        own_names = {m.name for m in self._own.collect()}
        families: dict[str, Metric] = {}
        for index, text in _ask_children(self._supervisor, "/metrics", self._timeout):
            if text is None or text[0] != 200:
                continue
            for family in text_string_to_metric_families(text[1]):
                if family.name in own_names:
                    continue
                merged = families.setdefault(
                    family.name, Metric(family.name, family.documentation, family.type)
                )
                for sample in family.samples:
                    labels = {**sample.labels, PROCESS_LABEL: str(index)}
                    merged.add_sample(sample.name, labels, sample.value, sample.timestamp)
        yield from families.values()


def _ask_children(
    supervisor: Supervisor, path: str, timeout: float
) -> list[tuple[int, tuple[int, str] | None]]:
    """Every running child's answer to GET `path` (None: no answer yet), asked in parallel."""
    targets = [(i, port) for i, port, running in supervisor.child_ports() if running and port is not None]
    if not targets:
        return []
    with ThreadPoolExecutor(max_workers=len(targets)) as pool:
        answers = pool.map(lambda t: _get(f"http://127.0.0.1:{t[1]}{path}", timeout), targets)
        return [(i, answer) for (i, _), answer in zip(targets, answers, strict=True)]


class SupervisorHealth:
    """Readiness and liveness of the whole pod, from the children's own probes.

    ready: every child is running and its /readyz says 200, and no stop has begun.
    alive: no running child's /healthz says 503 (a stuck loop). A child that does not answer
    yet is starting (its server comes up before the model loads) or dead, which the
    supervisor handles itself; neither is a reason for the kubelet to restart the pod.
    """

    def __init__(self, supervisor: Supervisor, timeout: float = 1.0) -> None:
        self._supervisor = supervisor
        self._timeout = timeout
        self._missing: list[str] = []

    def ready(self) -> bool:
        missing: list[str] = []
        if self._supervisor.stopping:
            missing.append("not_draining")
        running = {i for i, _port, alive in self._supervisor.child_ports() if alive}
        answers = dict(_ask_children(self._supervisor, "/readyz", self._timeout))
        for index, _port, _alive in self._supervisor.child_ports():
            answer = answers.get(index) if index in running else None
            if answer is None or answer[0] != 200:
                missing.append(f"process {index}")
        self._missing = missing
        return not missing

    def missing(self) -> list[str]:
        return list(self._missing)

    def alive(self) -> bool:
        return all(
            a is None or a[0] == 200 for _, a in _ask_children(self._supervisor, "/healthz", self._timeout)
        )

    def serve(self, port: int, host: str = "0.0.0.0") -> HealthServer:
        own = CollectorRegistry(auto_describe=True)
        own.register(metrics.WORKER_RESTARTS)
        registry = CollectorRegistry()
        registry.register(metrics.WORKER_RESTARTS)
        registry.register(_ChildrenCollector(self._supervisor, own, self._timeout))
        return start_health_server(
            port, host=host, ready=_ReadyView(self), alive=self.alive, registry=registry
        )


class _ReadyView(Readiness):
    """Lets services.health print "not ready: process 1, ..." for the supervisor too."""

    def __init__(self, health: SupervisorHealth) -> None:
        super().__init__()
        self._health = health

    def missing(self) -> list[str]:
        # services.health asks `ready()` first and `missing()` only for the 503 body
        return self._health.missing()

    def __call__(self) -> bool:
        return self._health.ready()


# -- children from the command line ---------------------------------------------------------
def visible_gpus(timeout: float = 60.0) -> list[str]:
    """The CUDA devices this process may use, as CUDA_VISIBLE_DEVICES entries.

    torch, asked in a subprocess (so this process never initialises CUDA or imports torch),
    counts what CUDA_VISIBLE_DEVICES already allows; when that variable is set its entries
    are returned, so a child's value names the same device the parent could see. Raises
    FatalError("no_gpu") when there is none.
    """
    probe = "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)"
    try:
        done = subprocess.run(
            [sys.executable, "-c", probe], capture_output=True, text=True, timeout=timeout, check=False
        )
        count = int(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else 0
    except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
        count = 0
    if count <= 0:
        raise FatalError("no_gpu", "--gpus all: no CUDA device is visible to this process (torch sees none)")
    listed = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return listed[:count] if listed else [str(i) for i in range(count)]


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def child_environments(
    count: int,
    *,
    worker_id: str,
    gpus: Iterable[str] | None = None,
    torch_threads: int | None = None,
    cores: int | None = None,
) -> list[dict[str, str]]:
    """The extra environment of each child: `count` per GPU (or `count` on the CPU), each with
    its own worker id (`<worker_id>-<index>`), torch threads (cores / children unless
    `torch_threads` is given) and, with GPUs, CUDA_VISIBLE_DEVICES naming one device."""
    if count < 1:
        raise ValueError("--processes must be at least 1")
    devices: list[str | None] = [*gpus] if gpus is not None else [None]
    total = count * len(devices)
    threads = torch_threads if torch_threads is not None else max(1, (cores or _cores()) // total)
    envs: list[dict[str, str]] = []
    for device in devices:
        for _ in range(count):
            env = {
                "AUDIOGUARD_WORKER_ID": f"{worker_id}-{len(envs)}",
                "AUDIOGUARD_TORCH_THREADS": str(threads),
            }
            if device is not None:
                env.update(CUDA_VISIBLE_DEVICES=device, AUDIOGUARD_DEVICE="cuda")
            envs.append(env)
    return envs
