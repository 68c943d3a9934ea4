"""A private Docker engine for the deploy tests (shared/containers.md): dockerd on its own
socket, data root, exec root and pid file under one temporary directory, started and
stopped by its PID, with every wait bounded.

Docker turns on `net.ipv4.ip_forward` and, when it is the one that turned it on, sets the
host's iptables FORWARD policy to DROP, which would cut bridged traffic of other tests on
this machine (the chaos suite's network namespaces). So the engine turns ip_forward on
itself before dockerd starts, and puts back what it changed when it stops: ip_forward, the
bridge netfilter switches, the FORWARD policy, a docker0 bridge and the iptables rules and
chains dockerd made (only when no other engine's were there before).

`unavailable_reason()` says why no engine can run here (not root, docker.io missing, ...);
the tests skip with that reason rather than pass.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ENGINE_START_TIMEOUT_S = 60
ENGINE_STOP_TIMEOUT_S = 30
COMMAND_TIMEOUT_S = 120
LOG_TAIL_LINES = 40

IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")
BRIDGE_NF = (
    Path("/proc/sys/net/bridge/bridge-nf-call-iptables"),
    Path("/proc/sys/net/bridge/bridge-nf-call-ip6tables"),
)
# What .ci/run installs (Debian's docker.io, docker-compose 1.29, mmdebstrap, iptables).
PACKAGES = "docker.io docker-compose mmdebstrap iptables"


class CommandError(RuntimeError):
    """A docker / docker-compose command failed or timed out; carries its output."""


@dataclass(frozen=True)
class Tools:
    dockerd: str
    docker: str  # the CLI of the same package as dockerd, so client and engine agree
    compose: str
    mmdebstrap: str
    iptables: str


def find_tools() -> Tools | str:
    """The engine's programs, or why they cannot be used here."""
    if os.geteuid() != 0:
        return "the deploy tests start dockerd, which needs root"
    found: dict[str, str] = {}
    # Debian's docker CLI sits beside its dockerd; a newer CLI elsewhere on PATH would build
    # through BuildKit and speak another API version.
    candidates = {
        "dockerd": ["/usr/sbin/dockerd", "dockerd"],
        "docker": ["/usr/bin/docker", "docker"],
        "compose": ["/usr/bin/docker-compose", "docker-compose"],
        "mmdebstrap": ["/usr/bin/mmdebstrap", "mmdebstrap"],
        "iptables": ["/usr/sbin/iptables", "iptables"],
    }
    missing = []
    for name, paths in candidates.items():
        path = next((p for p in (shutil.which(c) for c in paths) if p), None)
        if path is None:
            missing.append(paths[-1])
        else:
            found[name] = path
    if missing:
        return f"{', '.join(missing)} not found (.ci/run installs: apt-get install {PACKAGES})"
    return Tools(**found)


def unavailable_reason() -> str | None:
    tools = find_tools()
    return tools if isinstance(tools, str) else None


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _write(path: Path, value: str) -> None:
    with contextlib.suppress(OSError):
        path.write_text(value + "\n")


def _link_exists(name: str) -> bool:
    return Path("/sys/class/net", name).exists()


