"""deploy/docker-compose.yml checked against the CLI, without Docker: every RAFTMQ_*
variable a service sets is a flag of its command, and the command accepts them as the
node would at start (cli/env_config's mapping, cli/main's listener rules); the addresses
agree (voters, controllers, listeners, published ports); every service has a hostname, a
named volume, the bridge network, a health check, a restart policy and an init; ports are
published on 127.0.0.1 only. Also the image's inputs (Dockerfile, .dockerignore) against
the package layout, and README's table of variables against the parsers.
(tests/deploy runs the same file for real.)"""

from __future__ import annotations

import argparse
import importlib.util
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from raftmq import wire
from raftmq.cli.env_config import apply_environment, flag_variables
from raftmq.cli.main import broker_listeners, build_parser, kafka_listeners, server_parser

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "deploy" / "docker-compose.yml"
CONTROLLERS = ("controller-1", "controller-2", "controller-3")
BROKERS = ("broker-1", "broker-2", "broker-3")
DATA_DIR = "/var/lib/raftmq"
STOP_GRACE_PERIOD_S_MIN = 30

# Compose's interpolation: $$, ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error},
# ${VAR?error}, $VAR.
_VARIABLE = re.compile(
    r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
    r"|\$(?P<bare>[A-Za-z_][A-Za-z0-9_]*)"
)


class MissingVariableError(KeyError):
    pass


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """`value` (a parsed compose file or part of it) with variables substituted."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group("name") or match.group("bare")
        op = match.group("op") or ""
        arg = match.group("arg") or ""
        if name in env and (env[name] != "" or not op.startswith(":")):
            return env[name]
        if op.endswith("?"):
            raise MissingVariableError(f"{name}: {arg}")
        return arg if op.endswith("-") else ""

    return _VARIABLE.sub(substitute, value)


def raw_compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return loaded


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """The file as docker-compose sees it with only the required secret set."""
    loaded: dict[str, Any] = interpolate(raw_compose(), {"RAFTMQ_RAFT_SECRET": "s3cret"})
    return loaded


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """raftmq's own services (the optional third-party ones have profiles)."""
    found: dict[str, dict[str, Any]] = {
        name: service for name, service in compose["services"].items() if "profiles" not in service
    }
    return found


def command_of(service: dict[str, Any]) -> str:
    command = service["command"]
    words = command.split() if isinstance(command, str) else list(command)
    assert len(words) == 1, f"configure through RAFTMQ_* variables, not flags: {words}"
    return str(words[0])


def parsed_args(service: dict[str, Any]) -> argparse.Namespace:
    """What `raftmq <command>` makes of the service's environment at start."""
    command = command_of(service)
    parser = build_parser()
    environment = {k: str(v) for k, v in service["environment"].items()}
    apply_environment(server_parser(parser, command), command, environment)
    return parser.parse_args([command])


def port_mappings(service: dict[str, Any]) -> list[tuple[str, int, int]]:
    """(host address, host port, container port) of each published port."""
    found = []
    for entry in service.get("ports", []):
        host, host_port, container_port = str(entry).split("/")[0].rsplit(":", 2)
        found.append((host, int(host_port), int(container_port)))
    return found


def seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    total = 0.0
    for amount, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", duration):
        total += float(amount) * units[unit]
    return total


