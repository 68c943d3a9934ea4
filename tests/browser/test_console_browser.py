"""The web console in a real browser (headless Debian Chromium through Playwright) against a
real cluster with its console process: the overview shows the 3 brokers and 3 controllers;
a broker's kill -9 turns its replicas out of sync on an open page without a reload, and
they come back; a message produced through the form shows in the browser and through
`raftmq consume`; a group's lag goes down on its page as a consumer reads. Each page is
screenshotted (CONSOLE_SCREENSHOTS=docs/console refreshes the README's)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from raftmq import Admin, Message, Writer
from raftmq.local_cluster import LocalCluster

pytestmark = pytest.mark.browser

LIVE_TIMEOUT_MS = 60_000
WATCHED = "orders"
LAGGING = "clicks"
GROUP = "billing"


@pytest.fixture
def page(browser_context: Any) -> Iterator[Any]:
    page = browser_context.new_page()
    try:
        yield page
    finally:
        page.close()


def url(cluster: LocalCluster, path: str = "/") -> str:
    base = cluster.layout.console_url
    assert base is not None
    return base.rstrip("/") + path


def expect(locator: Any) -> Any:
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(locator)


def wait_live(page: Any) -> None:
    """The page's event stream is open."""
    expect(page.locator("#live-status")).to_have_attribute("data-state", "live", timeout=20_000)


def shoot(page: Any, screenshots: Path, name: str) -> None:
    page.screenshot(path=str(screenshots / f"{name}.png"), full_page=True)


def raftmq(*args: str, timeout_s: float = 60) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "raftmq.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_overview_shows_three_brokers_and_three_controllers(
    console_cluster: LocalCluster, page: Any, screenshots: Path
) -> None:
    with Admin(console_cluster.layout.broker_endpoints) as admin:
        admin.create_topic(WATCHED, partitions=3, replication_factor=3)
        admin.create_topic(LAGGING, partitions=3, replication_factor=3)
    page.goto(url(console_cluster))
    wait_live(page)
    expect(page.locator("[data-count=brokers] .big")).to_have_text("3")
    expect(page.locator("[data-count=controllers] .big")).to_have_text("3")
    expect(page.locator("[data-badge=controller-leader]")).to_have_attribute("data-level", "ok")
    # Rates come from the brokers' metrics once two scrapes span a second.
    expect(page.locator("[data-rate=in] .big")).to_have_text("0.0/s", timeout=20_000)
    shoot(page, screenshots, "overview")
    page.goto(url(console_cluster, "/brokers"))
    wait_live(page)
    expect(page.locator("#brokers tbody tr[data-state=unfenced]")).to_have_count(3)
    shoot(page, screenshots, "brokers")
    page.goto(url(console_cluster, "/controllers"))
    wait_live(page)
    expect(page.locator("#voters tbody tr")).to_have_count(3)
    expect(page.locator("#voters tr[data-role=leader]")).to_have_count(1)
    shoot(page, screenshots, "controllers")


def test_a_killed_broker_turns_out_of_sync_without_a_reload_and_returns(
    console_cluster: LocalCluster, page: Any, screenshots: Path
) -> None:
    bootstrap = console_cluster.layout.broker_endpoints
    with Writer(bootstrap, topic=WATCHED) as writer:
        writer.write_messages(*(Message(f"order-{i}", f"customer-{i % 7}") for i in range(60)))
    page.goto(url(console_cluster, f"/topics/{WATCHED}"))
    wait_live(page)
    victim = page.locator('#partitions [data-replica="2"]')
    expect(victim).to_have_count(3)
    expect(page.locator('#partitions [data-replica="2"][data-in-sync="yes"]')).to_have_count(3)
    # A mark only this page load carries: a reload would lose it.
    page.evaluate("window.__raftmqMark = 'same page'")
    broker = console_cluster.process("broker-2")
    broker.kill()
    out_of_sync = page.locator('#partitions [data-replica="2"][data-in-sync="no"]')
    expect(out_of_sync).to_have_count(3, timeout=LIVE_TIMEOUT_MS)
    expect(page.locator("#partitions tr.degraded")).to_have_count(3)
    expect(page.locator('#partitions tr[data-osr="2"]')).to_have_count(3)
    shoot(page, screenshots, "topic")
    page.goto(url(console_cluster, "/"))
    expect(page.locator("[data-badge=under-replicated]")).to_have_attribute(
        "data-level", "warn", timeout=LIVE_TIMEOUT_MS
    )
    page.go_back()
    wait_live(page)
    page.evaluate("window.__raftmqMark = 'same page'")
    broker.start()
    expect(page.locator('#partitions [data-replica="2"][data-in-sync="yes"]')).to_have_count(
        3, timeout=LIVE_TIMEOUT_MS
    )
    expect(page.locator("#partitions tr.degraded")).to_have_count(0)
    assert page.evaluate("window.__raftmqMark") == "same page"


