"""The Airflow DAG's tasks as plain functions: the DAG file only wires them.

Each DAG run is resolved once into a :class:`RunConfig` from the trigger form's values
(:func:`resolve`): which params file, which workspace, which storage root, whether the run is
**versioned** (a release) or a **trial**.

* A run on the project's own ``params.yaml`` with no override is versioned: its stages work in
  the project folder, and :func:`version` ends it with ``dvc commit``, ``dvc push`` and a release
  record (:mod:`cmrops.releases`) with its data card (:mod:`cmrops.datacard`) and, when
  ``ablation.on_release`` is set, what each cleaning rule is worth (:mod:`cmrops.ablation`).
* Any other run - another params file, or an override such as ``synthetic_n`` - is a trial. It
  works in its own workspace ``.cmrops/trials/<id>/`` (``<id>``: the hash of the params it ran
  with, so the same trial resumes where it stopped), reads relative paths from the params file's
  folder as every run does, and never touches the versioned outputs, the run log or the metrics
  of the project. Its outputs stay there for the dashboard (``CMROPS_PROJECT_DIR=<workspace>``).

Errors the user must fix (a missing params file, a too-small set) are :class:`RunError` with
``retryable=False``; the DAG turns them into a failed task without retries.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cmrops import io
from cmrops.stage_table import STAGES

log = logging.getLogger(__name__)

__all__ = [
    "TRIALS",
    "WORKSPACE_MARKER",
    "RunConfig",
    "RunError",
    "Skip",
    "changes",
    "preprocess_shards",
    "resolve",
    "run_stage_task",
    "version",
]

#: Trial workspaces, under the project folder (git- and DVC-ignored).
TRIALS = ".cmrops/trials"
#: Written into a trial workspace: what it is (and a boundary: telemetry never looks above it).
WORKSPACE_MARKER = "cmrops-workspace.json"
#: Overrides the trigger form may carry besides the params file.
OVERRIDES = ("synthetic_n",)


class Skip(Exception):
    """The task has nothing to do in this run (the reason is the message)."""


class RunError(RuntimeError):
    """A task cannot succeed as configured (``retryable=False``) or failed for a reason a retry
    may cure."""

    def __init__(self, message: str, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


@dataclass(frozen=True)
class RunConfig:
    """One DAG run's settings, resolved from the trigger form."""

    project: Path  # the project folder (dvc.yaml, params.yaml)
    work: Path  # where the stages read and write: the project, or the trial's workspace
    params: Path  # the params file the stages read
    root: str | None  # storage root other than the work folder (s3://bucket/prefix), or None
    stop_after: str
    trial: str | None  # the trial's id; None for a versioned run
    remote: str | None  # DVC remote for the push (None: the default)
    push: bool

    @property
    def versioned(self) -> bool:
        return self.trial is None

    def to_json(self) -> dict[str, Any]:
        return {
            "project": str(self.project),
            "work": str(self.work),
            "params": str(self.params),
            "root": self.root,
            "stop_after": self.stop_after,
            "trial": self.trial,
            "remote": self.remote,
            "push": self.push,
        }


def _blank(v: Any) -> bool:
    return v is None or (isinstance(v, str) and not v.strip())


