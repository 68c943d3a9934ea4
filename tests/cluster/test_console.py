"""The web console's application (console/app.py over console/backend.py) against a real
3-controller, 3-broker LocalCluster, in process through aiohttp's test client: every route,
bad input shown safely (HTML, non-UTF-8 bytes, huge values, unknown names, bad numbers),
the admin actions and their confirmations, read-only mode, the event streams and their
cap; and `raftmq console` itself on a taken port."""

from __future__ import annotations

import asyncio
import io
import re
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer
from raftmq import Admin, Message, Writer
from raftmq.console.app import ConsoleConfig, make_app
from raftmq.console.backend import ClientBackend
from raftmq.local_cluster import LocalCluster
from raftmq.ports import held_port

pytestmark = pytest.mark.cluster

TOPIC = "console-t"
HTML_VALUE = b"<script>alert('value')</script>"
HTML_KEY = b"<img src=x onerror=alert(1)>"
BINARY_VALUE = b"\xff\xfe\x00\x1b[31mnot utf-8"
HUGE_VALUE = b"z" * 900_000
GROUP = "console-g"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = LocalCluster(tmp_path_factory.mktemp("console") / "cluster", metrics=True)
    try:
        c.start()
        c.wait_ready(90)
        bootstrap = c.layout.broker_endpoints
        with Admin(bootstrap) as admin:
            admin.create_topic(TOPIC, partitions=2, replication_factor=3)
        with Writer(bootstrap, topic=TOPIC) as writer:
            writer.write_messages(
                Message(HTML_VALUE, HTML_KEY, partition=0, headers=[("<h1>", b"<b>bold</b>")]),
                Message(BINARY_VALUE, b"\xc3\x28", partition=0),
                Message(HUGE_VALUE, b"huge", partition=0),
                Message(b'{"json": [1, 2, {"deep": "<x>"}]}', b"j", partition=1),
            )
        yield c
    finally:
        c.kill_all()


def run(
    cluster: LocalCluster, scenario: Callable[[TestClient], Awaitable[None]], **config: object
) -> None:
    """`scenario(client)` against a fresh console app over the cluster."""

    async def main() -> None:
        backend = ClientBackend(
            cluster.layout.broker_endpoints, [url for _, url in cluster.layout.metrics_urls()]
        )
        app = make_app(backend, ConsoleConfig(metrics=True, **config))
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            await scenario(client)

    asyncio.run(main())


async def text_of(response: ClientResponse) -> str:
    return await response.text()


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match, "no CSRF field on the page"
    return match.group(1)


def error_of(html: str) -> str:
    match = re.search(r'class="error-message">([^<]*)<', html)
    return match.group(1) if match else ""


def test_every_page_renders_from_the_cluster(cluster: LocalCluster) -> None:
    async def scenario(client: TestClient[Any, Any]) -> None:
        pages = {
            "/": ['data-count="brokers"', 'data-badge="controller-leader"'],
            "/brokers": ['data-broker="1"', 'data-broker="3"', 'data-state="unfenced"'],
            "/controllers": ['data-voter="1"', 'data-voter="3"', 'data-role="leader"'],
            "/topics": [f'data-topic="{TOPIC}"'],
            f"/topics/{TOPIC}": ['data-partition="0"', 'data-partition="1"', "min.insync.replicas"],
            f"/topics/{TOPIC}/messages?partition=1": ['data-offset="0"', "fmt-json"],
            f"/topics/{TOPIC}/messages/0/0": ['id="record"'],
            f"/topics/{TOPIC}/messages?tail=1": ['id="tail-rows"', "data-events"],
            "/groups": ['id="groups"'],
            "/produce": ['id="produce"', f'value="{TOPIC}"'],
        }
        for path, markers in pages.items():
            response = await client.get(path)
            html = await response.text()
            assert response.status == 200, (path, error_of(html))
            for marker in markers:
                assert marker in html, (path, marker)
            assert response.headers["Content-Security-Policy"].startswith("default-src 'self'")
        # Three brokers, three controllers on the overview.
        overview = await text_of(await client.get("/"))
        assert re.search(r'data-count="brokers">\s*<h2>Brokers</h2><p class="big">3<', overview)
        assert re.search(
            r'data-count="controllers">\s*<h2>Controllers</h2><p class="big">3<', overview
        )
        # Every asset is the package's own: no other origin anywhere.
        for path in ("/static/console.css", "/static/console.js"):
            response = await client.get(path)
            assert response.status == 200
            assert "//" not in re.sub(r"(?m)^\s*//.*$|/\*.*?\*/", "", await response.text())
        assert not re.search(r'(src|href)="(https?:)?//', overview)

    run(cluster, scenario)


