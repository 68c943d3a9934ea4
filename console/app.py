"""The console's web application: routes, pages, server-sent events, and the rules every
request goes through (middlewares).

Every page is rendered on the server from one Jinja2 template with autoescaping on; the
part of a page that changes (`<div id="live">`) is a fragment template of its own, and
the page's event stream (`/events/...`) sends that same fragment again whenever it
changes, which `static/console.js` swaps in. A live page and a reloaded one are therefore
the same HTML, escaped by the same templates.

Rules for every request:
- errors never crash a page: bad input is a 400 with an error box, an unknown topic or
  group a 404, a cluster that does not answer a 502, a bug a 500 (logged);
- writes (every POST) carry the console's CSRF token; `--read-only` refuses them all
  (and the produce form) with a 403, and hides their buttons;
- a console bound to loopback answers only requests addressed to a loopback name (a DNS
  rebinding page cannot drive it);
- pages may run only the console's own script (Content-Security-Policy), so even an
  escaping mistake could not run a script a record carried.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import jinja2
import structlog
from aiohttp import web
from raftmq.client.reader_core import LastOffset
from raftmq.errors import ErrorCode, RaftmqError
from raftmq.message import Message

from . import forms
from .backend import Backend, TailSource
from .browse import scan
from .cluster_view import (
    RATES_FROM_METRICS,
    Sample,
    Snapshot,
    broker_rows,
    health_badges,
    is_internal,
    leader_view_known,
    partition_health,
    partition_rows,
    topic_rows,
    voter_rows,
)
from .records import (
    FORMATS,
    RECORDS_PER_PAGE_DEFAULT,
    RECORDS_PER_PAGE_MAX,
    SCAN_RECORDS_DEFAULT,
    SCAN_RECORDS_MAX,
    VALUE_FULL_BYTES_MAX,
    VALUE_SHOWN_BYTES_MAX,
    QueryError,
    parse_browse_query,
    parse_int,
    show_record,
)

HERE = Path(__file__).resolve().parent
TEMPLATES_DIR = HERE / "templates"
STATIC_DIR = HERE / "static"

# Open event streams at once (each tab holds one); beyond it, a 503 and no live updates.
SSE_CLIENTS_MAX = 32
# Live tails at once (each holds a Reader of its own).
TAIL_CLIENTS_MAX = 8
# A tail sends at most this many records per event, an event at most every
# TAIL_EVENT_MS; a tail further behind than TAIL_SKIP_LAG jumps to the end (and says so).
TAIL_BATCH_MAX = 20
TAIL_EVENT_MS = 500
TAIL_SKIP_LAG = 200
# A stream with nothing new sends a comment this often (so a gone client is noticed).
SSE_KEEPALIVE_S = 15.0
# Group pages ask their group's description this often while open.
GROUP_REFRESH_S = 1.0
# The group list describes at most this many groups (their members and lag).
GROUPS_DESCRIBED_MAX = 50
GROUPS_LISTED_MAX = 1_000
# Request bodies (the produce form's value is at most 1 MiB decoded; URL-encoding can
# triple it).
REQUEST_BODY_BYTES_MAX = 4 << 20
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]", "::1")

NOT_FOUND_CODES = frozenset({ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, ErrorCode.GROUP_ID_NOT_FOUND})

_log = structlog.get_logger("raftmq.console")


@dataclass(frozen=True, slots=True)
class ConsoleConfig:
    read_only: bool = False
    # The address the console is bound to: Host headers are checked against it when it
    # is a loopback address.
    listen_host: str = "127.0.0.1"
    listen_port: int = 8080
    metrics: bool = False  # --metrics URLs were given
    sse_clients_max: int = SSE_CLIENTS_MAX
    tail_clients_max: int = TAIL_CLIENTS_MAX


class PageError(Exception):
    """An error page with this status and message (the message is escaped)."""

    def __init__(self, status: int, message: str, title: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.title = title


# ---------------------------------------------------------------- templates


def _num(value: float | None) -> str:
    if value is None:
        return "?"
    return f"{value:,.0f}" if isinstance(value, float) else f"{value:,}"


def _bytes(value: float | None) -> str:
    if value is None:
        return "n/a"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _rate(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:,.1f}/s"


def _skew(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:+.0f}%"


def _clock(epoch_ms: int) -> str:
    return datetime.fromtimestamp(epoch_ms / 1000, tz=UTC).strftime("%H:%M:%S UTC")


def _committed_text(offset: int) -> str:
    return _num(offset) if offset >= 0 else "none"


def _segment(text: str) -> str:
    """A path segment, percent-encoded (a topic or group name in a URL)."""
    return quote(text, safe="")


def make_templates() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        num=_num, bytes=_bytes, rate=_rate, skew=_skew, clock=_clock, segment=_segment
    )
    env.globals.update(
        qs=urlencode,
        FORMATS=FORMATS,
        VALUE_SHOWN_BYTES_MAX=VALUE_SHOWN_BYTES_MAX,
        VALUE_FULL_BYTES_MAX=VALUE_FULL_BYTES_MAX,
        RECORDS_PER_PAGE_MAX=RECORDS_PER_PAGE_MAX,
        SCAN_RECORDS_MAX=SCAN_RECORDS_MAX,
        RECORDS_PER_PAGE_DEFAULT=RECORDS_PER_PAGE_DEFAULT,
        SCAN_RECORDS_DEFAULT=SCAN_RECORDS_DEFAULT,
        RATES_FROM_METRICS=RATES_FROM_METRICS,
    )
    return env


# ---------------------------------------------------------------- the application

BACKEND = web.AppKey("backend", Backend)
CONFIG = web.AppKey("config", ConsoleConfig)
TEMPLATES = web.AppKey("templates", jinja2.Environment)
CSRF = web.AppKey("csrf", str)
STOPPING = web.AppKey("stopping", asyncio.Event)
STREAMS = web.AppKey("streams", dict)


def make_app(backend: Backend, config: ConsoleConfig) -> web.Application:
    app = web.Application(
        middlewares=[_error_pages, _host_check, _write_rules],
        client_max_size=REQUEST_BODY_BYTES_MAX,
    )
    app[BACKEND] = backend
    app[CONFIG] = config
    app[TEMPLATES] = make_templates()
    app[CSRF] = secrets.token_urlsafe(24)
    app[STOPPING] = asyncio.Event()
    app[STREAMS] = {"sse": 0, "tail": 0}
    views = _Views(app)
    app.router.add_get("/", views.overview)
    app.router.add_get("/controllers", views.controllers)
    app.router.add_get("/brokers", views.brokers)
    app.router.add_get("/topics", views.topics)
    app.router.add_post("/topics", views.create_topic)
    app.router.add_get("/topics/{name}", views.topic)
    app.router.add_post("/topics/{name}/delete", views.delete_topic)
    app.router.add_get("/topics/{name}/messages", views.messages)
    app.router.add_get("/topics/{name}/messages/{partition}/{offset}", views.record)
    app.router.add_get("/groups", views.groups)
    app.router.add_get("/groups/{name}", views.group)
    app.router.add_post("/groups/{name}/reset", views.reset_group)
    app.router.add_get("/produce", views.produce_form)
    app.router.add_post("/produce", views.produce)
    app.router.add_get("/events/overview", views.events_overview)
    app.router.add_get("/events/controllers", views.events_controllers)
    app.router.add_get("/events/brokers", views.events_brokers)
    app.router.add_get("/events/topics", views.events_topics)
    app.router.add_get("/events/topics/{name}", views.events_topic)
    app.router.add_get("/events/groups", views.events_groups)
    app.router.add_get("/events/groups/{name}", views.events_group)
    app.router.add_get("/events/tail/{name}/{partition}", views.events_tail)
    app.router.add_static("/static", STATIC_DIR, append_version=True)
    app.on_startup.append(_on_startup)
    app.on_shutdown.append(_on_shutdown)
    app.on_cleanup.append(_on_cleanup)
    app.on_response_prepare.append(_security_headers)
    return app


async def _on_startup(app: web.Application) -> None:
    app[BACKEND].watch.start()


async def _on_shutdown(app: web.Application) -> None:
    app[STOPPING].set()  # every event stream ends


async def _on_cleanup(app: web.Application) -> None:
    await app[BACKEND].close()


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["Content-Security-Policy"] = (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
        "frame-ancestors 'none'"
    )
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers.setdefault("Cache-Control", "no-store")


def _render(
    request: web.Request, template: str, *, status: int = 200, **context: Any
) -> web.Response:
    app = request.app
    config = app[CONFIG]
    html = (
        app[TEMPLATES]
        .get_template(template)
        .render(
            read_only=config.read_only,
            csrf=app[CSRF],
            path=request.path,
            **context,
        )
    )
    return web.Response(text=html, status=status, content_type="text/html", charset="utf-8")


def _error_page(request: web.Request, status: int, message: str, title: str = "") -> web.Response:
    return _render(
        request,
        "error.html",
        status=status,
        title=title
        or {400: "Bad request", 403: "Forbidden", 404: "Not found"}.get(status, "Error"),
        message=message,
        status_code=status,
    )


def _status_of(error: RaftmqError) -> int:
    if error.code in NOT_FOUND_CODES:
        return 404
    return 502 if error.retriable else 400


@web.middleware
async def _error_pages(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Every failure becomes a page with an error box (never a traceback, never a hang)."""
    try:
        return await handler(request)
    except PageError as e:
        return _error_page(request, e.status, e.message, e.title)
    except QueryError as e:
        return _error_page(request, 400, str(e))
    except RaftmqError as e:
        return _error_page(request, _status_of(e), f"{e.code.name}: {e.message}")
    except TimeoutError as e:
        return _error_page(request, 504, str(e) or "the cluster did not answer in time")
    except web.HTTPException as e:
        if e.status < 400:
            raise
        return _error_page(request, e.status, e.reason)
    except Exception:
        _log.exception("console.request_failed", path=request.path, method=request.method)
        return _error_page(request, 500, "internal error: the console logged it")


