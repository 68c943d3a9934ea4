"""Server flags from the environment: every flag `--some-flag` of `raftmq controller` and
`raftmq broker` can be set as `RAFTMQ_SOME_FLAG` (containers and compose files configure
nodes this way). A flag on the command line wins over its variable. A `RAFTMQ_*` variable
that is neither a flag of the command nor one of the few the whole program reads is an
error, so that a typo (`RAFTMQ_LISTENER=`) is never silently ignored.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping

PREFIX = "RAFTMQ_"
# Variables read elsewhere (not flags): the client bootstrap, logging, the launcher pipe,
# the codec switch, the test and chaos knobs.
PROGRAM_VARIABLES = frozenset(
    {"RAFTMQ_BOOTSTRAP", "RAFTMQ_LOG_LEVEL", "RAFTMQ_PARENT_FD", "RAFTMQ_PURE_PYTHON_CODEC"}
)
PROGRAM_PREFIXES = ("RAFTMQ_CHAOS_",)

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def variable_of(option: str) -> str:
    """`--node-id` -> `RAFTMQ_NODE_ID`."""
    return PREFIX + option.lstrip("-").replace("-", "_").upper()


def names_a_flag(name: str) -> bool:
    """Whether environment variable `name` must set a flag: a `RAFTMQ_*` variable that is
    not one the program itself reads."""
    return (
        name.startswith(PREFIX)
        and name not in PROGRAM_VARIABLES
        and not name.startswith(PROGRAM_PREFIXES)
    )


def flag_variables(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Variable name -> the flag's action, for every long flag of `parser`."""
    found: dict[str, argparse.Action] = {}
    for action in parser._actions:
        longs = [
            o for o in action.option_strings if o.startswith("--") and not o.startswith("--no-")
        ]
        if longs and not isinstance(action, argparse._HelpAction):
            found[variable_of(longs[0])] = action
    return found


def apply_environment(
    parser: argparse.ArgumentParser, command: str, environ: Mapping[str, str]
) -> None:
    """Set `parser`'s defaults from `environ` (before parsing). Raises ValueError naming an
    unknown `RAFTMQ_*` variable or a value its flag does not accept."""
    flags = flag_variables(parser)
    for name in sorted(environ):
        if not names_a_flag(name):
            continue
        action = flags.get(name)
        if action is None:
            known = ", ".join(sorted(flags))
            raise ValueError(
                f"unknown environment variable {name} for raftmq {command} (it sets no flag; "
                f"the flags' variables are: {known})"
            )
        parser.set_defaults(**{action.dest: _convert(action, name, environ[name])})
        # Set by the environment: no longer missing from the command line.
        action.required = False


def refuse_node_variables_for_up(
    up: argparse.ArgumentParser,
    parsers: Mapping[str, argparse.ArgumentParser],
    environ: Mapping[str, str],
) -> None:
    """`raftmq up` (parser `up`) starts every node with its own environment, and `parsers`
    (command -> parser) are the kinds of node it starts. A `RAFTMQ_*` variable that some of
    them do not take would make those nodes refuse to start, and be restarted again and
    again: raises ValueError naming it, and up's own flag for it if there is one, before
    anything starts."""
    up_flags = flag_variables(up)
    accepted = {command: flag_variables(parser) for command, parser in parsers.items()}
    for name in sorted(environ):
        if not names_a_flag(name):
            continue
        takers = [command for command, flags in accepted.items() if name in flags]
        if len(takers) == len(accepted):
            continue  # every node takes it (RAFTMQ_LOG_JSON, RAFTMQ_CLUSTER_ID, ...)
        what = (
            f"sets a flag of raftmq {' and '.join(takers)} only"
            if takers
            else "sets no flag of any node"
        )
        up_flag = up_flags.get(name)
        instead = f", and use raftmq up {up_flag.option_strings[0]}" if up_flag else ""
        raise ValueError(
            f"environment variable {name} {what}, and raftmq up starts every node with its "
            f"environment: unset it{instead}"
        )


def _convert(action: argparse.Action, name: str, text: str) -> object:
    if isinstance(action, argparse.BooleanOptionalAction) or action.nargs == 0:
        lowered = text.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise ValueError(f"{name}={text!r}: expected true or false")
    value: object = text
    if action.type is not None:
        try:
            value = action.type(text)  # type: ignore[operator]
        except (TypeError, ValueError) as e:
            raise ValueError(f"{name}={text!r}: {e}") from None
    if action.choices is not None and value not in action.choices:
        choices = ", ".join(map(str, action.choices))
        raise ValueError(f"{name}={text!r}: expected one of {choices}")
    return value
