"""The ``urls`` source through the collect stage, against a real server on 127.0.0.1.

Every URL gets one status row and one record (sample or quarantine row); reruns download
nothing twice and retry only retryable failures; a SIGKILLed run resumes and fetches each image
once; with private networks not allowed nothing reaches the loopback server at all.
"""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from cmrops.cli import main
from cmrops.errors import NothingKeptError
from cmrops.params import ParamsError
from tests.collect_util import (
    by_key,
    check_balance,
    collect,
    params,
    reasons,
    rows,
    write_image,
)
from tests.http_fault_server import FaultServer, Route, jpeg, net_guard, png

__all__ = ["net_guard"]  # the fixture, used by name

REPO = Path(__file__).resolve().parents[1]
CAP = 1 << 20
FAST = {
    "concurrency": 8,
    "timeout": 0.4,
    "deadline": 1.5,
    "retries": 1,
    "backoff": 0.05,
    "backoff_max": 0.2,
    "max_retry_after": 3,
    "per_host_rate": 0,
    "max_bytes": CAP,
    "allowed_networks": ["127.0.0.0/8"],  # loopback only: 10/8, 169.254/16 stay blocked
    # these tests count requests per URL; the site opt-outs (robots.txt, TDMRep: one request
    # each per host) have their own tests in test_collect_optout.py
    "respect_robots_txt": False,
    "respect_tdmrep": False,
}


@pytest.fixture
def server(net_guard):
    with FaultServer() as srv:
        yield srv


def write_csv(path: Path, rows_: list[tuple[str, str]], header=("url", "captions")) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows_)
    return path


def spec(manifest: Path, name: str = "web", **download: Any) -> dict[str, Any]:
    return {"name": name, "kind": "urls", "path": str(manifest), "download": {**FAST, **download}}


def status_table(out: Path, name: str = "web") -> dict[str, dict[str, Any]]:
    table = pq.read_table(out / "downloads" / name / "status.parquet").to_pylist()
    return {r["source_key"]: r for r in table}


def snapshot(out: Path) -> dict[str, bytes]:
    return {
        p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()
    }


# -- every URL, one status -------------------------------------------------------------------


