"""Kafka's cluster-level APIs: Metadata, DescribeCluster, FindCoordinator, InitProducerId.

Every address in an answer is the one of the listener the client came in on
(`RequestContext.listener_name`), as each broker registered it: a client that bootstraps
on a broker's EXTERNAL Kafka listener is sent to every broker's EXTERNAL Kafka address,
and clients reconnect to whatever Metadata returns. A broker without that listener is
left out of the broker list (as Kafka does); a partition it leads is answered
LISTENER_NOT_FOUND.

The "controller" in Metadata and DescribeCluster is this broker: admin requests that a
Kafka client sends to the controller are forwarded to the controller quorum by whichever
broker receives them (as KRaft brokers do), so any broker will do, and the one the client
already talks to saves it a connection.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol

from kio.schema.errors import ErrorCode as KafkaErrorCode
from raftmq.broker import kafka_codec
from raftmq.broker.kafka_api import KafkaApi, RequestContext
from raftmq.broker.kafka_errors import kafka_error
from raftmq.broker.kafka_partition_apis import AUTHORIZED_OPERATIONS_OMITTED, response_module
from raftmq.broker.metadata_cache import MetadataImage
from raftmq.broker.topic_admin import TopicAdmin
from raftmq.errors import RaftmqError
from raftmq.metadata import NO_LEADER, PROTOCOL_KAFKA, BrokerRegistration, TopicRecord

METADATA, FIND_COORDINATOR, INIT_PRODUCER_ID, DESCRIBE_CLUSTER = 3, 10, 22, 60
METADATA_VERSIONS = (1, 12)
FIND_COORDINATOR_VERSIONS = (0, 4)
INIT_PRODUCER_ID_VERSIONS = (0, 4)
DESCRIBE_CLUSTER_VERSIONS = (0, 1)
COORDINATOR_KEY_GROUP = 0
ENDPOINT_TYPE_BROKERS = 1
# Topics one Metadata request may ask to create: a bound on the controller calls it starts.
AUTO_CREATE_TOPICS_MAX = 100

_ZERO = timedelta(0)
_NO_TOPIC_ID = uuid.UUID(int=0)


class CoordinatorLookup(Protocol):
    """What FindCoordinator needs of the group coordinator (`GroupCoordinator` has it)."""

    async def find_coordinator(
        self, group_ids: Iterable[str], *, listener: str | None = None
    ) -> list[Any]: ...


class ProducerIds(Protocol):
    async def init_producer_id(self, producer_id: int, producer_epoch: int) -> tuple[int, int]: ...


class KafkaClusterApis:
    def __init__(
        self,
        *,
        node_id: int,
        metadata: Callable[[], MetadataImage],
        cluster_id: Callable[[], str],
        topics: TopicAdmin,
        groups: CoordinatorLookup,
        producer_ids: ProducerIds,
    ) -> None:
        self.node_id = node_id
        self.metadata = metadata
        self.cluster_id = cluster_id
        self.topics = topics
        self.groups = groups
        self.producer_ids = producer_ids

    def register(self, api: KafkaApi) -> None:
        api.register(METADATA, *METADATA_VERSIONS, self.metadata_api)
        api.register(FIND_COORDINATOR, *FIND_COORDINATOR_VERSIONS, self.find_coordinator)
        api.register(INIT_PRODUCER_ID, *INIT_PRODUCER_ID_VERSIONS, self.init_producer_id)
        api.register(DESCRIBE_CLUSTER, *DESCRIBE_CLUSTER_VERSIONS, self.describe_cluster)

    # ------------------------------------------------------------ addresses

    def _reachable(self, image: MetadataImage, listener: str) -> dict[int, tuple[str, int]]:
        """Live brokers with their address on this Kafka listener."""
        found: dict[int, tuple[str, int]] = {}
        for broker_id, broker in sorted(image.brokers.items()):
            endpoint = _kafka_endpoint(broker, listener)
            if endpoint is not None and not broker.fenced:
                found[broker_id] = endpoint
        return found

    # ------------------------------------------------------------ metadata

    async def metadata_api(self, ctx: RequestContext, request: Any) -> Any:
        """Brokers and topics; a missing topic is created first when the request allows it
        (v4+; always before v4, as Kafka did) and this broker's --auto-create-topics is on.
        A topic just created is answered LEADER_NOT_AVAILABLE: the client asks again
        once our metadata has it."""
        m = response_module(ctx)
        image = self.metadata()
        wanted = None if request.topics is None else [t.name for t in request.topics]
        allow_create = bool(getattr(request, "allow_auto_topic_creation", True))
        errors: dict[str, KafkaErrorCode] = {}
        if wanted and allow_create and self.topics.defaults.auto_create:
            missing = [n for n in dict.fromkeys(wanted) if n and n not in image.topics]
            missing = missing[:AUTO_CREATE_TOPICS_MAX]
            outcomes = await asyncio.gather(*(self.topics.auto_create(n) for n in missing))
            for name, error in zip(missing, outcomes, strict=True):
                errors[name] = (
                    KafkaErrorCode.leader_not_available
                    if error is None
                    else kafka_error(error.code)
                )
            image = self.metadata()
        reachable = self._reachable(image, ctx.listener_name)
        names = sorted(image.topics) if wanted is None else list(dict.fromkeys(wanted))
        topics = []
        for name in names:
            record = image.topics.get(name)
            if record is None:
                code = errors.get(name, KafkaErrorCode.unknown_topic_or_partition)
                topics.append(_missing_topic(m, name, code))
            else:
                topics.append(self._topic(m, image, record, reachable))
        return kafka_codec.entity(
            m.MetadataResponse,
            throttle_time=_ZERO,
            brokers=tuple(
                kafka_codec.entity(
                    m.MetadataResponseBroker,
                    node_id=broker_id,
                    host=host,
                    port=port,
                    rack=image.brokers[broker_id].rack or None,
                )
                for broker_id, (host, port) in reachable.items()
            ),
            cluster_id=self.cluster_id() or None,
            controller_id=self.node_id,
            topics=tuple(topics),
            cluster_authorized_operations=AUTHORIZED_OPERATIONS_OMITTED,
        )

    @staticmethod
    def _topic(
        m: Any, image: MetadataImage, record: TopicRecord, reachable: dict[int, tuple[str, int]]
    ) -> Any:
        partitions = []
        for index, p in enumerate(record.partitions):
            if p.leader == NO_LEADER:
                code = KafkaErrorCode.leader_not_available
            elif p.leader not in reachable:
                code = (
                    KafkaErrorCode.listener_not_found
                    if p.leader in image.brokers and not image.brokers[p.leader].fenced
                    else KafkaErrorCode.leader_not_available
                )
            else:
                code = KafkaErrorCode.none
            partitions.append(
                kafka_codec.entity(
                    m.MetadataResponsePartition,
                    error_code=code,
                    partition_index=index,
                    leader_id=p.leader if code == KafkaErrorCode.none else NO_LEADER,
                    leader_epoch=p.leader_epoch,
                    replica_nodes=p.ar,
                    isr_nodes=p.isr,
                    offline_replicas=tuple(
                        r for r in p.ar if r not in image.brokers or image.brokers[r].fenced
                    ),
                )
            )
        return kafka_codec.entity(
            m.MetadataResponseTopic,
            error_code=KafkaErrorCode.none,
            name=record.name,
            topic_id=uuid.UUID(bytes=record.topic_id) if len(record.topic_id) == 16 else None,
            is_internal=record.name.startswith("__"),
            partitions=tuple(partitions),
            topic_authorized_operations=AUTHORIZED_OPERATIONS_OMITTED,
        )

    # ------------------------------------------------------------ describe cluster

    async def describe_cluster(self, ctx: RequestContext, request: Any) -> Any:
        m = response_module(ctx)
        image = self.metadata()
        endpoint_type = int(getattr(request, "endpoint_type", ENDPOINT_TYPE_BROKERS))
        error, message = KafkaErrorCode.none, None
        brokers: dict[int, tuple[str, int]] = {}
        if endpoint_type != ENDPOINT_TYPE_BROKERS:
            error = KafkaErrorCode.unsupported_endpoint_type
            message = "only brokers are described (the controllers speak gRPC, not Kafka)"
        else:
            brokers = self._reachable(image, ctx.listener_name)
        return kafka_codec.entity(
            m.DescribeClusterResponse,
            throttle_time=_ZERO,
            error_code=error,
            error_message=message,
            endpoint_type=endpoint_type,
            cluster_id=self.cluster_id(),
            controller_id=self.node_id,
            brokers=tuple(
                m.DescribeClusterBroker(
                    broker_id=broker_id,
                    host=host,
                    port=port,
                    rack=image.brokers[broker_id].rack or None,
                )
                for broker_id, (host, port) in brokers.items()
            ),
            cluster_authorized_operations=AUTHORIZED_OPERATIONS_OMITTED,
        )

    # ------------------------------------------------------------ find coordinator

    async def find_coordinator(self, ctx: RequestContext, request: Any) -> Any:
        """Group keys -> the coordinator of the group's __consumer_offsets partition, at
        its address on this Kafka listener. Transaction keys: there are no transaction
        coordinators (INVALID_REQUEST, said so in the message)."""
        m = response_module(ctx)
        keys = list(request.coordinator_keys) if ctx.api_version >= 4 else [str(request.key)]
        key_type = int(getattr(request, "key_type", COORDINATOR_KEY_GROUP))
        if key_type != COORDINATOR_KEY_GROUP:
            answers = [
                _Found(key, KafkaErrorCode.invalid_request, "transactions are not supported")
                for key in keys
            ]
        else:
            image = self.metadata()
            answers = []
            for info in await self.groups.find_coordinator(keys):
                broker = image.brokers.get(info.node_id) if info.error is None else None
                endpoint = _kafka_endpoint(broker, ctx.listener_name)
                if info.error is not None:
                    error = info.error
                    answers.append(_Found(info.group_id, kafka_error(error.code), error.message))
                elif endpoint is None:
                    answers.append(
                        _Found(
                            info.group_id,
                            KafkaErrorCode.coordinator_not_available,
                            f"broker {info.node_id} has no Kafka listener {ctx.listener_name}",
                        )
                    )
                else:
                    answers.append(
                        _Found(info.group_id, KafkaErrorCode.none, None, info.node_id, *endpoint)
                    )
        if ctx.api_version >= 4:
            return kafka_codec.entity(
                m.FindCoordinatorResponse,
                throttle_time=_ZERO,
                coordinators=tuple(
                    m.Coordinator(
                        key=a.key,
                        node_id=a.node_id,
                        host=a.host,
                        port=a.port,
                        error_code=a.code,
                        error_message=a.message,
                    )
                    for a in answers
                ),
            )
        first = answers[0]
        return kafka_codec.entity(
            m.FindCoordinatorResponse,
            throttle_time=_ZERO,
            error_code=first.code,
            error_message=first.message,
            node_id=first.node_id,
            host=first.host,
            port=first.port,
        )

    # ------------------------------------------------------------ producer ids

    async def init_producer_id(self, ctx: RequestContext, request: Any) -> Any:
        """An idempotent producer's id and epoch (from the controller's id blocks, as the
        gRPC API gives them); the produce path then checks its sequences."""
        m = response_module(ctx)
        if request.transactional_id is not None:
            return kafka_codec.entity(
                m.InitProducerIdResponse,
                throttle_time=_ZERO,
                error_code=KafkaErrorCode.transactional_id_authorization_failed,
                producer_id=-1,
                producer_epoch=-1,
            )
        try:
            producer_id, epoch = await self.producer_ids.init_producer_id(
                int(getattr(request, "producer_id", -1)),
                int(getattr(request, "producer_epoch", -1)),
            )
        except RaftmqError as e:
            return kafka_codec.entity(
                m.InitProducerIdResponse,
                throttle_time=_ZERO,
                error_code=kafka_error(e.code),
                producer_id=-1,
                producer_epoch=-1,
            )
        return kafka_codec.entity(
            m.InitProducerIdResponse,
            throttle_time=_ZERO,
            error_code=KafkaErrorCode.none,
            producer_id=producer_id,
            producer_epoch=epoch,
        )


@dataclass(frozen=True, slots=True)
class _Found:
    """One FindCoordinator answer."""

    key: str
    code: KafkaErrorCode
    message: str | None
    node_id: int = -1
    host: str = ""
    port: int = -1


def _kafka_endpoint(broker: BrokerRegistration | None, listener: str) -> tuple[str, int] | None:
    return None if broker is None else broker.endpoint_for(listener, protocol=PROTOCOL_KAFKA)


def _missing_topic(m: Any, name: str, code: KafkaErrorCode) -> Any:
    return kafka_codec.entity(
        m.MetadataResponseTopic,
        error_code=code,
        name=name,
        topic_id=_NO_TOPIC_ID,
        is_internal=False,
        partitions=(),
        topic_authorized_operations=AUTHORIZED_OPERATIONS_OMITTED,
    )
