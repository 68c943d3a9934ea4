"""Prometheus metrics: one registry per node process, served at
http://HOST:PORT/metrics (`--metrics-listen`).

Names follow Prometheus' naming guide: `raftmq_<component>_<what>_<unit>`, counters end in
`_total`, durations in `_seconds`, sizes in `_bytes`. Labels are bounded: API names, error
codes, topic names and consumer groups (what the cluster holds), never clients or
connections.
"""

from __future__ import annotations

import errno
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from raftmq.ports import PortInUseError

# Request durations: sub-millisecond acks up to long polls.
DURATION_BUCKETS_S = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)


def serve(registry: CollectorRegistry, host: str, port: int) -> Any:
    """Serve `registry` at http://host:port/metrics on a daemon thread; returns the HTTP
    server (`shutdown()` stops it). Binds without SO_REUSEPORT: a taken port raises
    PortInUseError."""
    try:
        server, _thread = start_http_server(port, addr=host, registry=registry)
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise PortInUseError(host, port) from e
        raise
    return server
