"""Which Kafka APIs and versions this broker serves, and who serves each: the dispatch table.

Handlers register here (`KafkaApi.register`): the data plane (`kafka_partition_apis`), the
cluster and admin APIs (`kafka_cluster_apis`, `kafka_admin_apis`) and the classic group
protocol (`kafka_groups`). ApiVersions is answered from this table, so a client is told
exactly what is registered and nothing else.

A handler takes the decoded request entity (a kio dataclass of the request's version; the
legacy versions of `kafka_legacy` arrive as the oldest kio version of the same shape) and
returns the response entity of the matching kio response class, or None for "send no
response at all" (Produce with acks=0). It runs on the broker's asyncio loop; waiting
(acks=all, a fetch's max_wait) is a delayed operation, never a parked thread. A handler
raises only on programmer error: operating errors are Kafka error codes in the response.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from kio.index import load_response_schema
from kio.schema.api_versions.v0.response import ApiVersion as ApiVersionV0
from kio.schema.api_versions.v0.response import ApiVersionsResponse as ApiVersionsResponseV0
from kio.schema.errors import ErrorCode as KafkaErrorCode
from kio.static.primitive import i16, i32Timedelta

__all__ = [
    "API_VERSIONS_KEY",
    "ApiRange",
    "KafkaApi",
    "KafkaHandler",
    "RequestContext",
]

API_VERSIONS_KEY = 18
# ApiVersions versions this module answers itself (v3 is the first flexible one).
API_VERSIONS_MAX = 3


@dataclass(frozen=True, slots=True)
class RequestContext:
    api_key: int
    api_version: int
    correlation_id: int
    client_id: str | None
    listener_name: str  # the named listener the connection came in on
    peer: str  # "host:port" of the client


KafkaHandler = Callable[
    [RequestContext, Any], Awaitable[Any]
]  # kio request entity in, kio response entity out


@dataclass(frozen=True, slots=True)
class ApiRange:
    """One registered API: versions min_version..max_version inclusive, served by handler."""

    api_key: int
    min_version: int
    max_version: int
    handler: KafkaHandler


class KafkaApi:
    """The registry of Kafka APIs. Built once at broker start; read-only once serving.

    Invariant: at most one ApiRange per api_key, and min_version <= max_version.
    """

    def __init__(self) -> None:
        self._ranges: dict[int, ApiRange] = {}
        self.register(API_VERSIONS_KEY, 0, API_VERSIONS_MAX, self._api_versions)

    def register(
        self, api_key: int, min_version: int, max_version: int, handler: KafkaHandler
    ) -> None:
        """Serve api_key at versions min_version..max_version (inclusive) with handler.
        Registering a key twice is a programmer error (two modules claiming one API)."""
        assert 0 <= min_version <= max_version, (api_key, min_version, max_version)
        assert api_key not in self._ranges, f"API key {api_key} registered twice"
        self._ranges[api_key] = ApiRange(api_key, min_version, max_version, handler)

    def lookup(self, api_key: int, api_version: int) -> KafkaHandler | None:
        """The handler for this key and version, or None when either is not served."""
        api = self._ranges.get(api_key)
        if api is None or not api.min_version <= api_version <= api.max_version:
            return None
        return api.handler

    def is_known(self, api_key: int) -> bool:
        return api_key in self._ranges

    def ranges(self) -> list[ApiRange]:
        """Every registered API, by api_key."""
        keys = sorted(self._ranges)
        assert all(keys[i] < keys[i + 1] for i in range(len(keys) - 1))
        return [self._ranges[k] for k in keys]

    def version_range(self, api_key: int) -> tuple[int, int] | None:
        api = self._ranges.get(api_key)
        return None if api is None else (api.min_version, api.max_version)

    def unsupported_api_versions_response(self) -> ApiVersionsResponseV0:
        """The answer to an ApiVersions request of a version we do not serve (KIP-511):
        UNSUPPORTED_VERSION with the full list, in the v0 format, which every client can
        read; it then retries at the highest version both sides know."""
        return ApiVersionsResponseV0(
            error_code=KafkaErrorCode.unsupported_version,
            api_keys=tuple(
                ApiVersionV0(
                    api_key=i16(r.api_key),
                    min_version=i16(r.min_version),
                    max_version=i16(r.max_version),
                )
                for r in self.ranges()
            ),
        )

    async def _api_versions(self, ctx: RequestContext, request: Any) -> Any:
        response_type: Any = load_response_schema(API_VERSIONS_KEY, ctx.api_version)
        item_type = _api_version_item_type(response_type)
        api_keys = tuple(
            item_type(
                api_key=i16(r.api_key),
                min_version=i16(r.min_version),
                max_version=i16(r.max_version),
            )
            for r in self.ranges()
        )
        fields: dict[str, Any] = {"error_code": KafkaErrorCode.none, "api_keys": api_keys}
        if ctx.api_version >= 1:
            fields["throttle_time"] = i32Timedelta.parse(timedelta(0))
        return response_type(**fields)


def _api_version_item_type(response_type: Any) -> Any:
    """The ApiVersion item class of the same module as response_type (one per version)."""
    return sys.modules[response_type.__module__].ApiVersion
