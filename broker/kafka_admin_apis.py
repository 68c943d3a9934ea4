"""Kafka's admin APIs: CreateTopics, DeleteTopics, DescribeConfigs, DescribeLogDirs.

Topic changes are forwarded to the controller quorum (`TopicAdmin`, as for the gRPC API);
descriptions come from the broker's own metadata and logs. What Kafka tools (kafka-ui, the
Java AdminClient, kcat -L) need to show a cluster and manage its topics.

Not served: manual replica assignments and validate-only creation (refused per topic
with INVALID_REQUEST, saying so), configs of brokers other than this one (Kafka's
AdminClient sends a broker's configs request to that broker).
"""

from __future__ import annotations

import asyncio
import shutil
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from kio.schema.errors import ErrorCode as KafkaErrorCode
from raftmq import wire
from raftmq.broker import kafka_codec
from raftmq.broker.kafka_api import KafkaApi, RequestContext
from raftmq.broker.kafka_errors import kafka_error
from raftmq.broker.kafka_partition_apis import response_module
from raftmq.broker.metadata_cache import MetadataImage
from raftmq.broker.topic_admin import TopicAdmin
from raftmq.topic_config import TopicConfig

CREATE_TOPICS, DELETE_TOPICS, DESCRIBE_CONFIGS, DESCRIBE_LOG_DIRS = 19, 20, 32, 35
CREATE_TOPICS_VERSIONS = (2, 7)
DELETE_TOPICS_VERSIONS = (1, 6)
DESCRIBE_CONFIGS_VERSIONS = (1, 4)
DESCRIBE_LOG_DIRS_VERSIONS = (1, 4)
# Topics one admin request may create or delete (each is a controller call).
TOPICS_PER_REQUEST_MAX = 1_000

# Kafka's ConfigResource.Type and DescribeConfigsResponse.ConfigSource / ConfigType.
RESOURCE_TOPIC, RESOURCE_BROKER = 2, 4
SOURCE_DYNAMIC_TOPIC, SOURCE_STATIC_BROKER, SOURCE_DEFAULT = 1, 4, 5
TYPE_BOOLEAN, TYPE_STRING, TYPE_INT, TYPE_LONG, TYPE_LIST = 1, 2, 3, 5, 7
# Kafka's replication_factor / num_partitions "use the broker's default" (KIP-464).
USE_DEFAULT = -1

_ZERO = timedelta(0)
_TOPIC_CONFIG_TYPES = {
    "min.insync.replicas": TYPE_INT,
    "retention.ms": TYPE_LONG,
    "retention.bytes": TYPE_LONG,
    "max.message.bytes": TYPE_INT,
    "unclean.leader.election.enable": TYPE_BOOLEAN,
    "cleanup.policy": TYPE_LIST,
    "delete.retention.ms": TYPE_LONG,
}