def resolve(project: str | os.PathLike[str], form: dict[str, Any]) -> RunConfig:
    """The run's settings from the trigger form's values (every one optional: a blank or missing
    value means the default). Raises :class:`RunError` for a bad params file or value."""
    from cmrops.params import ParamsError, read_yaml
    from cmrops.pipeline import effective_params, same_place

    proj = Path(project).resolve()
    name = "params.yaml" if _blank(form.get("params_file")) else str(form["params_file"])
    params_file = (proj / name).resolve()
    stop_after = "evaluate" if _blank(form.get("stop_after")) else str(form["stop_after"])
    if stop_after not in STAGES:
        raise RunError(f"stop_after={stop_after!r} is not a stage ({', '.join(STAGES)})")
    overrides = {k: form.get(k) for k in OVERRIDES if not _blank(form.get(k))}
    try:
        read_yaml(params_file)  # a missing, malformed or misspelled file fails here, at once
        effective = Path(effective_params(params_file, overrides)).resolve()
    except (ParamsError, ValueError) as e:
        raise RunError(str(e)) from e
    versioned = params_file == (proj / "params.yaml").resolve() and not overrides
    root = None if _blank(form.get("storage_root")) else str(form["storage_root"])
    root = root or os.environ.get("CMROPS_STORAGE_ROOT") or None
    remote = None if _blank(form.get("dvc_remote")) else str(form["dvc_remote"])
    remote = remote or os.environ.get("CMROPS_DVC_REMOTE") or None
    push = True if form.get("push") is None else bool(form["push"])
    trial = None
    work = proj
    if not versioned:
        trial = hashlib.sha256(effective.read_bytes()).hexdigest()[:12]
        work = proj / TRIALS / trial
        if root and not same_place(root, proj):  # never into the release's storage root
            root = f"{root.rstrip('/')}/trials/{trial}"
        elif root:
            root = None  # the project folder itself: the trial's workspace is its place
        _init_trial(work, proj, effective, overrides)
    return RunConfig(proj, work, effective, root, stop_after, trial, remote, push)


def _init_trial(work: Path, project: Path, params: Path, overrides: dict[str, Any]) -> None:
    marker = work / WORKSPACE_MARKER
    if marker.is_file():
        return
    work.mkdir(parents=True, exist_ok=True)
    io.write_json(
        marker,
        {
            "kind": "trial",
            "project": str(project),
            "params": os.path.relpath(params, work),
            "overrides": overrides,
            "note": "a trial run's outputs: never versioned, never mixed with the project's",
        },
    )


def _check_stop_after(cfg: RunConfig, stage: str) -> None:
    order = list(STAGES)
    if order.index(stage) > order.index(cfg.stop_after):
        raise Skip(f"{stage} is after stop_after={cfg.stop_after}")


def run_stage_task(cfg: RunConfig, stage: str, run_id: str | None = None) -> dict[str, Any]:
    """Run one stage of the DAG in the run's workspace (see :func:`cmrops.pipeline.run_stage`).
    A stage that fails on bad input or configuration raises :class:`RunError` (no retry)."""
    from cmrops.pipeline import StageError, run_stage

    _check_stop_after(cfg, stage)
    _use_run_id(run_id)
    try:
        run_stage(stage, cfg.work, str(cfg.params), cfg.root, isolated=True)
    except StageError as e:
        raise RunError(str(e), retryable=e.retryable) from e
    return {"stage": stage, "work": str(cfg.work), "trial": cfg.trial}


def preprocess_shards(cfg: RunConfig, indices: list[int], run_id: str | None = None) -> list[int]:
    """Decode and embed one group of preprocess's shards; the work is recorded in the run log
    as part of this run's ``preprocess`` (its duration spans the shards and the merge)."""
    from cmrops import pipeline
    from cmrops.telemetry.record import recorded

    _check_stop_after(cfg, "preprocess")
    _use_run_id(run_id)
    with recorded(cfg.work, "preprocess", part="shards"):
        return pipeline.preprocess_shards(indices, cfg.work, str(cfg.params), cfg.root)


def _use_run_id(run_id: str | None) -> None:
    """The stage's run-log line and metrics carry the DAG run's id."""
    from cmrops.runlog import RUN_ID_ENV

    if run_id:
        os.environ[RUN_ID_ENV] = run_id


def changes(cfg: RunConfig) -> dict[str, Any] | None:
    """What the ``changes`` task decides: None when nothing changed since the last release (every
    later task is skipped), else what changed. Trials and runs over a storage root always run."""
    from cmrops.versioning import changes_since_versioned

    if not cfg.versioned:
        return {"checked": False, "why": f"trial {cfg.trial}: always runs"}
    if cfg.root:
        return {"checked": False, "why": "outputs live in the storage root"}
    c = changes_since_versioned(cfg.work)
    log.info("changes: %s", c.describe())
    if c.up_to_date:
        return None
    return {"checked": True, "new_samples": c.new_samples, "stages": list(c.stages)}