def test_every_url_gets_one_status_and_inputs_balance(tmp_path, server):
    same = jpeg(10)
    r = {
        "/a.jpg": Route(body=jpeg(1)),
        "/b.png": Route(body=png(2), content_type="image/png"),
        "/no-type": Route(body=jpeg(3), content_type=None),
        "/octet": Route(body=jpeg(4), content_type="application/octet-stream"),
        "/slow.jpg": Route(body=jpeg(5), delay=1.0),
        "/flaky.jpg": Route(body=jpeg(6), fail_first=1, fail_status=500),
        "/busy.jpg": Route(
            body=jpeg(7), fail_first=1, fail_status=429, fail_headers={"Retry-After": "1"}
        ),
        "/to-metadata": Route(redirect="http://169.254.169.254/latest/meta-data/"),
        "/to-private": Route(redirect="http://10.0.0.1/x.jpg"),
        "/to-a": Route(redirect="/a.jpg"),
        "/loop": Route(redirect="/loop"),
        "/big": Route(stream_bytes=50 << 20, declare_length=False),
        "/big-declared": Route(stream_bytes=50 << 20),
        "/html-as-jpeg": Route(body=b"<!DOCTYPE html><html><body>hi</body></html>" * 4),
        "/page": Route(body=b"<html></html>", content_type="text/html; charset=utf-8"),
        "/noai": Route(body=jpeg(8), headers={"X-Robots-Tag": "noai"}),
        "/noimageai": Route(body=jpeg(9), headers={"X-Robots-Tag": "noindex, NoImageAI"}),
        "/other-bot": Route(body=jpeg(11), headers={"X-Robots-Tag": "otherbot: noai"}),
        "/reset": Route(reset=True),
        "/dup1.jpg": Route(body=same),
        "/dup2.jpg": Route(body=same),
        "/dup3.jpg": Route(body=same),
    }
    for path, route in r.items():
        server.add(path, route)
    u = server.url
    manifest = write_csv(
        tmp_path / "urls.csv",
        [
            (u("/a.jpg"), "a"),
            (u("/b.png"), "b"),
            (u("/no-type"), "c"),
            (u("/octet"), "d"),
            (u("/slow.jpg"), "slow"),
            (u("/flaky.jpg"), "flaky"),
            (u("/busy.jpg"), "busy"),
            (u("/to-metadata"), "meta"),
            (u("/to-private"), "private"),
            (u("/to-a"), "redirected to a"),
            (u("/loop"), "loop"),
            (u("/big"), "big"),
            (u("/big-declared"), "big declared"),
            (u("/html-as-jpeg"), "html"),
            (u("/page"), "page"),
            (u("/noai"), "noai"),
            (u("/noimageai"), "noimageai"),
            (u("/other-bot"), "other bot"),
            (u("/reset"), "reset"),
            (u("/missing.jpg"), "404"),
            (u("/dup1.jpg"), "same"),
            (u("/dup2.jpg"), "same"),
            (u("/dup3.jpg"), "different caption"),
            (u("/a.jpg"), "a again, other caption"),
            ("ftp://127.0.0.1/x.jpg", "ftp"),
            ("http://", "no host"),
            (u("/a.jpg"), ""),
        ],
    )
    out = tmp_path / "raw"
    t0 = time.perf_counter()
    m = collect(out, spec(manifest, max_redirects=3))
    elapsed = time.perf_counter() - t0
    check_balance(out, m)

    st = status_table(out)
    status = {k.split(":", 1)[0]: v["status"] for k, v in st.items()}
    assert status == {
        "1": "ok",
        "2": "ok",
        "3": "ok",
        "4": "ok",
        "5": "timeout",
        "6": "ok",
        "7": "ok",
        "8": "blocked_address",
        "9": "blocked_address",
        "10": "ok",
        "11": "too_many_redirects",
        "12": "too_large",
        "13": "too_large",
        "14": "not_an_image",
        "15": "not_an_image",
        "16": "opt_out",
        "17": "opt_out",
        "18": "ok",
        "19": "connection_error",
        "20": "http_404",
        "21": "ok",
        "22": "ok",
        "23": "ok",
        "24": "ok",
        "25": "invalid_url",
        "26": "invalid_url",
        "27": "missing_caption",
    }
    assert len(st) == 27 == m["inputs"]  # one status row per manifest row

    # failed URLs are quarantine rows with the same reason; ok ones samples (or duplicates)
    q = reasons(out)
    samples = by_key(out)
    for key, row in st.items():
        if row["status"] == "ok":
            assert key in samples or q.get(key) == "duplicate_input", key
        else:
            assert q[key] == row["status"], key
    assert q[f"22:{u('/dup2.jpg')}"] == "duplicate_input"  # same image, same captions
    assert (
        samples[f"23:{u('/dup3.jpg')}"]["image_sha256"]
        == st[f"21:{u('/dup1.jpg')}"]["image_sha256"]
    )  # same image, other captions: a second sample on the same stored image
    assert m["images_stored"] == len({r["image_sha256"] for r in rows(out)})

    d = m["sources"]["web"]["downloads"]
    assert (d["rows"], d["ok"]) == (27, 12)
    assert d["failed"] == 15
    assert d["success_rate"] == pytest.approx(12 / 27, abs=1e-6)
    assert d["failed_by_reason"] == {
        "blocked_address": 2,
        "connection_error": 1,
        "http_404": 1,
        "invalid_url": 2,
        "missing_caption": 1,
        "not_an_image": 2,
        "opt_out": 2,
        "timeout": 1,
        "too_large": 2,
        "too_many_redirects": 1,
    }
    assert d["retryable_failed"] == 2  # timeout, connection_error

    # retries: only retryable failures, with Retry-After honoured
    req = server.requests
    assert req["/missing.jpg"] == 1
    assert req["/noai"] == 1
    assert req["/html-as-jpeg"] == 1
    assert req["/big"] == 1
    assert req["/to-metadata"] == 1
    assert req["/flaky.jpg"] == 2
    assert st[f"6:{u('/flaky.jpg')}"]["attempts"] == 2
    assert req["/busy.jpg"] == 2
    t = server.times["/busy.jpg"]
    assert t[1] - t[0] >= 0.95, "Retry-After: 1 was not honoured"
    assert req["/slow.jpg"] == 2  # 1 + retries
    # a reset on a reused keep-alive connection is retried once on a fresh one (not an attempt)
    assert 2 <= req["/reset"] <= 4
    assert st[f"19:{u('/reset')}"]["attempts"] == 2
    assert req["/a.jpg"] == 2  # rows 1 and 24 share one download; row 10 via redirect
    assert req["/loop"] == 4  # the first request and 3 redirects
    assert req["/dup1.jpg"] == req["/dup2.jpg"] == req["/dup3.jpg"] == 1
    # the byte cap aborts the 50 MB bodies: what was sent is the cap plus socket buffers
    assert server.bytes_sent["/big"] < CAP + (16 << 20)
    assert server.bytes_sent["/big-declared"] < 16 << 20
    assert server.completed["/big"] == 0
    assert server.completed["/big-declared"] == 0
    # blocked hops never reach an address other than loopback (net_guard checks, too)
    assert st[f"8:{u('/to-metadata')}"]["final_url"] == "http://169.254.169.254/latest/meta-data/"
    assert "metadata" in st[f"8:{u('/to-metadata')}"]["detail"]
    assert st[f"10:{u('/to-a')}"]["final_url"] == u("/a.jpg")
    assert json.loads(samples[f"10:{u('/to-a')}"]["extra"]) == {
        "url": u("/to-a"),
        "final_url": u("/a.jpg"),
    }
    assert {ua for uas in server.user_agents.values() for ua in uas} == {
        "cmrops/0.1 (image-text dataset collector; honours X-Robots-Tag noai)"
    }
    assert elapsed < 15


