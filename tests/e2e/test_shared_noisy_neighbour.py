"""Noisy neighbour on the shared arrivals topic (one partition), real worker process, CI size.

Tenants A and B both publish signed arrivals to `audioguard.arrivals._shared`; A at 10x the
measured capacity, B at 2 a second. The numbers are printed beside the dedicated-topic ones
in docs/tenancy.md. A shared partition is one log: a paused tenant's records are held in
memory (bounded by `max_held_events`) so the others keep flowing; past the bound everyone
waits behind the flood. This run gives the hold room for the whole flood (MAX_HELD_EVENTS),
which is the configuration that keeps B isolated, and asserts what holds on a loaded
machine: A was over capacity, every one of B's events got its verdict during the flood, B
did not queue behind A's backlog, and nothing was dead-lettered (every signature checked).
"""

from __future__ import annotations

from services.tools.loadtest import noisy_neighbour


def test_a_flooding_tenant_on_the_shared_topic_does_not_hold_up_a_modest_one():
    result = noisy_neighbour(
        seconds=8.0,
        b_rate=2.0,
        flood_factor=10.0,
        clip_seconds=2.0,
        capacity_events=150,
        shared=True,
        worker_settings={"MAX_HELD_EVENTS": "200000", "MAX_HELD_BYTES": str(512 * 1024 * 1024)},
    )
    print(
        f"\nshared topic: capacity {result.capacity_per_second:.0f}/s, A at "
        f"{result.flood_rate_per_second:.0f}/s ({result.a_published} published, "
        f"{result.a_verdicts_during_flood} scored)\n"
        f"B alone p50 {result.b_alone_p50_ms:.0f} ms p99 {result.b_alone_p99_ms:.0f} ms; "
        f"with A p50 {result.b_with_a_p50_ms:.0f} ms p99 {result.b_with_a_p99_ms:.0f} ms; "
        f"p99 ratio {result.p99_ratio:.2f}; stats {result.worker_stats}"
    )
    assert result.worker_exit_code == 0
    assert not result.publish_errors
    assert result.worker_stats.get("dead_letters", 0) == 0
    backlog = result.a_published - result.a_verdicts_during_flood
    assert backlog > 3 * result.a_verdicts_during_flood
    assert result.b_with_a_count == result.b_alone_count > 0
    backlog_seconds = backlog / result.capacity_per_second
    assert result.b_with_a_p99_ms / 1000 < backlog_seconds / 5