def pid_alive(pid: int) -> bool:
    """Is `pid` a live (not zombie) process?"""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def stop_pid(pid: int, *, timeout_s: float) -> None:
    """SIGTERM `pid`, then SIGKILL if it is still alive after `timeout_s`."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if pid_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@dataclass
class HostState:
    """What dockerd may change on the host, as it was before it started."""

    ip_forward: str | None
    bridge_nf: dict[Path, str | None]
    forward_policy: str | None  # "ACCEPT" / "DROP" of iptables' filter FORWARD chain
    docker0_existed: bool
    docker_chains_existed: bool  # another engine's iptables rules, never touched then

    @classmethod
    def read(cls, iptables: str) -> HostState:
        return cls(
            ip_forward=_read(IP_FORWARD),
            bridge_nf={p: _read(p) for p in BRIDGE_NF},
            forward_policy=_forward_policy(iptables),
            docker0_existed=_link_exists("docker0"),
            docker_chains_existed=bool(_docker_rules(iptables)),
        )

    def restore(self, iptables: str) -> list[str]:
        """Put back what changed; returns what was put back (for the test's output)."""
        restored = []
        if self.ip_forward is not None and _read(IP_FORWARD) != self.ip_forward:
            _write(IP_FORWARD, self.ip_forward)
            restored.append(f"net.ipv4.ip_forward={self.ip_forward}")
        for path, before in self.bridge_nf.items():
            # Absent before: br_netfilter was loaded by dockerd; switch it off again.
            wanted = before if before is not None else "0"
            now = _read(path)
            if now is not None and now != wanted:
                _write(path, wanted)
                restored.append(f"{path.name}={wanted}")
        policy = _forward_policy(iptables)
        if self.forward_policy and policy and policy != self.forward_policy:
            _run([iptables, "-P", "FORWARD", self.forward_policy], timeout_s=10, check=False)
            restored.append(f"iptables FORWARD policy {self.forward_policy}")
        if not self.docker0_existed and _link_exists("docker0"):
            _run(["ip", "link", "delete", "docker0"], timeout_s=10, check=False)
            restored.append("docker0 removed")
        if not self.docker_chains_existed:
            removed = _remove_docker_rules(iptables)
            if removed:
                restored.append(f"{removed} iptables rules and chains of dockerd removed")
        return restored


def _docker_rules(iptables: str) -> list[tuple[str, list[str]]]:
    """(table, `iptables -S` words) of every rule and chain dockerd made: in a DOCKER*
    chain, jumping to one, or naming docker0."""
    found = []
    for table in ("filter", "nat"):
        listing = _run([iptables, "-t", table, "-S"], timeout_s=10, check=False).stdout
        for line in listing.splitlines():
            words = line.split()
            if (
                len(words) >= 2
                and words[0] in ("-N", "-A")
                and (
                    words[1].startswith("DOCKER")
                    or any(w == "docker0" or w.startswith("DOCKER") for w in words[2:])
                )
            ):
                found.append((table, words))
    return found


def _remove_docker_rules(iptables: str) -> int:
    """Delete what `_docker_rules` finds (rules first, then the emptied chains)."""
    rules = _docker_rules(iptables)
    for table, words in rules:
        if words[0] == "-A":
            _run([iptables, "-t", table, "-D", *words[1:]], timeout_s=10, check=False)
    for table, words in rules:
        if words[0] == "-N":
            _run([iptables, "-t", table, "-F", words[1]], timeout_s=10, check=False)
    for table, words in rules:
        if words[0] == "-N":
            _run([iptables, "-t", table, "-X", words[1]], timeout_s=10, check=False)
    return len(rules)


def _forward_policy(iptables: str) -> str | None:
    result = _run([iptables, "-S", "FORWARD"], timeout_s=10, check=False)
    for line in result.stdout.splitlines():
        parts = line.split()
        if parts[:2] == ["-P", "FORWARD"] and len(parts) == 3:
            return parts[2]
    return None


def _run(
    args: Sequence[str],
    *,
    timeout_s: float,
    check: bool = True,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command to completion within `timeout_s` (its process group is killed on a
    timeout: the command's own children, by the group's id)."""
    process = subprocess.Popen(
        list(args),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=dict(env) if env is not None else None,
        cwd=cwd,
        start_new_session=True,
    )
    try:
        stdout, _ = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        stdout, _ = process.communicate(timeout=10)
        raise CommandError(
            f"timed out after {timeout_s:.0f} s: {' '.join(args)}\n{stdout[-4000:]}"
        ) from None
    result = subprocess.CompletedProcess(list(args), process.returncode, stdout, "")
    if check and result.returncode != 0:
        raise CommandError(f"exit {result.returncode}: {' '.join(args)}\n{stdout[-4000:]}")
    return result


@dataclass
class DockerEngine:
    """dockerd under `root`. `start()` raises EngineUnavailableError when it does not come up;
    `stop()` is safe to call in any state, more than once."""

    tools: Tools
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="raftmq-docker-")))
    process: subprocess.Popen[bytes] | None = None
    host_state: HostState | None = None

    @property
    def socket(self) -> Path:
        return self.root / "docker.sock"

    @property
    def log_path(self) -> Path:
        return self.root / "dockerd.log"

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """The environment for docker, docker-compose and the scripts that call them."""
        env = dict(os.environ)
        env.update(
            DOCKER_HOST=f"unix://{self.socket}",
            DOCKER=self.tools.docker,
            # docker-compose 1.29 builds through the docker CLI by default; through the
            # engine's API instead, whichever CLI is first on PATH.
            COMPOSE_DOCKER_CLI_BUILD="0",
            DOCKER_BUILDKIT="0",
        )
        env.update(extra or {})
        return env

    def start(self) -> None:
        self.host_state = HostState.read(self.tools.iptables)
        # Turned on by us, so dockerd leaves the FORWARD policy alone (see the module doc).
        _write(IP_FORWARD, "1")
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [
                    self.tools.dockerd,
                    "--host",
                    f"unix://{self.socket}",
                    "--data-root",
                    str(self.root / "data"),
                    "--exec-root",
                    str(self.root / "exec"),
                    "--pidfile",
                    str(self.root / "dockerd.pid"),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + ENGINE_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise EngineUnavailableError(
                    f"dockerd exited with {self.process.returncode}:\n{self.log_tail()}"
                )
            if self.socket.exists():
                result = _run(
                    [self.tools.docker, "version", "--format", "{{.Server.Version}}"],
                    timeout_s=10,
                    check=False,
                    env=self.env(),
                )
                if result.returncode == 0:
                    return
            time.sleep(0.25)
        raise EngineUnavailableError(
            f"dockerd did not answer within {ENGINE_START_TIMEOUT_S} s:\n{self.log_tail()}"
        )

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no dockerd log)"

    def run(
        self,
        *args: str,
        timeout_s: float = COMMAND_TIMEOUT_S,
        check: bool = True,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Any command with this engine's environment (plus `env`)."""
        return _run(args, timeout_s=timeout_s, check=check, env=self.env(env), cwd=cwd)

    def docker(
        self, *args: str, timeout_s: float = COMMAND_TIMEOUT_S, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return self.run(self.tools.docker, *args, timeout_s=timeout_s, check=check)

    def stop(self) -> list[str]:
        """Stop dockerd (and the containerd it started) by PID, put the host back, remove
        the temporary directory. Returns what was restored on the host."""
        containerd_pid_file = self.root / "exec" / "containerd" / "containerd.pid"
        containerd_pid = _read(containerd_pid_file)
        if self.process is not None and self.process.poll() is None:
            stop_pid(self.process.pid, timeout_s=ENGINE_STOP_TIMEOUT_S)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=10)
        # dockerd stops its containerd; after a SIGKILL of dockerd it would be left over.
        if containerd_pid and containerd_pid.isdigit() and pid_alive(int(containerd_pid)):
            stop_pid(int(containerd_pid), timeout_s=ENGINE_STOP_TIMEOUT_S)
        restored: list[str] = []
        if self.host_state is not None:
            restored = self.host_state.restore(self.tools.iptables)
            self.host_state = None
        if self.root.exists() and not self._mounts_below_root():
            shutil.rmtree(self.root, ignore_errors=True)
        return restored

    def _mounts_below_root(self) -> list[str]:
        """Mount points left under `root` (never deleted through: the tree is kept then)."""
        prefix = str(self.root) + "/"
        try:
            lines = Path("/proc/self/mounts").read_text().splitlines()
        except OSError:
            return []
        return [m for m in (line.split()[1] for line in lines) if m.startswith(prefix)]


class EngineUnavailableError(RuntimeError):
    """dockerd could not start here; the message says why."""
