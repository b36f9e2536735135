"""SIGTERM, partition revoke and long batches on the real broker.

One rule for SIGTERM and revoke: take no new work, finish or abandon what is in flight under
one deadline (settings.drain_seconds), commit only what finished. A batch that takes longer
than max.poll.interval.ms never costs the worker its group membership: the runner keeps
polling while the scorer thread works.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from typing import Any

import numpy as np

from consumers.tenancy import kafka_topic
from consumers.transports.kafka import committed_offsets
from services.settings import KafkaSettings
from services.tools.worker import build_worker
from tests.integration.test_circuit_breaker import worker_env
from tests.support.pipeline import RunningWorker, make_settings, provision, publish_clips, verdicts_by_key


class SlowDetector:
    """The real detector; scoring a batch takes at least `seconds` longer (a slow GPU)."""

    def __init__(self, detector: Any, seconds: float, batches: int = 10_000) -> None:
        self._detector = detector
        self.seconds = seconds
        self.batches = batches
        self.meta = detector.meta
        self.calls = 0

    def windows(self, samples: np.ndarray, rate: int) -> np.ndarray:
        return self._detector.windows(samples, rate)  # type: ignore[no-any-return]

    def speech(self, windows: np.ndarray) -> Any:
        return self._detector.speech(windows)

    def decide(self, scores: np.ndarray, speech: Any = None, duration_seconds: float | None = None) -> Any:
        return self._detector.decide(scores, speech, duration_seconds)

    def score_windows(self, windows: np.ndarray) -> np.ndarray:
        self.calls += 1
        if self.calls <= self.batches:
            time.sleep(self.seconds)
        return self._detector.score_windows(windows)  # type: ignore[no-any-return]


def _committed(settings: Any, tenant: str) -> int:
    offsets = committed_offsets(settings.kafka, [kafka_topic("arrivals", tenant)])
    return sum(o for o in offsets.values() if o >= 0)


def test_sigterm_drains_in_flight_work_and_commits_only_what_finished(broker, tenants, audio_root):
    tenant = tenants[0]
    settings = make_settings(broker.bootstrap_servers, [tenant], audio_root)
    provision(settings, partitions=1)
    keys = publish_clips(settings, tenant, audio_root, 400, seconds=2.0)
    env = worker_env(settings, audio_root, AUDIOGUARD_DRAIN_SECONDS="8", AUDIOGUARD_BATCH__MAX_WINDOWS="2")
    log = audio_root / "worker.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "worker"],
        env=env,
        stderr=log.open("w"),
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and _committed(settings, tenant) == 0:
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        code = proc.wait(60)
        took = time.monotonic() - signalled
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 0, log.read_text()[-2000:]
    assert took < 8 + 15  # the drain deadline, plus closing the clients
    committed = _committed(settings, tenant)
    verdicts = verdicts_by_key(settings, tenant)
    # commit only what finished: every arrival below the committed offset has its verdict
    assert 0 < committed < len(keys)  # SIGTERM came mid-run
    assert set(keys[:committed]) <= set(verdicts)
    print(
        f"\nSIGTERM: exited 0 after {took:.1f}s; committed {committed}/{len(keys)}; verdicts {len(verdicts)}"
    )

    # the next worker of the group takes over from the committed offset; nothing is lost
    settings_next = settings.model_copy(update={"drain_seconds": 5.0})
    from services.detector import load_detector

    with RunningWorker(settings_next, load_detector(device="cpu")) as running:
        assert running.wait_for(
            lambda: running.worker.pipeline.stats.acked >= len(keys) - committed, timeout=120
        )
    verdicts = verdicts_by_key(settings, tenant)
    assert set(verdicts) == set(keys)


def test_a_batch_longer_than_max_poll_interval_keeps_the_group_membership(
    broker, detector, tenants, audio_root
):
    tenant = tenants[0]
    settings = make_settings(broker.bootstrap_servers, [tenant], audio_root)
    kafka = KafkaSettings(
        bootstrap_servers=broker.bootstrap_servers,
        group_id=settings.kafka.group_id,
        session_timeout_ms=6000,
        max_poll_interval_ms=6000,
    )
    settings = settings.model_copy(update={"kafka": kafka})
    provision(settings, partitions=1)
    keys = publish_clips(settings, tenant, audio_root, 4, seconds=1.0)
    slow = SlowDetector(detector, seconds=9.0, batches=1)  # one batch takes 1.5 x max.poll.interval.ms

    worker = build_worker(settings, detector=slow)
    with RunningWorker(settings, slow, worker) as running:
        assert running.wait_for(lambda: running.worker.pipeline.stats.acked >= len(keys), timeout=120)
    assert slow.calls >= 1
    assert worker.revocations == 0  # never kicked out of the group while the batch ran
    assert _committed(settings, tenant) == len(keys)
    assert set(verdicts_by_key(settings, tenant)) == set(keys)


def test_drain_deadline_abandons_unfinished_work_which_is_redelivered(broker, detector, tenants, audio_root):
    tenant = tenants[0]
    settings = make_settings(broker.bootstrap_servers, [tenant], audio_root)
    settings = settings.model_copy(update={"drain_seconds": 0.5})
    provision(settings, partitions=1)
    keys = publish_clips(settings, tenant, audio_root, 12, seconds=1.0)
    slow = SlowDetector(detector, seconds=3.0)

    worker = build_worker(settings, detector=slow)
    with RunningWorker(settings, slow, worker) as running:
        assert running.wait_for(lambda: slow.calls >= 1, timeout=90)
    stopped = worker.pipeline.stats
    committed = _committed(settings, tenant)
    assert committed <= stopped.acked < len(keys)  # what was abandoned was not committed

    with RunningWorker(settings, detector) as running:
        assert running.wait_for(
            lambda: running.worker.pipeline.stats.acked >= len(keys) - committed, timeout=90
        )
    verdicts = verdicts_by_key(settings, tenant)
    assert set(verdicts) == set(keys)


def test_partition_revoke_drains_then_hands_over(broker, detector, tenants, audio_root, tmp_path):
    store = f"sqlite:///{tmp_path / 'v.db'}"
    settings = make_settings(broker.bootstrap_servers, tenants[:1], audio_root, store_url=store)
    provision(settings, partitions=2)
    keys = publish_clips(settings, tenants[0], audio_root, 60, seconds=1.0)
    settings = settings.model_copy(update={"batch": settings.batch.model_copy(update={"max_windows": 4})})
    slow = SlowDetector(detector, seconds=1.0)

    first = build_worker(settings, detector=slow)
    with RunningWorker(settings, slow, first) as one:
        assert one.wait_for(lambda: first.pipeline.stats.acked >= 2, timeout=90)
        second = build_worker(settings, detector=detector)
        with RunningWorker(settings, detector, second) as two:
            assert two.wait_for(lambda: first.revocations >= 1, timeout=60)
            assert two.wait_for(lambda: _committed(settings, tenants[0]) >= len(keys), timeout=120), (
                first.pipeline.stats,
                second.pipeline.stats,
            )
    print(
        f"\nrevoke: first worker acked {first.pipeline.stats.acked}, second {second.pipeline.stats.acked}, "
        f"revocations {first.revocations}"
    )
    assert second.pipeline.stats.acked > 0  # the revoked partition was handed over
    verdicts = verdicts_by_key(settings, tenants[0])
    assert set(verdicts) == set(keys)
    # re-done work (if any) republished the stored verdict, never a different one
    assert all(len({(v["label"], v["score"]) for v in vs}) == 1 for vs in verdicts.values())