# -- reruns ----------------------------------------------------------------------------------


def test_rerun_fetches_nothing_twice_and_retries_only_retryable(tmp_path, server):
    server.add("/a.jpg", body=jpeg(1))
    server.add("/b.jpg", body=jpeg(2))
    server.add("/down.jpg", fail_first=1000, fail_status=503)
    server.add("/reset.jpg", reset=True)
    server.add("/big.jpg", stream_bytes=2 * CAP)
    server.add("/noai.jpg", body=jpeg(3), headers={"X-Robots-Tag": "noai"})
    u = server.url
    paths = ["/a.jpg", "/b.jpg", "/down.jpg", "/reset.jpg", "/big.jpg", "/noai.jpg", "/404.jpg"]
    manifest = write_csv(tmp_path / "u.csv", [(u(p), p) for p in paths])
    out = tmp_path / "raw"
    src = spec(manifest, shard_size=3, retries=0)

    m1 = collect(out, src)
    assert m1["sources"]["web"]["downloads"]["failed_by_reason"] == {
        "connection_error": 1,
        "http_404": 1,
        "http_503": 1,
        "opt_out": 1,
        "too_large": 1,
    }
    # (a reset on a reused keep-alive connection is re-sent once on a fresh connection)
    assert server.requests.pop("/reset.jpg") in (1, 2)
    assert dict(server.requests) == dict.fromkeys(set(paths) - {"/reset.jpg"}, 1)

    # the servers recover; a rerun that must not retry contacts nobody
    server.add("/down.jpg", body=jpeg(4))
    server.add("/reset.jpg", body=jpeg(5))
    server.reset_counts()
    assert collect(out, {**src, "download": {**src["download"], "retry_failed": False}}) == m1
    assert server.total_requests == 0

    # the default rerun retries exactly the retryable failures (503, reset) and nothing else
    m2 = collect(out, src)
    assert dict(server.requests) == {"/down.jpg": 1, "/reset.jpg": 1}
    assert m2["sources"]["web"]["downloads"]["ok"] == 4
    st = status_table(out)
    down = st[f"3:{u('/down.jpg')}"]
    assert (down["status"], down["attempts"], down["run"]) == ("ok", 2, 2)
    assert st[f"1:{u('/a.jpg')}"]["run"] == 1
    check_balance(out, m2)

    # and then there is nothing left to do: no request, byte-identical outputs
    server.reset_counts()
    before = snapshot(out)
    assert collect(out, src) == m2
    assert server.total_requests == 0
    assert snapshot(out) == before


