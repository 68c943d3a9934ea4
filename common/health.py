"""The standard gRPC services every raftmq node serves beside its own: health checking
(`grpc.health.v1`, so that Docker health checks, load balancers and grpcurl work) and
server reflection (so that grpcurl can list and call the API without the .proto files).

Health: the service "" stands for the node as a whole, and each raftmq service has its own
name (`raftmq.v1.BrokerService`, `raftmq.v1.ControllerService`) with the same status.
`probe()` is the client side, used by `raftmq health` (the image's HEALTHCHECK)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

NODE = ""
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def add_standard_services(server: Any, services: Sequence[str], servicer: Any) -> None:
    """Health (`servicer`: a sync or aio HealthServicer, matching `server`) and reflection
    for `services` on `server`."""
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    reflection.enable_server_reflection(
        [*services, health.SERVICE_NAME, reflection.SERVICE_NAME], server
    )


class AsyncNodeHealth:
    """The health of a node whose servers are grpc.aio (brokers): one servicer shared by
    all its listeners. Starts NOT_SERVING."""

    def __init__(self, services: Sequence[str]) -> None:
        self.services = (NODE, *services)
        self.servicer = health_aio.HealthServicer()
        self.serving: bool | None = None

    async def set_serving(self, serving: bool) -> None:
        if serving == self.serving:
            return
        self.serving = serving
        for service in self.services:
            await self.servicer.set(service, SERVING if serving else NOT_SERVING)

    async def shutting_down(self) -> None:
        """NOT_SERVING from now on, whatever is set later (controlled shutdown)."""
        await self.set_serving(False)
        await self.servicer.enter_graceful_shutdown()


class NodeHealth:
    """The same for a node with a sync server (controllers)."""

    def __init__(self, services: Sequence[str]) -> None:
        self.services = (NODE, *services)
        self.servicer = health.HealthServicer()
        self.serving: bool | None = None

    def set_serving(self, serving: bool) -> None:
        if serving == self.serving:
            return
        self.serving = serving
        for service in self.services:
            self.servicer.set(service, SERVING if serving else NOT_SERVING)

    def shutting_down(self) -> None:
        self.serving = False
        self.servicer.enter_graceful_shutdown()


def probe(address: str, *, service: str = NODE, timeout_ms: int = 3_000) -> str:
    """The serving status of `service` at HOST:PORT, by name (SERVING, NOT_SERVING,
    SERVICE_UNKNOWN, ...), or "UNREACHABLE"."""
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            response = stub.Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout_ms / 1000
            )
        except grpc.RpcError as e:
            code = e.code() if hasattr(e, "code") else None
            if code == grpc.StatusCode.NOT_FOUND:
                return "SERVICE_UNKNOWN"
            return "UNREACHABLE"
    name: str = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    return name
