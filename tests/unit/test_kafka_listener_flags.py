"""`raftmq broker`'s Kafka listener flags: --kafka-listen/--kafka-advertise (a listener
named KAFKA), and Kafka entries of the named-listener scheme (--listener-protocol-map),
with the same rules as the gRPC listeners; every flag has its RAFTMQ_* variable."""

from __future__ import annotations

import argparse

import pytest
from raftmq.cli.main import broker_listeners, build_parser, kafka_listeners


def broker_args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(
        ["broker", "--node-id=1", "--controllers=c:1", "--data-dir=/d", *argv]
    )


def test_kafka_listen_adds_a_listener_named_kafka() -> None:
    args = broker_args(
        "--listen=0.0.0.0:9092",
        "--advertise=b1:9092",
        "--kafka-listen=0.0.0.0:9192",
        "--kafka-advertise=b1:9192",
    )
    [kafka] = kafka_listeners(args)
    assert (kafka.name, kafka.bind, kafka.advertise) == ("KAFKA", ("0.0.0.0", 9192), ("b1", 9192))
    assert broker_listeners(args) == ([], ("0.0.0.0", 9092), ("b1", 9092))


def test_named_kafka_listeners_come_from_the_protocol_map() -> None:
    args = broker_args(
        "--listeners=INTERNAL://0.0.0.0:9092,KAFKA_INTERNAL://0.0.0.0:9192,KAFKA_EXTERNAL://0.0.0.0:19192",
        "--advertised-listeners=INTERNAL://b1:9092,KAFKA_INTERNAL://b1:9192,KAFKA_EXTERNAL://127.0.0.1:19192",
        "--listener-protocol-map=KAFKA_INTERNAL:kafka,kafka_external:KAFKA",
    )
    grpc, listen, advertise = broker_listeners(args)
    assert [x.name for x in grpc] == ["INTERNAL"] and advertise == ("b1", 9092)
    assert listen == ("0.0.0.0", 9092)
    assert {x.name: x.advertise for x in kafka_listeners(args)} == {
        "KAFKA_INTERNAL": ("b1", 9192),
        "KAFKA_EXTERNAL": ("127.0.0.1", 19192),
    }


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--listen=h:1", "--kafka-listen=0.0.0.0:2"], "would advertise 0.0.0.0"),
        (["--listen=h:1", "--kafka-advertise=h:2"], "needs --kafka-listen"),
        (["--listen=h:1", "--listener-protocol-map=X:kafka"], "needs --listeners"),
        (["--listeners=A://h:1", "--listener-protocol-map=A:http"], "not NAME:PROTOCOL"),
        (["--listeners=A://h:1", "--listener-protocol-map=B:kafka"], "unknown listeners"),
        (["--listeners=A://h:1", "--listener-protocol-map=A:kafka"], "at least one gRPC"),
        (
            [
                "--listeners=A://h:1,B://h:2",
                "--listener-protocol-map=B:kafka",
                "--inter-broker-listener-name=B",
            ],
            "not one of the gRPC listeners",
        ),
        (["--listeners=A://h:1,KAFKA://h:2", "--kafka-listen=h:3"], "already has"),
    ],
)
def test_bad_listener_flags_are_clear_errors(argv: list[str], message: str) -> None:
    args = broker_args(*argv)
    with pytest.raises(ValueError, match=message):
        broker_listeners(args)
        kafka_listeners(args)