def test_shards_are_recorded_and_rows_are_keyed_by_url(tmp_path, server):
    urls = [server.add(f"/{i}.jpg", body=jpeg(100 + i)) for i in range(8)]
    manifest = write_csv(tmp_path / "u.csv", [(x, f"image {i}") for i, x in enumerate(urls)])
    out = tmp_path / "raw"
    collect(out, spec(manifest, shard_size=3))
    d = out / "downloads" / "web"
    assert sorted(p.name for p in (d / "shards").iterdir()) == [
        "shard-00000.parquet",
        "shard-00001.parquet",
        "shard-00002.parquet",
    ]
    assert json.loads((d / "state.json").read_text()) == {"complete": True, "run": 1}
    assert [r["row"] for r in pq.read_table(d / "status.parquet").to_pylist()] == list(range(1, 9))
    # rows inserted in front shift every row to another shard: outcomes follow the URL
    server.reset_counts()
    new = server.add("/new.jpg", body=jpeg(99))
    write_csv(
        manifest, [(new, "new"), *[(x, f"image {i}") for i, x in enumerate(urls)][:5]]
    )  # and the manifest got shorter
    m = collect(out, spec(manifest, shard_size=3))
    assert dict(server.requests) == {"/new.jpg": 1}
    assert m["sources"]["web"]["downloads"]["rows"] == 6
    assert sorted(p.name for p in (d / "shards").iterdir()) == [
        "shard-00000.parquet",
        "shard-00001.parquet",
    ]
    assert len(rows(out)) == 6


def test_policy_change_retries_policy_failures(tmp_path, server):
    big = server.add("/big.jpg", body=jpeg(1, (400, 300), noise=True))
    small = server.add("/small.jpg", body=jpeg(2))  # a run that keeps nothing is an error
    manifest = write_csv(tmp_path / "u.csv", [(big, "big"), (small, "small")])
    out = tmp_path / "raw"
    m = collect(out, spec(manifest, max_bytes=1000))
    assert m["quarantined_by_reason"] == {"too_large": 1}
    assert collect(out, spec(manifest, max_bytes=1000)) == m
    assert server.requests["/big.jpg"] == 1  # final under the same policy
    m = collect(out, spec(manifest))  # a larger cap: tried again
    assert m["kept"] == 2
    assert server.requests["/big.jpg"] == 2
    m = collect(out, spec(manifest, max_bytes=1000))  # smaller again: no download needed
    assert m["quarantined_by_reason"] == {"too_large": 1}
    assert server.requests["/big.jpg"] == 2


def test_damaged_or_missing_objects_are_fetched_again(tmp_path, server):
    urls = [server.add(f"/{i}.jpg", body=jpeg(i)) for i in range(3)]
    manifest = write_csv(tmp_path / "u.csv", [(x, f"c{i}") for i, x in enumerate(urls)])
    out = tmp_path / "raw"
    m = collect(out, spec(manifest))
    ref = snapshot(out)
    s = by_key(out)
    torn = out / s[f"1:{urls[0]}"]["image_path"]
    torn.write_bytes(b"x" * torn.stat().st_size)  # same size, wrong bytes
    (out / s[f"2:{urls[1]}"]["image_path"]).unlink()
    server.reset_counts()
    assert collect(out, spec(manifest)) == m
    assert dict(server.requests) == {"/0.jpg": 1, "/1.jpg": 1}
    after = snapshot(out)
    status = "downloads/web/status.parquet"
    assert {k: v for k, v in after.items() if "downloads" not in k} == {
        k: v for k, v in ref.items() if "downloads" not in k
    }
    assert [r["attempts"] for r in pq.read_table(out / status).to_pylist()] == [2, 2, 1]


# -- manifests -------------------------------------------------------------------------------