def test_record_data_is_shown_escaped_never_run(cluster: LocalCluster) -> None:
    async def scenario(client: TestClient[Any, Any]) -> None:
        html = await text_of(await client.get(f"/topics/{TOPIC}/messages?partition=0&offset=0"))
        assert "<script>" not in html and "<img" not in html and "<h1>&lt;" not in html
        assert "&lt;script&gt;alert(&#39;value&#39;)&lt;/script&gt;" in html
        assert "&lt;img src=x onerror=alert(1)&gt;" in html
        assert "&lt;b&gt;bold&lt;/b&gt;" in html
        # Non-UTF-8 key and value: a hex dump, said so; the control byte is not sent raw.
        assert "ff fe 00 1b 5b 33 31 6d" in html and "not valid UTF-8" in html
        assert "\x1b" not in html
        # The huge value: a preview with a link to the whole record.
        assert "show all 878.9 KiB" in html and len(html) < 200_000
        record = await client.get(f"/topics/{TOPIC}/messages/0/2")
        whole = await record.text()
        assert record.status == 200 and whole.count("z") >= len(HUGE_VALUE)
        hexed = await text_of(await client.get(f"/topics/{TOPIC}/messages/0/0?format=hex"))
        assert "3c 73 63 72 69 70 74 3e" in hexed  # "<script>" as bytes
        text = await text_of(await client.get(f"/topics/{TOPIC}/messages/0/1?format=text"))
        assert "\ufffd" in text

    run(cluster, scenario)


def test_search_and_browse_by_time(cluster: LocalCluster) -> None:
    async def scenario(client: TestClient[Any, Any]) -> None:
        html = await text_of(await client.get(f"/topics/{TOPIC}/messages?partition=0&key=huge"))
        assert re.findall(r'data-offset="(\d+)"', html) == ["2"]
        html = await text_of(
            await client.get(f"/topics/{TOPIC}/messages?partition=0&header=%3Ch1%3E")
        )
        assert re.findall(r'data-offset="(\d+)"', html) == ["0"]
        html = await text_of(
            await client.get(f"/topics/{TOPIC}/messages?partition=0&time=2000-01-01T00:00:00Z")
        )
        assert re.findall(r'data-offset="(\d+)"', html) == ["0", "1", "2"]

    run(cluster, scenario)


