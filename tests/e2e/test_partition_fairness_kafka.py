"""Fairness between the partitions of one tenant, with a real worker process on the embedded
broker (CI size; the full-size run is `audioguard loadtest partition-fairness`, docs/tenancy.md).

A backlog over two partitions of one tenant is published while the worker is stopped; the
worker then works it off. In fetch order one partition waited for the whole other one (its
part of the first half of the drain was 0); now each partition gets about its part from
the start. What is asserted holds on a loaded machine: no partition is left out of the
first half of the drain, and each one's longest wait is a fraction of the drain.
"""

from __future__ import annotations

from services.tools.loadtest import partition_fairness


def test_a_backlog_on_one_tenants_partitions_drains_on_all_of_them_together():
    # 3,000: long enough that the drain measures steady-state fairness; with 800 an unloaded
    # worker drained in 4.5 s and the first fetch of one partition (2.4 s late) was half of it
    result = partition_fairness(backlog=3000, partitions=2, clip_seconds=2.0)
    print(
        f"\nbacklog {result.backlog} {result.per_partition}, drained in {result.drain_seconds:.1f} s; "
        f"longest waits {result.longest_wait_s}; least first-half share {result.min_first_half_share:.2f}"
    )
    assert result.worker_exit_code == 0
    assert not result.publish_errors
    assert all(n > 0 for n in result.per_partition.values())
    # in fetch order this was 0.00: one partition got nothing until the other was drained
    assert result.min_first_half_share > 0.5
    assert max(result.longest_wait_s.values()) < result.drain_seconds / 2