def test_parquet_and_jsonl_manifests_with_custom_columns(tmp_path, server):
    a, b = server.add("/a.jpg", body=jpeg(1)), server.add("/b.jpg", body=jpeg(2))
    table = pa.table(
        {
            "URL": [a, b, None],
            "TEXT": [["one", "two"], ["b | with bar"], ["x"]],
            "tags": [["cat"], [], None],
            "similarity": [0.31, 0.29, 0.1],
        }
    )
    pq.write_table(table, tmp_path / "laion.parquet")
    (tmp_path / "m.jsonl").write_text(
        json.dumps({"link": b, "caption": "single caption | kept whole", "labels": "x|y"}) + "\n"
    )
    write_csv(tmp_path / "m.tsv", [], header=("u", "c"))
    (tmp_path / "m.tsv").write_text(f"u\tc\n{a}\tone | caption, not split\n")
    out = tmp_path / "raw"
    m = collect(
        out,
        {**spec(tmp_path / "laion.parquet", "pq"), "url_column": "URL", "captions_column": "TEXT",
         "labels_column": "tags"},
        {**spec(tmp_path / "m.jsonl", "js"), "url_column": "link", "captions_column": "caption"},
        {**spec(tmp_path / "m.tsv", "tsv"), "url_column": "u", "captions_column": "c",
         "separator": ""},
    )  # fmt: skip
    check_balance(out, m)
    pq_rows = {r["source_key"]: r for r in rows(out) if r["source"] == "pq"}
    js_rows = {r["source_key"]: r for r in rows(out) if r["source"] == "js"}
    s = {**js_rows, **pq_rows}
    assert s[f"1:{a}"]["captions"] == ["one", "two"]
    assert s[f"1:{a}"]["labels"] == ["cat"]
    assert json.loads(s[f"1:{a}"]["extra"]) == {"similarity": 0.31, "url": a}
    assert s[f"2:{b}"]["captions"] == ["b | with bar"]
    assert js_rows[f"1:{b}"]["labels"] == ["x", "y"]
    assert js_rows[f"1:{b}"]["captions"] == ["single caption | kept whole"]
    assert [r["captions"] for r in rows(out) if r["source"] == "tsv"] == [
        ["one | caption, not split"]
    ]
    assert reasons(out)["3:"] == "malformed_row"
    # each source keeps its own download records; the store keeps the image once
    assert server.requests["/a.jpg"] == 2
    assert m["images_stored"] == 2
    assert m["sources"]["pq"]["downloads"]["rows"] == 3


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"download": {"concurrency": 0}}, "concurrency"),
        ({"download": {"allowed_networks": ["not-a-net"]}}, "allowed_networks"),
        ({"download": {"user_agent": "bad\r\nX-Injected: 1"}}, "user_agent"),
        ({"download": {"unknown": 1}}, "unknown key"),
        ({"image_column": "x"}, "does not apply"),
    ],
)
def test_bad_download_params_fail_fast(tmp_path, extra, message):
    with pytest.raises(ParamsError, match=message):
        params({"name": "w", "kind": "urls", "path": "u.csv", **extra})


def test_bad_manifests_fail_fast_before_anything_is_written(tmp_path):
    (tmp_path / "u.csv").write_text("image,captions\nhttp://x/a.jpg,a\n")
    out = tmp_path / "raw"
    with pytest.raises(ValueError, match="url_column"):
        collect(out, spec(tmp_path / "u.csv"))
    with pytest.raises(FileNotFoundError):
        collect(out, spec(tmp_path / "none.parquet"))
    with pytest.raises(ParamsError, match="urls only"):
        params({"name": "m", "kind": "manifest", "path": "m.pq", "format": "parquet"})
    assert not out.exists()


# -- SSRF: private networks not allowed --------------------------------------------------------


