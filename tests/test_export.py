"""Exports of a real release (tests/handon_project.py), read back by the readers each format is
for: the ``webdataset`` package, ``datasets.load_dataset``, cmrops' own COCO source (collect)
and ``import-benchmark``; deterministic bytes, an interrupted export that is never taken for a
finished one and resumes, a non-empty folder refused unless told, each export recorded with
its release."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from cmrops import releases
from cmrops.export import MANIFEST, PROGRESS, ExportError, ExportOptions, export
from cmrops.release_data import ReleaseData

# the shared two-release project is built in the first test's setup (minutes on a busy
# 2-core machine): more than the default per-test timeout
pytestmark = pytest.mark.timeout(2400)


def _truth(project: Path, release: str) -> dict[str, Any]:
    """The release's samples, sets and captions, read straight from its outputs."""
    rel = releases.find(project, release)
    data = ReleaseData(project, rel)
    clean = pq.read_table(data.path("data/clean/samples.parquet")).to_pylist()
    split = pq.read_table(data.path("data/split/assignments.parquet")).to_pylist()
    return {
        "data": data,
        "ids": sorted(r["sample_id"] for r in clean),
        "captions": {r["sample_id"]: r["captions"] for r in clean},
        "feature_row": {r["sample_id"]: r["feature_row"] for r in clean},
        "split": {r["sample_id"]: r["split"] for r in split},
        "in_train": {r["sample_id"]: r["in_train"] for r in split},
    }


@pytest.fixture(scope="module")
def release(handon_releases: dict[str, Any]) -> dict[str, Any]:
    project = handon_releases["project"]
    return {"project": project, "id": handon_releases["second"],
            **_truth(project, handon_releases["second"])}  # fmt: skip


