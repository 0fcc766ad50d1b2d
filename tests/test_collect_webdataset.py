"""WebDataset shards: streaming reads, malicious members, truncation, incomplete samples."""

from __future__ import annotations

import io
import json
import random
import tarfile
import time
from pathlib import Path

import pytest

from cmrops.errors import NothingKeptError
from cmrops.sources import WebDatasetSource
from cmrops.sources.webdataset import expand_shards
from tests.collect_util import by_key, check_balance, collect, image_bytes, reasons, rows


def _info(
    name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, link: str = ""
) -> tuple[tarfile.TarInfo, bytes]:
    ti = tarfile.TarInfo(name)
    ti.type, ti.linkname = kind, link
    ti.size = len(data) if kind == tarfile.REGTYPE else 0
    return ti, data


def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes]], mode: str = "w") -> Path:
    with tarfile.open(path, mode) as tf:
        for ti, data in members:
            tf.addfile(ti, io.BytesIO(data) if ti.isfile() else None)
    return path


def _sample(
    key: str,
    colour: int,
    caption: str | None = "a caption",
    meta: dict | None = None,
    ext: str = "jpg",
) -> list[tuple[tarfile.TarInfo, bytes]]:
    fmt = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}[ext]
    out = [_info(f"{key}.{ext}", image_bytes((colour, 0, 0), fmt))]
    if caption is not None:
        out.append(_info(f"{key}.txt", caption.encode()))
    if meta is not None:
        out.append(_info(f"{key}.json", json.dumps(meta).encode()))
    return out


def test_shards_brace_ranges_formats_and_json(tmp_path):
    _tar(
        tmp_path / "shard-000.tar",
        [
            _info("d", kind=tarfile.DIRTYPE),
            *_sample("d/0001", 10, "one\ntwo"),
            *_sample(
                "d/0002", 20, None, {"captions": ["p"], "labels": ["x", "a"], "url": "u"}, ext="png"
            ),
            _info("d/0002.cls", b"3"),
        ],
    )
    _tar(
        tmp_path / "shard-001.tar.gz",
        [
            _info("0003.v2.webp", image_bytes(fmt="WEBP")),
            _info("0003.json", json.dumps({"caption": "webp one"}).encode()),
        ],
        mode="w:gz",
    )
    shards = expand_shards(["shard-{000..000}.tar", "shard-001.tar.*"], tmp_path)
    assert [p.name for p in shards] == ["shard-000.tar", "shard-001.tar.gz"]
    out = tmp_path / "raw"
    m = collect(
        out,
        {"name": "w", "kind": "webdataset", "shards": ["shard-{000..000}.tar", "shard-001.tar.*"]},
        base=tmp_path,
    )
    s = by_key(out)
    assert s["shard-000.tar/d/0001"]["captions"] == ["one", "two"]
    two = s["shard-000.tar/d/0002"]
    assert two["captions"] == ["p"]
    assert two["labels"] == ["a", "x"]
    assert json.loads(two["extra"]) == {
        "shard": "shard-000.tar",
        "url": "u",
        "ignored_members": ["cls"],
    }
    assert s["shard-001.tar.gz/0003"]["captions"] == ["webp one"]
    check_balance(out, m)


def test_malicious_members_are_refused_and_never_written(tmp_path, monkeypatch):
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    _tar(
        tmp_path / "evil.tar",
        [
            _info("../evil.jpg", image_bytes()),
            _info("/tmp/abs.jpg", image_bytes()),
            _info("a/../../up.txt", b"x"),
            _info("link.jpg", kind=tarfile.SYMTYPE, link="/etc/passwd"),
            _info("hard.jpg", kind=tarfile.LNKTYPE, link="ok.jpg"),
            _info("dev.jpg", kind=tarfile.CHRTYPE),
            _info("blk.jpg", kind=tarfile.BLKTYPE),
            _info("pipe.txt", kind=tarfile.FIFOTYPE),
            *_sample("ok", 50),
        ],
    )
    out = tmp_path / "raw"
    m = collect(out, {"name": "w", "kind": "webdataset", "shards": [str(tmp_path / "evil.tar")]})
    assert list(by_key(out)) == ["evil.tar/ok"]
    q = rows(out, "quarantine")
    assert {r["reason"] for r in q} == {"unsafe_member"}
    assert len(q) == 8
    assert {json.loads(r["evidence"])["type"] for r in q} == {
        "file",
        "symlink",
        "hard link",
        "character device",
        "block device",
        "fifo",
    }
    assert list(work.iterdir()) == []
    assert not (tmp_path / "evil.jpg").exists()
    assert not Path("/tmp/abs.jpg").exists()
    check_balance(out, m)