class KafkaAdminApis:
    def __init__(
        self,
        *,
        node_id: int,
        metadata: Callable[[], MetadataImage],
        topics: TopicAdmin,
        replicas: Callable[[], Sequence[Any]],
        log_dir: Path,
        broker_configs: Mapping[str, str],
    ) -> None:
        """`replicas`: the partitions this broker hosts (each with topic, index, log);
        `broker_configs`: what DescribeConfigs shows for this broker (Kafka's names)."""
        self.node_id = node_id
        self.metadata = metadata
        self.topics = topics
        self.replicas = replicas
        self.log_dir = log_dir
        self.broker_configs = dict(broker_configs)

    def register(self, api: KafkaApi) -> None:
        api.register(CREATE_TOPICS, *CREATE_TOPICS_VERSIONS, self.create_topics)
        api.register(DELETE_TOPICS, *DELETE_TOPICS_VERSIONS, self.delete_topics)
        api.register(DESCRIBE_CONFIGS, *DESCRIBE_CONFIGS_VERSIONS, self.describe_configs)
        api.register(DESCRIBE_LOG_DIRS, *DESCRIBE_LOG_DIRS_VERSIONS, self.describe_log_dirs)

    # ------------------------------------------------------------ create / delete

    async def create_topics(self, ctx: RequestContext, request: Any) -> Any:
        m = response_module(ctx)
        wanted = list(request.topics)
        results = await asyncio.gather(
            *(self._create(m, t, validate_only=bool(request.validate_only)) for t in wanted)
        )
        return kafka_codec.entity(
            m.CreateTopicsResponse, throttle_time=_ZERO, topics=tuple(results)
        )

    async def _create(self, m: Any, topic: Any, *, validate_only: bool) -> Any:
        name = str(topic.name)

        def refused(code: KafkaErrorCode, message: str) -> Any:
            return kafka_codec.entity(
                m.CreatableTopicResult,
                name=name,
                topic_id=uuid.UUID(int=0),
                error_code=code,
                error_message=message,
                num_partitions=-1,
                replication_factor=-1,
                configs=None,
            )

        if validate_only:
            return refused(KafkaErrorCode.invalid_request, "validate_only is not supported")
        if topic.assignments:
            return refused(
                KafkaErrorCode.invalid_request,
                "manual replica assignments are not supported; give num_partitions and "
                "replication_factor",
            )
        defaults = self.topics.defaults
        partitions = int(topic.num_partitions)
        replication_factor = int(topic.replication_factor)
        error, created = await self.topics.create(
            name,
            partitions=defaults.partitions if partitions == USE_DEFAULT else partitions,
            replication_factor=(
                defaults.replication_factor
                if replication_factor == USE_DEFAULT
                else replication_factor
            ),
            configs={c.name: c.value for c in topic.configs if c.value is not None},
        )
        if error is not None or created is None:
            assert error is not None
            return refused(kafka_error(error.code), error.message)
        record = wire.topic_from_pb(created)
        configs = None
        if kafka_codec.has_field(m.CreatableTopicResult, "configs"):  # v5+
            configs = tuple(
                m.CreatableTopicConfigs(
                    name=key,
                    value=value,
                    read_only=False,
                    config_source=_topic_config_source(key, value),
                    is_sensitive=False,
                )
                for key, value in sorted(record.config.to_dict().items())
            )
        return kafka_codec.entity(
            m.CreatableTopicResult,
            name=name,
            topic_id=uuid.UUID(bytes=record.topic_id),
            error_code=KafkaErrorCode.none,
            error_message=None,
            num_partitions=len(record.partitions),
            replication_factor=record.replication_factor,
            configs=configs,
        )

    async def delete_topics(self, ctx: RequestContext, request: Any) -> Any:
        m = response_module(ctx)
        image = self.metadata()
        names: list[tuple[str | None, uuid.UUID | None]] = []
        if ctx.api_version >= 6:
            names = [(t.name, t.topic_id) for t in request.topics]
        else:
            names = [(str(n), None) for n in request.topic_names]
        by_id = {uuid.UUID(bytes=t.topic_id): t.name for t in image.topics.values()}

        async def delete(name: str | None, topic_id: uuid.UUID | None) -> Any:
            if name is None and topic_id is not None:
                name = by_id.get(topic_id)
            message: str | None
            if name is None:
                code, message = KafkaErrorCode.unknown_topic_id, f"no topic has id {topic_id}"
            else:
                error = await self.topics.delete(name)
                code = KafkaErrorCode.none if error is None else kafka_error(error.code)
                message = None if error is None else error.message
            return kafka_codec.entity(
                m.DeletableTopicResult,
                name=name,
                topic_id=topic_id or uuid.UUID(int=0),
                error_code=code,
                error_message=message,
            )

        results = await asyncio.gather(*(delete(n, i) for n, i in names[:TOPICS_PER_REQUEST_MAX]))
        return kafka_codec.entity(
            m.DeleteTopicsResponse, throttle_time=_ZERO, responses=tuple(results)
        )

    # ------------------------------------------------------------ configs

    async def describe_configs(self, ctx: RequestContext, request: Any) -> Any:
        m = response_module(ctx)
        image = self.metadata()
        results = []
        for resource in request.resources:
            kind, name = int(resource.resource_type), str(resource.resource_name)
            keys = None if resource.configuration_keys is None else set(resource.configuration_keys)
            code, message = KafkaErrorCode.none, None
            entries: list[tuple[str, str, int, int, bool]] = []
            if kind == RESOURCE_TOPIC:
                topic = image.topics.get(name)
                if topic is None:
                    code, message = KafkaErrorCode.unknown_topic_or_partition, f"no topic {name!r}"
                else:
                    for key, value in sorted(topic.config.to_dict().items()):
                        source = _topic_config_source(key, value)
                        entries.append((key, value, source, _TOPIC_CONFIG_TYPES.get(key, 2), False))
            elif kind == RESOURCE_BROKER:
                if name not in ("", str(self.node_id)):
                    code = KafkaErrorCode.invalid_request
                    message = f"this is broker {self.node_id}; ask broker {name} for its configs"
                else:
                    for key, value in sorted(self.broker_configs.items()):
                        entries.append(
                            (key, value, SOURCE_STATIC_BROKER, _config_type(value), True)
                        )
            else:
                code = KafkaErrorCode.invalid_request
                message = f"resource type {kind} is not described (topics 2 and brokers 4 are)"
            configs = tuple(
                kafka_codec.entity(
                    m.DescribeConfigsResourceResult,
                    name=key,
                    value=value,
                    read_only=read_only,
                    config_source=source,
                    is_sensitive=False,
                    synonyms=(),
                    config_type=config_type,
                    documentation=None,
                )
                for key, value, source, config_type, read_only in entries
                if keys is None or key in keys
            )
            results.append(
                m.DescribeConfigsResult(
                    error_code=code,
                    error_message=message,
                    resource_type=kind,
                    resource_name=name,
                    configs=configs,
                )
            )
        return kafka_codec.entity(
            m.DescribeConfigsResponse, throttle_time=_ZERO, results=tuple(results)
        )

    # ------------------------------------------------------------ log dirs

    async def describe_log_dirs(self, ctx: RequestContext, request: Any) -> Any:
        """This broker's one log directory (the RocksDB of every partition it hosts): each
        partition's stored bytes and how far its log end is behind its high watermark."""
        m = response_module(ctx)
        wanted: dict[str, set[int]] | None = None
        if request.topics is not None:
            wanted = {t.topic: set(t.partitions) for t in request.topics}
        by_topic: dict[str, list[Any]] = {}
        for replica in sorted(self.replicas(), key=lambda r: (r.topic, r.index)):
            if wanted is not None and replica.index not in wanted.get(replica.topic, ()):
                continue
            log = replica.log
            by_topic.setdefault(replica.topic, []).append(
                m.DescribeLogDirsPartition(
                    partition_index=replica.index,
                    partition_size=log.size_bytes,
                    offset_lag=max(log.high_watermark - log.log_end_offset, 0),
                    is_future_key=False,
                )
            )
        try:
            usage = shutil.disk_usage(self.log_dir)
            total_bytes, usable_bytes, code = usage.total, usage.free, KafkaErrorCode.none
        except OSError:
            total_bytes, usable_bytes, code = -1, -1, KafkaErrorCode.kafka_storage_error
        result = kafka_codec.entity(
            m.DescribeLogDirsResult,
            error_code=code,
            log_dir=str(self.log_dir),
            topics=tuple(
                m.DescribeLogDirsTopic(name=name, partitions=tuple(ps))
                for name, ps in by_topic.items()
            ),
            total_bytes=total_bytes,
            usable_bytes=usable_bytes,
        )
        return kafka_codec.entity(
            m.DescribeLogDirsResponse,
            throttle_time=_ZERO,
            error_code=KafkaErrorCode.none,
            results=(result,),
        )


def _topic_config_source(key: str, value: str) -> int:
    """DEFAULT_CONFIG when the value is raftmq's default, else a topic's own setting."""
    default = TopicConfig().to_dict().get(key)
    return SOURCE_DEFAULT if value == default else SOURCE_DYNAMIC_TOPIC


def _config_type(value: str) -> int:
    if value in ("true", "false"):
        return TYPE_BOOLEAN
    if value.lstrip("-").isdigit():
        return TYPE_LONG
    return TYPE_STRING
