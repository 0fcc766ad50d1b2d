"""Projects built once per session and shared (read-only) by the reliability tests.

Each is a real project folder (git + DVC, the checkout's ``dvc.yaml``) with tiny params, and a
*reference*: the outputs of one uninterrupted ``cmrops`` run and how long it took. Tests copy a
project, break something, run the CLI again and compare bytes with the reference.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.reliability.harness import cmrops, fingerprint
from tests.test_dvc_support import git_commit, make_project, sh, tiny_params


#: The stage commands, exactly as dvc.yaml runs them.
def _dvc_command(stage: str) -> list[str]:
    cmd = yaml.safe_load((Path(__file__).resolve().parents[2] / "dvc.yaml").read_text())
    words = str(cmd["stages"][stage]["cmd"]).split()
    assert words[:2] == ["cmrops", stage], words
    return words[1:]


COLLECT = _dvc_command("collect")
PREPROCESS = _dvc_command("preprocess")
TRAIN = [
    "train", "--params", "params.yaml", "--split", "bench/split", "--clean", "bench/clean",
    "--interim", "bench/interim", "--labelled", "bench/labelled", "--models", "models",
    "--codes", "data/codes", "--metrics", "metrics/train.json",
]  # fmt: skip
TRAIN_OUTPUTS = ("models", "data/codes", "metrics/train.json")


@dataclass(frozen=True)
class Built:
    """A project after one uninterrupted run of a stage: its outputs' fingerprint and time."""

    path: Path
    outputs: tuple[str, ...]
    reference: dict[str, str]
    seconds: float


def reliability_params(n: int = 48) -> dict:
    """Tiny: ``n`` synthetic samples (with planted defects), preprocess without embeddings
    (decode, hashes, captions: no model to load), three shards over two worker processes."""
    p = tiny_params(n)
    p["preprocess"].update(
        embeddings=False, tokenizer="words", shard_size=16, task_rows=16, n_workers=2
    )
    return p


def _timed(args: list[str], cwd: Path) -> float:
    t0 = time.perf_counter()
    done = cmrops(*args, cwd=cwd)
    seconds = time.perf_counter() - t0
    assert done.returncode == 0, f"{args}: {done.stderr[-3000:]}"
    return seconds


@pytest.fixture(scope="session")
def raw_project(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """Collected once (``cmrops collect``)."""
    path = make_project(tmp_path_factory.mktemp("reliability") / "raw", reliability_params())
    seconds = _timed(COLLECT, path)
    return Built(path, ("data/raw",), fingerprint(path, ["data/raw"]), seconds)


@pytest.fixture(scope="session")
def interim_project(raw_project: Built, tmp_path_factory: pytest.TempPathFactory) -> Built:
    """``raw_project`` preprocessed once (``cmrops preprocess``), in a copy."""
    from tests.reliability.harness import copy_project

    path = copy_project(raw_project.path, tmp_path_factory.mktemp("reliability") / "interim")
    seconds = _timed(PREPROCESS, path)
    return Built(path, ("data/interim",), fingerprint(path, ["data/interim"]), seconds)


@pytest.fixture(scope="session")
def dvc_project(raw_project: Built, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``raw_project`` with its collect output committed to DVC and git: what a push sends."""
    from tests.reliability.harness import copy_project

    path = copy_project(raw_project.path, tmp_path_factory.mktemp("reliability") / "dvc")
    sh(["dvc", "commit", "--force", "--quiet", "collect"], path, timeout=300)
    git_commit(path, "collect versioned")
    return path


def _benchmark(path: Path, n: int = 240) -> None:
    """A tiny cross-modal hashing benchmark (.mat: features, bag of words, labels)."""
    import scipy.io

    rng = np.random.default_rng(0)
    labels = np.zeros((n, 4), np.uint8)
    labels[np.arange(n), rng.integers(0, 4, n)] = 1
    image = labels @ rng.standard_normal((4, 16)) + 0.5 * rng.standard_normal((n, 16))
    words = rng.poisson(labels @ (rng.random((4, 24)) * 2) + 0.1).astype(np.float64)
    scipy.io.savemat(path, {"XAll": image, "YAll": words, "LAll": labels})


@pytest.fixture(scope="session")
def train_project(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """An imported benchmark (``cmrops import-benchmark``) trained once (``cmrops train``):
    one small dcmh model, a checkpoint every 3 steps, so a killed run resumes mid-way."""
    p = tiny_params(16)
    p["train"].update(
        methods=["dcmh"], bits=[16], epochs=4, batch_size=64, hidden=[32], patience=0,
        checkpoint_every=3, device="cpu", float_baseline=False,
    )  # fmt: skip
    path = make_project(tmp_path_factory.mktemp("reliability") / "train", p)
    _benchmark(path / "bench.mat")
    done = cmrops(
        "import-benchmark", "bench.mat", "--out", "bench", "--query", "40", "--train", "200",
        cwd=path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    (path / "metrics").mkdir(exist_ok=True)
    seconds = _timed(TRAIN, path)
    assert yaml.safe_load((path / "metrics/train.json").read_text())["models"]
    return Built(path, TRAIN_OUTPUTS, fingerprint(path, TRAIN_OUTPUTS), seconds)
