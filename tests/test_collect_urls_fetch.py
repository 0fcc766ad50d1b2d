"""The downloader on its own: address policy, URL parsing, opt-out, content checks, pinning
(DNS rebinding, Host header, TLS SNI), deadlines, rate limits, Retry-After, keep-alive reuse."""

from __future__ import annotations

import datetime as dt
import email.utils
import gzip
import ipaddress
import itertools
import ssl
import threading
import time

import pytest

from cmrops.sources.http_fetch import (
    AddressPolicy,
    FetchConfig,
    Fetcher,
    InvalidURLError,
    is_retryable,
    opted_out,
    parse_networks,
    parse_retry_after,
    parse_target,
    sniff_image,
)
from tests.http_fault_server import FaultServer, jpeg, net_guard, png

__all__ = ["net_guard"]

LOOPBACK = AddressPolicy(allowed_networks=parse_networks(["127.0.0.0/8"]))


def config(**kw) -> FetchConfig:
    # robots.txt / TDMRep off: these tests count requests and connections per URL (the site
    # opt-outs are tested in test_collect_optout.py)
    base = {"timeout": 0.4, "deadline": 1.0, "retries": 0, "backoff": 0.02, "policy": LOOPBACK,
            "robots_txt": False, "tdmrep": False}  # fmt: skip
    return FetchConfig(**{**base, **kw})


@pytest.fixture
def server(net_guard):
    with FaultServer() as srv:
        yield srv


# -- pure checks -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "blocked"),
    [
        ("8.8.8.8", None),
        ("2606:4700:4700::1111", None),
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.31.255.1", "private"),
        ("192.168.0.1", "private"),
        ("100.64.0.1", "not a public"),  # carrier-grade NAT (shared) space
        ("169.254.1.1", "link-local"),
        ("169.254.169.254", "metadata"),
        ("fd00:ec2::254", "metadata"),
        ("168.63.129.16", "metadata"),  # Azure's wire server: public range, still refused
        ("fe80::1", "link-local"),
        ("fc00::1", "private"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("255.255.255.255", "broadcast"),
        ("240.0.0.1", "reserved"),
        ("192.0.2.1", "private"),  # documentation range
        ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped
        ("::ffff:169.254.169.254", "metadata"),
        ("::ffff:8.8.8.8", None),
        ("::127.0.0.1", "loopback"),  # IPv4-compatible
        ("2002:a00:1::1", "private"),  # 6to4 of 10.0.0.1
        ("64:ff9b::7f00:1", "loopback"),  # NAT64 of 127.0.0.1
        ("64:ff9b::808:808", None),  # NAT64 of 8.8.8.8
    ],
)
def test_address_policy(address, blocked):
    why = AddressPolicy().why_blocked(ipaddress.ip_address(address))
    if blocked is None:
        assert why is None
    else:
        assert why is not None
        assert blocked in why


def test_private_allowances_never_cover_metadata_or_multicast():
    lax = AddressPolicy(allow_private=True)
    assert lax.why_blocked(ipaddress.ip_address("10.0.0.1")) is None
    assert lax.why_blocked(ipaddress.ip_address("127.0.0.1")) is None
    for a in ("169.254.169.254", "::ffff:169.254.169.254", "fd00:ec2::254", "0.0.0.0", "224.0.0.1"):
        assert lax.why_blocked(ipaddress.ip_address(a)) is not None, a
    some = AddressPolicy(allowed_networks=parse_networks(["10.1.0.0/16"]))
    assert some.why_blocked(ipaddress.ip_address("10.1.2.3")) is None
    assert some.why_blocked(ipaddress.ip_address("10.2.0.1")) is not None
    assert some.why_blocked(ipaddress.ip_address("127.0.0.1")) is not None
    with pytest.raises(ValueError, match="allowed_networks"):
        parse_networks(["10.0.0.0/33"])


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://Example.COM/a b.jpg?x=1 2#frag", "http://example.com/a%20b.jpg?x=1%202"),
        ("https://bücher.de:443/ä.jpg", "https://xn--bcher-kva.de/%C3%A4.jpg"),
        ("http://[::1]:8080/x", "http://[::1]:8080/x"),
        ("http://example.com", "http://example.com/"),
        ("http://user:pw@example.com/a", "http://example.com/a"),  # credentials are not sent
    ],
)
def test_parse_target_normalises(url, expected):
    assert parse_target(url).url == expected


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/a.jpg",
        "file:///etc/passwd",
        "gopher://127.0.0.1:70/",
        "javascript:alert(1)",
        "//example.com/a.jpg",
        "http:///a.jpg",
        "http://exa mple.com/a.jpg",
        "http://example.com:99999/",
        "http://example.com:0/",
        "http://example.com/\r\nX-Injected: 1",
        "http://" + "a" * 9000 + ".com/",
        "http://a..b.com/",
    ],
)
def test_parse_target_refuses(url):
    with pytest.raises(InvalidURLError):
        parse_target(url)


