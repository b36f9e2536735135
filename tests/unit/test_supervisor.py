"""The supervisor of `worker --processes / --gpus` with stand-in children (tests.support.fake_worker):
real processes, real signals, real HTTP; the real worker under it is in
tests/integration/test_worker_processes.py."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from services.tools.supervisor import (
    EXIT_FATAL,
    EXIT_GAVE_UP,
    ChildSpec,
    RestartPolicy,
    Supervisor,
    SupervisorHealth,
    child_environments,
)

ROOT = Path(__file__).resolve().parents[2]
FAST = RestartPolicy(initial_backoff_seconds=0.01, max_backoff_seconds=0.05, min_uptime_seconds=5.0)


def children(markers: Path, *kinds: str) -> list[ChildSpec]:
    argv = (sys.executable, "-m", "tests.support.fake_worker")
    return [
        ChildSpec(i, (*argv, kind, str(markers)), {"AUDIOGUARD_WORKER_ID": f"w-{i}", "PYTHONPATH": str(ROOT)})
        for i, kind in enumerate(kinds)
    ]


def started(markers: Path, index: int) -> list[Path]:
    return sorted(markers.glob(f"start-{index}-*"))


def wait_until(predicate, timeout: float = 30.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


class Running:
    """supervisor.run(stop) on a thread; `result` once it returned."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor
        self.stop = threading.Event()
        self.result: int | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self.result = self.supervisor.run(self.stop)

    def finish(self, timeout: float = 30.0) -> int | None:
        self.thread.join(timeout)
        return self.result


def test_sigterm_is_forwarded_to_every_child_and_their_drain_is_awaited(tmp_path: Path) -> None:
    running = Running(Supervisor(children(tmp_path, "drain", "drain"), shutdown_seconds=20, policy=FAST))
    assert wait_until(lambda: started(tmp_path, 0) and started(tmp_path, 1))
    pids = running.supervisor.pids()
    running.stop.set()
    assert running.finish() == 0
    for index in (0, 1):
        assert (tmp_path / f"term-{index}-{pids[index]}").exists()
    assert running.supervisor.restarts() == {0: 0, 1: 0}


def test_a_child_that_dies_is_restarted_and_the_others_keep_running(tmp_path: Path) -> None:
    running = Running(Supervisor(children(tmp_path, "drain", "crash_once"), shutdown_seconds=20, policy=FAST))
    assert wait_until(lambda: len(started(tmp_path, 1)) == 2)
    assert len(started(tmp_path, 0)) == 1, "a sibling's crash must not restart the others"
    assert wait_until(lambda: running.supervisor.pids()[1] is not None)
    running.stop.set()
    assert running.finish() == 0
    assert running.supervisor.restarts() == {0: 0, 1: 1}


def test_children_that_keep_dying_at_start_up_end_the_run_with_a_clear_code(tmp_path: Path) -> None:
    policy = RestartPolicy(
        initial_backoff_seconds=0.01, max_backoff_seconds=0.02, min_uptime_seconds=30, max_startup_failures=3
    )
    running = Running(Supervisor(children(tmp_path, "drain", "crash"), shutdown_seconds=20, policy=policy))
    assert running.finish() == EXIT_GAVE_UP
    assert len(started(tmp_path, 1)) == 4, "the first start and three restarts, then no more"
    (first,) = started(tmp_path, 0)
    assert (tmp_path / f"term-0-{first.name.rsplit('-', 1)[1]}").exists(), "the healthy child was drained"


def test_a_fatal_child_stops_everything_with_the_fatal_code(tmp_path: Path) -> None:
    running = Running(Supervisor(children(tmp_path, "drain", "fatal"), shutdown_seconds=20, policy=FAST))
    assert running.finish() == EXIT_FATAL
    assert len(started(tmp_path, 1)) == 1, "a fatal error is not restarted"
    assert list(tmp_path.glob("term-0-*")), "the other child was told to drain"


