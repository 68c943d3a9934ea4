"""`raftmq bench kafka`: the Kafka wire-protocol listener against the gRPC path, in one run.

Produces `--messages` of `--message-bytes` through the library's `Writer` (as `bench
produce` does) and the same through confluent-kafka (librdkafka: idempotent, acks=all, 5 ms
linger) at the brokers' Kafka listener, each to a topic of its own with `--partitions`
partitions; then reads each topic back, through `Reader`s (as `bench consume`) and through
a confluent-kafka consumer assigned every partition. The consumer sets librdkafka's
`fetch.queue.backoff.ms` to 10: with the default 1000, a partition whose local queue holds
`queued.min.messages` (100,000) is not fetched again for a second, and the fetcher idles
while the application drains the queue, so the figure measured the client's pause, not
the listener (seen with `debug=fetch`: "Fetch backoff for 1000ms: Local: Queue full", the
queue empty before the next fetch; 139k msgs/s against 711k with 10 ms). `--runs`
alternates the two paths (gRPC, then Kafka) so that both see the same machine; the medians
and the Kafka/gRPC ratios are the figures (issue: within 20 %).

confluent-kafka is a test-time dependency (`pip install confluent-kafka`); without it the
scenario says so. `--kafka-bootstrap` defaults to `raftmq up`'s layout: the first
`--bootstrap` port + 400.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import statistics
import time
from typing import Any

from raftmq import wire
from raftmq.client.admin import Admin
from raftmq.errors import ErrorCode, RaftmqError

from . import consume, produce
from .common import CpuMeter, Result, brokers_of, timeout_ms_of

KAFKA_PORT_OFFSET = 400  # raftmq up: broker i's Kafka listener at B + 400 + i
# librdkafka's local queue; a full queue is waited out with poll().
QUEUE_MESSAGES_MAX = 1_000_000
POLL_EVERY_MESSAGES = 10_000
CONSUME_BATCH_MESSAGES = 10_000
CONSUME_WAIT_S = 1.0
# librdkafka's pause before fetching a partition whose local queue is full (default 1000).
FETCH_QUEUE_BACKOFF_MS = 10


def kafka_bootstrap(args: argparse.Namespace) -> str:
    if getattr(args, "kafka_bootstrap", None):
        return str(args.kafka_bootstrap)
    host, port = wire.parse_host_port(brokers_of(args)[0])
    return f"{host}:{port + KAFKA_PORT_OFFSET}"


def _confluent() -> Any:
    try:
        return importlib.import_module("confluent_kafka")
    except ImportError:
        raise RaftmqError(
            ErrorCode.INVALID_REQUEST,
            "bench kafka needs confluent-kafka: pip install confluent-kafka",
        ) from None


def _create(args: argparse.Namespace, topic: str) -> None:
    with Admin(brokers_of(args), timeout_ms=timeout_ms_of(args)) as admin:
        if topic not in admin.list_topics():
            admin.create_topic(
                topic, partitions=args.partitions, replication_factor=args.replication_factor
            )


def _kafka_produce(ck: Any, bootstrap: str, topic: str, count: int, size: int) -> float:
    producer = ck.Producer(
        {
            "bootstrap.servers": bootstrap,
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": 5,
            "queue.buffering.max.messages": QUEUE_MESSAGES_MAX,
            # A delivery report for the failures only: one Python callback per message
            # cost the client ~1 us each (the Writer completes a call, not a message).
            "delivery.report.only.error": True,
        }
    )
    value = b"x" * size
    failures: list[str] = []

    def delivered(error: Any, _message: Any) -> None:
        if error is not None:
            failures.append(str(error))

    started = time.perf_counter()
    # Bound: `count` messages; a full local queue is drained by poll() before going on.
    for i in range(count):
        while True:
            try:
                producer.produce(topic, value, callback=delivered)
                break
            except BufferError:
                producer.poll(0.01)
        if i % POLL_EVERY_MESSAGES == 0:
            producer.poll(0)
    left = producer.flush(120)
    elapsed = max(time.perf_counter() - started, 1e-9)
    if left or failures:
        raise RaftmqError(
            ErrorCode.REQUEST_TIMED_OUT,
            f"confluent-kafka: {left} not delivered, {len(failures)} failed {failures[:1]}",
        )
    return count / elapsed


def _kafka_consume(ck: Any, bootstrap: str, topic: str, partitions: int, count: int) -> float:
    consumer = ck.Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-{topic}",
            "enable.auto.commit": False,
            "fetch.queue.backoff.ms": FETCH_QUEUE_BACKOFF_MS,
        }
    )
    consumer.assign([ck.TopicPartition(topic, p, 0) for p in range(partitions)])
    got = 0
    started = time.perf_counter()
    deadline = started + 120
    try:
        # Bound: `count` messages or the deadline.
        while got < count and time.perf_counter() < deadline:
            for message in consumer.consume(CONSUME_BATCH_MESSAGES, CONSUME_WAIT_S):
                if message.error() is None:
                    got += 1
    finally:
        consumer.close()
    if got < count:
        raise RaftmqError(ErrorCode.REQUEST_TIMED_OUT, f"confluent-kafka read {got} of {count}")
    return got / max(time.perf_counter() - started, 1e-9)


def run(args: argparse.Namespace) -> Result:
    ck = _confluent()
    bootstrap = kafka_bootstrap(args)
    runs = max(1, args.runs or 3)
    grpc_topic, kafka_topic = f"{args.topic}-grpc", f"{args.topic}-kafka"
    for topic in (grpc_topic, kafka_topic):
        _create(args, topic)
    figures: dict[str, list[float]] = {k: [] for k in ("grpc_produce", "kafka_produce")}
    figures |= {"grpc_consume": [], "kafka_consume": []}
    meter = CpuMeter()
    error = None
    try:
        for _ in range(runs):
            grpc_args = copy.copy(args)
            grpc_args.topic = grpc_topic
            produced = produce.run(grpc_args)
            figures["grpc_produce"].append(float(produced["msgs_per_s"]))
            figures["kafka_produce"].append(
                _kafka_produce(ck, bootstrap, kafka_topic, args.messages, args.message_bytes)
            )
            consumed = consume.run(grpc_args)
            figures["grpc_consume"].append(float(consumed["msgs_per_s"]))
            figures["kafka_consume"].append(
                _kafka_consume(ck, bootstrap, kafka_topic, args.partitions, args.messages)
            )
    except RaftmqError as e:
        error = str(e)
    medians = {k: statistics.median(v) for k, v in figures.items() if v}
    ratios = {
        what: medians[f"kafka_{what}"] / medians[f"grpc_{what}"]
        for what in ("produce", "consume")
        if f"kafka_{what}" in medians and medians.get(f"grpc_{what}")
    }
    return {
        "scenario": "kafka",
        "kafka_bootstrap": bootstrap,
        "message_bytes": args.message_bytes,
        "messages": args.messages,
        "runs": runs,
        "msgs_per_s": medians,
        "per_run_msgs_per_s": figures,
        "kafka_over_grpc": ratios,
        "within_20_pct": {k: v >= 0.8 for k, v in ratios.items()},
        "cpu": meter.stop(waiting="acks=all round trips on both paths"),
        "error": error,
    }


def render(result: Result) -> str:
    lines = [
        f"bench kafka: {result['messages']} x {result['message_bytes']} B per path and run, "
        f"{result['runs']} run(s), confluent-kafka at {result['kafka_bootstrap']} against "
        "the gRPC Writer/Reader",
        f"(consumer: fetch.queue.backoff.ms={FETCH_QUEUE_BACKOFF_MS}; librdkafka's default "
        "1000 ms idles a fetcher whose local queue filled)",
        "PATH   PRODUCE MSGS/S  CONSUME MSGS/S  (medians)",
    ]
    m = result["msgs_per_s"]
    for path in ("grpc", "kafka"):
        produced, consumed = m.get(f"{path}_produce", 0), m.get(f"{path}_consume", 0)
        lines.append(f"{path:<6} {produced:>14,.0f}  {consumed:>14,.0f}")
    for what, ratio in result["kafka_over_grpc"].items():
        verdict = (
            "faster" if ratio >= 1 else "within 20 %" if ratio >= 0.8 else "more than 20 % slower"
        )
        lines.append(f"kafka/grpc {what}: {ratio:.2f} ({verdict})")
    if result["error"]:
        lines.append(f"error: {result['error']}")
    return "\n".join(lines)