def test_opt_out_header_parsing():
    d = frozenset({"noai", "noimageai"})
    assert opted_out(["noai"], "cmrops", d) == "noai"
    assert opted_out(["noindex, NoImageAI"], "cmrops", d)
    assert opted_out(["cmrops: noai"], "cmrops", d)
    assert opted_out(["otherbot: noai"], "cmrops", d) is None
    assert opted_out(["noindex", "nofollow"], "cmrops", d) is None
    assert opted_out(["unavailable_after: 25 Jun 2010 15:00:00 PST"], "cmrops", d) is None
    assert opted_out(["noai"], "cmrops", frozenset()) is None  # respect_opt_out: false


def test_sniff_and_retry_rules():
    assert sniff_image(jpeg(1)[:16]) == "jpeg"
    assert sniff_image(png(1)[:16]) == "png"
    assert sniff_image(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "webp"
    assert sniff_image(b"GIF89a\x01\x00") == "gif"
    assert sniff_image(b"\x00\x00\x00\x1cftypavif") == "avif"
    assert sniff_image(b"<!DOCTYPE html>") is None
    assert sniff_image(b"<svg xmlns=") is None
    assert [s for s in ("timeout", "connection_error", "dns_error") if is_retryable(s)] == [
        "timeout",
        "connection_error",
        "dns_error",
    ]
    for code in (408, 425, 429, 500, 502, 503, 504, 599):
        assert is_retryable(f"http_{code}")
    for s in ("http_404", "http_403", "http_501", "too_large", "blocked_address", "opt_out",
              "not_an_image", "invalid_url", "too_many_redirects", "tls_error"):  # fmt: skip
        assert not is_retryable(s), s
    assert parse_retry_after("7") == 7.0
    now = time.time()
    date = email.utils.format_datetime(dt.datetime.fromtimestamp(now + 30, dt.UTC), usegmt=True)
    assert 28 <= parse_retry_after(date, now) <= 31
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


# -- against the server ----------------------------------------------------------------------


def test_trickling_body_stops_at_the_deadline(server):
    server.add("/drip.jpg", body=jpeg(1) * 5, trickle=0.02)  # each byte in time, never done
    with Fetcher(config(deadline=0.6)) as f:
        t0 = time.perf_counter()
        r = f.fetch(server.url("/drip.jpg"))
        elapsed = time.perf_counter() - t0
    assert r.status == "timeout"
    assert "deadline" in r.detail
    assert elapsed < 1.2
    assert server.completed["/drip.jpg"] == 0


def test_gzip_is_decoded_within_the_cap(server):
    img = jpeg(2, (64, 64), noise=True)
    server.add("/gz.jpg", body=gzip.compress(img), headers={"Content-Encoding": "gzip"})
    bomb = gzip.compress(b"\xff\xd8\xff" + b"\x00" * (20 << 20))  # 20 MB of zeros, ~20 kB
    server.add("/bomb.jpg", body=bomb, headers={"Content-Encoding": "gzip"})
    server.add("/br.jpg", body=b"x", headers={"Content-Encoding": "br"})
    with Fetcher(config(max_bytes=1 << 20)) as f:
        ok = f.fetch(server.url("/gz.jpg"))
        assert ok.ok
        assert ok.data == img
        big = f.fetch(server.url("/bomb.jpg"))
        assert big.status == "too_large"
        assert big.data is None
        assert f.fetch(server.url("/br.jpg")).status == "unsupported_encoding"


def test_per_host_rate_limit_spaces_requests(server):
    urls = [server.add(f"/{i}.jpg", body=jpeg(i)) for i in range(6)]
    with Fetcher(config(per_host_rate=20.0)) as f:
        threads = [threading.Thread(target=f.fetch, args=(u,)) for u in urls]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    times = sorted(t for ts in server.times.values() for t in ts)
    assert len(times) == 6
    assert times[-1] - times[0] >= 5 * 0.05 * 0.9  # 6 requests at 20/s span >= 0.25 s
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) > 0.03


def test_retry_after_beyond_the_limit_ends_the_attempts_now(server):
    server.add("/later.jpg", fail_first=10, fail_status=503, fail_headers={"Retry-After": "3600"})
    with Fetcher(config(retries=3, max_retry_after=5)) as f:
        t0 = time.perf_counter()
        r = f.fetch(server.url("/later.jpg"))
    assert r.status == "http_503"
    assert r.retryable
    assert r.attempts == 1
    assert "left for a later run" in r.detail
    assert time.perf_counter() - t0 < 0.5
    assert server.requests["/later.jpg"] == 1


