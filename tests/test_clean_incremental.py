"""Incremental near-duplicate candidates: a rerun of clean with added samples queries only the
new ones against an index of all samples, reuses the cached pairs of the others, and writes the
bytes of a run without a cache. A corrupt or stale cache is ignored, never trusted."""

from __future__ import annotations

import dataclasses
import io
import json
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from cmrops.cleaning.candidates import CACHE_FILE
from cmrops.cleaning.graph import pairs_within
from cmrops.stages.clean import CACHE_DIR, CleanParams, run
from tests.clean_helpers import flip, interim, rand64, row

REPO = Path(__file__).resolve().parents[1]
P = CleanParams()
PARAMS = dataclasses.replace(
    P,
    irrelevant=dataclasses.replace(P.irrelevant, enabled=False),
    label_disagreement=dataclasses.replace(P.label_disagreement, enabled=False),
)
OUTPUTS = ("samples.parquet", "quarantine.parquet", "groups.parquet", "quality.json")


def _pair(name: str, bits: list[int]) -> list[dict[str, Any]]:
    """Two samples whose pHash differ in ``bits`` (dHash in one bit): a near-duplicate pair."""
    base, d = rand64(f"p-{name}"), rand64(f"d-{name}")
    return [
        row(f"{name}-0", phash=base, dhash=d),
        row(f"{name}-1", phash=flip(base, bits), dhash=flip(d, [0]), width=120),
    ]


OLD = [r for g in range(20) for r in _pair(f"old{g}", [g % 6])] + [
    row(f"single{i}") for i in range(20)
]
#: near-duplicates of old singletons, and pairs among themselves
NEW = [
    row(
        f"new-of-single{i}",
        phash=flip(row(f"single{i}")["phash"], [2, 40]),
        dhash=row(f"single{i}")["dhash"],
        width=300,
    )
    for i in range(5)
] + [r for g in range(5) for r in _pair(f"new{g}", [3, 7])]


def _clean(
    tmp: Path, name: str, rows: list[dict[str, Any]], out: Path, params: CleanParams = PARAMS
) -> dict[str, Any]:
    """Clean ``rows`` into ``out``; returns what the candidate search did."""
    inter = interim(tmp / f"interim-{name}", rows)
    run(params, inter, None, out, metrics_path=out / "quality.json")
    return json.loads((out / "throughput.json").read_text())["near_image_search"]


def _bytes(out: Path) -> dict[str, bytes]:
    return {n: (out / n).read_bytes() for n in OUTPUTS}


@pytest.fixture
def warm(tmp_path: Path) -> Path:
    """A clean output folder whose cache holds the OLD samples."""
    out = tmp_path / "clean"
    first = _clean(tmp_path, "old", OLD, out)
    assert first == {**first, "queried": 60, "reused_pairs": 0, "index_size": 60, "cache": "none"}
    assert (out / CACHE_DIR / CACHE_FILE).is_file()
    return out


def test_added_samples_are_the_only_queries_and_the_bytes_match_a_full_run(
    tmp_path: Path, warm: Path
) -> None:
    search = _clean(tmp_path, "all", OLD + NEW, warm)
    assert search["cache"] == "used"
    assert search["queried"] == len(NEW) == 15
    assert search["reused_pairs"] == 20  # every old-old pair, none searched again
    assert search["index_size"] == 75
    full = _clean(tmp_path, "all", OLD + NEW, tmp_path / "fresh")
    assert full["cache"] == "none"
    assert full["queried"] == 75
    assert _bytes(warm) == _bytes(tmp_path / "fresh")
    quality = json.loads((warm / "quality.json").read_text())
    assert quality["duplicates"]["near_image_pairs"]["candidates"] == 30
    again = _clean(tmp_path, "all", OLD + NEW, warm)  # nothing new: nothing queried
    assert (again["queried"], again["reused_pairs"]) == (0, 30)
    assert _bytes(warm) == _bytes(tmp_path / "fresh")