def _loopback(host: str) -> bool:
    return host in LOOPBACK_NAMES or host.startswith("127.")


@web.middleware
async def _host_check(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    config = request.app[CONFIG]
    if _loopback(config.listen_host):
        host = request.host.rsplit(":", 1)[0] if not request.host.endswith("]") else request.host
        if not _loopback(host) and host != config.listen_host:
            return web.Response(status=421, text="this console answers only on loopback names\n")
    return await handler(request)


@web.middleware
async def _write_rules(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """--read-only refuses every write and the produce form; every POST needs the CSRF
    token of this console process."""
    config = request.app[CONFIG]
    if config.read_only and (request.method == "POST" or request.path == "/produce"):
        raise PageError(403, "this console is read-only (--read-only): it changes nothing")
    if request.method == "POST":
        fields = await _fields(request)
        if not secrets.compare_digest(fields.get("csrf", ""), request.app[CSRF]):
            raise PageError(403, "this form is stale or came from another site: reload the page")
    return await handler(request)


async def _fields(request: web.Request) -> dict[str, str]:
    """A POST's form fields (text fields only; the first of a repeated name)."""
    try:
        posted = await request.post()
    except UnicodeDecodeError:
        # A form of raw non-UTF-8 bytes (browsers percent-encode; this is a hand-made
        # request): said plainly, not a 500. Hex-encoded fields carry any bytes.
        raise QueryError("the form is not UTF-8 text (send bytes as hex)") from None
    fields: dict[str, str] = {}
    for name, value in posted.items():
        if isinstance(value, str) and name not in fields:
            fields[name] = value
    return fields


# ---------------------------------------------------------------- server-sent events


@contextlib.contextmanager
def _stream_slot(request: web.Request, kind: str) -> Iterator[None]:
    """Hold one of the `kind` ("sse" or "tail") stream slots for the stream's life; a 503
    when all are taken. Taken before the response starts, so that no await lies between
    the check and the count."""
    streams = request.app[STREAMS]
    config = request.app[CONFIG]
    limit = config.tail_clients_max if kind == "tail" else config.sse_clients_max
    if streams[kind] >= limit:
        _log.warning("console.stream_refused", kind=kind, open=streams[kind], limit=limit)
        raise web.HTTPServiceUnavailable(reason=f"too many live streams open (at most {limit})")
    streams[kind] += 1
    try:
        yield
    finally:
        streams[kind] -= 1


async def _sse_open(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-store",
            "X-Accel-Buffering": "no",
        }
    )
    await response.prepare(request)
    return response


async def _sse_send(response: web.StreamResponse, event: str, data: Mapping[str, Any]) -> None:
    # json.dumps writes one line: one `data:` field per event.
    await response.write(f"event: {event}\ndata: {json.dumps(data)}\n\n".encode())


async def _stopped_within(request: web.Request, timeout_s: float) -> bool:
    """Wait up to `timeout_s` for the console to stop; True if it did."""
    stopping = request.app[STOPPING]
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout_s):
            await stopping.wait()
    return stopping.is_set()


