"""Site opt-outs of URL sources against a real server on 127.0.0.1: robots.txt (RFC 9309, with
wildcards) and TDMRep (``/.well-known/tdmrep.json`` and the ``tdm-reservation`` header), each
read once per host and recorded per URL; off only by an explicit param; an unreadable robots.txt
holds the host back for a later run. A withdrawn URL is never requested."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cmrops import tombstones
from tests.collect_util import collect, reasons
from tests.http_fault_server import FaultServer, Route, jpeg, net_guard
from tests.test_collect_urls import FAST, status_table, write_csv

__all__ = ["net_guard"]

ROBOTS = """\
User-agent: *
Disallow: /private/
Disallow: /*.png$

User-agent: otherbot
Disallow: /
"""
TDMREP = [
    {"location": "/reserved/*", "tdm-reservation": 1, "tdm-policy": "https://example.org/tdm"},
    {"location": "/reserved/free.jpg", "tdm-reservation": 0},
]


@pytest.fixture
def server(net_guard):
    with FaultServer() as srv:
        yield srv


def _site(server: FaultServer) -> dict[str, str]:
    server.add("/robots.txt", Route(body=ROBOTS.encode(), content_type="text/plain"))
    tdm = Route(body=json.dumps(TDMREP).encode(), content_type="application/json")
    server.add("/.well-known/tdmrep.json", tdm)
    return {
        "ok": server.add("/public/a.jpg", Route(body=jpeg(1))),
        "robots": server.add("/private/b.jpg", Route(body=jpeg(2))),
        "robots_wildcard": server.add("/public/c.png", Route(body=jpeg(3))),
        "tdm_file": server.add("/reserved/d.jpg", Route(body=jpeg(4))),
        "tdm_allowed": server.add("/reserved/free.jpg", Route(body=jpeg(5))),
        "tdm_header": server.add("/public/e.jpg", Route(body=jpeg(6),
                                                        headers={"tdm-reservation": "1"})),
    }  # fmt: skip


def _spec(manifest: Path, **download) -> dict:
    opts = {k: v for k, v in FAST.items() if k not in ("respect_robots_txt", "respect_tdmrep")}
    return {"name": "web", "kind": "urls", "path": str(manifest), "download": {**opts, **download}}


def test_robots_and_tdmrep_are_honoured_per_url_and_read_once_per_host(tmp_path, server):
    urls = _site(server)
    manifest = write_csv(tmp_path / "u.csv", [(u, f"photo {k}") for k, u in urls.items()])
    out = tmp_path / "raw"
    m = collect(out, _spec(manifest, concurrency=4))
    status = {r["url"]: r for r in status_table(out).values()}
    want = {"ok": "ok", "robots": "robots_disallowed", "robots_wildcard": "robots_disallowed",
            "tdm_file": "tdm_reserved", "tdm_allowed": "ok", "tdm_header": "tdm_reserved"}
    assert {k: status[u]["status"] for k, u in urls.items()} == want
    assert "/private/b.jpg" in status[urls["robots"]]["detail"]
    assert "robots.txt" in status[urls["robots"]]["detail"]
    assert "tdmrep.json" in status[urls["tdm_file"]]["detail"]
    assert "https://example.org/tdm" in status[urls["tdm_file"]]["detail"]
    # refused URLs are never requested; each host's files are read once for all the workers
    for k in ("robots", "robots_wildcard", "tdm_file"):
        assert server.requests[urls[k].split(str(server.port))[1]] == 0
    assert server.requests["/robots.txt"] == 1
    assert server.requests["/.well-known/tdmrep.json"] == 1
    q = reasons(out)
    assert sorted(q.values()) == ["robots_disallowed"] * 2 + ["tdm_reserved"] * 2
    downloads = m["sources"]["web"]["downloads"]
    assert downloads["opt_out_files_read"] == {"robots.txt": 1, "tdmrep.json": 1}
    assert downloads["ok"] == 2


def test_opt_outs_are_off_only_when_params_say_so(tmp_path, server):
    urls = _site(server)
    manifest = write_csv(tmp_path / "u.csv", [(u, f"photo {k}") for k, u in urls.items()])
    out = tmp_path / "raw"
    collect(out, _spec(manifest, respect_robots_txt=False, respect_tdmrep=False))
    assert {r["status"] for r in status_table(out).values()} == {"ok"}
    assert server.requests["/robots.txt"] == 0
    assert server.requests["/.well-known/tdmrep.json"] == 0


def test_an_unreadable_robots_txt_holds_the_host_back_for_a_later_run(tmp_path, server):
    server.add("/robots.txt", Route(status=503, body=b"down", content_type="text/plain"))
    url = server.add("/a.jpg", Route(body=jpeg(7)))
    manifest = write_csv(tmp_path / "u.csv", [(url, "a photo")])
    out = tmp_path / "raw"
    collect(out, _spec(manifest))
    (row,) = status_table(out).values()
    assert row["status"] == "opt_out_unknown"
    assert row["retryable"]
    assert server.requests["/a.jpg"] == 0
    # the site is back: the next run asks again and downloads
    server.add("/robots.txt", Route(body=b"User-agent: *\nAllow: /\n", content_type="text/plain"))
    collect(out, _spec(manifest))
    (row,) = status_table(out).values()
    assert row["status"] == "ok"


def test_a_withdrawn_url_is_never_requested_again(tmp_path, server):
    keep = server.add("/keep.jpg", Route(body=jpeg(8)))
    gone = server.add("/gone.jpg", Route(body=jpeg(9)))
    manifest = write_csv(tmp_path / "u.csv", [(keep, "kept photo"), (gone, "withdrawn photo")])
    tombstones.append(tmp_path / "withdrawn.jsonl", [tombstones.Tombstone(
        request=gone, kind="url", reason="takedown request", withdrawn_at="2026-01-01T00:00:00Z",
        urls=(gone,))])  # fmt: skip
    out = tmp_path / "raw"
    m = collect(out, _spec(manifest), base=tmp_path)
    assert server.requests["/gone.jpg"] == 0
    assert m["quarantined_by_reason"] == {"withdrawn": 1}
    assert m["tombstones"] == 1
    ((key, reason),) = reasons(out).items()
    assert reason == "withdrawn"
    assert key.endswith(gone)
    assert status_table(out)[key]["status"] == "withdrawn"