def test_incomplete_and_inconsistent_samples(tmp_path):
    _tar(
        tmp_path / "s.tar",
        [
            *_sample("a", 1),
            _info("nocap.jpg", image_bytes()),  # image without caption
            _info("noimg.txt", b"caption without image"),
            *_sample("two", 2),
            _info("two.png", image_bytes(fmt="PNG")),  # two images
            *_sample("badjson", 3, None),
            _info("badjson.json", b"{nope"),
            *_sample("badtype", 4, None, {"captions": "not a list"}),
            *_sample("latin", 5, None),
            _info("latin.txt", b"caf\xe9"),
            *_sample("a", 6),  # key seen before, not adjacent
            *_sample("dupmember", 7),
            _info("dupmember.txt", b"again"),
            *_sample("big", 8, "fine"),
        ],
    )
    out = tmp_path / "raw"
    m = collect(out, {"name": "w", "kind": "webdataset", "shards": [str(tmp_path / "s.tar")]})
    assert reasons(out) == {
        "s.tar/nocap": "missing_caption",
        "s.tar/noimg": "missing_image",
        "s.tar/two": "multiple_images",
        "s.tar/badjson": "malformed_json",
        "s.tar/badtype": "malformed_json",
        "s.tar/latin": "invalid_utf8",
        "s.tar/a": "duplicate_key",
        "s.tar/dupmember": "duplicate_member",
    }
    assert set(by_key(out)) == {"s.tar/a", "s.tar/big"}
    check_balance(out, m)


def test_member_over_the_size_limit(tmp_path):
    _tar(
        tmp_path / "s.tar",
        [*_sample("small", 1), _info("big.jpg", b"\xff\xd8" + b"0" * 5000), _info("big.txt", b"c")],
    )
    out = tmp_path / "raw"
    m = collect(
        out,
        {"name": "w", "kind": "webdataset", "shards": [str(tmp_path / "s.tar")]},
        max_image_bytes=4096,
    )
    assert reasons(out) == {"s.tar/big": "image_too_large"}
    check_balance(out, m)


def _three_samples(path: Path, mode: str = "w") -> bytes:
    _tar(path, [*_sample("s0", 10), *_sample("s1", 20), *_sample("s2", 30)], mode)
    return path.read_bytes()


def _offsets(path: Path) -> dict[str, tuple[int, int]]:
    with tarfile.open(path) as tf:
        return {m.name: (m.offset, m.offset_data + m.size) for m in tf.getmembers()}


@pytest.mark.parametrize("cut", ["mid_data", "mid_header", "at_sample_boundary", "no_end_marker"])
def test_truncated_tar_keeps_completed_samples(tmp_path, cut):
    full = tmp_path / "full.tar"
    raw = _three_samples(full)
    off = _offsets(full)
    at = {
        "mid_data": off["s2.jpg"][0] + 512 + 10,  # inside the data of s2.jpg
        "mid_header": off["s2.txt"][0] + 100,  # inside the header of s2.txt
        "at_sample_boundary": off["s2.jpg"][0],  # right after s1 (s2 lost without a trace)
        "no_end_marker": off["s2.txt"][1] + (-off["s2.txt"][1]) % 512,  # all data, no zeros
    }[cut]
    (tmp_path / "cut.tar").write_bytes(raw[:at])
    out = tmp_path / "raw"
    m = collect(out, {"name": "w", "kind": "webdataset", "shards": [str(tmp_path / "cut.tar")]})
    # the sample being read when the data ran out is quarantined: its members may be missing
    pending = "s1" if cut == "at_sample_boundary" else "s2"
    assert set(by_key(out)) == {"cut.tar/s0", "cut.tar/s1"} - {f"cut.tar/{pending}"}
    assert reasons(out) == {f"cut.tar/{pending}": "truncated_shard"}
    check_balance(out, m)


