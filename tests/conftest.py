"""Shared fixtures. Real data comes from ``../shared/data`` (never copied into the repository)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

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


@pytest.fixture(scope="session")
def handon_releases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """ONE tiny versioned project with TWO releases, shared by the export, data card, ablation
    and withdrawal tests (tests/handon_project.py): 40 synthetic samples, then 48 (an
    incremental run), each run ended by the DAG's own version task (release + data card).
    Treat it as read-only (the withdrawal test works on a copy). A few minutes on 2 cores."""
    from tests.handon_project import new_project, set_n, versioned_run

    project = new_project(tmp_path_factory.mktemp("handon"), n=40)
    first = versioned_run(project)
    set_n(project, 48)
    second = versioned_run(project)
    return {"project": project, "first": first["release"], "second": second["release"],
            "runs": [first, second]}