Fragment = Callable[[], Awaitable[tuple[str, str]]]


async def _stream_fragments(
    request: web.Request, build: Fragment, *, wait: Callable[[], Awaitable[bool]]
) -> web.StreamResponse:
    """Send the page's live fragment and its error box whenever either changes. `build`
    returns (live html, error html); `wait` waits for a reason to build again (True: the
    console is stopping)."""
    watch = request.app[BACKEND].watch
    sent: dict[str, str] = {}
    quiet_since_s = time.monotonic()
    with _stream_slot(request, "sse"), watch.watching():
        response = await _sse_open(request)
        try:
            # Bound: until the client leaves (a write fails) or the console stops.
            while True:
                live, error = await build()
                changed = {
                    k: v for k, v in (("live", live), ("live-error", error)) if sent.get(k) != v
                }
                if changed:
                    await _sse_send(response, "fragments", changed)
                    sent.update(changed)
                    quiet_since_s = time.monotonic()
                elif time.monotonic() - quiet_since_s >= SSE_KEEPALIVE_S:
                    await response.write(b": keepalive\n\n")
                    quiet_since_s = time.monotonic()
                if await wait():
                    break
        except ConnectionError:
            pass  # the client left
    return response


# ---------------------------------------------------------------- pages


def _error_html(templates: jinja2.Environment, message: str) -> str:
    return templates.get_template("_error_box.html").render(message=message)


