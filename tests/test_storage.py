"""Storage roots: URL parsing, `storage check`, and stages run on "workers" that share no disk,
exchanging their inputs and outputs through an S3 root (moto server on loopback)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cmrops import storage
from cmrops.pipeline import run_stage
from tests.test_dvc_s3 import Moto, moto  # noqa: F401  (fixture)
from tests.test_dvc_support import tiny_params, tree_hashes


def test_parse_root() -> None:
    r = storage.parse_root("s3://bucket/a/b/")
    assert (r.scheme, r.bucket, r.prefix) == ("s3", "bucket", "a/b")
    assert r.join("data/raw") == "bucket/a/b/data/raw"
    assert storage.parse_root("s3://bucket").join("x") == "bucket/x"
    local = storage.parse_root("data-root", base="/srv")
    assert local.is_local
    assert local.path == "/srv/data-root"
    assert storage.parse_root("file:///tmp/x").path == "/tmp/x"
    with pytest.raises(storage.StorageError, match="bucket"):
        storage.parse_root("s3:///nobucket")
    with pytest.raises(storage.StorageError, match="unsupported"):
        storage.parse_root("gs://b/p")


def test_check_local_folder(tmp_path: Path) -> None:
    res = storage.check(str(tmp_path / "new" / "root"))
    assert res.ok
    assert list((tmp_path / "new" / "root").iterdir()) == []  # the probe is removed
    blocker = tmp_path / "file"
    blocker.write_text("x")
    res = storage.check(str(blocker / "under"))
    assert not res.ok


def _fast_params(path: Path) -> str:
    p = tiny_params(60)
    p["preprocess"].update(embeddings=False, tokenizer="words", n_workers=1)
    path.write_text(yaml.safe_dump(p, sort_keys=False))
    return str(path)


@pytest.mark.slow
def test_stages_on_workers_sharing_no_disk_match_a_local_run(
    moto: Moto,  # noqa: F811
    tmp_path: Path,
) -> None:
    stages = ["collect", "preprocess", "align", "label", "clean", "split"]
    local = tmp_path / "local"
    local.mkdir()
    params = _fast_params(tmp_path / "params.yaml")
    for name in stages:
        run_stage(name, local, params)
    root = "s3://cmrops-root/runs/r1"
    assert storage.check(root).ok  # creates the bucket
    for name in stages:  # every stage on a fresh, empty worker folder
        worker = tmp_path / f"worker-{name}"
        worker.mkdir()
        run_stage(name, worker, params, root=root)
    gathered = tmp_path / "gathered"
    rels = [
        "data/raw", "data/interim", "data/align", "data/labelled", "data/clean", "data/split",
        "metrics",
    ]  # fmt: skip
    storage.pull(root, rels, gathered)
    want = tree_hashes(local, rels)
    assert want
    assert tree_hashes(gathered, rels) == want
