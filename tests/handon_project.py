"""A tiny versioned project for the hand-on tests (export, data card, withdrawal, ablation): the
project's pipeline on a small synthetic set (planted defects, so every cleaning rule has
something to drop), every stage in-process as the DAG runs it, then the DAG's own ``version``
task (``dvc commit``, a release record, its data card). The closed-form methods only (itq,
cca: seconds) at 16 bits, a short alignment fit, CPU."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tests.test_dvc_support import git_commit, make_project, tiny_params


def handon_params(n: int = 48) -> dict[str, Any]:
    p = tiny_params(n)
    p["collect"]["sources"][0]["seed"] = 3
    p["align"]["train"].update(epochs=30, patience=5)
    p["train"].update(methods=["itq", "cca"], bits=[16], float_baseline=False)
    p["evaluate"].update(aligned_baseline=None, significance={"resamples": 2000})
    p["release"] = {"git": "off"}
    return p


def new_project(base: Path, n: int = 48) -> Path:
    return make_project(base / "project", handon_params(n))


def set_n(project: Path, n: int) -> None:
    """Grow (or shrink) the synthetic source: the next run is incremental."""
    p = yaml.safe_load((project / "params.yaml").read_text())
    p["collect"]["sources"][0]["n"] = n
    (project / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))


def versioned_run(project: Path) -> dict[str, Any]:
    """Every stage, then the DAG's version task (no push): returns what it returned."""
    from cmrops import dag_tasks
    from cmrops.pipeline import STAGES, run_stage

    for name in STAGES:
        run_stage(name, project, str(project / "params.yaml"))
    cfg = dag_tasks.resolve(project, {"push": False})
    out = dag_tasks.version(cfg)
    git_commit(project, f"release {out['release']}")
    return out