def test_three_controllers_and_three_brokers_on_a_user_defined_bridge_network(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    assert sorted(services) == sorted(CONTROLLERS + BROKERS)
    for name, service in services.items():
        assert command_of(service) == name.split("-")[0]
        assert "network_mode" not in service, f"{name}: no host networking"
        [network] = service["networks"]
        assert compose["networks"][network]["driver"] == "bridge"


def test_every_service_has_its_hostname_volume_health_check_restart_policy_and_init(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    for name, service in services.items():
        assert service["hostname"] == name
        assert service["volumes"] == [f"{name}:{DATA_DIR}"], name
        assert name in compose["volumes"], f"{name}: a named volume, declared"
        assert service["environment"]["RAFTMQ_DATA_DIR"] == DATA_DIR
        assert service["restart"] == "unless-stopped"
        assert service["init"] is True, f"{name}: PID 1 must forward SIGTERM and reap"
        assert seconds(service["stop_grace_period"]) >= STOP_GRACE_PERIOD_S_MIN
        assert service["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}
        check = service["healthcheck"]
        assert check["test"][:3] == ["CMD", "raftmq", "health"], name
        for key in ("interval", "timeout", "start_period"):
            assert seconds(check[key]) > 0, f"{name}: healthcheck {key}"


def test_every_variable_is_a_flag_of_the_services_command_and_parses(
    services: dict[str, dict[str, Any]],
) -> None:
    parser = build_parser()
    for name, service in services.items():
        command = command_of(service)
        flags = flag_variables(server_parser(parser, command))
        for variable in service["environment"]:
            assert variable in flags, f"{name}: {variable} is no flag of raftmq {command}"
        args = parsed_args(service)  # raises on a bad value, an unknown or missing variable
        if command == "broker":
            broker_listeners(args)  # the listener rules the broker applies at start


def test_node_ids_are_unique_and_the_cluster_id_is_fixed_and_overridable(
    services: dict[str, dict[str, Any]],
) -> None:
    for role, names in (("controller", CONTROLLERS), ("broker", BROKERS)):
        ids = [parsed_args(services[n]).node_id for n in names]
        assert ids == [int(n.rsplit("-", 1)[1]) for n in names], f"{role} ids {ids}"
    cluster_ids = {parsed_args(s).cluster_id for s in services.values()}
    assert len(cluster_ids) == 1 and "" not in cluster_ids, cluster_ids
    for name in services:
        raw = _raw_environment(name)["RAFTMQ_CLUSTER_ID"]
        assert raw.startswith("${RAFTMQ_CLUSTER_ID:-"), f"{name}: {raw}"
        assert "RAFTMQ_CLUSTER_ID" in raw, name


def _raw_environment(name: str) -> dict[str, str]:
    environment: dict[str, str] = raw_compose()["services"][name]["environment"]
    return environment


def test_the_raft_secret_comes_from_the_environment_and_only_controllers_get_it() -> None:
    for name in CONTROLLERS:
        raw = _raw_environment(name)["RAFTMQ_RAFT_SECRET"]
        assert raw.startswith("${RAFTMQ_RAFT_SECRET:?"), f"{name}: {raw}"
    for name in BROKERS:
        assert "RAFTMQ_RAFT_SECRET" not in _raw_environment(name)
    with pytest.raises(MissingVariableError, match="RAFTMQ_RAFT_SECRET"):
        interpolate(raw_compose(), {})


def test_voters_and_controller_addresses_agree_with_the_controllers(
    services: dict[str, dict[str, Any]],
) -> None:
    controllers = {n: parsed_args(services[n]) for n in CONTROLLERS}
    voters = {c.voters for c in controllers.values()}
    assert len(voters) == 1, f"every controller must be told the same voters: {voters}"
    expected_voters = []
    advertised = []
    for name, args in controllers.items():
        raft_port = wire.parse_host_port(args.raft_listen)[1]
        grpc_port = wire.parse_host_port(args.listen)[1]
        expected_voters.append(f"{args.node_id}@{name}:{raft_port}")
        assert args.advertise == f"{name}:{grpc_port}", name
        advertised.append(args.advertise)
    assert voters == {",".join(expected_voters)}
    for name in BROKERS:
        controllers_of_broker = parsed_args(services[name]).controllers.split(",")
        assert sorted(controllers_of_broker) == sorted(advertised), name


def test_brokers_listen_internally_by_name_and_externally_on_their_published_port(
    services: dict[str, dict[str, Any]],
) -> None:
    external_ports = set()
    for name in BROKERS:
        service = services[name]
        listeners, _, inter_broker = broker_listeners(parsed_args(service))
        by_name = {listener.name: listener for listener in listeners}
        assert set(by_name) == {"INTERNAL", "EXTERNAL"}, name
        internal, external = by_name["INTERNAL"], by_name["EXTERNAL"]
        assert internal.advertise == (name, internal.bind[1])
        assert inter_broker == internal.advertise, f"{name}: brokers talk over INTERNAL"
        published = {c: (h, p) for h, p, c in port_mappings(service)}
        assert published[external.bind[1]] == external.advertise, (
            f"{name}: EXTERNAL advertises {external.advertise}, published {published}"
        )
        assert external.advertise[0] == "127.0.0.1"
        external_ports.add(external.advertise[1])
        assert internal.bind[1] not in published, f"{name}: INTERNAL stays on the network"
    assert len(external_ports) == len(BROKERS)


def test_brokers_speak_kafka_internally_by_name_and_externally_on_their_published_port(
    services: dict[str, dict[str, Any]],
) -> None:
    external_ports = set()
    for name in BROKERS:
        service = services[name]
        by_name = {x.name: x for x in kafka_listeners(parsed_args(service))}
        assert set(by_name) == {"KAFKA_INTERNAL", "KAFKA_EXTERNAL"}, name
        internal, external = by_name["KAFKA_INTERNAL"], by_name["KAFKA_EXTERNAL"]
        assert internal.advertise == (name, internal.bind[1])
        published = {c: (h, p) for h, p, c in port_mappings(service)}
        assert published[external.bind[1]] == external.advertise, name
        assert external.advertise[0] == "127.0.0.1"
        external_ports.add(external.advertise[1])
        assert internal.bind[1] not in published, f"{name}: KAFKA_INTERNAL stays on the network"
    assert len(external_ports) == len(BROKERS)


def test_kafka_ui_is_an_optional_profile_on_the_brokers_kafka_internal_listeners(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    ui = compose["services"]["kafka-ui"]
    assert ui["profiles"] == ["ui"]  # never started by a plain `up`
    assert ui["networks"] == ["raftmq"]
    internal = {
        f"{name}:{x.advertise[1]}"
        for name in BROKERS
        for x in kafka_listeners(parsed_args(services[name]))
        if x.name == "KAFKA_INTERNAL"
    }
    assert set(ui["environment"]["KAFKA_CLUSTERS_0_BOOTSTRAPSERVERS"].split(",")) == internal
    assert [host for host, _, _ in port_mappings(ui)] == ["127.0.0.1"]


def test_ports_are_published_on_loopback_only_and_metrics_ports_are_published(
    services: dict[str, dict[str, Any]],
) -> None:
    host_ports = []
    for name, service in services.items():
        mappings = port_mappings(service)
        assert mappings, f"{name}: at least its metrics port is published"
        for host, host_port, _ in mappings:
            assert host == "127.0.0.1", f"{name}: {host}:{host_port} is not loopback"
            host_ports.append(host_port)
        metrics = parsed_args(service).metrics_listen
        assert metrics, f"{name}: RAFTMQ_METRICS_LISTEN"
        assert wire.parse_host_port(metrics)[1] in {c for _, _, c in mappings}, name
    assert len(host_ports) == len(set(host_ports)), f"host ports used twice: {host_ports}"


def test_health_checks_ask_the_nodes_own_grpc_port(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        test = service["healthcheck"]["test"]
        probe = build_parser().parse_args(test[2:])  # `raftmq health ...` parses
        host, port = wire.parse_host_port(probe.address)
        assert host == "127.0.0.1"
        args = parsed_args(service)
        if command_of(service) == "controller":
            ports = {wire.parse_host_port(args.listen)[1]}
        else:
            ports = {x.bind[1] for x in broker_listeners(args)[0]}
        assert port in ports, f"{name}: health check on {port}, node listens on {ports}"


def test_brokers_start_after_healthy_controllers(services: dict[str, dict[str, Any]]) -> None:
    for name in BROKERS:
        assert services[name]["depends_on"] == {
            c: {"condition": "service_healthy"} for c in CONTROLLERS
        }, name
    for name in CONTROLLERS:
        assert "depends_on" not in services[name]


def test_the_image_is_built_from_every_package_folder_and_nothing_else() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    folders = {p.split("/")[0] for p in pyproject["tool"]["setuptools"]["package-dir"].values()}
    ignore = [line for line in (REPO / ".dockerignore").read_text().split("\n") if line]
    rules = [line for line in ignore if not line.startswith("#")]
    assert rules[0] == "*", "everything is left out of the build context first"
    allowed = {line[1:] for line in rules if line.startswith("!")}
    missing = (folders | {"pyproject.toml", "setup.py", "README.md"}) - allowed
    assert not missing, f".dockerignore leaves out {sorted(missing)}, which the package needs"
    dockerfile = (REPO / "deploy" / "Dockerfile").read_text()
    assert re.search(r"^COPY \. \.$", dockerfile, flags=re.MULTILINE)
    assert re.search(r"^USER raftmq$", dockerfile, flags=re.MULTILINE)
    assert re.search(r"^HEALTHCHECK .*raftmq health", dockerfile, flags=re.MULTILINE | re.DOTALL)
    assert re.search(r"^VOLUME /var/lib/raftmq$", dockerfile, flags=re.MULTILINE)
    assert 'ENTRYPOINT ["raftmq"]' in dockerfile


def _env_table() -> ModuleType:
    spec = importlib.util.spec_from_file_location("env_table", REPO / "deploy" / "env_table.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_readme_table_lists_every_server_flag_as_generated_from_the_parsers() -> None:
    env_table = _env_table()
    readme_table = env_table.readme_table((REPO / "README.md").read_text())
    listed = set(re.findall(r"^\| `(RAFTMQ_[A-Z0-9_]+)` \|", readme_table, flags=re.MULTILINE))
    parser = build_parser()
    for command in ("controller", "broker"):
        missing = set(flag_variables(server_parser(parser, command))) - listed
        assert not missing, f"README's table lacks raftmq {command}'s {sorted(missing)}"
    assert readme_table == env_table.table(), (
        "README's table of variables is stale: python deploy/env_table.py --write"
    )