def version(cfg: RunConfig, run_id: str | None = None) -> dict[str, Any]:
    """Record a versioned run: ``dvc commit`` of the last declared stage that ran, ``dvc push``
    (when asked), and a release (:func:`cmrops.releases.create`). Raises :class:`Skip` for a
    trial, which is never versioned."""
    import yaml

    from cmrops import releases, storage, versioning
    from cmrops.params import load_section

    if not cfg.versioned:
        raise Skip(
            f"not versioned: trial {cfg.trial} (params {cfg.params.name}) ran in {cfg.work}; "
            "edit params.yaml and run without overrides for a release"
        )
    work = cfg.work
    if cfg.root:  # DVC versions the project's workspace: bring the outputs there
        storage.pull(cfg.root, [o for s in STAGES.values() for o in s.outputs], work)
    declared = yaml.safe_load((work / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    order = list(STAGES)
    ran = order[: order.index(cfg.stop_after) + 1]
    last = [s for s in ran if s in declared][-1]
    versioning.dvc(["commit", "--force", "--with-deps", last], work)
    pushed = versioning.push(work, cfg.remote) if cfg.push else ""
    rparams = load_section(cfg.params, "release", releases.ReleaseParams)
    rel = releases.create(
        work, run_id=run_id, remote=cfg.remote if cfg.push else None, params=rparams,
        summary=release_summary(work),
    )  # fmt: skip
    if not cfg.push:  # the record stays local until a push
        log.info("release %s recorded locally (push off)", rel.id)
    attached = hand_on(work, rel.id, cfg.remote if cfg.push else None, cfg.params)
    return {"committed": last, "pushed": pushed[-300:], "release": rel.id,
            "git": (rel.git or {}).get("tag"), **attached}  # fmt: skip


def hand_on(work: Path, release_id: str, remote: str | None, params: Path) -> dict[str, Any]:
    """What every release carries besides its outputs: the rule ablation (when
    ``ablation.on_release``) and then the data card, attached to its record."""
    from cmrops import ablation, datacard
    from cmrops.params import load_section

    out: dict[str, Any] = {}
    ab = load_section(params, "ablation", ablation.AblationParams)
    if ab.on_release:
        report = ablation.run(work, release_id, ab, remote)
        out["ablation"] = {k: v for k, v in report.items() if k in ("queries", "seconds")}
    card = datacard.attach_card(work, release_id, remote)
    out["datacard"] = {"samples": card["composition"].get("samples"),
                       "limitations": len(card["limitations"])}  # fmt: skip
    return out


def release_summary(work: Path) -> dict[str, Any]:
    """A few headline numbers of the workspace's metrics for the release list."""
    from cmrops.telemetry.files import record, retrieval_maps

    raw, quality = record(work, "collect"), record(work, "clean")
    split, retrieval = record(work, "split"), record(work, "evaluate")
    out: dict[str, Any] = {}
    for key, value in (("samples_in", raw.get("inputs")), ("kept", quality.get("kept")),
                       ("leaking_pairs", (split.get("leakage") or {}).get("total"))):  # fmt: skip
        if isinstance(value, int | float):
            out[key] = value
    maps = retrieval_maps(retrieval)
    if maps:  # the model with the best tie-aware mAP averaged over its directions
        by_model: dict[str, list[float]] = {}
        for (model, _), value in maps.items():
            by_model.setdefault(model, []).append(value)
        model = max(sorted(by_model), key=lambda m: sum(by_model[m]) / len(by_model[m]))
        out["best_model"] = model
        out["best_map"] = round(sum(by_model[model]) / len(by_model[model]), 4)
    return out