def test_a_message_produced_through_the_form_shows_in_the_browser_and_in_raftmq_consume(
    console_cluster: LocalCluster, page: Any, screenshots: Path
) -> None:
    page.goto(url(console_cluster, "/produce"))
    form = page.locator("form#produce")
    form.locator("select[name=topic]").select_option(WATCHED)
    form.locator("input[name=key]").fill("customer-<42>")
    form.locator("textarea[name=headers]").fill("source: browser-test\ntrace: <t1>")
    value = '{"order": 4242, "note": "<script>alert(1)</script>"}'
    form.locator("textarea[name=value]").fill(value)
    shoot(page, screenshots, "produce")
    with page.expect_navigation():
        form.locator("#send").click()
    expect(page.locator("#produced")).to_be_visible()
    assert "/messages?" in page.url
    row = page.locator("#records tbody tr").first
    expect(row.locator("td.value pre")).to_contain_text('"note": "<script>alert(1)</script>"')
    expect(row).to_contain_text("customer-<42>")
    expect(row).to_contain_text("<t1>")
    # The value's markup is text on the page: no element came from it.
    assert page.locator("#records script").count() == 0
    partition = int(row.get_attribute("data-partition"))
    offset = int(row.get_attribute("data-offset"))
    page.goto(url(console_cluster, f"/topics/{WATCHED}/messages?partition={partition}&limit=10"))
    expect(page.locator(f'#records tr[data-offset="{offset}"]')).to_contain_text("4242")
    shoot(page, screenshots, "messages")
    out = raftmq(
        "consume",
        WATCHED,
        "--bootstrap",
        ",".join(console_cluster.layout.broker_endpoints),
        "--partition",
        str(partition),
        "--offset",
        str(offset),
        "--max-messages",
        "1",
        "--json",
        "--timeout-ms",
        "20000",
    )
    consumed = json.loads(out.splitlines()[0])
    assert (consumed["offset"], consumed["key"], consumed["value"]) == (
        offset,
        "customer-<42>",
        value,
    )
    page.goto(url(console_cluster, "/topics"))
    wait_live(page)
    expect(page.locator(f'#topics tr[data-topic="{WATCHED}"]')).to_be_visible()
    shoot(page, screenshots, "topics")


def test_a_groups_lag_goes_down_as_a_consumer_reads(
    console_cluster: LocalCluster, page: Any, screenshots: Path
) -> None:
    bootstrap = console_cluster.layout.broker_endpoints
    with Writer(bootstrap, topic=LAGGING) as writer:
        writer.write_messages(*(Message(f"click-{i}", f"user-{i}") for i in range(300)))
    with Admin(bootstrap) as admin:
        admin.reset_offsets(GROUP, LAGGING, "earliest")  # the group starts 300 behind
    page.goto(url(console_cluster, f"/groups/{GROUP}"))
    wait_live(page)
    lag = page.locator("#group-lag")
    expect(lag).to_have_attribute("data-lag", "300", timeout=LIVE_TIMEOUT_MS)
    page.evaluate("window.__raftmqMark = 'same page'")
    seen = [300]
    for remaining in (200, 100):
        # A member of the group reads 100 messages, commits what it printed and leaves.
        out = raftmq(
            "consume",
            LAGGING,
            "--group",
            GROUP,
            "--bootstrap",
            ",".join(bootstrap),
            "--max-messages",
            "100",
            "--timeout-ms",
            "30000",
        )
        assert len(out.splitlines()) == 100
        expect(lag).to_have_attribute("data-lag", str(remaining), timeout=LIVE_TIMEOUT_MS)
        seen.append(int(lag.get_attribute("data-lag")))
    assert seen == [300, 200, 100]
    assert page.evaluate("window.__raftmqMark") == "same page"
    shoot(page, screenshots, "group")
    page.goto(url(console_cluster, "/groups"))
    wait_live(page)
    expect(page.locator(f'#groups tr[data-group="{GROUP}"] td[data-lag]')).to_have_attribute(
        "data-lag", "100"
    )
    shoot(page, screenshots, "groups")
