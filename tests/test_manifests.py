"""Split manifests: sorted sample-id lists per set, near-duplicate queries, sha256s, checks."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pyarrow as pa
import pytest

from cmrops.splitting.manifests import read_manifests, write_manifests

INFO = {"near_duplicates": {"rule": "pHash within 8"}, "source": "test"}


def hashing_table() -> pa.Table:
    return pa.table(
        {
            "sample_id": ["e", "b", "a", "d", "c", "f"],
            "split": ["query", "database", "database", "query", "database", "train"],
            "in_train": [False, True, False, False, True, True],
            "protocol": ["hashing"] * 6,
            "seed": [3] * 6,
        }
    )


def test_hashing_lists_hashes_and_manifest(tmp_path: Path) -> None:
    m = write_manifests(tmp_path, hashing_table(), ["e"], INFO)
    folder = tmp_path / "manifests"
    assert (folder / "query.txt").read_text() == "d\ne\n"
    assert (folder / "database.txt").read_text() == "a\nb\nc\n"
    assert (folder / "train.txt").read_text() == "b\nc\nf\n"  # in_train, database or not
    assert (folder / "near_duplicate_queries.txt").read_text() == "e\n"
    assert not (folder / "val.txt").exists()
    assert m == json.loads((folder / "manifest.json").read_text())
    assert m["protocol"] == "hashing"
    assert m["seed"] == 3
    assert m["source"] == "test"
    assert m["sets"] == ["query", "database", "train"]
    assert m["counts"] == {"query": 2, "database": 3, "train": 3}
    for name, f in m["files"].items():
        assert f["sha256"] == hashlib.sha256((folder / f"{name}.txt").read_bytes()).hexdigest()
    assert m["near_duplicate_queries"] == {
        "count": 1, "of_queries": 2, "definition": {"rule": "pHash within 8"},
    }  # fmt: skip
    got = read_manifests(tmp_path)
    assert got["sets"] == {
        "query": ["d", "e"],
        "database": ["a", "b", "c"],
        "train": ["b", "c", "f"],
    }
    assert got["near_duplicate_queries"] == ["e"]
    # idempotent: the same bytes again
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    write_manifests(tmp_path, hashing_table(), ["e"], INFO)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_ratio_split_replaces_the_lists_of_another_protocol(tmp_path: Path) -> None:
    write_manifests(tmp_path, hashing_table(), [], INFO)
    t = pa.table({"sample_id": ["b", "a", "c"], "split": ["val", "train", "test"]})
    m = write_manifests(tmp_path, t, [], {**INFO, "protocol": "ratio", "seed": 1})
    names = sorted(p.name for p in (tmp_path / "manifests").iterdir())
    assert names == ["manifest.json", "test.txt", "train.txt", "val.txt"]
    assert m["counts"] == {"train": 1, "val": 1, "test": 1}
    assert "near_duplicate_queries" not in m
    assert read_manifests(tmp_path)["sets"]["train"] == ["a"]


def test_bad_input_and_edited_lists_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not query samples"):
        write_manifests(tmp_path, hashing_table(), ["a"], INFO)
    with pytest.raises(ValueError, match="near_duplicates"):
        write_manifests(tmp_path, hashing_table(), [], {"seed": 1})
    with pytest.raises(ValueError, match="none of"):
        write_manifests(tmp_path, pa.table({"sample_id": ["a"], "split": ["dev"]}), [], INFO)
    with pytest.raises(FileNotFoundError, match="cmrops split"):
        read_manifests(tmp_path / "nothing")
    write_manifests(tmp_path, hashing_table(), [], INFO)
    (tmp_path / "manifests" / "query.txt").write_text("d\n")
    with pytest.raises(ValueError, match="sha256"):
        read_manifests(tmp_path)
