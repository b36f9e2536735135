"""Probe a broker's consumer-group protocol: what moves when a second member joins, leaves
and comes back, under an assignment strategy, with or without static membership.

    .venv/bin/python scripts/kafka_group_probe.py cooperative-sticky          # embedded Tansu
    .venv/bin/python scripts/kafka_group_probe.py range --static
    .venv/bin/python scripts/kafka_group_probe.py cooperative-sticky --static --bootstrap-servers HOST:9092

Two consumers a and b share one topic of 4 partitions; a joins, b joins (20 s), b closes
(20 s), b joins again (20 s). Prints every assign / revoke / lost callback with the seconds
since start, then what each member holds at the end. On a broker that keeps the protocol,
cooperative-sticky moves only two partitions each time and a keeps the other two
throughout; with --static, b's restart within session.timeout.ms moves nothing. What Tansu
0.6 does instead is in docs/guarantees.md ("Rebalances"). `-v` adds librdkafka's cgrp debug
log (JoinGroup / SyncGroup responses with their generation ids).

A script, not part of the worker: it talks to the Kafka client directly.
"""

from __future__ import annotations

import argparse
import logging
import time
import uuid
from contextlib import ExitStack
from typing import Any

from confluent_kafka import Consumer
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("strategy", choices=["cooperative-sticky", "range", "roundrobin"])
    parser.add_argument("--static", action="store_true", help="group.instance.id a / b")
    parser.add_argument("--bootstrap-servers", help="this broker instead of an embedded Tansu")
    parser.add_argument("--phase", type=float, default=20.0, help="seconds per phase (20)")
    parser.add_argument("-v", action="store_true", help="librdkafka cgrp debug log")
    args = parser.parse_args()
    logging.basicConfig(level=logging.DEBUG if args.v else logging.WARNING, format="%(name)s %(message)s")
    with ExitStack() as stack:
        bootstrap = args.bootstrap_servers
        if bootstrap is None:
            from services.local.broker import EmbeddedBroker

            bootstrap = stack.enter_context(EmbeddedBroker()).bootstrap_servers
        topic, group = f"probe-{uuid.uuid4().hex[:8]}", f"probe-{uuid.uuid4().hex[:8]}"
        admin = AdminClient({"bootstrap.servers": bootstrap})
        admin.create_topics([NewTopic(topic, num_partitions=4, replication_factor=1)])[topic].result(30)
        cooperative = args.strategy == "cooperative-sticky"
        started = time.monotonic()
        events: list[tuple[float, str, str, list[int]]] = []

        def note(name: str, what: str, partitions: list[Any]) -> None:
            events.append((time.monotonic() - started, name, what, sorted(p.partition for p in partitions)))

        def give_up(c: Consumer, partitions: list[Any]) -> None:
            if cooperative:
                c.incremental_unassign(partitions)
            else:
                c.unassign()

        def member(name: str) -> Consumer:
            config: dict[str, Any] = {
                "bootstrap.servers": bootstrap,
                "group.id": group,
                "partition.assignment.strategy": args.strategy,
                "session.timeout.ms": 6000,
                "heartbeat.interval.ms": 1000,
            }
            if args.static:
                config["group.instance.id"] = name
            if args.v:
                config["debug"] = "cgrp"
            consumer = Consumer(config, logger=logging.getLogger(name))

            def on_assign(c: Consumer, partitions: list[Any]) -> None:
                note(name, "assign", partitions)
                if cooperative:
                    c.incremental_assign(partitions)
                else:
                    c.assign(partitions)

            def on_revoke(c: Consumer, partitions: list[Any]) -> None:
                note(name, "revoke", partitions)
                give_up(c, partitions)

            def on_lost(c: Consumer, partitions: list[Any]) -> None:
                note(name, "lost", partitions)
                give_up(c, partitions)

            consumer.subscribe([topic], on_assign=on_assign, on_revoke=on_revoke, on_lost=on_lost)
            return consumer

        members = {"a": member("a")}

        def spin(seconds: float) -> None:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                for consumer in members.values():
                    consumer.poll(0.05)

        def holdings() -> None:
            for name, consumer in members.items():
                note(name, "holds", consumer.assignment())

        spin(args.phase / 2)
        members["b"] = member("b")
        spin(args.phase)
        holdings()
        members.pop("b").close()
        events.append((time.monotonic() - started, "b", "closed", []))
        spin(args.phase)
        holdings()
        members["b"] = member("b")
        spin(args.phase)
        holdings()
        for consumer in members.values():
            consumer.close()
        for at, name, what, partitions in events:
            print(f"{at:6.2f} s  {name}  {what:7s} {partitions}")


if __name__ == "__main__":
    main()