def test_a_child_still_running_at_the_shutdown_deadline_is_killed(tmp_path: Path) -> None:
    running = Running(Supervisor(children(tmp_path, "drain", "stubborn"), shutdown_seconds=1.0, policy=FAST))
    assert wait_until(lambda: started(tmp_path, 0) and started(tmp_path, 1))
    running.stop.set()
    assert running.finish() == 1
    assert list(tmp_path.glob("term-1-*")), "it was asked first"
    assert running.supervisor.pids() == {0: None, 1: None}


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_the_supervisor_serves_the_pods_probes_and_every_childs_metrics(tmp_path: Path) -> None:
    supervisor = Supervisor(
        children(tmp_path, "drain", "drain"), shutdown_seconds=20, policy=FAST, with_health=True
    )
    health = SupervisorHealth(supervisor)
    with health.serve(0, host="127.0.0.1") as server:
        url = f"http://127.0.0.1:{server.port}"
        assert _get(url + "/readyz")[0] == 503, "no child is up yet"
        running = Running(supervisor)
        try:
            assert wait_until(lambda: _get(url + "/readyz")[0] == 200), _get(url + "/readyz")
            assert _get(url + "/healthz")[0] == 200
            status, text = _get(url + "/metrics")
            assert status == 200
        finally:
            running.stop.set()
            assert running.finish() == 0
        assert _get(url + "/readyz")[0] == 503
    families = {f.name: f for f in text_string_to_metric_families(text)}
    work = [s for s in families["fake_work"].samples if s.name == "fake_work_total"]
    assert {(s.labels["worker_process"], s.labels["worker_id"], s.value) for s in work} == {
        ("0", "w-0", 3.0),
        ("1", "w-1", 3.0),
    }
    assert "audioguard_worker_restarts" in families
    type_lines = [line for line in text.splitlines() if line.startswith("# TYPE ")]
    assert len(type_lines) == len(set(type_lines)), "one family per name: a valid exposition"
    # children listen on loopback ports of their own, never the pod's port
    assert all(port != server.port for _, port, _ in supervisor.child_ports())


def test_child_environments_split_the_cores_and_name_one_gpu_each() -> None:
    cpu = child_environments(2, worker_id="pod-a", cores=16)
    assert [e["AUDIOGUARD_WORKER_ID"] for e in cpu] == ["pod-a-0", "pod-a-1"]
    assert {e["AUDIOGUARD_TORCH_THREADS"] for e in cpu} == {"8"}
    assert all("CUDA_VISIBLE_DEVICES" not in e for e in cpu)
    gpu = child_environments(1, worker_id="pod-b", gpus=["2", "3"], cores=16)
    assert [(e["CUDA_VISIBLE_DEVICES"], e["AUDIOGUARD_DEVICE"]) for e in gpu] == [
        ("2", "cuda"),
        ("3", "cuda"),
    ]
    assert {e["AUDIOGUARD_TORCH_THREADS"] for e in gpu} == {"8"}
    assert {e["AUDIOGUARD_TORCH_THREADS"] for e in child_environments(3, worker_id="p", cores=2)} == {"1"}
    assert {e["AUDIOGUARD_TORCH_THREADS"] for e in child_environments(2, worker_id="p", torch_threads=5)} == {
        "5"
    }
    with pytest.raises(ValueError):
        child_environments(0, worker_id="p")


def _cuda() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # noqa: BLE001
        return False


@pytest.mark.skipif(_cuda(), reason="this machine has CUDA")
def test_gpus_all_without_cuda_is_a_clear_error() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "services.cli", "worker", "--gpus", "all"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert done.returncode == 2
    assert "--gpus all: no CUDA device is visible" in done.stderr


def test_several_readers_of_a_kinesis_stream_are_refused() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "services.cli", "worker", "--transport", "kinesis", "--processes", "2"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert done.returncode == 2 and "one reader per stream" in done.stderr


def test_with_kinesis_leases_several_readers_are_started() -> None:
    # the children start (and here stop at once on a missing model: exit 3, the fatal code)
    env = {**os.environ, "AUDIOGUARD_KINESIS__LEASES": "true", "AUDIOGUARD_MODEL_PATH": "/nonexistent/model"}
    done = subprocess.run(
        [sys.executable, "-m", "services.cli", "worker", "--transport", "kinesis", "--processes", "2"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env=env,
    )
    assert "one reader per stream" not in done.stderr
    assert done.returncode == 3, done.stderr[-2000:]
    assert done.stderr.count('"message": "child started"') == 2, done.stderr[-2000:]