def test_bad_input_is_an_error_box_never_a_crash(cluster: LocalCluster) -> None:
    async def scenario(client: TestClient[Any, Any]) -> None:
        cases = [
            ("/topics/no-such-topic", 404, "there is no topic"),
            ("/topics/%3Cscript%3E", 404, "there is no topic &#39;&lt;script&gt;&#39;"),
            ("/topics/no-such-topic/messages", 404, "there is no topic"),
            (f"/topics/{TOPIC}/messages?offset=abc", 400, "offset must be a whole number"),
            (f"/topics/{TOPIC}/messages?offset=" + "9" * 5000, 400, "whole number"),
            (f"/topics/{TOPIC}/messages?partition=9", 400, "partition must be in [0, 1]"),
            (f"/topics/{TOPIC}/messages?time=%FF%FE", 400, "time must be ISO 8601"),
            (f"/topics/{TOPIC}/messages?format=%3Cb%3E", 400, "format must be one of"),
            (f"/topics/{TOPIC}/messages/0/abc", 400, "offset must be a whole number"),
            (f"/topics/{TOPIC}/messages/7/0", 400, "partition must be in"),
            ("/groups/no-such-group", 404, "GROUP_ID_NOT_FOUND"),
            ("/nowhere", 404, "Not Found"),
        ]
        for path, status, says in cases:
            response = await client.get(path)
            html = await response.text()
            assert response.status == status, (path, response.status, error_of(html))
            assert says in error_of(html), (path, error_of(html))
        # An offset past the end is an empty page, not an error.
        past = await client.get(f"/topics/{TOPIC}/messages?partition=1&offset=1000")
        assert past.status == 200 and "end of partition" in await past.text()
        # A page for another host name (DNS rebinding) is refused.
        response = await client.get("/", headers={"Host": "attacker.example"})
        assert response.status == 421
        # A POST without this console's CSRF token changes nothing.
        response = await client.post("/produce", data={"topic": TOPIC, "value": "x"})
        assert response.status == 403 and "stale" in error_of(await response.text())
        # A hand-made form of raw non-UTF-8 bytes, and one too large: said, not a crash.
        form = {"Content-Type": "application/x-www-form-urlencoded"}
        response = await client.post("/produce", data=b"value=\xff\xfe", headers=form)
        assert response.status == 400 and "not UTF-8" in error_of(await response.text())
        response = await client.post("/produce", data=io.BytesIO(b"v" * (5 << 20)), headers=form)
        assert response.status == 413

    run(cluster, scenario)


def test_produce_create_reset_and_delete_with_confirmation(cluster: LocalCluster) -> None:
    bootstrap = cluster.layout.broker_endpoints

    async def scenario(client: TestClient[Any, Any]) -> None:
        csrf = csrf_of(await text_of(await client.get("/produce")))
        # Produce: a redirect to the record in the browser.
        response = await client.post(
            "/produce",
            data={
                "csrf": csrf,
                "topic": TOPIC,
                "partition": "1",
                "key": "form-key",
                "value": "<i>from the form</i>",
                "headers": "source: console",
            },
            allow_redirects=False,
        )
        assert response.status == 303, error_of(await response.text())
        location = response.headers["Location"]
        assert location.startswith(f"/topics/{TOPIC}/messages?partition=1&offset=")
        html = await text_of(await client.get(location))
        assert 'id="produced"' in html and "&lt;i&gt;from the form&lt;/i&gt;" in html
        # Bad produce input: the form again with the error, nothing written.
        response = await client.post(
            "/produce", data={"csrf": csrf, "topic": TOPIC, "encoding": "hex", "value": "xyz"}
        )
        assert response.status == 400 and "not hex" in error_of(await response.text())

        # Create: a confirmation page first, the topic only after it.
        fields = {
            "csrf": csrf,
            "name": "made-by-console",
            "partitions": "2",
            "replication_factor": "3",
        }
        confirm = await client.post("/topics", data=fields)
        assert confirm.status == 200 and 'id="confirm"' in await confirm.text()
        with Admin(bootstrap) as admin:
            assert "made-by-console" not in admin.list_topics()
        response = await client.post(
            "/topics", data={**fields, "confirmed": "yes"}, allow_redirects=False
        )
        assert response.status == 303 and response.headers["Location"] == "/topics/made-by-console"
        with Admin(bootstrap) as admin:
            [made] = admin.describe_topics("made-by-console")
        assert (len(made.partitions), made.replication_factor) == (2, 3)
        response = await client.post("/topics", data={**fields, "confirmed": "yes"})
        assert response.status == 400 and "TOPIC_ALREADY_EXISTS" in error_of(await response.text())

        # Reset an empty group's offsets: planned, confirmed, committed.
        reset = {"csrf": csrf, "topic": TOPIC, "to": "earliest"}
        with Admin(bootstrap) as admin:
            admin.reset_offsets(GROUP, TOPIC, "latest")
        plan = await text_of(await client.post(f"/groups/{GROUP}/reset", data=reset))
        assert "Partition 0" in plan and "→ 0" in plan and 'id="confirm"' in plan
        response = await client.post(
            f"/groups/{GROUP}/reset", data={**reset, "confirmed": "yes"}, allow_redirects=False
        )
        assert response.status == 303
        with Admin(bootstrap) as admin:
            assert admin.describe_group(GROUP).lag > 0
        group_page = await text_of(await client.get(f"/groups/{GROUP}"))
        assert re.search(r'id="group-lag" data-lag="[1-9]', group_page)

        # Delete: only with the name typed.
        first = await client.post("/topics/made-by-console/delete", data={"csrf": csrf})
        assert "Type <code>made-by-console</code> to confirm" in await first.text()
        wrong = await client.post(
            "/topics/made-by-console/delete",
            data={"csrf": csrf, "confirmed": "yes", "confirm_name": "made-by"},
        )
        assert "does not match: nothing was deleted" in await wrong.text()
        with Admin(bootstrap) as admin:
            assert "made-by-console" in admin.list_topics()
        response = await client.post(
            "/topics/made-by-console/delete",
            data={"csrf": csrf, "confirmed": "yes", "confirm_name": "made-by-console"},
            allow_redirects=False,
        )
        assert response.status == 303
        with Admin(bootstrap) as admin:
            assert "made-by-console" not in admin.list_topics()

    run(cluster, scenario)