def test_retries_back_off_and_give_up(server):
    server.add("/down.jpg", fail_first=10, fail_status=502)
    with Fetcher(config(retries=2, backoff=0.1, backoff_max=1)) as f:
        r = f.fetch(server.url("/down.jpg"))
    assert (r.status, r.attempts) == ("http_502", 3)
    t = server.times["/down.jpg"]
    assert t[1] - t[0] >= 0.05
    assert t[2] - t[1] >= 0.1


def test_dns_is_pinned_to_the_checked_address(server, net_guard):
    """A name resolved once and checked; the connection goes to that address, the request
    keeps the name (rebinding to another address later cannot redirect it)."""
    server.add("/a.jpg", body=jpeg(1))
    answers = iter([["127.0.0.1"], ["10.0.0.1"], ["10.0.0.1"]])
    calls = []

    def resolve(host, port):
        calls.append(host)
        return [ipaddress.ip_address(a) for a in next(answers)]

    url = f"http://images.test:{server.port}/a.jpg"
    with Fetcher(config(), resolve) as f:
        r = f.fetch(url)
        assert r.ok
        assert calls == ["images.test"]
        assert server.hosts["/a.jpg"] == [f"images.test:{server.port}"]
    assert [a[0] for a in net_guard.connects] == ["127.0.0.1"]

    def mixed(host, port):  # one good, one private address: refused as a whole
        return [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("10.0.0.1")]

    with Fetcher(config(), mixed) as f:
        r = f.fetch(url)
    assert r.status == "blocked_address"
    assert "10.0.0.1" in r.detail
    assert server.requests["/a.jpg"] == 1


def test_https_uses_the_name_for_sni_and_certificate(tmp_path, net_guard):
    ca_pem, cert_pem, key_pem = _certificates("images.test")
    (tmp_path / "ca.pem").write_bytes(ca_pem)
    (tmp_path / "cert.pem").write_bytes(cert_pem)
    (tmp_path / "key.pem").write_bytes(key_pem)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    with FaultServer(tls=ctx, host_name="images.test") as srv:
        srv.add("/a.jpg", body=jpeg(1))

        def resolve(host, port):
            assert host == "images.test"
            return [ipaddress.ip_address("127.0.0.1")]

        with Fetcher(config(ca_bundle=str(tmp_path / "ca.pem"), deadline=3), resolve) as f:
            r = f.fetch(srv.url("/a.jpg"))
            assert r.ok, r
            assert srv.sni == ["images.test"]
            assert srv.hosts["/a.jpg"] == [f"images.test:{srv.port}"]
        # the same server reached by its address: the certificate does not match
        lax = config(ca_bundle=str(tmp_path / "ca.pem"), deadline=3)
        with Fetcher(lax) as f:
            r = f.fetch(f"https://127.0.0.1:{srv.port}/a.jpg")
        assert r.status == "tls_error"
        # and without the test CA, the certificate is not trusted
        with Fetcher(config(deadline=3), resolve) as f:
            assert f.fetch(srv.url("/a.jpg")).status == "tls_error"


def test_idle_keep_alive_closed_by_the_server_is_reopened(net_guard):
    # budgets for a busy machine: the client waits up to 10 s for an answer (a CI run once saw
    # none within config()'s 0.4 s), and the server drops a connection idle for 0.5 s
    with FaultServer(idle_timeout=0.5) as srv:
        a, b = srv.add("/a.jpg", body=jpeg(1)), srv.add("/b.jpg", body=jpeg(2))
        with Fetcher(config(timeout=10.0, deadline=30.0)) as f:
            assert f.fetch(a).ok
            time.sleep(1.5)  # the server drops the idle connection
            r = f.fetch(b)
        assert r.ok
        assert r.attempts == 1
        assert net_guard.connects.count(net_guard.connects[0]) >= 1


def test_connections_are_reused(server, net_guard):
    urls = [server.add(f"/{i}.jpg", body=jpeg(i)) for i in range(5)]
    with Fetcher(config()) as f:
        assert all(f.fetch(u).ok for u in urls)
    assert len(net_guard.connects) == 1  # one keep-alive connection for five images


def _certificates(name: str) -> tuple[bytes, bytes, bytes]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)

    def build(subject, issuer, pub, signer, ca: bool, san: str | None):
        b = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(pub)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if ca:
            b = b.add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), True
            )
        if san:
            b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName(san)]), False)
        return b.sign(signer, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = build("cmrops test CA", "cmrops test CA", ca_key.public_key(), ca_key, True, None)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = build(name, "cmrops test CA", key.public_key(), ca_key, False, name)
    pem = serialization.Encoding.PEM
    return (
        ca.public_bytes(pem),
        cert.public_bytes(pem),
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    )
