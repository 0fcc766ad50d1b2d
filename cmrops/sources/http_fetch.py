"""Polite, bounded and SSRF-safe download of one image per URL (stdlib ``http.client``).

What one :meth:`Fetcher.fetch` does:

- **URL check**: only ``http``/``https``; the host is IDNA-encoded, the path percent-encoded;
  anything unparsable is ``invalid_url``.
- **Address check** (server-side request forgery): the host is resolved here, and when *any*
  resolved address is loopback, private, link-local, shared, reserved, multicast, unspecified or
  a cloud metadata endpoint (IPv4-mapped, IPv4-compatible, 6to4 and NAT64 forms included), the
  URL is ``blocked_address`` and nothing is sent. ``allow_private_networks`` (or
  ``allowed_networks`` CIDRs) lifts the private-range part; metadata endpoints, unspecified and
  multicast addresses stay blocked whatever the settings.
- **Pinning**: the connection goes to the address that was checked (no second lookup that DNS
  rebinding could switch), while the request carries the original ``Host`` header and, for
  https, the original name as SNI and for certificate verification.
- **Redirects** are followed by hand (at most ``max_redirects``), each hop checked again.
- **Politeness**: a per-host request rate (``per_host_rate``), a configurable User-Agent, and
  ``Retry-After`` on 429/503 honoured (the whole host is held back, not just the one request).
- **Bounds**: ``timeout`` per socket operation, ``deadline`` for one whole attempt (enforced by
  a watchdog that shuts the socket, so a server trickling bytes or headers cannot hold a
  worker), a byte cap checked against ``Content-Length`` and while streaming (aborted past it,
  also after gzip/deflate decoding).
- **Content**: ``Content-Type`` must be an image type (or absent / octet-stream) and the first
  bytes must carry a known image signature; ``X-Robots-Tag`` opt-out directives and the TDMRep
  ``tdm-reservation: 1`` header are honoured.
- **Site opt-outs** (:mod:`cmrops.sources.optout`): each host's robots.txt and TDMRep
  ``/.well-known/tdmrep.json`` are read once per host (cached) before its first image, on every
  hop of a redirect too; a refusal is ``robots_disallowed`` / ``tdm_reserved`` with the rule,
  an unreadable file (5xx, no answer) ``opt_out_unknown`` (retried by a later run).
- **Retries**: failures whose reason is retryable (:func:`is_retryable`: timeouts, connection
  and DNS errors, 408/425/429/5xx) are retried with exponential back-off and jitter.

Every outcome is a :class:`FetchResult` whose ``status`` is ``"ok"`` or one stable reason code.
The checks themselves (address policy, URL parsing, image sniffing, opt-out, ``Retry-After``) are
:mod:`cmrops.sources.http_checks`, re-exported here.
"""

from __future__ import annotations

import contextlib
import heapq
import http.client
import itertools
import random
import socket
import ssl
import threading
import time
import zlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin

from cmrops.sources.http_checks import METADATA_NETWORKS as METADATA_NETWORKS
from cmrops.sources.http_checks import OCTET_STREAM_TYPES as _OCTET
from cmrops.sources.http_checks import SNIFF_BYTES as SNIFF_BYTES
from cmrops.sources.http_checks import AddressPolicy as AddressPolicy
from cmrops.sources.http_checks import InvalidURLError as InvalidURLError
from cmrops.sources.http_checks import IPAddress as IPAddress
from cmrops.sources.http_checks import IPNetwork as IPNetwork
from cmrops.sources.http_checks import Resolver as Resolver
from cmrops.sources.http_checks import Target as Target
from cmrops.sources.http_checks import opted_out as opted_out
from cmrops.sources.http_checks import parse_networks as parse_networks
from cmrops.sources.http_checks import parse_retry_after as parse_retry_after
from cmrops.sources.http_checks import parse_target as parse_target
from cmrops.sources.http_checks import sniff_image as sniff_image
from cmrops.sources.http_checks import system_resolve as system_resolve
from cmrops.sources.optout import (
    MAX_DOCUMENT_BYTES,
    OPT_OUT_UNKNOWN,
    ROBOTS_DISALLOWED,
    TDM_RESERVED,
    Document,
    OptOutChecker,
    tdm_reserved_header,
)

# -- status codes ------------------------------------------------------------------------------