class _Views:
    def __init__(self, app: web.Application) -> None:
        self.app = app

    @property
    def backend(self) -> Backend:
        return self.app[BACKEND]

    @property
    def templates(self) -> jinja2.Environment:
        return self.app[TEMPLATES]

    def _fragment(self, request: web.Request, template: str, context: dict[str, Any]) -> str:
        config = self.app[CONFIG]
        return self.templates.get_template(template).render(
            read_only=config.read_only, csrf=self.app[CSRF], path=request.path, **context
        )

    # ------------------------------------------------------------ snapshot pages

    async def _snapshot_page(
        self,
        request: web.Request,
        page: str,
        fragment: str,
        context: Callable[[Snapshot], dict[str, Any]],
        events: str,
    ) -> web.Response:
        snapshot = await self.backend.watch.current()
        return _render(
            request,
            page,
            fragment=fragment,
            events=events,
            snapshot_error=snapshot.error,
            **context(snapshot),
        )

    async def _snapshot_events(
        self, request: web.Request, fragment: str, context: Callable[[Snapshot], dict[str, Any]]
    ) -> web.StreamResponse:
        watch = self.backend.watch
        # A stream opened before any poll (a fresh console) starts with a real snapshot,
        # not "waiting for the cluster".
        version = [(await watch.current()).version]

        async def build() -> tuple[str, str]:
            snapshot = watch.snapshot
            version[0] = snapshot.version
            error = _error_html(self.templates, snapshot.error) if snapshot.error else ""
            try:
                return self._fragment(request, fragment, context(snapshot)), error
            except PageError as e:
                return "", _error_html(self.templates, e.message)

        async def wait() -> bool:
            stopping = request.app[STOPPING]
            waiter = asyncio.ensure_future(watch.wait_newer(version[0], SSE_KEEPALIVE_S))
            stop = asyncio.ensure_future(stopping.wait())
            _done, pending = await asyncio.wait({waiter, stop}, return_when=asyncio.FIRST_COMPLETED)
            for task in pending:
                task.cancel()
            return stopping.is_set()

        return await _stream_fragments(request, build, wait=wait)

    def _overview(self, snapshot: Snapshot) -> dict[str, Any]:
        sample = snapshot.sample
        return {
            "snapshot": snapshot,
            "sample": sample,
            "badges": health_badges(sample) if sample else [],
            "health": partition_health(sample.topics) if sample else None,
            "rates": snapshot.rates,
            "metrics": self.app[CONFIG].metrics,
            "unfenced": sum(1 for b in sample.brokers if not b.fenced) if sample else 0,
        }

    async def overview(self, request: web.Request) -> web.Response:
        return await self._snapshot_page(
            request, "overview.html", "_overview.html", self._overview, "/events/overview"
        )

    async def events_overview(self, request: web.Request) -> web.StreamResponse:
        return await self._snapshot_events(request, "_overview.html", self._overview)

    def _controllers(self, snapshot: Snapshot) -> dict[str, Any]:
        sample = snapshot.sample
        return {
            "snapshot": snapshot,
            "sample": sample,
            "voters": voter_rows(sample) if sample else [],
            "leader_view": leader_view_known(sample) if sample else False,
            "controller_metrics": sample.controller_metrics() if sample else [],
        }

    async def controllers(self, request: web.Request) -> web.Response:
        return await self._snapshot_page(
            request,
            "controllers.html",
            "_controllers.html",
            self._controllers,
            "/events/controllers",
        )

    async def events_controllers(self, request: web.Request) -> web.StreamResponse:
        return await self._snapshot_events(request, "_controllers.html", self._controllers)

    def _brokers(self, snapshot: Snapshot) -> dict[str, Any]:
        sample = snapshot.sample
        return {
            "snapshot": snapshot,
            "sample": sample,
            "brokers": broker_rows(sample) if sample else [],
            "metrics": self.app[CONFIG].metrics,
        }

    async def brokers(self, request: web.Request) -> web.Response:
        return await self._snapshot_page(
            request, "brokers.html", "_brokers.html", self._brokers, "/events/brokers"
        )

    async def events_brokers(self, request: web.Request) -> web.StreamResponse:
        return await self._snapshot_events(request, "_brokers.html", self._brokers)

    def _topics(self, snapshot: Snapshot) -> dict[str, Any]:
        sample = snapshot.sample
        return {
            "snapshot": snapshot,
            "sample": sample,
            "topics": topic_rows(sample, snapshot.rates) if sample else [],
        }

    async def topics(self, request: web.Request) -> web.Response:
        deleted = request.query.get("deleted", "")[:300]
        return await self._snapshot_page(
            request,
            "topics.html",
            "_topics.html",
            lambda s: {**self._topics(s), "deleted": deleted, "form": {}, "form_error": ""},
            "/events/topics",
        )

    async def events_topics(self, request: web.Request) -> web.StreamResponse:
        return await self._snapshot_events(request, "_topics.html", self._topics)

    def _topic(self, name: str) -> Callable[[Snapshot], dict[str, Any]]:
        def context(snapshot: Snapshot) -> dict[str, Any]:
            sample = snapshot.sample
            topic = sample.topic(name) if sample else None
            if sample is not None and topic is None:
                raise PageError(404, f"there is no topic {name!r}", "No such topic")
            return {
                "snapshot": snapshot,
                "sample": sample,
                "name": name,
                "topic": topic,
                "internal": is_internal(name),
                "partitions": partition_rows(sample, topic) if sample and topic else [],
                "in_per_s": snapshot.rates.topic_in_per_s.get(name),
            }

        return context

    async def topic(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        return await self._snapshot_page(
            request,
            "topic.html",
            "_topic.html",
            self._topic(name),
            f"/events/topics/{_segment(name)}",
        )

    async def events_topic(self, request: web.Request) -> web.StreamResponse:
        return await self._snapshot_events(
            request, "_topic.html", self._topic(request.match_info["name"])
        )

    # ------------------------------------------------------------ topic admin

    async def create_topic(self, request: web.Request) -> web.StreamResponse:
        fields = await _fields(request)
        try:
            wanted = forms.parse_create_topic(fields)
        except QueryError as e:
            snapshot = await self.backend.watch.current()
            return _render(
                request,
                "topics.html",
                status=400,
                fragment="_topics.html",
                events="/events/topics",
                snapshot_error=snapshot.error,
                deleted="",
                form=fields,
                form_error=str(e),
                **self._topics(snapshot),
            )
        if fields.get("confirmed") != "yes":
            return _render(
                request,
                "confirm.html",
                title=f"Create topic {wanted.name}?",
                action="/topics",
                fields={
                    k: v
                    for k, v in fields.items()
                    if k in ("name", "partitions", "replication_factor", "configs")
                },
                summary=[
                    ("Name", wanted.name),
                    ("Partitions", str(wanted.partitions)),
                    ("Replication factor", str(wanted.replication_factor)),
                    ("Configs", ", ".join(f"{k}={v}" for k, v in wanted.configs) or "the defaults"),
                ],
                button="Create topic",
                type_to_confirm="",
                cancel="/topics",
                warning="",
                blocked="",
            )
        await self.backend.create_topic(
            wanted.name, wanted.partitions, wanted.replication_factor, dict(wanted.configs)
        )
        _log.info("console.topic_created", topic=wanted.name, partitions=wanted.partitions)
        raise web.HTTPSeeOther(f"/topics/{_segment(wanted.name)}")

    async def delete_topic(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        fields = await _fields(request)
        snapshot = await self.backend.watch.current()
        if snapshot.sample is not None and snapshot.sample.topic(name) is None:
            raise PageError(404, f"there is no topic {name!r}", "No such topic")
        typed = fields.get("confirm_name")
        if typed != name:
            return _render(
                request,
                "confirm.html",
                title=f"Delete topic {name}?",
                action=f"/topics/{_segment(name)}/delete",
                fields={},
                summary=[("Topic", name), ("What goes", "every partition and every message in it")],
                button="Delete topic",
                type_to_confirm=name,
                cancel=f"/topics/{_segment(name)}",
                warning=""
                if typed is None
                else "the name typed does not match: nothing was deleted",
                blocked="",
            )
        await self.backend.delete_topic(name)
        _log.info("console.topic_deleted", topic=name)
        raise web.HTTPSeeOther("/topics?" + urlencode({"deleted": name}))

    # ------------------------------------------------------------ messages

    async def _partitions_of(self, name: str) -> int:
        snapshot = await self.backend.watch.current()
        sample = snapshot.sample
        if sample is None:
            raise PageError(502, f"the cluster does not answer: {snapshot.error}")
        topic = sample.topic(name)
        if topic is None:
            raise PageError(404, f"there is no topic {name!r}", "No such topic")
        return len(topic.partitions)

    async def messages(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        partitions = await self._partitions_of(name)
        params = dict(request.query)
        try:
            query = parse_browse_query(params, partitions)
        except QueryError as e:
            return _render(
                request,
                "messages.html",
                status=400,
                name=name,
                partitions=partitions,
                params=params,
                query=None,
                result=None,
                error=str(e),
                tail=False,
                produced=False,
                next_params=None,
                events="",
            )
        if params.get("tail") == "1":
            return _render(
                request,
                "messages.html",
                name=name,
                partitions=partitions,
                params=params,
                query=query,
                result=None,
                error="",
                tail=True,
                produced=False,
                next_params=None,
                events=f"/events/tail/{_segment(name)}/{query.partition}?"
                + urlencode({"format": query.fmt}),
            )
        # Asked now, not taken from the last poll: a record written a moment ago (the
        # produce form redirects here) must be inside the scan's bound.
        offsets = await self.backend.partition_offsets(name, query.partition)
        reader = self.backend.open_reader(name, query.partition)
        try:
            result = await scan(
                reader,
                query,
                log_start_offset=offsets.log_start_offset,
                high_watermark=offsets.high_watermark,
            )
        finally:
            await reader.close()
        next_params = (
            query.to_params(offset=result.next_offset)
            if result.next_offset is not None and result.next_offset < result.high_watermark
            else None
        )
        return _render(
            request,
            "messages.html",
            name=name,
            partitions=partitions,
            params=params,
            query=query,
            result=result,
            error="",
            tail=False,
            produced=params.get("produced") == "1",
            next_params=next_params,
            events="",
        )

    async def record(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        partitions = await self._partitions_of(name)
        partition = parse_int(
            request.match_info["partition"], "partition", minimum=0, maximum=partitions - 1
        )
        offset = parse_int(request.match_info["offset"], "offset", minimum=0, maximum=2**63 - 1)
        fmt = request.query.get("format", "auto") or "auto"
        if fmt not in FORMATS:
            raise QueryError(f"format must be one of {', '.join(FORMATS)}")
        reader = self.backend.open_reader(name, partition)
        try:
            reader.set_offset(offset)
            message = await reader.read_message(timeout_ms=5_000)
        except TimeoutError:
            raise PageError(
                404, f"no record at or after offset {offset} in {name}-{partition} (yet)"
            ) from None
        finally:
            await reader.close()
        return _render(
            request,
            "record.html",
            name=name,
            partition=partition,
            asked=offset,
            record=show_record(message, fmt, VALUE_FULL_BYTES_MAX),
            fmt=fmt,
        )

    async def events_tail(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        partitions = await self._partitions_of(name)
        partition = parse_int(
            request.match_info["partition"], "partition", minimum=0, maximum=partitions - 1
        )
        fmt = request.query.get("format", "auto") or "auto"
        if fmt not in FORMATS:
            raise QueryError(f"format must be one of {', '.join(FORMATS)}")
        rows = self.templates.get_template("_record_rows.html")
        quiet_since_s = time.monotonic()
        with _stream_slot(request, "tail"):
            response = await _sse_open(request)
            reader = self.backend.open_reader(name, partition)
            reader.set_offset(LastOffset)
            try:
                await _sse_send(response, "tail", {"rows": "", "note": "waiting for new records"})
                # Bound: until the client leaves or the console stops; each pass reads
                # at most TAIL_BATCH_MAX records within TAIL_EVENT_MS.
                while not request.app[STOPPING].is_set():
                    batch, error = await _read_batch(reader)
                    note = ""
                    if len(batch) >= TAIL_BATCH_MAX and reader.lag > TAIL_SKIP_LAG:
                        note = f"skipped about {reader.lag} records to keep up"
                        reader.set_offset(LastOffset)
                    if batch or note or error:
                        shown = [show_record(m, fmt) for m in batch]
                        html = rows.render(records=shown, name=name, fmt=fmt)
                        await _sse_send(
                            response, "tail", {"rows": html, "note": note, "error": error}
                        )
                        quiet_since_s = time.monotonic()
                    elif time.monotonic() - quiet_since_s >= SSE_KEEPALIVE_S:
                        await response.write(b": keepalive\n\n")
                        quiet_since_s = time.monotonic()
                    if error and await _stopped_within(request, 1.0):
                        break
            except ConnectionError:
                pass  # the client left
            finally:
                await reader.close()
        return response

    # ------------------------------------------------------------ groups

    async def _groups_context(self) -> dict[str, Any]:
        listings = (await self.backend.list_groups())[:GROUPS_LISTED_MAX]
        described: dict[str, Any] = {}
        errors: dict[str, str] = {}

        async def describe(group_id: str) -> None:
            try:
                described[group_id] = await self.backend.describe_group(group_id)
            except RaftmqError as e:
                errors[group_id] = f"{e.code.name}: {e.message}"

        await asyncio.gather(*(describe(g.group_id) for g in listings[:GROUPS_DESCRIBED_MAX]))
        return {
            "groups": listings,
            "described": described,
            "group_errors": errors,
            "described_max": GROUPS_DESCRIBED_MAX,
            "taken_ms": int(time.time() * 1000),
        }

    async def groups(self, request: web.Request) -> web.Response:
        return _render(
            request,
            "groups.html",
            fragment="_groups.html",
            events="/events/groups",
            snapshot_error="",
            **await self._groups_context(),
        )

    async def events_groups(self, request: web.Request) -> web.StreamResponse:
        return await self._group_events(request, "_groups.html", self._groups_context)

    async def _group_context(self, name: str) -> dict[str, Any]:
        description = await self.backend.describe_group(name)
        return {
            "name": name,
            "group": description,
            "topics": sorted({p.topic for p in description.partitions}),
            "taken_ms": int(time.time() * 1000),
        }

    async def group(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        context = await self._group_context(name)
        return _render(
            request,
            "group.html",
            fragment="_group.html",
            events=f"/events/groups/{_segment(name)}",
            snapshot_error="",
            reset=request.query.get("reset", "")[:300],
            form_error="",
            form={},
            **context,
        )

    async def events_group(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        return await self._group_events(request, "_group.html", lambda: self._group_context(name))

    async def _group_events(
        self, request: web.Request, fragment: str, context: Callable[[], Awaitable[dict[str, Any]]]
    ) -> web.StreamResponse:
        last: list[str] = [""]

        async def build() -> tuple[str, str]:
            try:
                html = self._fragment(request, fragment, await context())
            except RaftmqError as e:
                return last[0], _error_html(self.templates, f"{e.code.name}: {e.message}")
            except TimeoutError as e:
                return last[0], _error_html(self.templates, str(e) or "the cluster did not answer")
            last[0] = html
            return html, ""

        return await _stream_fragments(
            request, build, wait=lambda: _stopped_within(request, GROUP_REFRESH_S)
        )

    async def reset_group(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        fields = await _fields(request)
        description = await self.backend.describe_group(name)
        snapshot = await self.backend.watch.current()
        known = {t.name for t in snapshot.sample.topics} if snapshot.sample else set()
        try:
            wanted = forms.parse_reset(fields, known)
        except QueryError as e:
            return _render(
                request,
                "group.html",
                status=400,
                fragment="_group.html",
                events=f"/events/groups/{_segment(name)}",
                snapshot_error="",
                reset="",
                form_error=str(e),
                form=fields,
                name=name,
                group=description,
                topics=sorted({p.topic for p in description.partitions}),
                taken_ms=int(time.time() * 1000),
            )
        if fields.get("confirmed") != "yes":
            plan = await self.backend.plan_reset(name, wanted.topic, wanted.to)
            committed = {
                p.partition: p.committed_offset
                for p in description.partitions
                if p.topic == wanted.topic
            }
            members = len(description.members)
            return _render(
                request,
                "confirm.html",
                title=f"Reset group {name}'s offsets of {wanted.topic}?",
                action=f"/groups/{_segment(name)}/reset",
                fields=forms.reset_fields(wanted),
                summary=[("Group", name), ("Topic", wanted.topic), ("To", wanted.described)]
                + [
                    (
                        f"Partition {p}",
                        f"{_committed_text(committed.get(p, -1))} → {_num(o)}",
                    )
                    for p, o in sorted(plan.items())
                ],
                button="Reset offsets",
                type_to_confirm="",
                cancel=f"/groups/{_segment(name)}",
                warning="",
                blocked=(
                    f"the group has {members} member(s): offsets can be reset only while it is "
                    "empty (stop its consumers first)"
                    if members
                    else ""
                ),
            )
        targets = await self.backend.reset_offsets(name, wanted.topic, wanted.to)
        _log.info("console.offsets_reset", group=name, topic=wanted.topic, partitions=len(targets))
        raise web.HTTPSeeOther(f"/groups/{_segment(name)}?" + urlencode({"reset": wanted.topic}))

    # ------------------------------------------------------------ produce

    def _topic_choices(self, sample: Sample | None) -> list[tuple[str, int]]:
        if sample is None:
            return []
        return sorted((t.name, len(t.partitions)) for t in sample.topics if not is_internal(t.name))

    async def produce_form(self, request: web.Request) -> web.Response:
        snapshot = await self.backend.watch.current()
        form = {"topic": request.query.get("topic", "")[:300]}
        return _render(
            request,
            "produce.html",
            topics=self._topic_choices(snapshot.sample),
            form=form,
            error="",
        )

    async def produce(self, request: web.Request) -> web.StreamResponse:
        fields = await _fields(request)
        snapshot = await self.backend.watch.current()
        choices = self._topic_choices(snapshot.sample)
        try:
            wanted = forms.parse_produce(fields, dict(choices))
            message = Message(
                wanted.value,
                wanted.key,
                topic=wanted.topic,
                partition=wanted.partition,
                headers=list(wanted.headers),
            )
            written = await self.backend.produce(message)
        except (QueryError, RaftmqError) as e:
            text = str(e) if isinstance(e, QueryError) else f"{e.code.name}: {e.message}"
            return _render(
                request, "produce.html", status=400, topics=choices, form=fields, error=text
            )
        _log.info(
            "console.message_produced",
            topic=wanted.topic,
            partition=written.partition,
            offset=written.offset,
        )
        params = {
            "partition": str(written.partition),
            "offset": str(written.offset),
            "produced": "1",
        }
        raise web.HTTPSeeOther(f"/topics/{_segment(wanted.topic)}/messages?" + urlencode(params))


async def _read_batch(reader: TailSource) -> tuple[list[Message], str]:
    """Up to TAIL_BATCH_MAX records that come within TAIL_EVENT_MS, and an error, if one
    stopped the read."""
    batch: list[Message] = []
    deadline_s = time.monotonic() + TAIL_EVENT_MS / 1000
    while len(batch) < TAIL_BATCH_MAX:
        remaining_ms = int((deadline_s - time.monotonic()) * 1000)
        if remaining_ms <= 0:
            break
        try:
            batch.append(await reader.read_message(timeout_ms=remaining_ms))
        except TimeoutError:
            break
        except RaftmqError as e:
            return batch, f"{e.code.name}: {e.message}"
    return batch, ""
