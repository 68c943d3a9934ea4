"""raftmq's web console (`raftmq console`, and `raftmq up` starts one): the cluster at a
glance — health, the controller quorum's Raft state, brokers, topics and partitions with
ISR/OSR, consumer groups and lag, a message browser with search and a live tail, a
produce form and a few admin actions — updated live in the browser.

Modules, pure ones first:
- `records.py`: how bytes are shown (text, pretty JSON, hex; bounded) and searched.
- `cluster_view.py`: a poll of the cluster (`Sample`), the `Snapshot` pages render, and
  the rows each page derives from it (badges, skew, partitions, voters).
- `rates.py`, `prometheus.py`, `forms.py`, `browse.py` (the bounded scan).
- `cluster_watch.py`: the one poller every page and stream shares.
- `backend.py`: the only way to the cluster — the public client (`AsyncAdmin`,
  `AsyncReader`, `AsyncWriter`, `AsyncConn`) and the nodes' /metrics.
- `app.py`: routes, pages, server-sent events, the request rules (errors, read-only,
  CSRF, loopback Host check, CSP).
- `server.py`: the `raftmq console` process (exclusive bind, signals, the launcher pipe).

The stack, and why: aiohttp and Jinja2, nothing else. aiohttp is one dependency for all
three things the console needs on one asyncio event loop — the HTTP server, the
server-sent event streams (a `StreamResponse` written by hand, twenty lines), and the
HTTP client that scrapes the brokers' /metrics — and it shares that loop with the
grpc.aio client, so a page and the cluster calls it makes are one coroutine. Starlette
would need uvicorn, sse-starlette and httpx for the same (four packages and an ASGI
layer). Jinja2 renders every page on the server with autoescaping on by default, so an
HTML key, value or header is escaped by the engine rather than by every view remembering
to; the browser gets server-rendered HTML and one small vanilla script
(`static/console.js`) that swaps in the fragments the event streams send. Every asset
ships in the package: no CDN, no build step.
"""
