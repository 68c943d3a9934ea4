"""The `raftmq` command line: servers (controller, broker, up), admin and data commands."""

from __future__ import annotations

import argparse
import json
import os
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from raftmq import wire
from raftmq.client.controller_client import EndpointPool, call_with_failover
from raftmq.errors import ErrorCode, RaftmqError
from raftmq.log import configure_logging
from raftmq.node_meta import DataDirError
from raftmq.ports import PortInUseError
from raftmq.v1 import controller_pb2 as pb

from . import format as fmt

if TYPE_CHECKING:
    from raftmq.broker.broker import ListenerConfig

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
EXIT_ERROR = 1
EXIT_USAGE = 2


def _add_target(parser: argparse.ArgumentParser, *, timeout_ms: int | None = 15_000) -> None:
    parser.add_argument(
        "--bootstrap",
        default=os.environ.get("RAFTMQ_BOOTSTRAP", DEFAULT_BOOTSTRAP),
        help="comma-separated broker HOST:PORT list (env RAFTMQ_BOOTSTRAP; default %(default)s)",
    )
    parser.add_argument(
        "--controllers",
        default=None,
        help="talk to the controller quorum directly (HOST:PORT,...) instead of via brokers",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument(
        "--timeout-ms",
        type=int,
        default=timeout_ms,
        help="give up after this long (consume: exit after this long without new data)",
    )


def _add_group_target(parser: argparse.ArgumentParser) -> None:
    """`group ...`: brokers only (a group's coordinator is a broker)."""
    parser.add_argument(
        "--bootstrap",
        default=os.environ.get("RAFTMQ_BOOTSTRAP", DEFAULT_BOOTSTRAP),
        help="comma-separated broker HOST:PORT list (env RAFTMQ_BOOTSTRAP; default %(default)s)",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--timeout-ms", type=int, default=15_000, help="give up after this long")
    parser.set_defaults(func=cmd_group)


def admin_pool(args: argparse.Namespace) -> EndpointPool:
    if args.controllers:
        return EndpointPool(_split(args.controllers), service="controller")
    return EndpointPool(_split(args.bootstrap), service="broker")


def _split(text: str) -> list[str]:
    endpoints = [e.strip() for e in text.split(",") if e.strip()]
    for e in endpoints:
        wire.parse_host_port(e)
    return endpoints


def _admin_call(args: argparse.Namespace, method: str, request: Any) -> Any:
    pool = admin_pool(args)
    try:
        response = call_with_failover(pool, method, request, timeout_ms=args.timeout_ms)
        wire.raise_for(response.error)
        return response
    finally:
        pool.close()


# ---------------------------------------------------------------- servers


def cmd_controller(args: argparse.Namespace) -> int:
    from raftmq.controller.server import ControllerOptions, parse_voters, run_controller

    configure_logging(json=args.log_json)
    secret = args.raft_secret or os.environ.get("RAFTMQ_RAFT_SECRET")
    if args.raft_secret_file:
        secret = Path(args.raft_secret_file).read_text().strip()
    if not secret:
        print(
            "error: the Raft port needs a shared secret: pass --raft-secret-file FILE or set "
            "RAFTMQ_RAFT_SECRET (the same on every controller)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    listen = wire.parse_host_port(args.listen)
    lifecycle = run_controller(
        ControllerOptions(
            node_id=args.node_id,
            listen=listen,
            advertise=wire.parse_host_port(args.advertise) if args.advertise else listen,
            raft_listen=args.raft_listen,
            voters=parse_voters(args.voters),
            data_dir=Path(args.data_dir),
            raft_secret=secret,
            session_timeout_ms=args.session_timeout_ms,
            cluster_id=args.cluster_id,
            metrics_listen=wire.parse_host_port(args.metrics_listen)
            if args.metrics_listen
            else None,
        )
    )
    if lifecycle.exit_code:
        # A fatal error (e.g. a quorum of another cluster): said plainly, besides the log.
        print(f"error: {lifecycle.reason}", file=sys.stderr)
    return lifecycle.exit_code


def parse_listeners(text: str, what: str) -> list[tuple[str, tuple[str, int]]]:
    """`NAME://HOST:PORT,...` -> [(NAME, (HOST, PORT)), ...]; names unique."""
    found: list[tuple[str, tuple[str, int]]] = []
    for item in _split(text):
        name, sep, address = item.partition("://")
        if not sep or not name or not name.replace("_", "").isalnum():
            raise ValueError(f"{what}: {item!r} is not NAME://HOST:PORT")
        if any(name == n for n, _ in found):
            raise ValueError(f"{what}: listener {name} appears twice")
        found.append((name.upper(), wire.parse_host_port(address)))
    if not found:
        raise ValueError(f"{what} is empty")
    return found


PROTOCOLS = ("grpc", "kafka")
# The name `--kafka-listen` gives its listener.
KAFKA_LISTENER_NAME = "KAFKA"


def listener_protocols(args: argparse.Namespace) -> dict[str, str]:
    """`--listener-protocol-map NAME:PROTOCOL,...` -> {NAME: protocol}; unnamed: grpc."""
    found: dict[str, str] = {}
    for item in filter(None, (x.strip() for x in (args.listener_protocol_map or "").split(","))):
        name, sep, protocol = item.partition(":")
        name, protocol = name.strip().upper(), protocol.strip().lower()
        if not sep or not name or protocol not in PROTOCOLS:
            raise ValueError(
                f"--listener-protocol-map: {item!r} is not NAME:PROTOCOL "
                f"(PROTOCOL one of {', '.join(PROTOCOLS)})"
            )
        found[name] = protocol
    return found


def _named_listeners(args: argparse.Namespace) -> list[ListenerConfig]:
    """Every listener of --listeners with its advertised address."""
    from raftmq.broker.broker import ListenerConfig

    binds = parse_listeners(args.listeners, "--listeners")
    advertised = dict(
        parse_listeners(args.advertised_listeners, "--advertised-listeners")
        if args.advertised_listeners
        else binds
    )
    listeners = []
    for name, bind in binds:
        advertise = advertised.get(name)
        if advertise is None:
            raise ValueError(f"--advertised-listeners has no address for listener {name}")
        _check_advertised(name, advertise)
        listeners.append(ListenerConfig(name, bind, advertise))
    unknown = set(advertised) - {n for n, _ in binds}
    if unknown:
        raise ValueError(f"--advertised-listeners names unknown listeners: {sorted(unknown)}")
    protocols = listener_protocols(args)
    unmapped = set(protocols) - {x.name for x in listeners}
    if unmapped:
        raise ValueError(f"--listener-protocol-map names unknown listeners: {sorted(unmapped)}")
    return listeners


def _check_advertised(name: str, advertise: tuple[str, int]) -> None:
    if advertise[0] in ("0.0.0.0", "::", ""):
        raise ValueError(
            f"listener {name} would advertise {advertise[0]}: give a reachable address "
            "in --advertised-listeners (or --kafka-advertise)"
        )


def broker_listeners(
    args: argparse.Namespace,
) -> tuple[list[ListenerConfig], tuple[str, int], tuple[str, int]]:
    """The broker's gRPC listeners from --listeners/--advertised-listeners/
    --inter-broker-listener-name (those --listener-protocol-map does not make Kafka
    listeners), or the one of --listen/--advertise; and the inter-broker listener's bind
    and advertised addresses."""
    if not args.listeners:
        if not args.listen:
            raise ValueError("give --listen HOST:PORT or --listeners NAME://HOST:PORT,...")
        if args.listener_protocol_map:
            raise ValueError("--listener-protocol-map needs --listeners")
        listen = wire.parse_host_port(args.listen)
        return [], listen, wire.parse_host_port(args.advertise) if args.advertise else listen
    protocols = listener_protocols(args)
    named = _named_listeners(args)
    listeners = [x for x in named if protocols.get(x.name, "grpc") == "grpc"]
    if not listeners:
        raise ValueError("--listeners needs at least one gRPC listener (brokers replicate over it)")
    inter = (args.inter_broker_listener_name or listeners[0].name).upper()
    chosen = next((x for x in listeners if x.name == inter), None)
    if chosen is None:
        raise ValueError(
            f"--inter-broker-listener-name {inter} is not one of the gRPC listeners "
            f"({', '.join(x.name for x in listeners)})"
        )
    return listeners, chosen.bind, chosen.advertise


def kafka_listeners(args: argparse.Namespace) -> list[ListenerConfig]:
    """The listeners that speak Kafka's wire protocol: those of --listeners that
    --listener-protocol-map marks kafka, and --kafka-listen/--kafka-advertise (named
    KAFKA)."""
    from raftmq.broker.broker import ListenerConfig

    found: list[ListenerConfig] = []
    if args.listeners:
        protocols = listener_protocols(args)
        found = [x for x in _named_listeners(args) if protocols.get(x.name) == "kafka"]
    if args.kafka_listen:
        if any(x.name == KAFKA_LISTENER_NAME for x in found) or (
            args.listeners
            and any(
                n == KAFKA_LISTENER_NAME for n, _ in parse_listeners(args.listeners, "--listeners")
            )
        ):
            raise ValueError(
                f"--kafka-listen names its listener {KAFKA_LISTENER_NAME}, which --listeners "
                "already has: use one or the other"
            )
        bind = wire.parse_host_port(args.kafka_listen)
        advertise = wire.parse_host_port(args.kafka_advertise) if args.kafka_advertise else bind
        _check_advertised(KAFKA_LISTENER_NAME, advertise)
        found.append(ListenerConfig(KAFKA_LISTENER_NAME, bind, advertise))
    elif args.kafka_advertise:
        raise ValueError("--kafka-advertise needs --kafka-listen")
    return found


def cmd_broker(args: argparse.Namespace) -> int:
    from raftmq.broker.broker import BrokerOptions, run_broker
    from raftmq.broker.group_coordinator import GroupConfig
    from raftmq.broker.server import TopicDefaults

    configure_logging(json=args.log_json)
    listeners, listen, advertise = broker_listeners(args)
    return run_broker(
        BrokerOptions(
            node_id=args.node_id,
            listen=listen,
            advertise=advertise,
            listeners=tuple(listeners),
            kafka_listeners=tuple(kafka_listeners(args)),
            metrics_listen=wire.parse_host_port(args.metrics_listen)
            if args.metrics_listen
            else None,
            controllers=_split(args.controllers),
            data_dir=Path(args.data_dir),
            rack=args.rack,
            flush_policy=args.flush_policy,
            log_direct_io=args.log_direct_io,
            replica_lag_time_max_ms=args.replica_lag_time_max_ms,
            cluster_id=args.cluster_id,
            topic_defaults=TopicDefaults(
                auto_create=args.auto_create_topics,
                partitions=args.default_partitions,
                replication_factor=args.default_replication_factor,
            ),
            groups=GroupConfig(
                offsets_topic_partitions=args.offsets_topic_partitions,
                offsets_topic_replication_factor=args.offsets_topic_replication_factor,
                offsets_retention_ms=args.offsets_retention_ms,
            ),
        )
    )


def cmd_health(args: argparse.Namespace) -> int:
    from raftmq.health import probe

    status = probe(args.address, service=args.service, timeout_ms=args.timeout_ms)
    print(status)
    return 0 if status == "SERVING" else 1


def cmd_console(args: argparse.Namespace) -> int:
    from raftmq.console.server import ConsoleOptions, run_console

    configure_logging(json=args.log_json)
    metrics = _split_urls(args.metrics) if args.metrics else []
    return run_console(
        ConsoleOptions(
            bootstrap=_split(args.bootstrap),
            listen=wire.parse_host_port(args.listen),
            read_only=args.read_only,
            metrics_urls=metrics,
        )
    )


def _split_urls(text: str) -> list[str]:
    urls = [u.strip() for u in text.split(",") if u.strip()]
    for url in urls:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"--metrics: expected http://HOST:PORT/metrics URLs, got {url!r}")
    return urls


def cmd_up(args: argparse.Namespace) -> int:
    from raftmq.cli.up import run_up

    return run_up(args)


# ---------------------------------------------------------------- admin


def cmd_topic_create(args: argparse.Namespace) -> int:
    configs: dict[str, str] = {}
    for item in args.config or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise RaftmqError(ErrorCode.INVALID_CONFIG, f"expected KEY=VALUE, got {item!r}")
        configs[key] = value
    response = _admin_call(
        args,
        "CreateTopic",
        pb.CreateTopicRequest(
            name=args.name,
            partitions=args.partitions,
            replication_factor=args.replication_factor,
            configs=configs,
            request_id=uuid.uuid4().hex,
        ),
    )
    if args.json:
        print(json.dumps(fmt.topic_json(response.topic)))
    else:
        print(
            f"Created topic {args.name!r} with {len(response.topic.partitions)} partition(s), "
            f"replication factor {response.topic.replication_factor}."
        )
        print(fmt.topic_table([fmt.topic_json(response.topic)]))
    return 0


def cmd_topic_list(args: argparse.Namespace) -> int:
    response = _admin_call(args, "DescribeTopics", pb.DescribeTopicsRequest())
    topics = [fmt.topic_json(t) for t in response.topics]
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "name": t["name"],
                        "partitions": len(t["partitions"]),
                        "replication_factor": t["replication_factor"],
                    }
                    for t in topics
                ]
            )
        )
    else:
        print(
            fmt.table(
                ["TOPIC", "PARTITIONS", "RF"],
                [[t["name"], len(t["partitions"]), t["replication_factor"]] for t in topics],
            )
        )
    return 0