def test_read_only_refuses_every_change_and_hides_the_buttons(cluster: LocalCluster) -> None:
    async def scenario(client: TestClient[Any, Any]) -> None:
        topic_page = await text_of(await client.get(f"/topics/{TOPIC}"))
        assert 'class="pill read-only"' in topic_page
        assert "delete-topic" not in topic_page and "/produce" not in topic_page
        assert "create-topic" not in await text_of(await client.get("/topics"))
        group_page = await text_of(await client.get(f"/groups/{GROUP}"))
        assert "reset-offsets" not in group_page
        assert 'name="csrf"' not in topic_page  # no form at all
        for method, path in [
            ("GET", "/produce"),
            ("POST", "/produce"),
            ("POST", "/topics"),
            ("POST", f"/topics/{TOPIC}/delete"),
            ("POST", f"/groups/{GROUP}/reset"),
        ]:
            response = await client.request(method, path, data={"csrf": "x", "topic": TOPIC})
            assert response.status == 403, (method, path)
            assert "read-only" in error_of(await response.text())
        with Admin(cluster.layout.broker_endpoints) as admin:
            assert TOPIC in admin.list_topics()

    run(cluster, scenario, read_only=True)


def test_event_streams_send_fragments_and_are_capped(cluster: LocalCluster) -> None:
    async def scenario(client: TestClient[Any, Any]) -> None:
        stream = await client.get(f"/events/topics/{TOPIC}")
        assert stream.status == 200
        assert stream.headers["Content-Type"].startswith("text/event-stream")
        assert await stream.content.readline() == b"event: fragments\n"
        data = await stream.content.readline()
        assert data.startswith(b"data: ") and b'data-partition=\\"0\\"' in data
        # The cap (1 here): a second stream is refused while the first is open.
        second = await client.get("/events/overview")
        assert second.status == 503
        stream.close()
        await asyncio.sleep(0)

    run(cluster, scenario, sse_clients_max=1)


def test_raftmq_console_on_a_taken_port_fails_clearly(tmp_path: Path) -> None:
    with held_port() as port:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "raftmq.cli.main",
                "console",
                "--bootstrap",
                "127.0.0.1:1",
                "--listen",
                f"127.0.0.1:{port}",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 1
    assert f"error: 127.0.0.1:{port} is already in use" in result.stderr
