"""Incremental releases at the stage level: preprocess decodes and embeds only samples that are new
to its shard plan, and its outputs equal a fresh run's on the same input; split with
``anchor: previous`` keeps every earlier sample in its set; ``changes_since_versioned`` tells a
no-op from new data by dvc.lock."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from cmrops.stages import split as split_stage
from cmrops.stages.preprocess import PLAN_FILE, PreprocessParams, run
from tests.raw_helpers import RawSample, encode, photo, write_raw

NO_EMB = PreprocessParams(n_workers=2, shard_size=8, embeddings=False, tokenizer="words")
WORDS = ("red", "green", "blue", "dog", "cat", "bus", "tree", "boat")


def _samples(lo: int, hi: int) -> list[RawSample]:
    out = []
    for i in range(lo, hi):
        caption = f"a photo of a {WORDS[i % len(WORDS)]} number {i}"
        out.append(RawSample(f"img/{i:04d}", encode(photo(64, 48, seed=i), "PNG"), (caption,)))
    return out


def _bytes(out: Path) -> dict[str, bytes]:
    files = ["samples.parquet", "quarantine.parquet", "metrics.json", "features/meta.json"]
    files += ["features/image.npy", "features/text.npy"]
    return {f: (out / f).read_bytes() for f in files if (out / f).is_file()}


def _records(shards: Path) -> dict[str, tuple[int, bytes]]:
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in shards.glob("shard-*.json")}


def test_added_samples_are_the_only_ones_decoded(tmp_path: Path) -> None:
    raw, out = tmp_path / "raw", tmp_path / "interim"
    write_raw(raw, _samples(0, 30))
    first = run(NO_EMB, raw, out)
    assert first["kept"] == 30
    before = _records(out / "shards")
    plan = pq.read_table(out / "shards" / PLAN_FILE)
    assert plan.num_rows == 30

    write_raw(raw, _samples(0, 42))  # 12 new samples (their ids sort among the old ones)
    again = run(NO_EMB, raw, out)
    timing = json.loads((out / "throughput.json").read_text())
    assert again["kept"] == 42
    assert timing["images_decoded"] == 12  # only the new ones
    assert timing["shards_decoded"] == 2  # 12 new samples, 8 per shard, appended
    after = _records(out / "shards")
    assert {k: v for k, v in after.items() if k in before} == before  # old shards untouched
    plan2 = pq.read_table(out / "shards" / PLAN_FILE).to_pydict()
    old_plan = dict(zip(*plan.to_pydict().values(), strict=True))
    for sid, shard in zip(plan2["sample_id"], plan2["shard"], strict=True):
        assert old_plan.get(sid, shard) == shard  # nobody moved shard
        if sid not in old_plan:
            assert shard >= max(old_plan.values()) + 1

    fresh = tmp_path / "fresh"
    run(NO_EMB, raw, fresh)  # same input, planned from scratch
    assert _bytes(out) == _bytes(fresh)
    assert np.array_equal(
        pq.read_table(out / "samples.parquet")["sample_id"].to_numpy(zero_copy_only=False),
        np.sort(pq.read_table(fresh / "samples.parquet")["sample_id"].to_numpy(False)),
    )


def test_removed_samples_redo_only_their_shard(tmp_path: Path) -> None:
    raw, out = tmp_path / "raw", tmp_path / "interim"
    samples = _samples(0, 24)
    write_raw(raw, samples)
    run(NO_EMB, raw, out)
    write_raw(raw, samples[:5] + samples[6:])  # one sample gone
    run(NO_EMB, raw, out)
    timing = json.loads((out / "throughput.json").read_text())
    assert timing["shards_decoded"] == 1
    fresh = tmp_path / "fresh"
    run(NO_EMB, raw, fresh)
    assert _bytes(out) == _bytes(fresh)


def test_embeddings_of_added_samples_land_in_sorted_rows(tmp_path: Path) -> None:
    """With embeddings on, only the new shards are embedded and every feature row still belongs
    to the sample whose feature_row names it (the merge streams shards into sorted rows)."""
    params = dataclasses.replace(NO_EMB, embeddings=True, device="cpu", batch_size=16)
    raw, out = tmp_path / "raw", tmp_path / "interim"
    write_raw(raw, _samples(0, 16))
    run(params, raw, out)
    write_raw(raw, _samples(0, 26))
    run(params, raw, out)
    timing = json.loads((out / "throughput.json").read_text())
    assert timing["images_embedded"] == 10
    fresh = tmp_path / "fresh"
    run(params, raw, fresh)
    a, b = pq.read_table(out / "samples.parquet"), pq.read_table(fresh / "samples.parquet")
    assert a["sample_id"].to_pylist() == b["sample_id"].to_pylist()
    assert a["feature_row"].to_pylist() == list(range(26))
    for kind in ("image", "text"):
        got = np.load(out / "features" / f"{kind}.npy")
        want = np.load(fresh / "features" / f"{kind}.npy")
        assert got.shape == want.shape
        # the same sample's embedding, up to the batch it was computed in
        np.testing.assert_allclose(got, want, atol=2e-5)


def _clean_dir(base: Path, ids: list[str]) -> Path:
    """A clean samples table of ``ids`` (the columns split reads) whose hashes are far apart."""
    import pyarrow as pa

    ph = [int(sid[:16], 16) for sid in ids]
    sim = [int(sid[16:32], 16) for sid in ids]
    clean = base / "clean"
    clean.mkdir(parents=True, exist_ok=True)
    table = pa.table(
        {
            "sample_id": pa.array(ids, pa.string()),
            "phash": pa.array(ph, pa.uint64()),
            "caption_simhash": pa.array(sim, pa.uint64()),
        }
    )
    pq.write_table(table, clean / "samples.parquet")
    return clean


def _ids(n: int, salt: str) -> list[str]:
    import hashlib

    return sorted(hashlib.sha256(f"{salt}{i}".encode()).hexdigest() for i in range(n))


def test_anchor_previous_keeps_every_earlier_sample_in_its_set(tmp_path: Path) -> None:
    params = split_stage.SplitParams(
        protocols={"hashing": split_stage.Protocol(kind="hashing", query=20, train=60)},
        stratify=False,
        anchor="previous",
    )
    out = tmp_path / "split"
    old_ids = _ids(150, "old")
    clean = _clean_dir(tmp_path / "a", old_ids)
    m1 = split_stage.run(params, clean, None, out)
    first = pq.read_table(out / "assignments.parquet").to_pydict()
    assert m1["release"] == {
        "anchored_on": None, "anchored_samples": 0, "new_samples": 150, "moved": 0,
        "left": 0, "left_samples": [],
    }  # fmt: skip
    versioned = (out / "assignments.parquet").read_bytes()
    metrics1 = json.dumps({k: v for k, v in m1.items() if k != "release"}, sort_keys=True)

    # a rerun on the same data anchors on itself: the same versioned bytes
    m_same = split_stage.run(params, clean, None, out)
    assert (out / "assignments.parquet").read_bytes() == versioned
    assert json.dumps({k: v for k, v in m_same.items() if k != "release"}, sort_keys=True) == (
        metrics1
    )

    new_ids = _ids(40, "new")
    clean2 = _clean_dir(tmp_path / "b", sorted(old_ids + new_ids))
    m2 = split_stage.run(params, clean2, None, out)
    second = pq.read_table(out / "assignments.parquet").to_pydict()
    was = {s: (sp, tr) for s, sp, tr in zip(first["sample_id"], first["split"], first["in_train"],
                                             strict=True)}  # fmt: skip
    now = {s: (sp, tr) for s, sp, tr in zip(second["sample_id"], second["split"],
                                             second["in_train"], strict=True)}  # fmt: skip
    assert {s: now[s] for s in was} == was  # nothing earlier moved set or training membership
    assert all(now[s][0] == "database" for s in new_ids)  # the query set is full: exact size
    assert m2["release"] == {
        "anchored_on": "previous", "anchored_samples": 150, "new_samples": 40, "moved": 0,
        "left": 0, "left_samples": [],
    }  # fmt: skip
    assert json.loads((out / split_stage.RELEASE_FILE).read_text()) == m2["release"]

    # five earlier samples are dropped upstream (say, quarantined by a refitted rule): the rest
    # keep their sets and the release names the ones that left
    gone = sorted(old_ids)[:5]
    clean3 = _clean_dir(tmp_path / "c", sorted(set(old_ids + new_ids) - set(gone)))
    m3 = split_stage.run(params, clean3, None, out)
    third = pq.read_table(out / "assignments.parquet").to_pydict()
    after = {s: (sp, tr) for s, sp, tr in zip(third["sample_id"], third["split"],
                                               third["in_train"], strict=True)}  # fmt: skip
    assert after == {s: v for s, v in now.items() if s not in gone}
    assert (m3["release"]["left"], m3["release"]["left_samples"]) == (5, gone)
    assert m3["release"]["anchored_samples"] == 185

    # another seed: the old assignments do not apply, the split is made afresh (and says so)
    reseeded = dataclasses.replace(params, seed=7)
    m3 = split_stage.run(reseeded, clean2, None, out)
    assert m3["release"]["anchored_on"] is None


@pytest.mark.slow
def test_changes_since_versioned_tells_a_no_op_from_new_data(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    from cmrops import versioning
    from cmrops.pipeline import run_stage
    from tests.test_dvc_support import make_project, sh, tiny_params

    params = tiny_params(30)
    params["split"]["protocols"]["hashing"] = {"kind": "hashing", "query": 4, "train": 10}
    project = make_project(tmp_path_factory.mktemp("changes") / "p", params)
    assert not versioning.changes_since_versioned(project).versioned
    params_file = str(project / "params.yaml")
    for stage in ("collect", "preprocess", "align", "label", "clean", "split"):
        run_stage(stage, project, params_file)
    sh(["dvc", "commit", "--force", "--quiet", "--with-deps", "split"], project, timeout=600)
    c = versioning.changes_since_versioned(project)
    assert c.versioned
    assert c.new_samples == 0
    assert c.removed_samples == 0
    assert "collect" not in c.stages
    run_stage("collect", project, params_file)  # same sources: the same bytes
    c = versioning.changes_since_versioned(project)
    assert "collect" not in c.stages
    assert c.new_samples == 0

    import yaml

    params = yaml.safe_load((project / "params.yaml").read_text())
    params["collect"]["sources"][0]["n"] = 36  # six more synthetic samples
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run_stage("collect", project, params_file)
    c = versioning.changes_since_versioned(project)
    assert not c.up_to_date
    assert "collect" in c.stages
    assert c.new_samples is not None
    assert c.new_samples > 0
    assert "new" in c.describe()