def cmd_topic_describe(args: argparse.Namespace) -> int:
    response = _admin_call(args, "DescribeTopics", pb.DescribeTopicsRequest(names=[args.name]))
    topic = fmt.topic_json(response.topics[0])
    if args.json:
        print(json.dumps(topic))
    else:
        print(f"Topic {topic['name']}  id {topic['topic_id']}  RF {topic['replication_factor']}")
        print("Config: " + ", ".join(f"{k}={v}" for k, v in topic["config"].items()))
        print(fmt.topic_table([topic]))
    return 0


def cmd_topic_delete(args: argparse.Namespace) -> int:
    _admin_call(
        args, "DeleteTopic", pb.DeleteTopicRequest(name=args.name, request_id=uuid.uuid4().hex)
    )
    print(json.dumps({"deleted": args.name}) if args.json else f"Deleted topic {args.name!r}.")
    return 0


def cmd_cluster_status(args: argparse.Namespace) -> int:
    response = _admin_call(args, "DescribeCluster", pb.DescribeClusterRequest())
    status = fmt.cluster_json(response)
    print(json.dumps(status) if args.json else fmt.cluster_text(status))
    return 0


# ---------------------------------------------------------------- data


def _freeze_imports() -> None:
    """A long-running client command, its modules imported: their objects leave the
    collector's generations (see `raftmq.heap`)."""
    from raftmq.heap import freeze_startup_heap

    freeze_startup_heap("cli", log=False)