@pytest.fixture(scope="module")
def shards(release: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("wds") / "export"
    m = export(release["project"], release["id"], "webdataset", out,
               options=ExportOptions(shard_size=8))  # fmt: skip
    return {"out": out, "manifest": m}


def test_webdataset_shards_read_back_with_the_webdataset_package(release, shards) -> None:
    import webdataset as wds

    out, m = shards["out"], shards["manifest"]
    tars = sorted(str(p) for p in out.glob("*.tar"))
    assert len(tars) > 2  # several shards per set at 8 samples each
    seen = {}
    for s in wds.WebDataset(tars, shardshuffle=False).decode("pil"):
        meta = s["json"]
        image = s.get("jpg") or s.get("png")
        assert image is not None
        assert image.size == (meta["width"], meta["height"])
        assert s["txt"] == release["captions"][s["__key__"]][0]
        assert meta["captions"] == release["captions"][s["__key__"]]
        seen[s["__key__"]] = (meta["split"], meta["in_train"])
    assert sorted(seen) == release["ids"]
    assert seen == {k: (release["split"][k], release["in_train"][k]) for k in release["ids"]}
    # the manifest, written last, says what is there; the data card rides along
    assert m["samples"] == len(release["ids"])
    assert set(m["files"]) >= {Path(t).name for t in tars} | {"datacard.json", "shards.json"}
    assert json.loads((out / "datacard.json").read_text())["release"]["id"] == release["id"]
    assert not (out / PROGRESS).exists()
    listing = json.loads((out / "shards.json").read_text())
    assert sum(v["samples"] for v in listing.values()) == m["samples"]
    # recorded with the release, sample list included
    rel = releases.find(release["project"], release["id"])
    record = f"exports/{m['export_id']}"
    assert rel.attachment(f"{record}/samples.txt").read_text().split() == release["ids"]


def test_the_same_release_exports_to_the_same_bytes(release, shards, tmp_path) -> None:
    import tarfile

    again = export(release["project"], release["id"], "webdataset", tmp_path / "again",
                   options=ExportOptions(shard_size=8))  # fmt: skip
    first = shards["manifest"]["files"]
    assert {k: v["sha256"] for k, v in again["files"].items()} == {
        k: v["sha256"] for k, v in first.items()
    }
    with tarfile.open(next(iter(sorted((tmp_path / "again").glob("*.tar"))))) as tar:
        info = tar.getmembers()[0]
    assert (info.uid, info.gid, info.uname, info.mode) == (0, 0, "", 0o444)
    assert info.mtime == _epoch(releases.find(release["project"], release["id"]).created)


def _epoch(created: str) -> int:
    """Whole seconds of the record's UTC stamp (with or without milliseconds)."""
    import calendar
    import time

    seconds = created.rstrip("Z").split(".")[0]
    epoch = calendar.timegm(time.strptime(seconds, "%Y-%m-%dT%H:%M:%S"))
    assert epoch > 1_600_000_000, created  # a real time, not the unreadable-stamp fallback
    return epoch


def test_an_interrupted_export_is_unfinished_until_resumed(release, shards, tmp_path,
                                                          monkeypatch) -> None:  # fmt: skip
    from cmrops.export.stream import ReleaseSamples

    out = tmp_path / "cut"
    real = ReleaseSamples.media
    calls = {"n": 0}

    def dies_after_ten(self, s):  # a kill after the first shard of a set was renamed into place
        calls["n"] += 1
        if calls["n"] > 10:
            raise RuntimeError("killed")
        return real(self, s)

    monkeypatch.setattr(ReleaseSamples, "media", dies_after_ten)
    with pytest.raises(RuntimeError, match="killed"):
        export(release["project"], release["id"], "webdataset", out,
               options=ExportOptions(shard_size=8))  # fmt: skip
    monkeypatch.setattr(ReleaseSamples, "media", real)
    assert not (out / MANIFEST).exists()  # never taken for a finished export
    done = sorted(p.name for p in out.glob("*.tar"))
    assert done  # the finished shard is there, no half-written one
    assert not list(out.glob(".*.tmp"))
    before = {n: (out / n).stat().st_ino for n in done}
    with pytest.raises(ExportError, match="unfinished export"):
        export(release["project"], release["id"], "webdataset", out,
               options=ExportOptions(shard_size=8))  # fmt: skip
    with pytest.raises(ExportError, match="another kind"):
        export(release["project"], release["id"], "webdataset", out,
               options=ExportOptions(shard_size=4), resume=True)  # fmt: skip
    m = export(release["project"], release["id"], "webdataset", out,
               options=ExportOptions(shard_size=8), resume=True)  # fmt: skip
    assert {n: (out / n).stat().st_ino for n in done} == before  # finished shards not rewritten
    assert {k: v["sha256"] for k, v in m["files"].items()} == {
        k: v["sha256"] for k, v in shards["manifest"]["files"].items()
    }
    # resuming a finished export is a no-op that returns its manifest
    assert export(release["project"], release["id"], "webdataset", out,
                  options=ExportOptions(shard_size=8), resume=True)["files"] == m["files"]


def test_a_non_empty_folder_is_refused_unless_told(release, tmp_path, capsys) -> None:
    from cmrops.cli import main

    out = tmp_path / "busy"
    out.mkdir()
    (out / "notes.txt").write_text("mine\n")
    with pytest.raises(ExportError, match="not empty"):
        export(release["project"], release["id"], "coco", out)
    rc = main(["export", "--project", str(release["project"]), "--release", release["id"],
               "--format", "coco", "--out", str(out)])  # fmt: skip
    assert rc == 2
    assert "is not empty" in capsys.readouterr().err
    assert (out / "notes.txt").is_file()
    m = export(release["project"], release["id"], "coco", out, force=True)
    assert not (out / "notes.txt").exists()
    assert m["samples"] == len(release["ids"])
    with pytest.raises(ExportError, match="unknown format"):
        export(release["project"], release["id"], "tfrecord", tmp_path / "x")
    with pytest.raises(releases.ReleaseError, match="not a known release"):
        export(release["project"], "20990101", "coco", tmp_path / "y")


def test_hf_folder_loads_with_datasets(release, tmp_path) -> None:
    import datasets

    out = tmp_path / "hf"
    m = export(release["project"], release["id"], "hf", out, options=ExportOptions(shard_size=16))
    card = (out / "README.md").read_text()
    assert card.startswith("---\n")
    header = yaml.safe_load(card.split("---\n")[1])
    assert header["license"] == "cc0-1.0"
    assert {c["split"] for c in header["configs"][0]["data_files"]} == set(m["sets"])
    assert "## Dataset Creation" in card
    assert "## Bias, Risks, and Limitations" in card
    cache = str(tmp_path / "hf-cache")  # not the user's ~/.cache (and never a stale entry)
    ds = datasets.load_dataset(str(out), cache_dir=cache)
    assert {k: len(v) for k, v in ds.items()} == m["sets"]
    row = ds["query"][0]
    assert row["image"].size == (row["width"], row["height"])
    assert row["captions"] == release["captions"][row["sample_id"]]
    flat = datasets.load_dataset("parquet", data_dir=str(out / "data"), cache_dir=cache)
    assert sum(len(v) for v in flat.values()) == len(release["ids"])


def test_coco_export_is_collected_back_as_the_same_samples(release, tmp_path) -> None:
    from cmrops.stages import collect

    out = tmp_path / "coco"
    m = export(release["project"], release["id"], "coco", out)
    for split in m["sets"]:
        ann = json.loads((out / f"annotations/captions_{split}.json").read_text())
        assert len(ann["images"]) == m["sets"][split]
        assert {"id", "image_id", "caption"} <= set(ann["annotations"][0])
    params = collect.CollectParams(sources=(collect.SourceSpec(name="coco", kind="coco",
                                                                path=str(out)),))  # fmt: skip
    raw = tmp_path / "raw"
    got = collect.run(params, raw)
    assert got["kept"] == len(release["ids"])
    back = pq.read_table(raw / "samples.parquet").to_pylist()
    # the sample id is a hash of the media and its captions: the same samples came back
    assert sorted(r["sample_id"] for r in back) == release["ids"]


@pytest.mark.parametrize("container", ["mat", "h5"])
def test_hashing_layout_round_trips_through_import_benchmark(release, tmp_path, container) -> None:
    from cmrops.benchmarks_data import import_benchmark

    out = tmp_path / container
    m = export(release["project"], release["id"], "hashing", out,
               options=ExportOptions(container=container))  # fmt: skip
    name = m["hashing"]["file"]
    if container == "mat":
        assert (out / name).read_bytes()[:10] == b"MATLAB 7.3"
    summary = import_benchmark(out / name, tmp_path / "imported", normalize=False)
    sizes = {s: sum(1 for v in release["split"].values() if v == s) for s in ("query", "database")}
    assert summary["sets"] == sizes
    assert summary["in_train"] == sum(release["in_train"].values())
    # the same features, sample by sample: row i of a part is the part's i-th sample id
    data = release["data"]
    image = np.load(data.path("data/interim/features/image.npy"))
    text = np.load(data.path("data/interim/features/text.npy"))
    imported = pq.read_table(tmp_path / "imported/clean/samples.parquet").to_pylist()
    i_img = np.load(tmp_path / "imported/interim/features/image.npy")
    i_txt = np.load(tmp_path / "imported/interim/features/text.npy")
    parts = {p: sorted(k for k in release["ids"] if release["split"][k] == s)
             for p, s in (("query", "query"), ("database", "database"))}  # fmt: skip
    parts["train"] = sorted(k for k in release["ids"] if release["in_train"][k])
    for r in imported:
        part, i = r["source_key"].split(":")
        sid = parts[part][int(i)]
        row = release["feature_row"][sid]
        assert np.array_equal(i_img[r["feature_row"]], image[row])
        assert np.array_equal(i_txt[r["feature_row"]], text[row])
    assert len(imported) == len(release["ids"])
