"""EndpointPool ordering: leader hints and transport failures decide where calls start.
No sockets: channels are created lazily and these tests never call an endpoint."""

from __future__ import annotations

from raftmq.client.controller_client import EndpointPool

ENDPOINTS = ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]


def test_a_hinted_endpoint_is_tried_first_and_learnt() -> None:
    pool = EndpointPool(ENDPOINTS, service="controller")
    pool.prefer("127.0.0.1:2")
    assert pool.order() == ["127.0.0.1:2", "127.0.0.1:3", "127.0.0.1:1"]
    pool.prefer("127.0.0.1:9")
    assert pool.order()[0] == "127.0.0.1:9"
    assert len(pool.order()) == 4


def test_an_unreachable_preferred_endpoint_is_demoted() -> None:
    # A controller cut off by a partition times out every call: the next call of any
    # caller sharing the pool must start at another one (seen in chaos runs: ISR changes
    # stalled for the length of the partition, one 5 s timeout after another).
    pool = EndpointPool(ENDPOINTS, service="controller")
    pool.prefer("127.0.0.1:2")
    pool.demote("127.0.0.1:2")
    assert pool.order()[0] == "127.0.0.1:3"
    # Demoting an endpoint that is not the preferred one changes nothing.
    pool.demote("127.0.0.1:1")
    assert pool.order()[0] == "127.0.0.1:3"
    pool.demote("127.0.0.1:3")
    assert pool.order()[0] == "127.0.0.1:1"
