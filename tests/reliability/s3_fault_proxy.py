"""A fault-injecting HTTP proxy in front of an S3 server, on loopback, as its own process.

Every request is forwarded to ``--upstream`` (a moto server) and its answer relayed, after
``latency`` seconds. Faults, set at start or at run time with ``POST /__faults__?key=value``:

- ``slowdown=N``: the first N attempts of each object write (``PUT``, or ``POST`` of a multipart
  upload) are answered ``503 SlowDown`` - the throttling answer of S3 and MinIO - without reaching
  the upstream; the attempt after them goes through;
- ``latency=S``: seconds to wait before answering anything.

``GET /__faults__`` returns the counters as JSON: ``writes`` (attempts per object path),
``throttled`` (503s sent), ``forwarded`` (requests relayed). The proxy knows nothing of DVC:
the tests see what a client under throttling does (retries, how many, what lands in the bucket).

    python -m tests.reliability.s3_fault_proxy --upstream http://127.0.0.1:5000 --port 0
    # prints "PORT <n>" once listening
"""

from __future__ import annotations

import argparse
import http.client
import http.server
import json
import sys
import threading
import time
from collections import Counter
from typing import Any
from urllib.parse import parse_qs, urlsplit

SLOWDOWN_BODY = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)
_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "te"}


class Faults:
    def __init__(self, slowdown: int, latency: float) -> None:
        self.slowdown, self.latency = slowdown, latency
        self.writes: Counter[str] = Counter()
        self.throttled = 0
        self.forwarded = 0
        self.lock = threading.Lock()

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {
                "slowdown": self.slowdown,
                "latency": self.latency,
                "writes": dict(self.writes),
                "throttled": self.throttled,
                "forwarded": self.forwarded,
            }


def make_handler(upstream: str, faults: Faults) -> type[http.server.BaseHTTPRequestHandler]:
    up = urlsplit(upstream)

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                chunks = []
                while True:
                    size = int(self.rfile.readline().split(b";")[0], 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        return b"".join(chunks)
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
            n = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(n) if n else b""

        def _send(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
            self.send_response(status)
            length = str(len(body))
            for k, v in headers:
                if k.lower() == "content-length":
                    length = v if self.command == "HEAD" else length  # HEAD: the object's size
                elif k.lower() not in _HOP:
                    self.send_header(k, v)
            self.send_header("Content-Length", length)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _control(self) -> bool:
            if not self.path.startswith("/__faults__"):
                return False
            if self.command == "POST":
                q = parse_qs(urlsplit(self.path).query)
                with faults.lock:
                    if "slowdown" in q:
                        faults.slowdown = int(q["slowdown"][0])
                    if "latency" in q:
                        faults.latency = float(q["latency"][0])
                    if "reset" in q:
                        faults.writes.clear()
                        faults.throttled = faults.forwarded = 0
            body = json.dumps(faults.snapshot()).encode()
            self._send(200, [("Content-Type", "application/json")], body)
            return True

        def _relay(self) -> None:
            body = self._body()
            if self._control():
                return
            time.sleep(faults.latency)
            path = urlsplit(self.path).path
            is_write = self.command == "PUT" or (self.command == "POST" and "upload" in self.path)
            if is_write and path.count("/") >= 2:  # /bucket/key: an object, not a bucket
                with faults.lock:
                    faults.writes[path] += 1
                    throttle = faults.writes[path] <= faults.slowdown
                    faults.throttled += throttle
                if throttle:
                    self._send(503, [("Content-Type", "application/xml")], SLOWDOWN_BODY)
                    return
            conn = http.client.HTTPConnection(up.hostname, up.port, timeout=60)
            try:
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
                headers["Content-Length"] = str(len(body))
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                with faults.lock:
                    faults.forwarded += 1
                self._send(resp.status, resp.getheaders(), data)
            finally:
                conn.close()

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _relay

    return Handler


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--upstream", required=True)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--slowdown", type=int, default=0)
    ap.add_argument("--latency", type=float, default=0.0)
    args = ap.parse_args(argv)
    faults = Faults(args.slowdown, args.latency)
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", args.port), make_handler(args.upstream, faults)
    )
    server.daemon_threads = True
    print(f"PORT {server.server_address[1]}", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
