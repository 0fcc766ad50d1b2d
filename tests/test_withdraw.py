"""Withdraw one sample from a project with two releases (a copy of tests/handon_project.py's):
the impact list names exactly the releases, export, models and code files that hold it (checked
against the releases' own outputs), an unknown id is an error naming it, the next versioned run
is built without it (no output of the new release holds it, its media is gone from the store)
and a rescan keeps it out."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from cmrops import releases, tombstones, withdrawal
from cmrops.export import ExportOptions, export
from cmrops.release_data import ReleaseData
from tests.handon_project import versioned_run

# the shared two-release project is built in the first test's setup (minutes on a busy
# 2-core machine): more than the default per-test timeout
pytestmark = pytest.mark.timeout(2400)


def _table(data: ReleaseData, rel: str, cols: list[str]) -> list[dict[str, Any]]:
    return pq.read_table(data.path(rel), columns=cols).to_pylist() if data.has(rel) else []


def _truth(project: Path, rid: str, sid: str) -> dict[str, Any] | None:
    """Where release ``rid`` holds ``sid``, read from its outputs (no cmrops.withdrawal)."""
    data = ReleaseData(project, releases.find(project, rid))
    raw = {r["sample_id"] for r in _table(data, "data/raw/samples.parquet", ["sample_id"])}
    if sid not in raw:
        return None
    kept = {r["sample_id"] for r in _table(data, "data/clean/samples.parquet", ["sample_id"])}
    split = {r["sample_id"]: r for r in _table(data, "data/split/assignments.parquet",
                                               ["sample_id", "split", "in_train"])}  # fmt: skip
    rows = {r["sample_id"]: r["role"] for r in _table(data, "data/codes/rows.parquet",
                                                      ["sample_id", "role"])}  # fmt: skip
    fitted = {r["sample_id"]: r["role"] for r in _table(
        data, "data/codes/training_samples.parquet", ["sample_id", "role"])}  # fmt: skip
    models = sorted({p.split("/")[2] for p, _ in data.files("data/codes")
                     if p.endswith("/meta.json")})  # fmt: skip
    return {
        "clean": "kept" if sid in kept else "dropped",
        "split": split[sid]["split"] if sid in split else None,
        "in_train": bool(split[sid]["in_train"]) if sid in split else False,
        "codes": rows.get(sid),
        "fitted_on": fitted.get(sid),
        "models": [f"models/{m}" for m in models] if sid in fitted else [],
        "code_files": sorted(f"data/codes/{m}/{k}_{rows[sid]}{x}.npy" for m in models
                             for k in ("image", "text") for x in ("", "_float"))
        if sid in rows else [],
    }  # fmt: skip


@pytest.fixture(scope="module")
def project(handon_releases: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    copy = tmp_path_factory.mktemp("withdraw") / "project"
    shutil.copytree(handon_releases["project"], copy, symlinks=True)
    return copy


def _pick(project: Path, first: str, second: str) -> dict[str, Any]:
    """A sample kept in both releases, trained on in the second, whose media no other sample
    shares."""
    b = ReleaseData(project, releases.find(project, second))
    a = ReleaseData(project, releases.find(project, first))
    raw = _table(b, "data/raw/samples.parquet", ["sample_id", "image_sha256", "source_key"])
    shared = {m for m, n in Counter(r["image_sha256"] for r in raw).items() if n > 1}
    in_a = {r["sample_id"] for r in _table(a, "data/clean/samples.parquet", ["sample_id"])}
    roles = _table(b, "data/codes/training_samples.parquet", ["sample_id", "role"])
    fitted = {r["sample_id"] for r in roles if r["role"] == "train"}
    ok = sorted(r["sample_id"] for r in raw
                if r["sample_id"] in in_a & fitted and r["image_sha256"] not in shared)  # fmt: skip
    sid = ok[0]
    row = next(r for r in raw if r["sample_id"] == sid)
    return {"id": sid, "media": row["image_sha256"], "key": f"synthetic:{row['source_key']}"}


def test_withdraw_one_sample_everywhere(handon_releases: dict[str, Any], project: Path,
                                        tmp_path: Path, capsys) -> None:  # fmt: skip
    from cmrops.cli import main
    from cmrops.pipeline import run_stage

    first, second = handon_releases["first"], handon_releases["second"]
    s = _pick(project, first, second)
    sid = s["id"]
    held = export(project, second, "coco", tmp_path / "coco", options=ExportOptions(media=False))

    # -- the impact list, before: exact
    imp = withdrawal.impact(project, sid)
    assert not imp["withdrawn"]
    assert [r["id"] for r in imp["releases"]] == [first, second]
    for r in imp["releases"]:
        truth = _truth(project, r["id"], sid)
        assert truth is not None
        st = r["stages"][sid]
        got = {k: st[k] for k in ("clean", "split", "in_train", "codes", "fitted_on")}
        assert got == {k: truth[k] for k in got}
        assert r["models"] == truth["models"]
        assert r["code_files"] == truth["code_files"]
    # every recorded export of the second release holds it (the export tests' too), none of
    # the first's
    recorded = [n for n in releases.find(project, second).attachments
                if n.startswith("exports/") and n.endswith("/manifest.json")]  # fmt: skip
    assert held["export_id"] in {e["export_id"] for e in imp["releases"][1]["exports"]}
    assert len(imp["releases"][1]["exports"]) == len(recorded)
    assert imp["releases"][0]["exports"] == []
    assert imp["workspace"]["samples"] == [sid]
    # the same sample asked by its source key gives the same identities
    assert withdrawal.impact(project, s["key"])["identities"] == imp["identities"]

    # -- bad requests: named, nothing written
    stones = project / tombstones.FILE
    before = stones.read_bytes()
    with pytest.raises(withdrawal.WithdrawalError, match="'0123456789abcdef'"):
        withdrawal.withdraw(project, [sid, "0123456789abcdef"], reason="takedown #12")
    rc = main(["withdraw", "--project", str(project), "https://nowhere.example/x.jpg",
               "--reason", "takedown"])  # fmt: skip
    assert rc == 2
    assert "https://nowhere.example/x.jpg" in capsys.readouterr().err
    assert stones.read_bytes() == before

    # -- withdraw: tombstone, media out of the workspace at once
    res = withdrawal.withdraw(project, [sid], reason="takedown #12", by="legal")
    (stone,) = res["withdrawn"]
    assert stone["sample_ids"] == [sid]
    assert stone["media_sha256"] == [s["media"]]
    assert stone["source_keys"] == [s["key"]]
    assert res["media_removed_from_workspace"] == [f"objects/{s['media'][:2]}/{s['media']}"]
    assert [t.request for t in tombstones.Tombstones.load(stones).entries] == [sid]
    assert withdrawal.withdraw(project, [sid], reason="again")["already_withdrawn"] == [sid]

    # -- the next run: built without it
    third = versioned_run(project)["release"]
    data = ReleaseData(project, releases.find(project, third))
    assert _truth(project, third, sid) is None
    for rel, col in (("data/interim/samples.parquet", "sample_id"),
                     ("data/clean/samples.parquet", "sample_id"),
                     ("data/split/assignments.parquet", "sample_id"),
                     ("data/codes/rows.parquet", "sample_id"),
                     ("data/codes/training_samples.parquet", "sample_id")):  # fmt: skip
        assert sid not in {r[col] for r in _table(data, rel, [col])}, rel
    q = [r for r in _table(data, "data/raw/quarantine.parquet", ["source_key", "reason", "detail"])
         if r["reason"] == "withdrawn"]  # fmt: skip
    assert [f"synthetic:{r['source_key']}" for r in q] == [s["key"]]
    assert "takedown #12" in q[0]["detail"]
    objects = {p.rsplit("/", 1)[1] for p, _ in data.files("data/raw/objects")}
    assert s["media"] not in objects
    assert not (project / "data/raw/objects" / s["media"][:2] / s["media"]).exists()
    card = json.loads(releases.find(project, third).attachment("datacard.json").read_text())
    assert card["withdrawn"] == 1

    after = withdrawal.impact(project, sid)
    assert after["withdrawn"]
    assert [r["id"] for r in after["releases"]] == [first, second]  # history keeps it
    assert after["not_in"] == [third]
    assert after["workspace"]["samples"] == []
    assert after["workspace"]["media_in_store"] == []
    new = export(project, third, "coco", tmp_path / "coco3", options=ExportOptions(media=False))
    ids = (releases.find(project, third).attachment(
        f"exports/{new['export_id']}/samples.txt").read_text().split())  # fmt: skip
    assert sid not in ids

    # -- a rescan keeps it out
    run_stage("collect", project, str(project / "params.yaml"))
    raw = pq.read_table(project / "data/raw/samples.parquet", columns=["sample_id"])
    assert sid not in raw["sample_id"].to_pylist()
    assert not (project / "data/raw/objects" / s["media"][:2] / s["media"]).exists()
