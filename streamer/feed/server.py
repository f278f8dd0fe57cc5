"""The websocket feed's network shell (protocol and state: `streamer.feed.protocol`; docs/feed.md).

One port serves the feed (websocket upgrade, any path; `/ws` by convention) and plain HTTP:
`/healthz`, `/readyz`, the dashboard at `/` and its files under `/static/`. Each connection
gets a reader (its messages go to `FeedProtocol.handle`) and a writer task that sends whatever its
outbox holds; a heartbeat task queues heartbeats and closes clients whose sends stay blocked.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import mimetypes
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server as WsServer
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from streamer.feed.hub import Hub
from streamer.feed.outbox import Client, Limits
from streamer.feed.protocol import FeedProtocol
from streamer.metrics import Metrics
from streamer.settings import Settings

log = logging.getLogger(__name__)

STATIC = Path(__file__).with_name("static")
CLOSE_SLOW = 4001
BEAT_SLICES = 10  # heartbeats go out a tenth of the connections at a time
CLOSE_POLICY = 1008
CLOSE_TRY_LATER = 1013


class FeedServer:
    """`await FeedServer(settings, hub, ready=..., status=...).start()`; `await close()`."""

    def __init__(
        self,
        settings: Settings,
        hub: Hub,
        *,
        ready: Callable[[], bool] = lambda: True,
        status: Callable[[], dict[str, Any]] | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.limits = Limits.of(settings)
        self.metrics = metrics
        self.feed = FeedProtocol(hub, self.limits, status=status, metrics=metrics)
        self.ready = ready
        self._server: WsServer | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._closers: set[asyncio.Task[None]] = set()
        self._sockets: dict[int, ServerConnection] = {}  # client id -> its connection

    @property
    def port(self) -> int:
        """The bound port (useful with `feed_port=0`)."""
        assert self._server is not None
        return int(next(iter(self._server.sockets)).getsockname()[1])

    @property
    def url(self) -> str:
        return f"ws://{self.settings.feed_host}:{self.port}/ws"

    async def start(self) -> None:
        s = self.settings
        ws_log = logging.getLogger("websockets.server")
        if not any(isinstance(f, _ServedPages) for f in ws_log.filters):
            ws_log.addFilter(_ServedPages())
        self._server = await serve(
            self._connection,
            s.feed_host,
            s.feed_port,
            process_request=self._http,
            max_size=self.limits.max_frame,
            compression=None,  # per-message deflate triples the CPU per delivery
            # Bytes buffered in user space before a send waits (feed_buffer_bytes) ...
            write_limit=s.feed_buffer_bytes,
            close_timeout=2,
        )
        self._heartbeat = asyncio.create_task(self._beat())
        log.info("feed on %s (dashboard http://%s:%d/)", self.url, s.feed_host, self.port)

    async def close(self) -> None:
        """Stop accepting, close every connection with 1001 (cut off after 2 s if the
        client reads nothing), stop the heartbeat."""
        if self._server is not None:
            self._server.close(close_connections=False)
            await asyncio.gather(
                *(_close(ws, 1001, "server shutting down") for ws in list(self._sockets.values()))
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 5.0)
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
        for t in list(self._closers):
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await t
        self.feed.close()

    # ------------------------------------------------------------------ HTTP
    def _http(self, connection: ServerConnection, request: Request) -> Response | None:
        try:
            return self._route(connection, request)
        except (ValueError, LookupError, OSError):  # repeated headers, NUL bytes in paths...
            return connection.respond(400, "bad request\n")

    def _route(self, connection: ServerConnection, request: Request) -> Response | None:
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return None  # the feed
        path = urlsplit(request.path).path
        if path == "/healthz":
            return connection.respond(200, "ok\n")
        if path == "/readyz":
            ok = self.ready()
            return connection.respond(200 if ok else 503, "ready\n" if ok else "not ready\n")
        if path in ("/", "/index.html"):
            return _file(connection, STATIC / "index.html")
        if path.startswith("/static/"):
            target = (STATIC / path.removeprefix("/static/")).resolve()
            if target.is_relative_to(STATIC.resolve()) and target.is_file():
                return _file(connection, target)
        return connection.respond(404, "not found\n")

    # ------------------------------------------------------------------ websocket
    async def _connection(self, ws: ServerConnection) -> None:
        try:
            authorized = self._authorized(ws.request)
        except (ValueError, LookupError):  # a repeated Authorization header
            authorized = False
        if not authorized:
            self._count_close("unauthorized")
            await ws.close(CLOSE_POLICY, "unauthorized: missing or wrong bearer token")
            return
        if len(self.feed.clients) >= self.limits.max_connections:
            self._count_close("max_connections")
            await ws.close(CLOSE_TRY_LATER, f"too many connections ({self.limits.max_connections})")
            return
        sock = ws.transport.get_extra_info("socket") if ws.transport is not None else None
        if sock is not None:
            # ... and in the kernel (Linux doubles it). A fixed size stops autotuning from
            # parking up to 4 MiB per stalled client; 256 KiB still carries ~5 MB/s to a
            # client 100 ms away.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.settings.feed_buffer_bytes)
        wake = asyncio.Event()
        client = self.feed.connect(wake.set)
        self._sockets[client.id] = ws
        writer = asyncio.create_task(self._writer(ws, client, wake))
        try:
            async for message in ws:
                self.feed.handle(client, message)
        except ConnectionClosed:
            pass
        finally:
            self.feed.disconnect(client)
            self._sockets.pop(client.id, None)
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                await writer

    def _authorized(self, request: Request | None) -> bool:
        token = self.settings.feed_token
        if not token:
            return True
        if request is None:
            return False
        given = ""
        auth = request.headers.get("Authorization", "")
        if auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        else:
            given = parse_qs(urlsplit(request.path).query).get("token", [""])[0]
        # surrogateescape: header bytes that are not UTF-8 must compare unequal, not raise
        return hmac.compare_digest(
            given.encode("utf-8", "surrogateescape"), token.encode("utf-8", "surrogateescape")
        )

    async def _writer(self, ws: ServerConnection, client: Client, wake: asyncio.Event) -> None:
        """Send whatever the client's outbox holds, as it fills, at most `feed_frame_rate`
        times a second: a frame goes out at once if the previous one left at least 1/rate
        ago, otherwise when that time comes, carrying everything published meanwhile. (A
        burst allowance made every paced client wake in step after any pause: p99 at 1,000
        clients went from 52 to 105-187 ms.)"""
        loop = asyncio.get_running_loop()
        rate = self.settings.feed_frames_per_s
        gap = 1 / rate if rate > 0 else 0.0
        last = -gap
        while True:
            await wake.wait()
            wait = last + gap - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            wake.clear()
            last = loop.time()
            while True:  # snapshots come a chunk at a time; control messages are not paced
                frames, since = self.feed.take(client)
                for frame in frames:
                    client.blocked_since = loop.time()
                    await ws.send(frame, text=True)
                client.blocked_since = None
                if since is not None:
                    self.feed.sent_after(since)
                if not client.outbox.control:
                    break

    async def _beat(self) -> None:
        """Heartbeats in `BEAT_SLICES` slices spread over each interval: every client gets
        one per interval, and no slice is a burst of every connection's frame at once."""
        part = 0
        while True:
            await asyncio.sleep(self.limits.heartbeat_s / BEAT_SLICES)
            try:
                slow = self.feed.heartbeat(part, BEAT_SLICES)
                part = (part + 1) % BEAT_SLICES
            except Exception:  # a status() failure must not end the heartbeats
                log.exception("feed heartbeat failed")
                continue
            for c in slow:
                self._close_slow(c)

    def _close_slow(self, client: Client) -> None:
        ws = self._sockets.get(client.id)
        if ws is None:
            return
        self.feed.disconnect(client)
        self._count_close("slow")
        log.warning("closing feed client %d: a send blocked > %.1f s", client.id,
                    self.limits.slow_close_s)  # fmt: skip

        # The close frame queues behind the backlog; a client that still reads nothing is
        # cut off 3 s later.
        task = asyncio.create_task(_close(ws, CLOSE_SLOW, "slow consumer", 3.0))
        self._closers.add(task)
        task.add_done_callback(self._closers.discard)

    def _count_close(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.feed_closed.labels(reason).inc()


class _ServedPages(logging.Filter):
    """websockets logs every HTTP answer of `process_request` as "connection rejected (200
    OK)"; the dashboard, /healthz, /readyz and /metrics are pages served, not rejections."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (
            record.msg == "connection rejected (%d %s)"
            and isinstance(record.args, tuple)
            and record.args
            and isinstance(record.args[0], int)
            and record.args[0] < 400
        )


async def _close(ws: ServerConnection, code: int, reason: str, timeout: float = 2.0) -> None:
    """Close with `code`; abort the TCP connection if that takes longer than `timeout`."""
    try:
        await asyncio.wait_for(ws.close(code, reason), timeout)
    except (TimeoutError, ConnectionClosed):
        pass
    finally:
        if ws.transport is not None and not ws.transport.is_closing():
            ws.transport.abort()


def _file(connection: ServerConnection, path: Path) -> Response:
    body = path.read_bytes()
    kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    if kind.startswith("text/") or kind.endswith("javascript"):
        kind += "; charset=utf-8"
    headers = Headers(
        [
            ("Content-Type", kind),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-cache"),
            ("Connection", "close"),
        ]
    )
    return Response(200, "OK", headers, body)
