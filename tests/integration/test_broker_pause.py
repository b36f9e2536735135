"""Broker outage: SIGSTOP the broker for 25 s in the middle of a run, then SIGCONT. The worker
does not crash, loses nothing, and recovers. A broker of its own (pausing the session's
broker would stall other tests' clients)."""

from __future__ import annotations

import time

from services.local.broker import EmbeddedBroker
from tests.support.pipeline import RunningWorker, make_settings, provision, publish_clips, verdicts_by_key

PAUSE_SECONDS = 25.0


def test_worker_survives_a_25s_broker_freeze_and_loses_nothing(detector, tenants, audio_root, tmp_path):
    with EmbeddedBroker(log_path=tmp_path / "tansu.log") as broker:
        settings = make_settings(broker.bootstrap_servers, tenants, audio_root)
        provision(settings)
        before = {
            t: publish_clips(settings, t, audio_root, 15, seed=20 * i, seconds=1.0)
            for i, t in enumerate(tenants)
        }
        total_before = sum(len(k) for k in before.values())

        with RunningWorker(settings, detector) as running:
            stats = running.worker.pipeline.stats
            assert running.wait_for(lambda: stats.verdicts >= 5, timeout=90)
            frozen_at = (stats.verdicts, stats.acked)
            broker.pause()
            paused = time.monotonic()
            try:
                # the worker keeps running (and keeps failing to reach the broker) all along
                assert not running.wait_for(lambda: False, timeout=PAUSE_SECONDS)
            finally:
                broker.resume()
            resumed = time.monotonic()
            assert running.thread.is_alive() and running.error is None

            after = {
                t: publish_clips(settings, t, audio_root, 5, seed=500 + 20 * i, seconds=1.0)
                for i, t in enumerate(tenants)
            }
            total = total_before + sum(len(k) for k in after.values())
            assert running.wait_for(lambda: stats.acked >= total, timeout=180), stats
            recovered = time.monotonic() - resumed

        print(
            f"\nbroker paused {resumed - paused:.1f}s "
            f"with {frozen_at[0]} verdicts / {frozen_at[1]} acked done; "
            f"all {total} arrivals acked {recovered:.1f}s after SIGCONT; "
            f"revocations during the run: {running.worker.revocations}"
        )
        for tenant in tenants:
            verdicts = verdicts_by_key(settings, tenant)
            assert set(verdicts) == set(before[tenant]) | set(after[tenant])  # nothing lost
            # re-deliveries after the outage republish the stored verdict, never a new one
            assert all(len({json_identity(v) for v in vs}) == 1 for vs in verdicts.values())


def json_identity(verdict: dict) -> tuple:  # type: ignore[type-arg]
    return (verdict["label"], verdict["score"], verdict["model"]["version"])
