"""Shared fixtures. Real data comes from ``../shared/data`` (never copied into the repository)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    return Path(os.environ.get("CMROPS_SHARED_DATA", REPO.parent / "shared" / "data")).resolve()


@pytest.fixture(scope="session")
def coco_mini() -> Path:
    """The 159-photo COCO sample. Skips when absent, but FAILS when the environment says it
    must be there (``CMROPS_REQUIRE_SHARED_DATA=1``, set by ``.ci/run``)."""
    root = shared_data_dir() / "coco_mini"
    if not (root / "pairs.jsonl").is_file():
        msg = f"COCO sample not found at {root} (set CMROPS_SHARED_DATA to the shared/data folder)"
        if os.environ.get("CMROPS_REQUIRE_SHARED_DATA") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    return root


@pytest.fixture(scope="session")
def dashboard_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ONE tiny real run shared by the dashboard tests: every stage collect -> evaluate
    (in-process, real encoders, 100 synthetic samples with planted defects, so quarantine rows
    of several reasons exist at collect, preprocess and clean), then ``dvc commit`` so
    ``dvc.lock`` and the run log's data version exist. About 40 s on 2 cores.
    Treat it as read-only."""
    from cmrops.pipeline import STAGES, run_stage
    from tests.test_dvc_support import git_commit, make_project, sh, tiny_params

    project = make_project(tmp_path_factory.mktemp("dashboard") / "project", tiny_params(100))
    for name in STAGES:
        run_stage(name, project, str(project / "params.yaml"))
    sh(["dvc", "commit", "--force", "--quiet"], project, timeout=300)
    git_commit(project, "tiny run")
    return project


@pytest.fixture(scope="session")
def video_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ONE generated video-text project through every stage (tests/media_project.py: 64 clean
    moving-shape videos plus a truncated and a junk file), shared by the media pipeline and
    dashboard tests. About 90 s on 2 cores. Treat it as read-only."""
    from tests.media_project import video_project

    return video_project(tmp_path_factory.mktemp("video_project"))


@pytest.fixture(scope="session")
def audio_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ONE generated audio-text project through every stage (tests/media_project.py: 64 clean
    tone clips plus a truncated and a junk file), shared like ``video_project``. About a
    minute on 2 cores. Treat it as read-only."""
    from tests.media_project import audio_project

    return audio_project(tmp_path_factory.mktemp("audio_project"))
