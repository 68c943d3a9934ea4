"""Server flags from RAFTMQ_* environment variables: every flag has one, a flag wins, an
unknown variable or a bad value is an error."""

from __future__ import annotations

import pytest
from raftmq.cli.env_config import (
    apply_environment,
    flag_variables,
    refuse_node_variables_for_up,
    variable_of,
)
from raftmq.cli.main import build_parser, main, server_parser


def parse(command: str, argv: list[str], environ: dict[str, str]) -> object:
    parser = build_parser()
    apply_environment(server_parser(parser, command), command, environ)
    return parser.parse_args([command, *argv])


def test_every_flag_of_the_servers_has_a_variable() -> None:
    parser = build_parser()
    for command in ("controller", "broker"):
        sub = server_parser(parser, command)
        variables = flag_variables(sub)
        longs = {
            o
            for a in sub._actions
            for o in a.option_strings
            if o.startswith("--") and not o.startswith("--no-") and o != "--help"
        }
        assert {variable_of(o) for o in longs} == set(variables)
    assert variable_of("--advertised-listeners") == "RAFTMQ_ADVERTISED_LISTENERS"


def test_variables_set_flags_and_flags_win() -> None:
    env = {
        "RAFTMQ_NODE_ID": "3",
        "RAFTMQ_CONTROLLERS": "c1:19092",
        "RAFTMQ_DATA_DIR": "/data",
        "RAFTMQ_LISTENERS": "INTERNAL://0.0.0.0:9092",
        "RAFTMQ_AUTO_CREATE_TOPICS": "false",
        "RAFTMQ_BOOTSTRAP": "ignored:1",  # a program variable, not a flag: allowed
    }
    args = parse("broker", [], env)
    assert args.node_id == 3 and args.controllers == "c1:19092"  # type: ignore[attr-defined]
    assert args.auto_create_topics is False  # type: ignore[attr-defined]
    args = parse("broker", ["--node-id", "5"], env)
    assert args.node_id == 5  # type: ignore[attr-defined]


def test_an_unknown_variable_is_an_error_naming_it() -> None:
    with pytest.raises(ValueError, match="RAFTMQ_LISTENER "):
        parse("broker", [], {"RAFTMQ_LISTENER": "x"})
    # A broker's variable is unknown to a controller.
    with pytest.raises(ValueError, match="RAFTMQ_CONTROLLERS"):
        parse("controller", [], {"RAFTMQ_CONTROLLERS": "x"})


def test_bad_values_are_errors() -> None:
    with pytest.raises(ValueError, match="RAFTMQ_NODE_ID"):
        parse("broker", [], {"RAFTMQ_NODE_ID": "one"})
    with pytest.raises(ValueError, match="expected one of"):
        parse("broker", [], {"RAFTMQ_FLUSH_POLICY": "sometimes"})
    with pytest.raises(ValueError, match="true or false"):
        parse("broker", [], {"RAFTMQ_AUTO_CREATE_TOPICS": "perhaps"})


def test_main_reports_an_unknown_variable_and_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RAFTMQ_NODE_IDD", "1")
    assert main(["broker"]) == 2
    assert "unknown environment variable RAFTMQ_NODE_IDD" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("name", "said"),
    [
        (
            "RAFTMQ_LOG_DIRECT_IO",
            "sets a flag of raftmq broker only, and raftmq up starts every node with its "
            "environment: unset it, and use raftmq up --log-direct-io",
        ),
        ("RAFTMQ_VOTERS", "sets a flag of raftmq controller only"),
        ("RAFTMQ_LISTENR", "sets no flag of any node"),
    ],
)
def test_up_refuses_a_variable_that_some_of_its_nodes_would_refuse(
    name: str, said: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`raftmq up` hands its environment to every node: a broker-only variable would make
    its controllers exit at start, and be restarted forever. It says so before starting."""
    monkeypatch.setenv(name, "1")
    assert main(["up", "--data-dir", "/nonexistent/never-created"]) == 2
    err = capsys.readouterr().err
    assert f"environment variable {name} {said}" in err
    assert "raftmq up starts every node with its environment" in err


def test_up_passes_on_variables_every_node_takes() -> None:
    parser = build_parser()
    up = server_parser(parser, "up")
    parsers = {c: server_parser(parser, c) for c in ("controller", "broker")}
    refuse_node_variables_for_up(
        up,
        parsers,
        {"RAFTMQ_LOG_JSON": "true", "RAFTMQ_CLUSTER_ID": "c", "RAFTMQ_BOOTSTRAP": "h:1"},
    )
    refuse_node_variables_for_up(up, parsers, {"RAFTMQ_CHAOS_SEED": "1", "PATH": "/bin"})