def test_without_private_networks_nothing_reaches_the_loopback_server(tmp_path, server, net_guard):
    server.add("/a.jpg", body=jpeg(1))
    p = server.port
    blocked = [
        f"http://127.0.0.1:{p}/a.jpg",
        f"http://localhost:{p}/a.jpg",
        f"http://[::1]:{p}/a.jpg",
        f"http://[::ffff:127.0.0.1]:{p}/a.jpg",
        f"http://[::ffff:7f00:1]:{p}/a.jpg",
        f"http://2130706433:{p}/a.jpg",  # 127.0.0.1 as one number
        f"http://127.1:{p}/a.jpg",
        f"http://0.0.0.0:{p}/a.jpg",
        "http://10.0.0.1/a.jpg",
        "http://172.16.0.1/a.jpg",
        "http://192.168.1.1/a.jpg",
        "http://100.64.0.1/a.jpg",
        "http://169.254.169.254/latest/meta-data/",
        "http://[fd00:ec2::254]/latest/meta-data/",
        "http://[fe80::1]/a.jpg",
        "http://224.0.0.1/a.jpg",
        "https://[2002:7f00:1::]/a.jpg",  # 6to4 wrapping 127.0.0.1
        "http://[64:ff9b::a00:1]/a.jpg",  # NAT64 wrapping 10.0.0.1
    ]
    manifest = write_csv(tmp_path / "u.csv", [(x, "c") for x in blocked])
    out = tmp_path / "raw"
    download = {k: v for k, v in FAST.items() if k != "allowed_networks"}
    urls = {"name": "web", "kind": "urls", "path": str(manifest), "download": download}
    with pytest.raises(NothingKeptError, match=f"blocked_address {len(blocked)}"):
        collect(out, urls)  # nothing kept: an error with the counts, no outputs
    assert not (out / "samples.parquet").exists()
    local = tmp_path / "local"  # beside a source that keeps a sample, the run completes
    write_image(local / "ok.jpg")
    (local / "ok.txt").write_text("a caption")
    m = collect(out, urls, {"name": "local", "kind": "folder", "path": str(local)})
    check_balance(out, m)
    assert m["quarantined_by_reason"] == {"blocked_address": len(blocked)}
    assert server.total_requests == 0
    assert net_guard.connects == []  # refused before any connection was attempted
    assert all("refused before connecting" in r["detail"] for r in rows(out, "quarantine"))


# -- SIGKILL mid-download --------------------------------------------------------------------


def test_killed_download_resumes_and_fetches_each_image_once(tmp_path, server):
    n, c = 30, 4
    urls = [server.add(f"/{i}.jpg", Route(body=jpeg(200 + i), gated=True)) for i in range(n)]
    manifest = write_csv(tmp_path / "u.csv", [(x, f"photo {i}") for i, x in enumerate(urls)])
    src = {**spec(manifest, concurrency=c, shard_size=4), "path": "u.csv"}
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump({"collect": {"sources": [src]}}))

    ref = tmp_path / "ref"
    assert main(["collect", "--params", str(params_file), "--out", str(ref)]) == 0
    server.reset_counts()

    out, k = tmp_path / "raw", 10
    server.close_gate(after=k)  # k images are answered, then requests are held
    cmd = [sys.executable, "-m", "cmrops.cli", "collect", "--params", str(params_file)]
    with (tmp_path / "stderr.txt").open("wb") as err:
        proc = subprocess.Popen(
            [*cmd, "--out", str(out)], cwd=REPO, stdout=subprocess.DEVNULL, stderr=err
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if sum(server.completed.values()) == k and server.held == c:
                break
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        code = proc.wait()
    log = (tmp_path / "stderr.txt").read_text(errors="replace")
    assert code == -signal.SIGKILL, f"the run ended ({code}) before it was killed:\n{log}"
    assert not (out / "samples.parquet").exists()
    assert sum(server.completed.values()) == k
    shards = out / "downloads" / "web" / "shards"
    assert any(p.name.endswith(".journal.jsonl") for p in shards.iterdir())
    assert any(p.name.endswith(".parquet") for p in shards.iterdir())  # some shards finished

    server.open_gate()
    assert main(["collect", "--params", str(params_file), "--out", str(out)]) == 0
    assert dict(server.completed) == {f"/{i}.jpg": 1 for i in range(n)}  # each image once
    assert server.total_requests == n + c  # plus the c requests held when it was killed
    assert snapshot(out) == snapshot(ref)