OK = "ok"
INVALID_URL = "invalid_url"  # not http(s), unparsable, bad host or port
BLOCKED_ADDRESS = "blocked_address"  # a resolved address is not public (SSRF protection)
DNS_ERROR = "dns_error"  # the host name does not resolve (retryable: resolvers overload)
TIMEOUT = "timeout"  # connect/read timeout or the attempt's deadline
CONNECTION_ERROR = "connection_error"  # refused, reset, closed early, truncated body
TLS_ERROR = "tls_error"  # certificate or handshake failure
INVALID_RESPONSE = "invalid_response"  # not HTTP (bad status line, oversized headers)
TOO_MANY_REDIRECTS = "too_many_redirects"
OPT_OUT = "opt_out"  # X-Robots-Tag carries a disallowed directive (noai, noimageai)
NOT_AN_IMAGE = "not_an_image"  # Content-Type or leading bytes are not an image; empty body
TOO_LARGE = "too_large"  # Content-Length or streamed bytes over the cap
UNSUPPORTED_ENCODING = "unsupported_encoding"  # Content-Encoding other than gzip/deflate
# ROBOTS_DISALLOWED, TDM_RESERVED, OPT_OUT_UNKNOWN (cmrops.sources.optout): the site's opt-outs
# plus "http_<status>" for any other final status than 200/203

#: Reasons whose outcome depends on the download policy (cap, opt-out, address rules, ...):
#: a rerun under a different policy tries them again.
POLICY_REASONS = frozenset(
    {BLOCKED_ADDRESS, OPT_OUT, NOT_AN_IMAGE, TOO_LARGE, TOO_MANY_REDIRECTS, UNSUPPORTED_ENCODING,
     ROBOTS_DISALLOWED, TDM_RESERVED}
)  # fmt: skip


def is_retryable(status: str) -> bool:
    """Whether a failure may go away by itself: timeouts, connection/DNS errors, 408, 425,
    429 and 5xx except 501/505; ``opt_out_unknown`` (a site's robots.txt or tdmrep.json did
    not answer: asked again by a later run). ``http_404``, ``too_large``, ``blocked_address``,
    ``opt_out``, ``robots_disallowed`` and the other content/policy failures are final."""
    if status in (TIMEOUT, CONNECTION_ERROR, DNS_ERROR, OPT_OUT_UNKNOWN):
        return True
    if status.startswith("http_") and status[5:].isdigit():
        code = int(status[5:])
        return code in (408, 425, 429) or (code >= 500 and code not in (501, 505))
    return False


# -- results -----------------------------------------------------------------------------------


@dataclass
class FetchResult:
    """The outcome of fetching one URL (after retries)."""

    url: str
    status: str  # "ok" or a reason code
    detail: str = ""
    http_status: int | None = None
    content_type: str | None = None
    final_url: str | None = None  # where the image was, when redirects were followed
    data: bytes | None = None
    attempts: int = 0
    retry_after: float | None = None

    @property
    def ok(self) -> bool:
        return self.status == OK

    @property
    def retryable(self) -> bool:
        return is_retryable(self.status)


class _Fail(Exception):
    def __init__(self, status: str, detail: str, **kw: Any) -> None:
        super().__init__(detail)
        self.status, self.detail, self.kw = status, detail, kw


# -- plumbing: pinned connections, their pool, rate limits, the deadline watchdog --------------