def test_truncated_gzip_shard(tmp_path):
    noise = random.Random(0)
    _tar(
        tmp_path / "full.tar.gz",
        [
            m
            for k in range(4)
            for m in (_info(f"s{k}.jpg", noise.randbytes(3000)), _info(f"s{k}.txt", b"caption"))
        ],
        "w:gz",
    )
    raw = (tmp_path / "full.tar.gz").read_bytes()
    (tmp_path / "cut.tar.gz").write_bytes(raw[: len(raw) * 6 // 10])
    out = tmp_path / "raw"
    m = collect(out, {"name": "w", "kind": "webdataset", "shards": [str(tmp_path / "cut.tar.gz")]})
    assert set(reasons(out).values()) == {"truncated_shard"}
    assert m["kept"] >= 1
    assert m["quarantined"] == 1
    check_balance(out, m)


def test_not_a_tar_and_missing_shards(tmp_path):
    (tmp_path / "junk.tar").write_bytes(b"<html>not a tar</html>")  # no sample could be read
    out = tmp_path / "raw"
    junk = {"name": "w", "kind": "webdataset", "shards": [str(tmp_path / "junk.tar")]}
    with pytest.raises(NothingKeptError, match=r"all 1 inputs were quarantined \(truncated_shard"):
        collect(out, junk)  # nothing to pass on: the stage fails, saying why
    _three_samples(tmp_path / "good.tar")
    m = collect(out, {**junk, "shards": [str(tmp_path / "junk.tar"), str(tmp_path / "good.tar")]})
    assert reasons(out) == {"junk.tar": "truncated_shard"}
    check_balance(out, m)
    with pytest.raises(FileNotFoundError, match=r"gone\.tar"):
        WebDatasetSource("w", [tmp_path / "gone.tar"], 1 << 20)
    with pytest.raises(FileNotFoundError, match="no tar shard matches"):
        expand_shards(["none-*.tar"], tmp_path)


PIB = 1 << 50


def _bomb_header(name: str, size: int, fmt: int = tarfile.GNU_FORMAT) -> bytes:
    """A member header claiming ``size`` bytes (GNU base-256 above 8 GiB), without the data."""
    ti = tarfile.TarInfo(name)
    ti.size = size
    return ti.tobuf(format=fmt)


def _bomb_shard(path: Path, header: bytes, compress: bool = False) -> float:
    """s0 (whole), then ``header`` and 1 MiB of noise: collect it, return the seconds taken."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for ti, data in _sample("s0", 10):
            tf.addfile(ti, io.BytesIO(data))
        end = tf.offset  # before the end-of-archive blocks
    head = buf.getvalue()[:end]
    body = head + header + random.Random(1).randbytes(1 << 20)
    if compress:
        import gzip

        body = gzip.compress(body, compresslevel=1)
    path.write_bytes(body)
    t0 = time.perf_counter()
    records = list(WebDatasetSource("w", [path], 64 << 20))  # the reading alone, timed
    seconds = time.perf_counter() - t0
    assert len(records) == 2
    out = path.parent / f"raw-{path.name}"
    check_balance(out, collect(out, {"name": "w", "kind": "webdataset", "shards": [str(path)]}))
    assert by_key(out).keys() == {f"{path.name}/s0"}  # the whole sample before the bomb is kept
    return seconds


@pytest.mark.parametrize("compress", [False, True], ids=["tar", "tar.gz"])
def test_header_bomb_claiming_a_pebibyte_ends_the_shard_at_once(tmp_path, compress):
    # 1 PiB in GNU base-256: tarfile's stream skip would step through it 16 KiB at a time
    header = _bomb_header("s1.jpg", PIB)
    assert header[124] & 0x80  # the size field really is base-256
    name = "bomb.tar.gz" if compress else "bomb.tar"
    seconds = _bomb_shard(tmp_path / name, header, compress)
    q = rows(tmp_path / f"raw-{name}", "quarantine")
    assert [(r["source_key"], r["reason"]) for r in q] == [(f"{name}/s1", "truncated_shard")]
    detail = q[0]["detail"]
    assert f"claims {PIB} bytes" in detail, detail
    print(f"1 MiB {name} claiming 1 PiB: read in {seconds:.4f} s")
    assert seconds < 5  # a hang guard (0.8 s per GiB claimed before: 1 PiB took days)


def test_pax_size_override_and_huge_pax_header_are_refused(tmp_path):
    # a pax 'size' record overrides the ustar size field: the claim is checked after it too
    ti = tarfile.TarInfo("s1.jpg")
    ti.size = 10
    ti.pax_headers = {"size": str(10**18)}
    seconds = _bomb_shard(tmp_path / "pax.tar", ti.tobuf(format=tarfile.PAX_FORMAT))
    assert reasons(tmp_path / "raw-pax.tar") == {"pax.tar/s1": "truncated_shard"}
    assert seconds < 5
    # a pax header itself claiming 1 PiB (tarfile would read it into memory whole)
    pax = tarfile.TarInfo("././@PaxHeader")
    pax.type, pax.size = tarfile.XHDTYPE, PIB
    for compress in (False, True):
        name = f"paxbomb{'.gz' if compress else ''}.tar"
        _bomb_shard(tmp_path / name, pax.tobuf(format=tarfile.GNU_FORMAT), compress)
        (row,) = rows(tmp_path / f"raw-{name}", "quarantine")
        assert row["reason"] == "truncated_shard"
        assert "extended header" in row["detail"], row["detail"]


def test_member_over_the_cap_in_a_gzip_shard_is_drained_and_later_samples_kept(tmp_path):
    noise = random.Random(2).randbytes(300_000)  # a real over-cap member, then more samples
    _tar(
        tmp_path / "s.tar.gz",
        [*_sample("a", 1), _info("big.jpg", noise), _info("big.txt", b"c"), *_sample("z", 2)],
        "w:gz",
    )
    out = tmp_path / "raw"
    m = collect(
        out,
        {"name": "w", "kind": "webdataset", "shards": [str(tmp_path / "s.tar.gz")]},
        max_image_bytes=100_000,
    )
    assert reasons(out) == {"s.tar.gz/big": "image_too_large"}
    assert set(by_key(out)) == {"s.tar.gz/a", "s.tar.gz/z"}
    check_balance(out, m)