def cmd_produce(args: argparse.Namespace) -> int:
    from raftmq.cli.data import produce

    _freeze_imports()
    return produce(args)


def cmd_consume(args: argparse.Namespace) -> int:
    from raftmq.cli.data import consume

    _freeze_imports()
    return consume(args)


def cmd_group(args: argparse.Namespace) -> int:
    from raftmq.cli import groups

    command = {
        "list": groups.cmd_list,
        "describe": groups.cmd_describe,
        "reset-offsets": groups.cmd_reset_offsets,
        "delete": groups.cmd_delete,
    }[args.group_command]
    return command(args)


def cmd_bench(args: argparse.Namespace) -> int:
    from raftmq.cli.bench import run_bench

    _freeze_imports()
    return run_bench(args)


def cmd_chaos(args: argparse.Namespace) -> int:
    from raftmq.chaos.runner import main as chaos_main

    _freeze_imports()
    return chaos_main(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="raftmq", description="A Kafka-style log broker with a Raft controller quorum."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("controller", help="run one member of the controller quorum")
    p.add_argument("--node-id", type=int, required=True)
    p.add_argument("--listen", required=True, help="gRPC HOST:PORT to bind")
    p.add_argument("--advertise", help="gRPC HOST:PORT others use (default: --listen)")
    p.add_argument("--raft-listen", required=True, help="Raft HOST:PORT to bind")
    p.add_argument("--metrics-listen", help="HOST:PORT of the Prometheus /metrics endpoint")
    p.add_argument("--voters", required=True, help="ID@HOST:RAFTPORT,... (1, 3 or 5 voters)")
    p.add_argument("--data-dir", required=True)
    p.add_argument(
        "--cluster-id",
        default="",
        help="the cluster to form or join (default: the quorum's first leader creates one)",
    )
    p.add_argument("--raft-secret-file", help="file holding the Raft shared secret")
    p.add_argument("--raft-secret", help=argparse.SUPPRESS)
    p.add_argument(
        "--session-timeout-ms",
        type=int,
        default=4_000,
        help="fence a broker after this long without a heartbeat",
    )
    p.add_argument("--log-json", action=argparse.BooleanOptionalAction, default=None)
    p.set_defaults(func=cmd_controller)

    p = sub.add_parser("broker", help="run one broker")
    p.add_argument("--node-id", type=int, required=True)
    p.add_argument("--listen", help="gRPC HOST:PORT to bind (one listener; or use --listeners)")
    p.add_argument("--advertise", help="HOST:PORT clients and peers connect to (default: --listen)")
    p.add_argument(
        "--listeners",
        help="named listeners NAME://HOST:PORT,... to bind, e.g. "
        "INTERNAL://0.0.0.0:9092,EXTERNAL://0.0.0.0:19092 (instead of --listen)",
    )
    p.add_argument(
        "--advertised-listeners",
        help="NAME://HOST:PORT,... each listener tells its clients (default: --listeners)",
    )
    p.add_argument(
        "--inter-broker-listener-name",
        help="the listener other brokers and the controllers use (default: the first gRPC one)",
    )
    p.add_argument(
        "--listener-protocol-map",
        help="NAME:PROTOCOL,... for listeners of --listeners that speak Kafka's wire protocol "
        "(PROTOCOL grpc or kafka; default grpc), e.g. KAFKA_EXTERNAL:kafka",
    )
    p.add_argument(
        "--kafka-listen",
        help="HOST:PORT of a Kafka wire-protocol listener (named KAFKA) for any Kafka client",
    )
    p.add_argument(
        "--kafka-advertise",
        help="HOST:PORT Kafka clients are told to connect to (default: --kafka-listen)",
    )
    p.add_argument("--metrics-listen", help="HOST:PORT of the Prometheus /metrics endpoint")
    p.add_argument("--controllers", required=True, help="controller HOST:PORT,...")
    p.add_argument("--data-dir", required=True)
    p.add_argument("--cluster-id", default="", help="refuse to join a quorum of any other cluster")
    p.add_argument("--rack", default="")
    p.add_argument("--flush-policy", choices=["none", "interval", "batch"], default="interval")
    p.add_argument(
        "--log-direct-io",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="write the log's flushed and compacted files with O_DIRECT, around the page "
        "cache, where the data folder allows it (faster on some disks, slower on others)",
    )
    p.add_argument("--replica-lag-time-max-ms", type=int, default=10_000)
    p.add_argument(
        "--auto-create-topics",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="create a missing topic when a client asks (allow_auto_topic_creation)",
    )
    p.add_argument("--default-partitions", type=int, default=1, help="of auto-created topics")
    p.add_argument(
        "--default-replication-factor", type=int, default=1, help="of auto-created topics"
    )
    p.add_argument(
        "--offsets-topic-partitions",
        type=int,
        default=12,
        help="partitions of __consumer_offsets when the cluster creates it",
    )
    p.add_argument(
        "--offsets-topic-replication-factor",
        type=int,
        default=3,
        help="its replication factor (capped by the live brokers at creation)",
    )
    p.add_argument(
        "--offsets-retention-ms",
        type=int,
        default=7 * 24 * 3600 * 1000,
        help="a group's offsets are dropped this long after it became empty",
    )
    p.add_argument("--log-json", action=argparse.BooleanOptionalAction, default=None)
    p.set_defaults(func=cmd_broker)

    p = sub.add_parser("health", help="ask a node's gRPC health service (exit 0 when SERVING)")
    p.add_argument("address", help="HOST:PORT of a controller or broker")
    p.add_argument("--service", default="", help="a service name ('' = the node)")
    p.add_argument("--timeout-ms", type=int, default=3_000)
    p.set_defaults(func=cmd_health)

    p = sub.add_parser("up", help="start a local cluster (3 controllers, 3 brokers) and wait")
    p.add_argument("--data-dir", default="./raftmq-data")
    p.add_argument("--controllers", type=int, default=3, choices=[1, 3, 5])
    p.add_argument("--brokers", type=int, default=3)
    p.add_argument(
        "--base-port",
        type=int,
        default=9092,
        help="every port from this one: brokers BASE.., controllers BASE+100.., Raft "
        "BASE+200.., metrics BASE+300.., Kafka listeners BASE+400..",
    )
    p.add_argument("--flush-policy", choices=["none", "interval", "batch"], default="interval")
    p.add_argument(
        "--log-direct-io",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="brokers write the log's flushed and compacted files with O_DIRECT, around the page "
        "cache, where the data folder allows it (faster on some disks, slower on others)",
    )
    p.add_argument(
        "--no-restart",
        action="store_true",
        help="stop the whole cluster when a node exits, instead of restarting it",
    )
    p.add_argument(
        "--no-console",
        action="store_true",
        help="do not start the web console (otherwise on 127.0.0.1:BASE+500)",
    )
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("console", help="serve the web console of a cluster")
    p.add_argument(
        "--bootstrap",
        default=os.environ.get("RAFTMQ_BOOTSTRAP", DEFAULT_BOOTSTRAP),
        help="comma-separated broker HOST:PORT list (env RAFTMQ_BOOTSTRAP; default %(default)s)",
    )
    p.add_argument(
        "--listen",
        default="127.0.0.1:8080",
        help="HOST:PORT to serve on (default %(default)s: loopback only)",
    )
    p.add_argument(
        "--read-only",
        action="store_true",
        help="refuse every change (produce, create/delete topics, offset resets)",
    )
    p.add_argument(
        "--metrics",
        default="",
        help="comma-separated http://HOST:PORT/metrics URLs of the nodes, for message rates "
        "and disk figures (raftmq up passes its nodes')",
    )
    p.add_argument("--log-json", action=argparse.BooleanOptionalAction, default=None)
    p.set_defaults(func=cmd_console)

    topic = sub.add_parser("topic", help="create, list, describe and delete topics")
    tsub = topic.add_subparsers(dest="topic_command", required=True)
    p = tsub.add_parser("create")
    p.add_argument("name")
    p.add_argument(
        "--partitions", type=int, default=-1, help="default: the brokers' --default-partitions"
    )
    p.add_argument(
        "--replication-factor",
        type=int,
        default=-1,
        help="default: the brokers' --default-replication-factor (3 under `raftmq up`)",
    )
    p.add_argument("--config", action="append", metavar="KEY=VALUE")
    _add_target(p)
    p.set_defaults(func=cmd_topic_create)
    p = tsub.add_parser("list")
    _add_target(p)
    p.set_defaults(func=cmd_topic_list)
    p = tsub.add_parser("describe")
    p.add_argument("name")
    _add_target(p)
    p.set_defaults(func=cmd_topic_describe)
    p = tsub.add_parser("delete")
    p.add_argument("name")
    _add_target(p)
    p.set_defaults(func=cmd_topic_delete)

    cluster = sub.add_parser("cluster", help="cluster status")
    csub = cluster.add_subparsers(dest="cluster_command", required=True)
    p = csub.add_parser("status")
    _add_target(p)
    p.set_defaults(func=cmd_cluster_status)

    p = sub.add_parser("produce", help="send each stdin line as one message")
    p.add_argument("topic")
    p.add_argument("--acks", choices=["all", "1", "0"], default="all")
    p.add_argument("--partition", type=int, default=None)
    p.add_argument("--key-separator", default=None)
    p.add_argument("--batch-size", type=int, default=500, help="messages per batch")
    _add_target(p)
    p.set_defaults(func=cmd_produce)

    p = sub.add_parser("consume", help="print messages of a topic")
    p.add_argument("topic")
    start = p.add_mutually_exclusive_group()
    start.add_argument(
        "--from-beginning",
        action="store_true",
        help="from the first offset (with --group: where the group has committed nothing)",
    )
    start.add_argument("--offset", type=int, default=None)
    p.add_argument("--partition", type=int, default=None)
    p.add_argument("--max-messages", type=int, default=None)
    p.add_argument(
        "--group",
        default=None,
        metavar="G",
        help="consume as a member of consumer group G: its partitions, from its committed "
        "offsets; what was printed is committed (and the group left) on exit",
    )
    _add_target(p, timeout_ms=None)
    p.set_defaults(func=cmd_consume)

    group = sub.add_parser("group", help="list, describe, reset and delete consumer groups")
    gsub = group.add_subparsers(dest="group_command", required=True)
    p = gsub.add_parser("list", help="every consumer group, its state and coordinator")
    _add_group_target(p)
    p = gsub.add_parser(
        "describe",
        help="state, members and assignments; committed offset, log end offset and lag "
        "per partition",
    )
    p.add_argument("group")
    _add_group_target(p)
    p = gsub.add_parser("reset-offsets", help="set an empty group's committed offsets of one topic")
    p.add_argument("group")
    p.add_argument("--topic", required=True)
    to = p.add_mutually_exclusive_group(required=True)
    to.add_argument("--to-earliest", action="store_true", help="the log start offsets")
    to.add_argument("--to-latest", action="store_true", help="the high watermarks")
    to.add_argument("--to-offset", type=int, metavar="N", help="offset N (kept within each log)")
    to.add_argument(
        "--to-time",
        metavar="ISO8601",
        help="the first offset at or after this time (e.g. 2026-01-02T03:04:05Z)",
    )
    _add_group_target(p)
    p = gsub.add_parser("delete", help="delete an empty group and its committed offsets")
    p.add_argument("group")
    _add_group_target(p)

    p = sub.add_parser("bench", help="measure throughput, latency, failover and scale")
    p.add_argument(
        "mode",
        choices=[
            "produce", "consume", "latency", "e2e", "failover", "partitions", "consumers",
            "rebalance", "codec", "kafka",
        ],
    )  # fmt: skip
    p.add_argument("--topic", default="bench")
    p.add_argument(
        "--messages",
        type=int,
        default=None,
        help="default: 200000 (latency: 5000; e2e and consumers: --duration decides)",
    )
    p.add_argument("--message-bytes", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=1_000)
    p.add_argument("--partitions", type=int, default=3)
    p.add_argument("--replication-factor", type=int, default=3)
    p.add_argument("--acks", choices=["all", "1", "0"], default="all")
    p.add_argument(
        "--compression",
        choices=["none", "gzip", "snappy", "lz4", "zstd"],
        default="none",
        help="produce: the Writer's batch compression",
    )
    p.add_argument(
        "--inflight",
        type=int,
        default=64,
        help="produce: write_messages calls (of --batch-size messages) not yet acknowledged",
    )
    p.add_argument(
        "--pipeline-partial-batches",
        action="store_true",
        help="e2e: the Writer pipelines batches that are not full (Kafka's producer), "
        "instead of holding them while their partition has one in flight",
    )
    p.add_argument("--rate", type=int, default=None, help="e2e: messages per second (default 1000)")
    p.add_argument(
        "--client",
        choices=["sync", "async"],
        default="sync",
        help="e2e and latency: the sync Writer and Reader threads, or the AsyncWriter and "
        "AsyncReader tasks on one event loop",
    )
    p.add_argument(
        "--duration",
        type=float,
        default=None,
        help="e2e: seconds of sending (default 10); consumers: seconds of producing (default "
        "20); partitions: seconds of the idle CPU window (default 10)",
    )
    p.add_argument(
        "--target",
        choices=["controller-leader", "partition-leader", "follower"],
        default="controller-leader",
        help="failover: kill the controller quorum's leader, a partition's leader or an ISR "
        "follower (the last two on a cluster of their own)",
    )
    p.add_argument(
        "--count",
        type=int,
        default=None,
        help="partitions: partitions of the topic (default 3000); consumers: long-polling "
        "fetches (default 1000); rebalance: partitions of the group's topic (default 60)",
    )
    p.add_argument(
        "--members", type=int, default=None, help="rebalance: members of the group (default 10)"
    )
    p.add_argument(
        "--runs",
        type=int,
        default=None,
        help="failover: kill/measure cycles, median reported (default 7; broker targets: 5); "
        "rebalance: leaves and joins, each (default 5)",
    )
    p.add_argument("--idle-ms", type=int, default=1_000, help="failover: idle time before a kill")
    p.add_argument(
        "--kafka-bootstrap",
        default=None,
        help="kafka: HOST:PORT of a Kafka listener (default: the first --bootstrap port + 400, "
        "raftmq up's layout)",
    )
    p.add_argument(
        "--keep-data",
        action="store_true",
        help="failover, partitions, consumers, rebalance: keep the temporary cluster's data "
        "and logs",
    )
    p.add_argument(
        "--progress",
        action="store_true",
        help="draw a progress bar on stderr even when it is not a terminal",
    )
    _add_target(p)
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("chaos", help="run the seeded chaos suite against a fresh local cluster")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of faults")
    p.add_argument("--seed", type=int, default=None, help="first seed (default: random)")
    p.add_argument(
        "--runs", type=int, default=1, help="runs with seeds SEED, SEED+1, ...; then a summary"
    )
    p.add_argument("--out", default="./chaos-reports")
    p.add_argument("--faults", default="all", help="comma-separated fault kinds, or all")
    p.set_defaults(func=cmd_chaos)
    return parser


SERVER_COMMANDS = ("controller", "broker")


def server_parser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    """The subcommand parser of `command` (controller, broker or up)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found: argparse.ArgumentParser = action.choices[command]
            return found
    raise AssertionError("no subcommands")


def main(argv: Sequence[str] | None = None) -> int:
    from raftmq.cli.env_config import apply_environment, refuse_node_variables_for_up

    parser = build_parser()
    words = list(sys.argv[1:] if argv is None else argv)
    command = next((w for w in words if not w.startswith("-")), "")
    if command in SERVER_COMMANDS:
        try:
            apply_environment(server_parser(parser, command), command, os.environ)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return EXIT_USAGE
    if command == "up":
        try:
            refuse_node_variables_for_up(
                server_parser(parser, "up"),
                {c: server_parser(parser, c) for c in SERVER_COMMANDS},
                os.environ,
            )
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return EXIT_USAGE
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except RaftmqError as e:
        print(f"error: {e.code.name}: {e.message}", file=sys.stderr)
        return EXIT_ERROR
    except (DataDirError, PortInUseError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
