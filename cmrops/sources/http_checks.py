"""What a download is checked against, before and after the request: which addresses may be
contacted (:class:`AddressPolicy`, server-side request forgery), what a URL must look like
(:func:`parse_target`), whether the leading bytes are an image (:func:`sniff_image`), whether
``X-Robots-Tag`` opts out (:func:`opted_out`), and how long ``Retry-After`` says to wait.
Pure functions and values, no I/O but the resolver; :mod:`cmrops.sources.http_fetch` uses them
(and re-exports them).
"""

from __future__ import annotations

import email.utils
import ipaddress
import re
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


Resolver = Callable[[str, int], Sequence[IPAddress]]


#: Cloud instance-metadata and similar endpoints: never fetched, whatever the settings.
METADATA_NETWORKS: tuple[IPNetwork, ...] = tuple(
    ipaddress.ip_network(n)
    for n in (
        "169.254.169.254/32",  # AWS, GCP, Azure, OpenStack, DigitalOcean, Oracle ...
        "169.254.170.2/32",  # AWS ECS task metadata
        "169.254.170.23/32",  # AWS EKS pod identity agent
        "100.100.100.200/32",  # Alibaba Cloud
        "168.63.129.16/32",  # Azure wire server (a public address)
        "fd00:ec2::254/128",  # AWS IMDS over IPv6
        "fd00:ec2::23/128",  # AWS EKS pod identity agent over IPv6
    )
)


_NAT64 = ipaddress.ip_network("64:ff9b::/96")


_BROADCAST = ipaddress.ip_address("255.255.255.255")


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for (mapped, compatible, 6to4, NAT64)."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if int(ip) >> 32 == 0 and int(ip) > 1:  # deprecated IPv4-compatible ::a.b.c.d
        return ipaddress.IPv4Address(int(ip))
    return None


@dataclass(frozen=True)
class AddressPolicy:
    """Which resolved addresses may be contacted.

    By default only global (public) unicast addresses. ``allow_private`` admits loopback,
    private, link-local, shared and reserved ranges; ``allowed_networks`` admits just the
    networks listed. Metadata endpoints, unspecified, broadcast and multicast addresses are
    refused in every case.
    """

    allow_private: bool = False
    allowed_networks: tuple[IPNetwork, ...] = ()

    def why_blocked(self, ip: IPAddress) -> str | None:
        """``None`` when ``ip`` may be contacted, else what kind of address it is."""
        if isinstance(ip, ipaddress.IPv6Address):
            if ip.scope_id:
                ip = ipaddress.IPv6Address(ip.compressed.split("%", 1)[0])
            v4 = _embedded_ipv4(ip)
            if v4 is not None:
                why = self.why_blocked(v4)
                if why is not None:
                    return f"{why} (as {ip})"
                if ip.ipv4_mapped is not None or int(ip) >> 32 == 0 or ip in _NAT64:
                    return None  # what is reached is the IPv4 address, checked above
        if any(ip.version == n.version and ip in n for n in METADATA_NETWORKS):
            return "a cloud metadata endpoint"
        if ip.is_unspecified:
            return "the unspecified address"
        if ip.is_multicast or ip == _BROADCAST:
            return "a multicast/broadcast address"
        if any(ip.version == n.version and ip in n for n in self.allowed_networks):
            return None
        if self.allow_private:
            return None
        for attr, label in (
            ("is_loopback", "a loopback address"),
            ("is_link_local", "a link-local address"),
            ("is_reserved", "a reserved address"),
            ("is_private", "a private address"),
        ):
            if getattr(ip, attr):
                return label
        if not ip.is_global:
            return "not a public address"
        return None


def parse_networks(specs: Sequence[str]) -> tuple[IPNetwork, ...]:
    """CIDR strings (``"10.1.2.0/24"``, ``"::1/128"``, a bare address) as networks."""
    out = []
    for s in specs:
        try:
            out.append(ipaddress.ip_network(s.strip(), strict=False))
        except ValueError as e:
            raise ValueError(f"allowed_networks: {s!r} is not an IP network ({e})") from e
    return tuple(out)


def system_resolve(host: str, port: int) -> list[IPAddress]:
    """All addresses of ``host`` (an IP literal is returned as is, without a lookup)."""
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    seen: dict[IPAddress, None] = {}
    for *_, sockaddr in infos:
        seen.setdefault(ipaddress.ip_address(sockaddr[0]), None)
    return list(seen)


MAX_URL_CHARS = 8192


_HOST_OK = re.compile(r"^[a-z0-9_](?:[a-z0-9_.-]*[a-z0-9_])?$")


