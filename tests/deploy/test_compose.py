"""The real deploy/docker-compose.yml, really run (issue 12): a private dockerd, the base
image built locally (deploy/build-base-image.sh), `docker-compose up -d --build` on the
unchanged compose file (what varies, the Raft secret and the host ports, comes through the
environment), then, from the host through the published ports only: a topic created,
produced to and consumed with the raftmq CLI and client; a partition leader's process
SIGKILLed inside its container (the restart policy brings it back: writes resume, nothing
acknowledged is lost, the broker rejoins the ISR); every node healthy and serving metrics;
`docker-compose stop` of a broker a controlled shutdown that a producing Writer never
notices. `down -v` and dockerd stopped by PID at the end, also on failure.

Skipped, with the reason, where no engine can start (not root, docker.io not installed,
dockerd refusing to run); .ci/run installs the packages.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from raftmq import Admin, FirstOffset, LastOffset, Message, Reader, WriteError, Writer
from raftmq.local_cluster import free_ports

from tests.deploy.docker_engine import (
    CommandError,
    DockerEngine,
    EngineUnavailableError,
    find_tools,
)

# Building the base image and the raftmq image on a loaded 2-core machine takes minutes;
# the first test's timeout covers the module fixture's setup.
pytestmark = [pytest.mark.deploy, pytest.mark.timeout(1_500)]

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = "deploy/docker-compose.yml"
CONTROLLERS = ("controller-1", "controller-2", "controller-3")
BROKERS = ("broker-1", "broker-2", "broker-3")
NODES = CONTROLLERS + BROKERS
# The gRPC port each kind of node listens on inside its container (the compose file's).
GRPC_PORT_IN_CONTAINER = {"controller": 19092, "broker": 29092}

BASE_IMAGE_TIMEOUT_S = 600
UP_TIMEOUT_S = 900
HEALTHY_TIMEOUT_S = 240
DOWN_TIMEOUT_S = 240
WRITES_TIMEOUT_S = 90
RESTART_TIMEOUT_S = 180
ISR_TIMEOUT_S = 120
STOP_TIMEOUT_S = 120
READ_TIMEOUT_MS = 15_000


def wait_for(
    condition: Callable[[], bool],
    *,
    timeout_s: float,
    what: str,
    detail: Callable[[], str] | None = None,
    interval_s: float = 0.5,
) -> None:
    """Poll `condition` (exceptions count as false) until true or `timeout_s` passed."""
    deadline = time.monotonic() + timeout_s
    last_error = ""
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except Exception as e:  # a broker restarting, a container not there yet, ...
            last_error = f"{type(e).__name__}: {e}"
        time.sleep(interval_s)
    extra = f"\nlast error: {last_error}" if last_error else ""
    extra += f"\n{detail()}" if detail is not None else ""
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}{extra}")


@dataclass
class Deployment:
    """The compose project under test, addressed from the host."""

    engine: DockerEngine
    project: str
    broker_ports: dict[str, int]
    metrics_ports: dict[str, int]
    kafka_ports: dict[str, int]
    secret: str = field(default_factory=lambda: secrets.token_hex(16))
    _containers: dict[str, str] = field(default_factory=dict)

    def compose_env(self) -> dict[str, str]:
        env = {"RAFTMQ_RAFT_SECRET": self.secret}
        for service, port in self.broker_ports.items():
            env[f"{service.upper().replace('-', '_')}_PORT"] = str(port)
        for service, port in self.metrics_ports.items():
            env[f"{service.upper().replace('-', '_')}_METRICS_PORT"] = str(port)
        for service, port in self.kafka_ports.items():
            env[f"{service.upper().replace('-', '_')}_KAFKA_PORT"] = str(port)
        return env

    def compose(
        self, *args: str, timeout_s: float = 120, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return self.engine.run(
            self.engine.tools.compose,
            "--ansi",
            "never",
            "-p",
            self.project,
            "-f",
            COMPOSE_FILE,
            *args,
            timeout_s=timeout_s,
            check=check,
            env=self.compose_env(),
            cwd=REPO,
        )

    @property
    def bootstrap(self) -> list[str]:
        return [f"127.0.0.1:{self.broker_ports[b]}" for b in BROKERS]

    def container(self, service: str) -> str:
        if service not in self._containers:
            found = self.compose("ps", "-q", service).stdout.split()
            assert len(found) == 1, f"{service}: containers {found}"
            self._containers[service] = found[0]
        return self._containers[service]

    def inspect(self, service: str, template: str) -> str:
        return self.engine.docker(
            "inspect", "--format", template, self.container(service), timeout_s=30
        ).stdout.strip()

    def health(self, service: str) -> str:
        return self.inspect(service, "{{if .State.Health}}{{.State.Health.Status}}{{end}}")

    def restart_count(self, service: str) -> int:
        return int(self.inspect(service, "{{.RestartCount}}"))

    def exec(self, service: str, *command: str) -> subprocess.CompletedProcess[str]:
        return self.engine.docker("exec", self.container(service), *command, check=False)

    def diagnostics(self, services: tuple[str, ...] = NODES) -> str:
        """`ps` and the last log lines, for a failure message."""
        parts = [self.compose("ps", check=False, timeout_s=60).stdout]
        for service in services:
            logs = self.compose("logs", "--no-color", "--tail", "15", service, check=False)
            parts.append(logs.stdout)
        return "\n".join(parts)[-12_000:]

    def wait_healthy(self, services: tuple[str, ...], *, timeout_s: float) -> None:
        wait_for(
            lambda: all(self.health(s) == "healthy" for s in services),
            timeout_s=timeout_s,
            what=f"{', '.join(services)} healthy",
            detail=lambda: self.diagnostics(services),
            interval_s=1.0,
        )


def raftmq_cli(
    *args: str, stdin: str = "", timeout_s: float = 60
) -> subprocess.CompletedProcess[str]:
    """The raftmq command of this checkout, run on the host."""
    return subprocess.run(
        [sys.executable, "-m", "raftmq.cli.main", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


@pytest.fixture(scope="module")
def deployment() -> Iterator[Deployment]:
    tools = find_tools()
    if isinstance(tools, str):
        pytest.skip(f"no Docker engine here: {tools}")
    engine = DockerEngine(tools)
    ports = free_ports(2 * len(BROKERS) + len(NODES))
    deployment = Deployment(
        engine,
        project=f"raftmq-deploy-{os.getpid()}-{secrets.token_hex(3)}",
        broker_ports=dict(zip(BROKERS, ports[: len(BROKERS)], strict=True)),
        metrics_ports=dict(zip(NODES, ports[len(BROKERS) : -len(BROKERS)], strict=True)),
        kafka_ports=dict(zip(BROKERS, ports[-len(BROKERS) :], strict=True)),
    )
    compose_started = False
    try:
        try:
            engine.start()
        except EngineUnavailableError as e:
            pytest.skip(f"dockerd cannot start here: {e}")
        started = time.monotonic()
        built = engine.run(
            "bash", "deploy/build-base-image.sh", cwd=REPO, timeout_s=BASE_IMAGE_TIMEOUT_S
        )
        print(built.stdout)
        compose_started = True
        up = deployment.compose("up", "-d", "--build", timeout_s=UP_TIMEOUT_S)
        print(up.stdout[-3_000:])
        deployment.wait_healthy(NODES, timeout_s=HEALTHY_TIMEOUT_S)
        print(
            f"deploy: base image, build and a healthy cluster in {time.monotonic() - started:.0f} s"
        )
        yield deployment
    finally:
        if compose_started:
            try:
                down = deployment.compose(
                    "down", "-v", "--remove-orphans", timeout_s=DOWN_TIMEOUT_S, check=False
                )
                print(down.stdout[-2_000:])
            except CommandError as e:
                print(f"deploy: down failed: {e}")
        restored = engine.stop()
        print(f"deploy: dockerd stopped; host settings restored: {restored or 'none needed'}")


def check_every_node_healthy_with_metrics(d: Deployment) -> None:
    """Docker's health status, the probe run inside each container, the brokers' probe from
    the host through their EXTERNAL ports, and every metrics endpoint."""
    for service in NODES:
        assert d.health(service) == "healthy", f"{service}: {d.health(service)}"
        port = GRPC_PORT_IN_CONTAINER[service.split("-")[0]]
        probe = d.exec(service, "raftmq", "health", f"127.0.0.1:{port}", "--timeout-ms", "5000")
        assert probe.returncode == 0, f"{service}: raftmq health said {probe.stdout!r}"
        with urllib.request.urlopen(
            f"http://127.0.0.1:{d.metrics_ports[service]}/metrics", timeout=10
        ) as response:
            body = response.read().decode()
        assert response.status == 200 and "# TYPE " in body, f"{service} metrics: {body[:300]!r}"
    for endpoint in d.bootstrap:
        probe = raftmq_cli("health", endpoint, "--timeout-ms", "5000")
        assert probe.returncode == 0, f"{endpoint}: {probe.stdout}{probe.stderr}"


class Producer:
    """An idempotent Writer on a thread, writing batches of numbered messages until
    stopped; remembers what was acknowledged and what failed."""

    def __init__(self, bootstrap: list[str], topic: str, **writer_options: int) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.writer_options = writer_options
        self.acknowledged: list[bytes] = []
        self.failed: list[tuple[bytes, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"producer-{topic}", daemon=True)

    def __enter__(self) -> Producer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=90)
        assert not self._thread.is_alive(), "the producer did not stop"

    def _run(self) -> None:
        with Writer(self.bootstrap, topic=self.topic, **self.writer_options) as writer:
            n = 0
            while not self._stop.is_set():
                batch = [Message(f"{self.topic}-{n + i}") for i in range(10)]
                n += len(batch)
                try:
                    writer.write_messages(*batch)
                    self.acknowledged.extend(m.value or b"" for m in batch)
                except WriteError as e:
                    self.failed.extend((m.value or b"", str(cause)) for m, cause in e.errors)

    def wait_acknowledged(self, count: int, *, what: str) -> None:
        wait_for(
            lambda: len(self.acknowledged) >= count,
            timeout_s=WRITES_TIMEOUT_S,
            what=f"{count} acknowledged writes ({what}); failed: {self.failed[-3:]}",
            interval_s=0.1,
        )


def read_partition(bootstrap: list[str], topic: str, partition: int) -> list[bytes]:
    # From the host: Admin must dial the leader at its EXTERNAL address (Metadata answers
    # per listener), not the INTERNAL one DescribeCluster gives.
    with Admin(bootstrap) as admin:
        end = admin.list_offsets(topic, LastOffset, partitions=[partition])[partition]
    with Reader(bootstrap, topic, partition, start_offset=FirstOffset) as reader:
        return [reader.read_message(timeout_ms=READ_TIMEOUT_MS).value or b"" for _ in range(end)]


def check_nothing_lost(
    bootstrap: list[str], topic: str, partitions: int, producer: Producer
) -> None:
    stored: list[bytes] = []
    for partition in range(partitions):
        stored.extend(read_partition(bootstrap, topic, partition))
    assert len(stored) == len(set(stored)), "a message was stored twice"
    missing = set(producer.acknowledged) - set(stored)
    assert not missing, f"{len(missing)} acknowledged messages lost, e.g. {sorted(missing)[:5]}"


def test_every_node_is_healthy_and_serves_metrics(deployment: Deployment) -> None:
    check_every_node_healthy_with_metrics(deployment)


def test_the_cli_on_the_host_produces_and_consumes_through_the_external_ports(
    deployment: Deployment,
) -> None:
    bootstrap = ",".join(deployment.bootstrap)
    created = raftmq_cli(
        "topic", "create", "deploy-demo", "--partitions", "3", "--replication-factor", "3",
        "--config", "min.insync.replicas=2", "--bootstrap", bootstrap,
    )  # fmt: skip
    assert created.returncode == 0, created.stdout + created.stderr
    lines = [f"hello-{i}" for i in range(30)]
    produced = raftmq_cli(
        "produce", "deploy-demo", "--bootstrap", bootstrap, stdin="\n".join(lines) + "\n"
    )
    assert produced.returncode == 0, produced.stdout + produced.stderr
    consumed = raftmq_cli(
        "consume", "deploy-demo", "--from-beginning", "--max-messages", str(len(lines)),
        "--timeout-ms", "30000", "--bootstrap", bootstrap,
    )  # fmt: skip
    assert consumed.returncode == 0, consumed.stdout + consumed.stderr
    assert sorted(consumed.stdout.split()) == sorted(lines)
    # Every broker was reached at its EXTERNAL address: the metadata the host got named
    # 127.0.0.1 and the published ports, not the brokers' INTERNAL names.
    with Admin(deployment.bootstrap) as admin:
        [topic] = admin.describe_topics("deploy-demo")
    assert all(len(p.isr) == 3 for p in topic.partitions), topic.partitions


@pytest.mark.filterwarnings(
    "ignore:(read|open)_text is deprecated:DeprecationWarning"
)  # kafka-python
def test_a_kafka_client_on_the_host_produces_and_consumes_through_kafka_external(
    deployment: Deployment,
) -> None:
    """kafka-python through the published KAFKA_EXTERNAL ports: Metadata on that listener
    names 127.0.0.1 and the published Kafka ports (the broker-N:39092 of KAFKA_INTERNAL
    would not resolve from the host)."""
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

    bootstrap = [f"127.0.0.1:{deployment.kafka_ports[b]}" for b in BROKERS]
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    try:
        for i in range(10):
            producer.send("deploy-kafka", key=b"k", value=f"kafka-{i}".encode()).get(timeout=30)
    finally:
        producer.close(timeout=10)
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, consumer_timeout_ms=15_000)
    try:
        partitions = consumer.partitions_for_topic("deploy-kafka") or set()
        consumer.assign([TopicPartition("deploy-kafka", p) for p in partitions])
        consumer.seek_to_beginning()
        values = [r.value for r in consumer]
    finally:
        consumer.close()
    assert sorted(values) == sorted(f"kafka-{i}".encode() for i in range(10))
    advertised = {f"{b.host}:{b.port}" for b in consumer._client.cluster.brokers()}
    assert advertised == set(bootstrap), advertised


def test_a_partition_leader_killed_inside_its_container_restarts_and_rejoins_the_isr(
    deployment: Deployment,
) -> None:
    d = deployment
    with Admin(d.bootstrap) as admin:
        admin.create_topic(
            "deploy-kill", partitions=1, replication_factor=3, configs={"min.insync.replicas": "2"}
        )
    with Producer(
        d.bootstrap, "deploy-kill", write_timeout_ms=60_000, max_attempts=200
    ) as producer:
        producer.wait_acknowledged(200, what="before the kill")
        with Admin(d.bootstrap) as admin:
            [topic] = admin.describe_topics("deploy-kill")
        leader = topic.partitions[0].leader
        victim = f"broker-{leader}"
        restarts_before = d.restart_count(victim)
        # SIGKILL of the raftmq process: the only child of the container's docker-init.
        # (`docker kill` would be a manual stop, which restart policies leave stopped.)
        d.exec(victim, "sh", "-c", "kill -9 $(cat /proc/1/task/1/children)")
        at_kill = len(producer.acknowledged)
        producer.wait_acknowledged(at_kill + 300, what=f"after the kill of {victim}")
        wait_for(
            lambda: (
                d.restart_count(victim) > restarts_before
                and d.inspect(victim, "{{.State.Running}}") == "true"
            ),
            timeout_s=RESTART_TIMEOUT_S,
            what=f"{victim} restarted by its restart policy",
            detail=lambda: d.diagnostics((victim,)),
        )
        d.wait_healthy((victim,), timeout_s=RESTART_TIMEOUT_S)

        def back_in_isr() -> bool:
            with Admin(d.bootstrap) as admin:
                [topic] = admin.describe_topics("deploy-kill")
            return leader in topic.partitions[0].isr

        wait_for(back_in_isr, timeout_s=ISR_TIMEOUT_S, what=f"{victim} back in the ISR")
        after_rejoin = len(producer.acknowledged)
        producer.wait_acknowledged(after_rejoin + 100, what="after the rejoin")
    assert not producer.failed or {v for v, _ in producer.failed}.isdisjoint(producer.acknowledged)
    check_nothing_lost(d.bootstrap, "deploy-kill", 1, producer)
    check_every_node_healthy_with_metrics(d)


def test_compose_stop_of_a_broker_is_a_controlled_shutdown(deployment: Deployment) -> None:
    d = deployment
    with Admin(d.bootstrap) as admin:
        admin.create_topic(
            "deploy-stop", partitions=3, replication_factor=3, configs={"min.insync.replicas": "2"}
        )
        [topic] = admin.describe_topics("deploy-stop")
    leader = topic.partitions[0].leader
    victim = f"broker-{leader}"
    # The stopped broker is not a bootstrap broker of the Writer: a client whose only
    # address goes away is another test.
    others = [f"127.0.0.1:{d.broker_ports[b]}" for b in BROKERS if b != victim]
    with Producer(others, "deploy-stop") as producer:
        producer.wait_acknowledged(200, what="before the stop")
        started = time.monotonic()
        d.compose("stop", victim, timeout_s=STOP_TIMEOUT_S)
        stop_s = time.monotonic() - started
        at_stop = len(producer.acknowledged)
        producer.wait_acknowledged(at_stop + 200, what=f"after the stop of {victim}")
    assert producer.failed == [], f"the Writer saw errors: {producer.failed[:5]}"
    state = d.inspect(victim, "{{.State.Status}} {{.State.ExitCode}}")
    assert state == "exited 0", f"{victim} after stop: {state} ({stop_s:.1f} s)"
    logs = d.compose("logs", "--no-color", victim).stdout
    assert "broker.shutdown_controlled" in logs, logs[-3_000:]
    with Admin(others) as admin:
        [topic] = admin.describe_topics("deploy-stop")
    assert all(p.leader != leader for p in topic.partitions), topic.partitions
    check_nothing_lost(others, "deploy-stop", 3, producer)
