"""Topic administration a broker does for its clients, forwarded to the controller quorum:
create (on request, or automatically when a client asks for a missing topic) and delete.

Both front doors use it — the gRPC servicer and the Kafka listener — so a topic created
through either gets the same defaults and the same log events. The controller validates
names, counts and configs; this module only relays and reports. Runs on the broker's loop.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import structlog
from raftmq import wire
from raftmq.broker.controller_link import ControllerLink
from raftmq.errors import ErrorCode, RaftmqError
from raftmq.v1 import common_pb2 as cpb
from raftmq.v1 import controller_pb2 as ctl

ADMIN_TIMEOUT_MS = 15_000


@dataclass(frozen=True, slots=True)
class TopicDefaults:
    """What an automatically created topic gets (`raftmq broker --default-partitions`, ...)."""

    auto_create: bool = True
    partitions: int = 1
    replication_factor: int = 1


class TopicAdmin:
    def __init__(
        self, *, broker_id: int, controllers: ControllerLink, defaults: TopicDefaults
    ) -> None:
        self.controllers = controllers
        self.defaults = defaults
        self.log = structlog.get_logger("raftmq.broker").bind(node_id=broker_id)

    async def create(
        self,
        name: str,
        *,
        partitions: int,
        replication_factor: int,
        configs: Mapping[str, str] | None = None,
    ) -> tuple[RaftmqError | None, cpb.Topic | None]:
        """Create a topic; (None, the topic) or (the error, None)."""
        response = await self.forward(
            "CreateTopic",
            ctl.CreateTopicRequest(
                name=name,
                partitions=partitions,
                replication_factor=replication_factor,
                configs=dict(configs or {}),
                # A fresh id each time: after a delete, a reused one would be answered from
                # the controller's dedupe cache ("created") and create nothing.
                request_id=f"create-{name}-{uuid.uuid4().hex}",
            ),
            ctl.CreateTopicResponse,
        )
        error = wire.error_from_pb(response.error)
        if error is not None:
            return error, None
        return None, response.topic

    async def auto_create(self, name: str) -> RaftmqError | None:
        """Create a missing topic with the cluster's defaults (Kafka's
        auto.create.topics.enable). It shows in a later Metadata answer, once the broker's
        metadata has it. A failure (a bad name, a reserved one) is logged: the topic then
        stays missing and the client reports UNKNOWN_TOPIC_OR_PARTITION. Returns that
        error, or None when the topic was created or already existed."""
        error, _ = await self.create(
            name,
            partitions=self.defaults.partitions,
            replication_factor=self.defaults.replication_factor,
        )
        if error is None:
            self.log.info("topic.auto_created", topic=name)
        elif error.code == ErrorCode.TOPIC_ALREADY_EXISTS:
            return None
        else:
            self.log.info("topic.auto_create_failed", topic=name, error=str(error))
        return error

    async def delete(self, name: str) -> RaftmqError | None:
        response = await self.forward(
            "DeleteTopic",
            ctl.DeleteTopicRequest(name=name, request_id=f"delete-{name}-{uuid.uuid4().hex}"),
            ctl.DeleteTopicResponse,
        )
        error = wire.error_from_pb(response.error)
        if error is None:
            self.log.info("topic.deleted", topic=name)
        return error

    async def forward(self, method: str, request: Any, response_type: Callable[[], Any]) -> Any:
        """Relay an admin request to the controller quorum (any controller; writes are
        replicated through the Raft leader). Quorum unavailability becomes an error in a
        response of `response_type`, which must have an `error` field."""
        try:
            return await self.controllers.call(method, request, timeout_ms=ADMIN_TIMEOUT_MS)
        except RaftmqError as e:
            response = response_type()
            response.error.CopyFrom(wire.exception_to_pb(e))
            return response
