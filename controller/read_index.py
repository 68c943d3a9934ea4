"""Reads that see every write answered before them, on any controller (Raft's ReadIndex).

Only the Raft leader answers writes, and it answers once *it* applied the entry; a
follower learns of the commit a moment later. A client that writes through the leader and
then reads from a follower (a broker relaying admin requests, an operator's tool) could
miss its own write. So before a follower answers a metadata read, it asks the leader for
its metadata version (a DescribeTopics of no real topic: only the version comes back) and
waits until it has applied as much. The leader answers every write after applying it,
so that version covers every write answered before the read began.

Bounded: a leader that does not answer within READ_INDEX_RPC_TIMEOUT_MS, or a follower that
does not catch up within CATCH_UP_WAIT_MS_MAX, leaves the read as local as it was (reads
stay available while the leader is cut off). A read that arrives during an election waits
up to LEADER_WAIT_MS_MAX for its outcome first. The leader itself never waits, and answers
the version probe without a barrier of its own, so two controllers that each believe the
other leads cannot chain probes.
"""

from __future__ import annotations

import threading
import time

import grpc
from raftmq import wire
from raftmq.controller.quorum import ControllerQuorum
from raftmq.v1 import controller_pb2 as pb
from raftmq.v1 import controller_pb2_grpc as rpc

READ_INDEX_RPC_TIMEOUT_MS = 500
CATCH_UP_WAIT_MS_MAX = 1_000
# A read arriving during an election waits this long at most for a leader to emerge.
LEADER_WAIT_MS_MAX = 1_000
LEADER_POLL_MS = 10
# Topic names are never empty, so this asks for the version alone.
VERSION_PROBE_NAMES = [""]


def is_version_probe(request: pb.DescribeTopicsRequest) -> bool:
    return list(request.names) == VERSION_PROBE_NAMES


class ReadIndex:
    """Called by the servicer's read handlers (gRPC threads) before reading the state."""

    def __init__(self, quorum: ControllerQuorum, stopping: threading.Event) -> None:
        self.quorum = quorum
        self.stopping = stopping
        self._lock = threading.Lock()
        # One channel per leader endpoint seen; bounded by the number of voters' endpoints.
        self._stubs: dict[str, rpc.ControllerServiceStub] = {}

    def wait_caught_up(self) -> None:
        """On a follower: wait (bounded) until this node applied what the leader had."""
        quorum = self.quorum
        self._wait_for_leader()
        if quorum.is_leader() or not quorum.has_reachable_leader():
            return
        leader_id = quorum.leader_id()
        leader = quorum.read(lambda s: s.controllers.get(leader_id))
        if leader is None:
            return
        try:
            probe = self._stub(f"{leader.host}:{leader.port}").DescribeTopics(
                pb.DescribeTopicsRequest(names=VERSION_PROBE_NAMES),
                timeout=READ_INDEX_RPC_TIMEOUT_MS / 1000,
            )
        except grpc.RpcError:
            return
        with quorum.lock:
            quorum.changed.wait_for(
                lambda: (
                    quorum.state_while_locked().version >= probe.metadata_version
                    or self.stopping.is_set()
                ),
                timeout=CATCH_UP_WAIT_MS_MAX / 1000,
            )

    def _wait_for_leader(self) -> None:
        """While an election is under way (no leader known), wait for its outcome, bounded
        by LEADER_WAIT_MS_MAX. A follower resumed from a pause longer than the election
        timeout (0.2-0.4 s) starts an election at once and forgets its leader; reading
        locally then would miss writes answered during the pause. A node cut off from
        every other keeps its last leader (see `has_reachable_leader`) and is not
        delayed; a minority of several nodes electing in vain delays a read by at most
        LEADER_WAIT_MS_MAX before answering locally."""
        deadline_s = time.monotonic() + LEADER_WAIT_MS_MAX / 1000
        # Bound: the deadline; polls every LEADER_POLL_MS.
        while self.quorum.leader_id() < 0 and time.monotonic() < deadline_s:
            if self.stopping.wait(LEADER_POLL_MS / 1000):
                return

    def _stub(self, endpoint: str) -> rpc.ControllerServiceStub:
        with self._lock:
            stub = self._stubs.get(endpoint)
            if stub is None:
                channel = grpc.insecure_channel(endpoint, options=wire.GRPC_CLIENT_OPTIONS)
                stub = self._stubs[endpoint] = rpc.ControllerServiceStub(channel)
            return stub