class _PinnedHTTP(http.client.HTTPConnection):
    """An HTTP connection to ``host`` that connects to the already-checked address ``pin``."""

    def __init__(self, host: str, port: int, pin: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self.pin = pin

    def connect(self) -> None:
        self.sock = socket.create_connection((self.pin, self.port), self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _PinnedHTTPS(http.client.HTTPSConnection):
    """HTTPS to the checked address ``pin``; SNI and certificate checks use ``host``."""

    def __init__(
        self, host: str, port: int, pin: str, timeout: float, context: ssl.SSLContext
    ) -> None:
        super().__init__(host, port, timeout=timeout, context=context)
        self.pin = pin
        self.tls = context

    def connect(self) -> None:
        sock = socket.create_connection((self.pin, self.port), self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            self.sock = self.tls.wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise


_Key = tuple[str, str, int, str]  # scheme, host, port, pinned address


class _ConnectionPool:
    """Idle keep-alive connections per (scheme, host, port, address); LRU over keys."""

    def __init__(self, per_key: int, max_keys: int = 512) -> None:
        self.per_key, self.max_keys = per_key, max_keys
        self._idle: OrderedDict[_Key, list[http.client.HTTPConnection]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: _Key) -> http.client.HTTPConnection | None:
        with self._lock:
            conns = self._idle.get(key)
            if conns:
                self._idle.move_to_end(key)
                return conns.pop()
        return None

    def put(self, key: _Key, conn: http.client.HTTPConnection) -> None:
        evicted: list[http.client.HTTPConnection] = []
        with self._lock:
            conns = self._idle.setdefault(key, [])
            self._idle.move_to_end(key)
            if len(conns) < self.per_key:
                conns.append(conn)
            else:
                evicted.append(conn)
            while len(self._idle) > self.max_keys:
                evicted.extend(self._idle.popitem(last=False)[1])
        for c in evicted:
            c.close()

    def close(self) -> None:
        with self._lock:
            conns = [c for cs in self._idle.values() for c in cs]
            self._idle.clear()
        for c in conns:
            c.close()


class HostRateLimiter:
    """At most ``rate`` requests per second to one host (0: no limit), plus hold-offs.

    Slots are reserved in order under a lock, so concurrent workers space their requests out
    instead of bursting; :meth:`hold` keeps a host quiet until a time (``Retry-After``).
    """

    def __init__(self, rate: float, stop: threading.Event) -> None:
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self._next: dict[str, float] = {}
        self._lock = threading.Lock()
        self._stop = stop

    def acquire(self, host: str) -> None:
        with self._lock:
            now = time.monotonic()
            slot = max(now, self._next.get(host, 0.0))
            if self.interval or slot > now:
                self._next[host] = slot + self.interval
            if len(self._next) > 100_000:
                self._next = {h: t for h, t in self._next.items() if t > now}
        if slot > now:
            self._stop.wait(slot - now)

    def hold(self, host: str, until: float) -> None:
        with self._lock:
            self._next[host] = max(self._next.get(host, 0.0), until)


class _Watch:
    __slots__ = ("conn", "done", "fired", "lock")

    def __init__(self, conn: http.client.HTTPConnection) -> None:
        self.conn, self.done, self.fired = conn, False, False
        self.lock = threading.Lock()

    def fire(self) -> None:
        with self.lock:
            if self.done:
                return
            self.fired = True
            sock = self.conn.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def cancel(self) -> bool:
        """Stop watching; True when the deadline had already fired."""
        with self.lock:
            self.done = True
            return self.fired


class _Watchdog:
    """One thread that shuts the socket of any request still running at its deadline."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, _Watch]] = []
        self._cv = threading.Condition()
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None
        self._closed = False

    def watch(self, deadline: float, conn: http.client.HTTPConnection) -> _Watch:
        w = _Watch(conn)
        with self._cv:
            earliest = not self._heap or deadline < self._heap[0][0]
            heapq.heappush(self._heap, (deadline, next(self._seq), w))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="fetch-watchdog")
                self._thread.daemon = True
                self._thread.start()
            elif earliest:
                self._cv.notify()
        return w

    def _run(self) -> None:
        with self._cv:
            while not self._closed:
                while self._heap and self._heap[0][2].done:
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._cv.wait()
                    continue
                wait = self._heap[0][0] - time.monotonic()
                if wait > 0:
                    self._cv.wait(wait)
                    continue
                heapq.heappop(self._heap)[2].fire()

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify()


class _DnsCache:
    """Resolved addresses per (host, port) for ``ttl`` seconds (one lookup per host burst)."""

    def __init__(self, resolve: Resolver, ttl: float = 60.0) -> None:
        self.resolve, self.ttl = resolve, ttl
        self._cache: dict[tuple[str, int], tuple[float, tuple[IPAddress, ...]]] = {}
        self._lock = threading.Lock()

    def get(self, host: str, port: int) -> tuple[IPAddress, ...]:
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get((host, port))
        if hit and hit[0] > now:
            return hit[1]
        addrs = tuple(self.resolve(host, port))
        with self._lock:
            if len(self._cache) > 100_000:
                self._cache.clear()
            self._cache[(host, port)] = (now + self.ttl, addrs)
        return addrs


# -- the fetcher -------------------------------------------------------------------------------

DEFAULT_USER_AGENT = "cmrops/0.1 (image-text dataset collector; honours X-Robots-Tag noai)"
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_CHUNK = 1 << 16
_DRAIN_LIMIT = 1 << 16  # body bytes read from an error/redirect response to keep the connection


@dataclass(frozen=True)
class FetchConfig:
    """Everything a :class:`Fetcher` needs; see :class:`cmrops.sources.urls.DownloadParams`."""

    timeout: float = 10.0
    deadline: float = 60.0
    retries: int = 2
    backoff: float = 1.0
    backoff_max: float = 30.0
    max_retry_after: float = 120.0
    per_host_rate: float = 0.0
    max_bytes: int = 64 << 20
    max_redirects: int = 5
    user_agent: str = DEFAULT_USER_AGENT
    opt_out_directives: frozenset[str] = frozenset({"noai", "noimageai"})
    policy: AddressPolicy = field(default_factory=AddressPolicy)
    ca_bundle: str | None = None
    max_idle_per_host: int = 16
    robots_txt: bool = True  # honour each host's robots.txt (RFC 9309)
    tdmrep: bool = True  # honour TDMRep: /.well-known/tdmrep.json and tdm-reservation headers

    @property
    def ua_token(self) -> str:
        return self.user_agent.split("/", 1)[0].split()[0].lower() if self.user_agent else ""


class Fetcher:
    """Thread-safe downloader of single images; share one across the worker threads."""

    def __init__(self, config: FetchConfig, resolve: Resolver | None = None) -> None:
        self.cfg = config
        self.stop = threading.Event()
        self.rate = HostRateLimiter(config.per_host_rate, self.stop)
        self.dns = _DnsCache(resolve or system_resolve)
        self.pool = _ConnectionPool(config.max_idle_per_host)
        self.watchdog = _Watchdog()
        self.tls = ssl.create_default_context(cafile=config.ca_bundle)
        self.tls.minimum_version = ssl.TLSVersion.TLSv1_2
        self.tls.set_alpn_protocols(["http/1.1"])
        self.headers = {
            "User-Agent": config.user_agent,
            "Accept": "image/avif,image/webp,image/png,image/jpeg,image/*;q=0.8",
            "Accept-Encoding": "identity",
        }
        self._rng = random.Random()
        self.optout = OptOutChecker(
            self.fetch_document, config.ua_token, config.robots_txt, config.tdmrep
        )

    def close(self) -> None:
        """Stop waits in progress, close idle connections and the watchdog."""
        self.stop.set()
        self.pool.close()
        self.watchdog.close()

    def __enter__(self) -> Fetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- one URL, with retries ----------------------------------------------------------------

    def fetch(self, url: str) -> FetchResult:
        """Download ``url``: retries retryable failures with back-off; never raises for I/O."""
        return self._with_retries(url, document=False)

    def fetch_document(self, url: str) -> Document:
        """A small text document of a site (robots.txt, tdmrep.json): no image checks, body
        cut at ``MAX_DOCUMENT_BYTES``, the same address checks, rate limit and retries."""
        r = self._with_retries(url, document=True)
        return Document(r.status, r.http_status, r.data or b"", r.detail)

    def _with_retries(self, url: str, document: bool) -> FetchResult:
        cfg = self.cfg
        attempts = 0
        while True:
            attempts += 1
            result = self._attempt(url, document)
            result.attempts = attempts
            if (result.ok or not result.retryable or attempts > cfg.retries
                    or self.stop.is_set() or result.status == OPT_OUT_UNKNOWN):  # fmt: skip
                return result
            delay = min(cfg.backoff_max, cfg.backoff * 2 ** (attempts - 1))
            delay *= self._rng.uniform(0.5, 1.0)  # jitter: workers do not retry in lockstep
            if result.retry_after is not None:
                if result.retry_after > cfg.max_retry_after:
                    result.detail += (
                        f"; Retry-After {result.retry_after:.0f} s is over max_retry_after="
                        f"{cfg.max_retry_after:g}, left for a later run"
                    )
                    return result
                delay = max(delay, result.retry_after)
            if self.stop.wait(delay):
                return result

    # -- one attempt: hops of redirects ------------------------------------------------------

    def _attempt(self, url: str, document: bool = False) -> FetchResult:
        try:
            target = parse_target(url)
        except InvalidURLError as e:
            return FetchResult(url, INVALID_URL, str(e))
        deadline: float | None = None
        final: str | None = None
        for hop in range(self.cfg.max_redirects + 1):
            try:
                addrs = self._checked_addresses(target)
                if not document and self.optout.enabled:
                    origin = target.url[: len(target.url) - len(target.path)]
                    refused = self.optout.check(origin, target.path)
                    if refused is not None:
                        return FetchResult(url, refused[0], refused[1], final_url=final)
                self.rate.acquire(target.host)
                if deadline is None:
                    deadline = time.monotonic() + self.cfg.deadline
                resp, conn, key, watch = self._open(target, addrs, deadline)
            except _Fail as f:
                return FetchResult(url, f.status, f.detail, final_url=final, **f.kw)
            if resp.status in _REDIRECTS:
                location = resp.getheader("Location")
                self._discard(resp, conn, key, watch, deadline)
                if not location:
                    return FetchResult(
                        url, f"http_{resp.status}", "redirect without a Location header",
                        http_status=resp.status, final_url=final,
                    )  # fmt: skip
                try:
                    target = parse_target(urljoin(target.url, location.strip()))
                except InvalidURLError as e:
                    return FetchResult(
                        url, INVALID_URL, f"redirect {hop + 1} to {location[:200]!r}: {e}",
                        http_status=resp.status, final_url=final,
                    )  # fmt: skip
                final = target.url
                continue
            if document:
                return self._finish_document(url, resp, conn, key, watch, final)
            return self._finish(url, target, resp, conn, key, watch, deadline, final)
        return FetchResult(
            url, TOO_MANY_REDIRECTS, f"more than {self.cfg.max_redirects} redirects",
            final_url=final,
        )  # fmt: skip

    def _checked_addresses(self, target: Target) -> tuple[IPAddress, ...]:
        try:
            addrs = self.dns.get(target.host, target.port)
        except (OSError, UnicodeError) as e:
            raise _Fail(DNS_ERROR, f"cannot resolve {target.host}: {e}") from None
        if not addrs:
            raise _Fail(DNS_ERROR, f"{target.host} has no address")
        for ip in addrs:
            why = self.cfg.policy.why_blocked(ip)
            if why is not None:
                raise _Fail(
                    BLOCKED_ADDRESS,
                    f"{target.host} resolves to {ip}, {why}; refused before connecting",
                )
        return addrs

    def _new_conn(self, target: Target, ip: IPAddress) -> http.client.HTTPConnection:
        pin = str(ip)
        if target.scheme == "https":
            return _PinnedHTTPS(target.host, target.port, pin, self.cfg.timeout, self.tls)
        return _PinnedHTTP(target.host, target.port, pin, self.cfg.timeout)

    def _open(
        self, target: Target, addrs: Sequence[IPAddress], deadline: float
    ) -> tuple[http.client.HTTPResponse, http.client.HTTPConnection, _Key, _Watch]:
        """Send the request to the first address that accepts it; return the response."""
        last: _Fail | None = None
        for ip in addrs:
            key: _Key = (target.scheme, target.host, target.port, str(ip))
            reused = self.pool.get(key)
            for conn in ([reused] if reused else []) + [None]:
                fresh = conn is None
                conn = conn or self._new_conn(target, ip)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    conn.close()
                    raise _Fail(TIMEOUT, f"deadline of {self.cfg.deadline:g} s passed")
                conn.timeout = min(self.cfg.timeout, remaining)
                if conn.sock is not None:
                    conn.sock.settimeout(conn.timeout)
                watch = self.watchdog.watch(deadline, conn)
                try:
                    conn.request("GET", target.path, headers=self.headers)
                    return conn.getresponse(), conn, key, watch
                except BaseException as e:
                    fired = watch.cancel()
                    connected = conn.sock is not None
                    conn.close()
                    if not isinstance(e, Exception):
                        raise
                    if not fresh and not fired and _stale(e):
                        continue  # the server closed the idle keep-alive connection
                    fail = _classify(e, fired, self.cfg)
                    if fresh and not connected and fail.status == CONNECTION_ERROR:
                        last = fail  # refused or unreachable: try the host's next address
                        break
                    raise fail from None
        raise last or _Fail(CONNECTION_ERROR, f"no address of {target.host} accepted")

    def _release(
        self,
        resp: http.client.HTTPResponse,
        conn: http.client.HTTPConnection,
        key: _Key,
        watch: _Watch,
    ) -> None:
        """Back to the pool when the exchange ended cleanly, else closed."""
        fired = watch.cancel()
        if not fired and resp.isclosed() and not resp.will_close:
            self.pool.put(key, conn)
        else:
            conn.close()

    def _discard(
        self,
        resp: http.client.HTTPResponse,
        conn: http.client.HTTPConnection,
        key: _Key,
        watch: _Watch,
        deadline: float,
    ) -> None:
        """Read away a small body (redirect, error page) so the connection can be reused."""
        try:
            length = resp.length
            if length is not None and length <= _DRAIN_LIMIT and time.monotonic() < deadline:
                resp.read()
        except (OSError, http.client.HTTPException):
            pass
        self._release(resp, conn, key, watch)

    def _finish(
        self,
        url: str,
        target: Target,
        resp: http.client.HTTPResponse,
        conn: http.client.HTTPConnection,
        key: _Key,
        watch: _Watch,
        deadline: float,
        final: str | None,
    ) -> FetchResult:
        status, ctype = resp.status, resp.getheader("Content-Type")
        common: dict[str, Any] = {"http_status": status, "content_type": ctype, "final_url": final}
        if status not in (200, 203):
            retry_after = None
            if status in (429, 503):
                retry_after = parse_retry_after(resp.getheader("Retry-After"))
                if retry_after is not None:
                    hold = min(retry_after, self.cfg.max_retry_after)
                    self.rate.hold(target.host, time.monotonic() + hold)
            self._discard(resp, conn, key, watch, deadline)
            detail = f"HTTP {status} {resp.reason}".strip()
            if retry_after is not None:
                detail += f" (Retry-After {retry_after:g} s)"
            return FetchResult(url, f"http_{status}", detail, retry_after=retry_after, **common)

        def fail(reason: str, detail: str) -> FetchResult:
            watch.cancel()
            conn.close()
            return FetchResult(url, reason, detail, **common)

        robots = opted_out(
            resp.headers.get_all("X-Robots-Tag") or [],
            self.cfg.ua_token,
            self.cfg.opt_out_directives,
        )
        if robots is not None:
            return fail(OPT_OUT, f"X-Robots-Tag: {robots[:200]}")
        if self.cfg.tdmrep and tdm_reserved_header(resp.headers.get_all("tdm-reservation") or []):
            policy = resp.getheader("tdm-policy")
            return fail(TDM_RESERVED, "tdm-reservation: 1 (text-and-data-mining rights reserved)"
                        + (f", tdm-policy {policy[:200]}" if policy else ""))  # fmt: skip
        media = (ctype or "").split(";", 1)[0].strip().lower()
        if media and (
            media == "image/svg+xml" or not (media.startswith("image/") or media in _OCTET)
        ):
            return fail(NOT_AN_IMAGE, f"Content-Type {media[:100]} is not a raster image")
        encoding = (resp.getheader("Content-Encoding") or "identity").strip().lower()
        decoder = None
        if encoding in ("gzip", "x-gzip", "deflate"):
            decoder = zlib.decompressobj(32 + zlib.MAX_WBITS)  # zlib or gzip header, auto
        elif encoding not in ("identity", ""):
            return fail(UNSUPPORTED_ENCODING, f"Content-Encoding {encoding[:50]}")
        cap = self.cfg.max_bytes
        declared = _content_length(resp)
        if declared is not None and decoder is None and declared > cap:
            return fail(TOO_LARGE, f"Content-Length {declared} is over the cap of {cap} bytes")
        try:
            data = self._read_capped(resp, decoder, cap, deadline)
        except _Fail as f:
            watch.cancel()
            conn.close()
            return FetchResult(url, f.status, f.detail, **common)
        except Exception as e:
            fired = watch.cancel()
            conn.close()
            f = _classify(e, fired, self.cfg)
            return FetchResult(url, f.status, f.detail, **common)
        if declared is not None and decoder is None and len(data) < declared:
            fired = watch.cancel()
            conn.close()
            if fired:
                return FetchResult(url, TIMEOUT, self._late(), **common)
            return FetchResult(
                url, CONNECTION_ERROR,
                f"connection closed after {len(data)} of {declared} bytes", **common,
            )  # fmt: skip
        if not data:
            return fail(NOT_AN_IMAGE, "empty body")
        if sniff_image(data[:SNIFF_BYTES]) is None:
            return fail(NOT_AN_IMAGE, f"no image signature; body starts {data[:12]!r}")
        self._release(resp, conn, key, watch)
        return FetchResult(url, OK, "", data=data, **common)

    def _finish_document(
        self,
        url: str,
        resp: http.client.HTTPResponse,
        conn: http.client.HTTPConnection,
        key: _Key,
        watch: _Watch,
        final: str | None,
    ) -> FetchResult:
        """A site document's answer: its status and at most ``MAX_DOCUMENT_BYTES`` of body."""
        status = resp.status
        common: dict[str, Any] = {"http_status": status, "final_url": final,
                                  "content_type": resp.getheader("Content-Type")}  # fmt: skip
        if status not in (200, 203):
            self._discard(resp, conn, key, watch, time.monotonic() + self.cfg.timeout)
            return FetchResult(url, f"http_{status}", f"HTTP {status} {resp.reason}".strip(),
                               **common)  # fmt: skip
        try:
            data = resp.read(MAX_DOCUMENT_BYTES)
        except Exception as e:
            fired = watch.cancel()
            conn.close()
            f = _classify(e, fired, self.cfg)
            return FetchResult(url, f.status, f.detail, **common)
        if resp.isclosed():
            self._release(resp, conn, key, watch)
        else:  # cut at the cap: the rest is not read, the connection not reused
            watch.cancel()
            conn.close()
        return FetchResult(url, OK, "", data=data, **common)

    def _late(self) -> str:
        return f"the attempt passed its deadline of {self.cfg.deadline:g} s"

    def _read_capped(
        self,
        resp: http.client.HTTPResponse,
        decoder: Any,
        cap: int,
        deadline: float,
    ) -> bytes:
        buf = bytearray()
        sniffed = False
        while True:
            if time.monotonic() > deadline:
                raise _Fail(TIMEOUT, self._late())
            if resp.length == 0:  # Content-Length reached (3.11's read1 does not close then)
                resp.close()  # the response, not the connection: it can be reused
                break
            chunk = resp.read1(_CHUNK)
            if not chunk:
                break
            if decoder is not None:
                chunk = decoder.decompress(chunk, cap + 1 - len(buf))
            buf += chunk
            if len(buf) > cap or (decoder is not None and decoder.unconsumed_tail):
                raise _Fail(TOO_LARGE, f"more than {cap} bytes; download aborted at the cap")
            if not sniffed and len(buf) >= SNIFF_BYTES:
                sniffed = True
                if sniff_image(bytes(buf[:SNIFF_BYTES])) is None:
                    raise _Fail(
                        NOT_AN_IMAGE, f"no image signature; body starts {bytes(buf[:12])!r}"
                    )
        if decoder is not None:
            buf += decoder.flush()
            if len(buf) > cap:
                raise _Fail(TOO_LARGE, f"more than {cap} bytes; download aborted at the cap")
        return bytes(buf)


def _content_length(resp: http.client.HTTPResponse) -> int | None:
    value = resp.getheader("Content-Length")
    if value is None or not value.strip().isdigit():
        return None
    return int(value.strip())


def _stale(e: BaseException) -> bool:
    """An error a reused keep-alive connection shows when the server had closed it."""
    return isinstance(
        e,
        http.client.RemoteDisconnected | ConnectionResetError | BrokenPipeError
        | ConnectionAbortedError,
    )  # fmt: skip


def _classify(e: BaseException, fired: bool, cfg: FetchConfig) -> _Fail:
    """Map an exception of one exchange to a reason code."""
    if fired or isinstance(e, TimeoutError):
        return _Fail(TIMEOUT, f"no answer within timeout={cfg.timeout:g} s / deadline="
                              f"{cfg.deadline:g} s")  # fmt: skip
    if isinstance(e, ssl.SSLError | ssl.CertificateError):
        return _Fail(TLS_ERROR, f"TLS: {_text(e)}")
    if isinstance(e, socket.gaierror):
        return _Fail(DNS_ERROR, f"DNS: {_text(e)}")
    if isinstance(e, http.client.IncompleteRead | http.client.RemoteDisconnected | OSError):
        return _Fail(CONNECTION_ERROR, _text(e))
    if isinstance(e, http.client.HTTPException | ValueError):
        return _Fail(INVALID_RESPONSE, f"not a valid HTTP response: {_text(e)}")
    return _Fail(CONNECTION_ERROR, _text(e))


def _text(e: BaseException) -> str:
    msg = str(e) or type(e).__name__
    return f"{type(e).__name__}: {msg}"[:300]