_PATH_SAFE = "/%:@!$&'()*+,;=-._~"


_QUERY_SAFE = _PATH_SAFE + "?"


class InvalidURLError(ValueError):
    """A URL that cannot or may not be fetched."""


@dataclass(frozen=True)
class Target:
    """A parsed, normalised http(s) URL."""

    url: str  # normalised (IDNA host, percent-encoded path and query, no fragment)
    scheme: str
    host: str  # IDNA, lower case; IPv6 without brackets
    port: int
    path: str  # path and query, as sent in the request line


def parse_target(url: str) -> Target:
    """Parse and normalise ``url``; :class:`InvalidURLError` says why it cannot be fetched."""
    if len(url) > MAX_URL_CHARS:
        raise InvalidURLError(f"URL longer than {MAX_URL_CHARS} characters")
    if any(ord(c) < 0x20 or c == "\x7f" for c in url):
        raise InvalidURLError("control characters in the URL")
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as e:
        raise InvalidURLError(f"cannot parse the URL: {e}") from e
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise InvalidURLError(f"scheme {scheme or '(none)'!r} is not http or https")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise InvalidURLError("no host in the URL")
    is_ip = True
    try:
        ip = ipaddress.ip_address(host)
        host = ip.compressed
    except ValueError:
        is_ip = False
    if not is_ip:
        try:
            host = host.encode("idna").decode("ascii").lower()
        except UnicodeError as e:
            raise InvalidURLError(f"host {host!r} is not a valid domain name ({e})") from e
        if not _HOST_OK.match(host):
            raise InvalidURLError(f"host {host!r} is not a valid domain name")
    default = 443 if scheme == "https" else 80
    port = port if port is not None else default
    if port == 0:
        raise InvalidURLError("port 0")
    path = quote(parts.path or "/", safe=_PATH_SAFE)
    if not path.startswith("/"):
        path = "/" + path
    if parts.query:
        path += "?" + quote(parts.query, safe=_QUERY_SAFE)
    netloc = f"[{host}]" if ":" in host else host
    if port != default:
        netloc += f":{port}"
    return Target(f"{scheme}://{netloc}{path}", scheme, host, port, path)


_IMAGE_SIGNATURES: tuple[tuple[bytes, int, str], ...] = (
    (b"\xff\xd8\xff", 0, "jpeg"),
    (b"\x89PNG\r\n\x1a\n", 0, "png"),
    (b"GIF87a", 0, "gif"),
    (b"GIF89a", 0, "gif"),
    (b"BM", 0, "bmp"),
    (b"II*\x00", 0, "tiff"),
    (b"MM\x00*", 0, "tiff"),
    (b"\x00\x00\x01\x00", 0, "ico"),
)


_FTYP_BRANDS = {b"avif": "avif", b"avis": "avif", b"heic": "heic", b"heix": "heic",
                b"mif1": "heif", b"msf1": "heif"}  # fmt: skip


SNIFF_BYTES = 16


def sniff_image(head: bytes) -> str | None:
    """The image format the leading bytes announce (jpeg, png, gif, webp, ...), or None."""
    for magic, offset, name in _IMAGE_SIGNATURES:
        if head[offset : offset + len(magic)] == magic:
            return name
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[4:8] == b"ftyp" and head[8:12] in _FTYP_BRANDS:
        return _FTYP_BRANDS[head[8:12]]
    if head[:12] == b"\x00\x00\x00\x0cJXL \r\n" or head[:2] == b"\xff\x0a":
        return "jxl"
    return None


#: Content types that say nothing about the content (the leading bytes decide).
OCTET_STREAM_TYPES = frozenset(
    {"application/octet-stream", "binary/octet-stream", "application/binary"}
)


_ARG_DIRECTIVES = ("unavailable_after", "max-snippet", "max-image-preview", "max-video-preview")


_UA_PREFIX = re.compile(r"^\s*([A-Za-z0-9_-]+)\s*:\s*(.*)$")


def opted_out(values: Sequence[str], token: str, directives: frozenset[str]) -> str | None:
    """The ``X-Robots-Tag`` value that forbids the download, or None.

    A value is ``"noai, noimageai"`` (for every robot) or ``"somebot: noai"`` (only for the
    robot whose User-Agent token is ``somebot``), as img2dataset and Google read it.
    """
    if not directives:
        return None
    for value in values:
        m = _UA_PREFIX.match(value)
        body, applies = value, True
        if m and m.group(1).lower() not in _ARG_DIRECTIVES:
            body, applies = m.group(2), m.group(1).lower() == token
        if applies and any(d.strip().lower() in directives for d in body.split(",")):
            return value
    return None


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))
