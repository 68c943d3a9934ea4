"""call_with_failover against real gRPC servers on 127.0.0.1: a controller that never
answers in time (as one cut off by a network partition) costs one attempt's timeout, not
the whole call's budget, and the pool's next call starts at the controller that answered."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from raftmq import wire
from raftmq.client.controller_client import EndpointPool, call_with_failover
from raftmq.v1 import controller_pb2 as pb
from raftmq.v1 import controller_pb2_grpc

STALL_S_MAX = 10.0


class _Controller(controller_pb2_grpc.ControllerServiceServicer):
    def __init__(self, *, stalls: bool) -> None:
        self.stalls = stalls
        self.calls = 0
        self.release = threading.Event()

    def AlterPartition(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.calls += 1
        if self.stalls:  # bounded: released at teardown
            self.release.wait(STALL_S_MAX)
        return pb.AlterPartitionResponse()


@pytest.fixture
def controllers() -> Iterator[tuple[list[str], list[_Controller]]]:
    servicers = [_Controller(stalls=True), _Controller(stalls=False)]
    servers, endpoints = [], []
    for servicer in servicers:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=wire.GRPC_OPTIONS)
        controller_pb2_grpc.add_ControllerServiceServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
        endpoints.append(f"127.0.0.1:{port}")
    try:
        yield endpoints, servicers
    finally:
        for servicer in servicers:
            servicer.release.set()
        for server in servers:
            server.stop(grace=None).wait(5)


def test_a_stalled_controller_costs_one_attempt_and_the_pool_moves_on(
    controllers: tuple[list[str], list[_Controller]],
) -> None:
    (stalled, healthy), (stalled_servicer, healthy_servicer) = controllers
    pool = EndpointPool([stalled, healthy], service="controller")
    try:
        response = call_with_failover(
            pool,
            "AlterPartition",
            pb.AlterPartitionRequest(),
            timeout_ms=5_000,
            rpc_timeout_ms=1_000,
        )
        assert wire.error_from_pb(response.error) is None
        assert (stalled_servicer.calls, healthy_servicer.calls) == (1, 1)
        assert pool.order()[0] == healthy
        # The next call goes straight to the controller that answered.
        call_with_failover(pool, "AlterPartition", pb.AlterPartitionRequest(), timeout_ms=5_000)
        assert (stalled_servicer.calls, healthy_servicer.calls) == (1, 2)
    finally:
        pool.close()
