"""A real HTTP(S) server on 127.0.0.1 for the download tests: images and faults, with counters.

Routes are registered per path (``server.add("/a.jpg", Route(body=...))``); a request for an
unknown path gets 404. The server counts, per path, the requests that arrived (``requests``),
the responses whose whole body was written (``completed``), the body bytes written
(``bytes_sent``) and the Host/User-Agent headers and arrival times it saw. Faults:

- ``delay``: sleep before the status line (a slow server: client timeout);
- ``trickle``: send the body one byte every ``trickle`` seconds (only a deadline stops it);
- ``fail_first``/``fail_status``/``fail_headers``: the first N requests get an error status
  (500 then 200; 429 with Retry-After);
- ``redirect``: 302 to that Location;
- ``stream_bytes``: a lazily generated body of that many bytes (50 MB costs nothing unless read),
  with or without ``Content-Length`` (``declare_length``);
- ``reset``: close the connection with a TCP reset instead of answering;
- ``gated``: once ``gate_after`` gated responses completed, further ones wait for ``open_gate()``
  (the kill test: the client is killed while its requests are held, none half-answered).

Run as a program for the benchmark (another process, so the client under test owns its GIL)::

    python -m tests.http_fault_server --images 2000 --bytes 20000   # prints "PORT <n>"
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import http.server
import io
import random
import socket
import ssl
import struct
import sys
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import pytest
from PIL import Image


def jpeg(seed: int, size: tuple[int, int] = (16, 12), noise: bool = False) -> bytes:
    """A small real JPEG, different for different seeds."""
    rng = random.Random(seed)
    img = Image.new("RGB", size, (rng.randrange(256), rng.randrange(256), rng.randrange(256)))
    if noise:
        img.putdata([tuple(rng.randrange(256) for _ in range(3)) for _ in range(size[0] * size[1])])
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def png(seed: int) -> bytes:
    rng = random.Random(seed)
    buf = io.BytesIO()
    Image.new("RGB", (9, 7), (rng.randrange(256), 0, rng.randrange(256))).save(buf, "PNG")
    return buf.getvalue()


@dataclass
class Route:
    body: bytes = b""
    status: int = 200
    content_type: str | None = "image/jpeg"
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    trickle: float = 0.0
    fail_first: int = 0
    fail_status: int = 500
    fail_headers: dict[str, str] = field(default_factory=dict)
    redirect: str | None = None
    stream_bytes: int = 0
    declare_length: bool = True
    reset: bool = False
    gated: bool = False


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        srv = self.server.owner
        path = self.path
        with srv.lock:
            srv.requests[path] += 1
            n = srv.requests[path]
            srv.hosts[path].append(self.headers.get("Host", ""))
            srv.user_agents[path].append(self.headers.get("User-Agent", ""))
            srv.times[path].append(time.monotonic())
            route = srv.routes.get(path)
        if route is None:
            return self._send(404, b"not found", "text/plain", {}, path)
        if route.reset:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            self.connection.close()
            return None
        if route.delay and srv.stopping.wait(route.delay):
            return None
        if n <= route.fail_first:
            return self._send(
                route.fail_status, b"try later", "text/plain", route.fail_headers, path
            )
        if route.redirect is not None:
            return self._send(302, b"", "text/plain", {"Location": route.redirect}, path)
        if route.gated and not srv.pass_gate():
            return None
        if route.stream_bytes:
            return self._stream(route, path)
        if route.trickle:
            return self._trickle(route, path)
        return self._send(route.status, route.body, route.content_type, route.headers, path)

    def _head(self, status: int, ctype: str | None, headers: dict[str, str], length: int | None):
        self.send_response(status)
        if ctype is not None:
            self.send_header("Content-Type", ctype)
        for k, v in headers.items():
            self.send_header(k, v)
        if length is not None:
            self.send_header("Content-Length", str(length))
        else:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()

    def _send(
        self, status: int, body: bytes, ctype: str | None, headers: dict[str, str], path: str
    ) -> None:
        try:
            self._head(status, ctype, headers, len(body))
            self.wfile.write(body)
            self.wfile.flush()
        except OSError:
            self.close_connection = True
            return
        self.server.owner.done(path, len(body))

    def _stream(self, route: Route, path: str) -> None:
        srv = self.server.owner
        block = b"\xff\xd8\xff\xe0" + b"\x00" * (64 * 1024 - 4)
        sent = 0
        try:
            self._head(
                200, route.content_type, {}, route.stream_bytes if route.declare_length else None
            )
            while sent < route.stream_bytes:
                chunk = block[: min(len(block), route.stream_bytes - sent)]
                if sent:
                    chunk = b"\x00" * len(chunk)
                self.wfile.write(chunk)
                sent += len(chunk)
                with srv.lock:
                    srv.bytes_sent[path] += len(chunk)
            self.wfile.flush()
        except OSError:
            self.close_connection = True
            return
        srv.done(path, 0)

    def _trickle(self, route: Route, path: str) -> None:
        srv = self.server.owner
        try:
            self._head(200, route.content_type, {}, len(route.body))
            for i in range(len(route.body)):
                if srv.stopping.wait(route.trickle):
                    return
                self.wfile.write(route.body[i : i + 1])
                self.wfile.flush()
                with srv.lock:
                    srv.bytes_sent[path] += 1
        except OSError:
            self.close_connection = True
            return
        srv.done(path, 0)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128
    owner: FaultServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients that abort (byte cap, kill) are part of the tests


class FaultServer:
    """Start with ``with FaultServer() as srv:``; ``srv.url("/a.jpg")`` is its address."""

    def __init__(
        self,
        tls: ssl.SSLContext | None = None,
        host_name: str = "127.0.0.1",
        idle_timeout: float | None = None,
    ) -> None:
        self.routes: dict[str, Route] = {}
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.gate = threading.Event()
        self.gate.set()
        self.gate_after = 0
        self.gate_passed = 0
        self.held = 0
        self.host_name = host_name
        self.tls = tls
        self.sni: list[str | None] = []
        self.reset_counts()
        handler = _Handler
        if idle_timeout is not None:  # close idle keep-alive connections after this long
            handler = type("_IdleHandler", (_Handler,), {"timeout": idle_timeout})
        self._httpd = _Server(("127.0.0.1", 0), handler)
        self._httpd.owner = self
        if tls is not None:
            tls.sni_callback = self._on_sni
            self._httpd.socket = tls.wrap_socket(self._httpd.socket, server_side=True)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def _on_sni(self, sock: Any, name: str | None, ctx: Any) -> None:
        self.sni.append(name)

    def reset_counts(self) -> None:
        with self.lock:
            self.requests: Counter[str] = Counter()
            self.completed: Counter[str] = Counter()
            self.bytes_sent: Counter[str] = Counter()
            self.hosts: defaultdict[str, list[str]] = defaultdict(list)
            self.user_agents: defaultdict[str, list[str]] = defaultdict(list)
            self.times: defaultdict[str, list[float]] = defaultdict(list)

    def add(self, path: str, route: Route | None = None, **kw: Any) -> str:
        self.routes[path] = route or Route(**kw)
        return self.url(path)

    def url(self, path: str) -> str:
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://{self.host_name}:{self.port}{path}"

    @property
    def total_requests(self) -> int:
        with self.lock:
            return sum(self.requests.values())

    def done(self, path: str, n: int) -> None:
        with self.lock:
            self.completed[path] += 1
            self.bytes_sent[path] += n

    def pass_gate(self) -> bool:
        """Gated routes: the first ``gate_after`` pass, the others wait for the gate."""
        with self.lock:
            if self.gate_passed < self.gate_after or self.gate.is_set():
                self.gate_passed += 1
                return True
            self.held += 1
        while not self.gate.wait(0.05):
            if self.stopping.is_set():
                return False
        with self.lock:
            self.held -= 1
        return True

    def close_gate(self, after: int) -> None:
        with self.lock:
            self.gate_after, self.gate_passed = after, 0
        self.gate.clear()

    def open_gate(self) -> None:
        self.gate.set()

    def __enter__(self) -> FaultServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.gate.set()
        self._httpd.shutdown()
        self._httpd.server_close()


@dataclass
class NetGuard:
    """What the code under test tried: connections (address) and name lookups (host)."""

    connects: list[Any] = field(default_factory=list)
    refused: list[Any] = field(default_factory=list)
    lookups: list[str] = field(default_factory=list)


@pytest.fixture
def net_guard(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Only 127.0.0.1 may be contacted and no name may go to DNS (numeric hosts and
    ``localhost`` from /etc/hosts only). A forbidden connection is refused before any packet
    and fails the test at teardown."""
    guard = NetGuard()
    real_connect = socket.socket.connect
    real_getaddrinfo = socket.getaddrinfo

    def connect(self: socket.socket, address: Any) -> None:
        if self.family in (socket.AF_INET, socket.AF_INET6):
            guard.connects.append(address)
            if address[0] != "127.0.0.1":
                guard.refused.append(address)
                raise ConnectionRefusedError(errno.ECONNREFUSED, "test guard: not loopback")
        return real_connect(self, address)

    def getaddrinfo(
        host: Any, port: Any, family: int = 0, type: int = 0, proto: int = 0, flags: int = 0
    ) -> Any:
        guard.lookups.append(host)
        try:
            return real_getaddrinfo(host, port, family, type, proto, flags | socket.AI_NUMERICHOST)
        except socket.gaierror:
            if host == "localhost":
                return real_getaddrinfo(host, port, family, type, proto, flags)
            raise socket.gaierror(socket.EAI_NONAME, f"test guard: no DNS for {host!r}") from None

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield guard
    assert not guard.refused, f"tried to connect outside loopback: {guard.refused}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="serve N distinct JPEGs on 127.0.0.1 (benchmark)")
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--bytes", type=int, default=20_000, help="approximate size of each image")
    args = ap.parse_args(argv)
    from aiohttp import web  # faster than http.server, so the client is what is measured

    side = max(8, int((args.bytes / 1.07) ** 0.5))  # noise JPEGs at q90: ~1.07 bytes/pixel
    bodies = [jpeg(i, (side, side), noise=True) for i in range(args.images)]

    async def handle(request: web.Request) -> web.Response:
        i = int(request.match_info["i"])
        return web.Response(body=bodies[i], content_type="image/jpeg")

    app = web.Application()
    app.router.add_get("/img/{i}.jpg", handle)
    runner = web.AppRunner(app, access_log=None)

    import asyncio

    async def serve() -> None:
        await runner.setup()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        site = web.SockSite(runner, sock, backlog=1024)
        await site.start()
        print(f"PORT {sock.getsockname()[1]} BYTES {sum(map(len, bodies)) // len(bodies)}")
        sys.stdout.flush()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.Event().wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