def test_removed_and_rehashed_samples(tmp_path: Path, warm: Path) -> None:
    rows = OLD[4:] + NEW  # old0 and old1 are gone
    rows[0] = {**rows[0], "phash": rand64("rehashed")}  # old2-0: same id, another pHash
    search = _clean(tmp_path, "changed", rows, warm)
    assert search["queried"] == len(NEW) + 1
    assert search["reused_pairs"] == 20 - 3
    _clean(tmp_path, "changed", rows, tmp_path / "fresh")
    assert _bytes(warm) == _bytes(tmp_path / "fresh")


def _tamper_pairs(path: Path) -> None:
    """Drop one cached pair but keep the file a valid npz (its digest no longer matches)."""
    with np.load(path) as z:
        data = {k: z[k] for k in z.files}
    data["pairs"] = data["pairs"][1:]
    buf = io.BytesIO()
    np.savez(buf, **data)
    path.write_bytes(buf.getvalue())


@pytest.mark.parametrize(
    ("spoil", "why"),
    [
        (lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]), "unreadable"),
        (lambda p: p.write_bytes(b"not a cache"), "unreadable"),
        (_tamper_pairs, "corrupt (digest)"),
    ],
)
def test_a_corrupt_cache_is_ignored_and_rewritten(
    tmp_path: Path, warm: Path, spoil: Any, why: str
) -> None:
    spoil(warm / CACHE_DIR / CACHE_FILE)
    search = _clean(tmp_path, "all", OLD + NEW, warm)
    assert search["cache"].startswith(why)
    assert (search["queried"], search["reused_pairs"]) == (75, 0)
    _clean(tmp_path, "all", OLD + NEW, tmp_path / "fresh")
    assert _bytes(warm) == _bytes(tmp_path / "fresh")
    assert _clean(tmp_path, "all", OLD + NEW, warm)["cache"] == "used"  # rewritten, sound


def test_radius_keys_the_cache_confirmations_do_not(tmp_path: Path, warm: Path) -> None:
    near = PARAMS.near_duplicate_image
    wider = dataclasses.replace(PARAMS, near_duplicate_image=dataclasses.replace(near, radius=8))
    search = _clean(tmp_path, "old", OLD, warm, wider)
    assert search["cache"] == "another radius"
    assert search["queried"] == 60
    _clean(tmp_path, "old", OLD, tmp_path / "fresh-wider", wider)
    assert _bytes(warm) == _bytes(tmp_path / "fresh-wider")

    # dHash / cosine confirm candidates after the search: the cache of radius 8 still serves
    strict = dataclasses.replace(
        wider, near_duplicate_image=dataclasses.replace(near, radius=8, dhash_radius=0)
    )
    search = _clean(tmp_path, "old", OLD, warm, strict)
    assert (search["cache"], search["queried"]) == ("used", 0)
    _clean(tmp_path, "old", OLD, tmp_path / "fresh-strict", strict)
    assert _bytes(warm) == _bytes(tmp_path / "fresh-strict")
    assert _bytes(warm) != _bytes(tmp_path / "fresh-wider")  # the confirmation did change it


def test_cached_pairs_equal_the_all_pairs_search(tmp_path: Path, warm: Path) -> None:
    _clean(tmp_path, "all", OLD + NEW, warm)
    with np.load(warm / CACHE_DIR / CACHE_FILE) as z:
        phash, pairs = z["phash"], z["pairs"]
    expected, _ = pairs_within(phash, PARAMS.near_duplicate_image.radius)
    assert np.array_equal(pairs, expected)


def test_the_cache_folder_is_git_ignored_and_no_dvc_output() -> None:
    path = f"data/clean/{CACHE_DIR}/{CACHE_FILE}"
    ignored = subprocess.run(["git", "check-ignore", "-q", path], cwd=REPO, check=False)
    assert ignored.returncode == 0
    clean = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["clean"]
    declared = [next(iter(o)) if isinstance(o, dict) else o for o in clean["outs"]]
    assert not [o for o in declared if path.startswith(o.rstrip("/") + "/") or o == "data/clean"]
