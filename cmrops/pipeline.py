"""Running the pipeline's stages (:mod:`cmrops.stage_table` is the table of them).

Airflow and DVC drive the same code with the same arguments: ``dvc.yaml``'s ``cmd`` of each
stage is ``cmrops`` + :func:`argv` (a test checks it), and the DAG's tasks call
:func:`run_stage`, which runs that argv in-process through the stage table's parser
(:func:`cmrops.stage_command.main`, what the ``cmrops`` command runs too).

Paths are relative to a *work folder* (the project root, where ``dvc.yaml`` lives). With a
storage root other than the work folder (``s3://bucket/prefix`` for workers that share no disk),
:func:`run_stage` pulls the stage's inputs from the root first and pushes its outputs after.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from cmrops.stage_table import STAGES, Stage, argv, stage_names

log = logging.getLogger(__name__)

__all__ = [
    "STAGES",
    "Stage",
    "StageError",
    "argv",
    "effective_params",
    "run_stage",
    "stage_names",
]


class StageError(RuntimeError):
    """A stage command exited non-zero; ``rc == 2`` is bad input or configuration (retrying
    cannot help), anything else may be transient."""

    def __init__(self, stage: str, rc: int) -> None:
        super().__init__(f"cmrops {stage} failed (exit {rc}); see the log above")
        self.stage, self.rc = stage, rc

    @property
    def retryable(self) -> bool:
        return self.rc != 2


def effective_params(params_file: str | os.PathLike[str], overrides: dict[str, Any]) -> str:
    """``params_file`` itself when there is nothing to override; else a copy beside it (so its
    relative paths still resolve) named by the content's hash: ``.params-<sha>.yaml``.

    Overrides: ``synthetic_n`` (``n`` of every synthetic source)."""
    overrides = {k: v for k, v in overrides.items() if v not in (None, "")}
    if not overrides:
        return os.fspath(params_file)
    import yaml

    path = Path(params_file)
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    unknown = sorted(set(overrides) - {"synthetic_n"})
    if unknown:
        raise ValueError(f"unknown param override(s): {', '.join(unknown)}")
    if "synthetic_n" in overrides:
        sources = [
            s for s in data.get("collect", {}).get("sources", []) if s.get("kind") == "synthetic"
        ]
        if not sources:
            raise ValueError(f"{path}: synthetic_n given but no synthetic source in collect")
        for s in sources:
            s["n"] = int(overrides["synthetic_n"])
    text = yaml.safe_dump(data, sort_keys=False)
    out = path.with_name(f".params-{hashlib.sha256(text.encode()).hexdigest()[:12]}.yaml")
    if not out.exists():
        from cmrops import io

        io.write_bytes(out, text.encode())
    return str(out)


@contextlib.contextmanager
def _staged(
    inputs: Sequence[str], outputs: Sequence[str], work: Path, root: str | None
) -> Iterator[None]:
    """Pull ``inputs`` and ``outputs`` from ``root`` before the block, push ``outputs`` after."""
    from cmrops import storage

    if root:
        storage.pull(root, list(inputs) + list(outputs), work)
    yield
    if root:
        storage.push(work, list(outputs), root)


def run_stage(
    name: str,
    work: str | os.PathLike[str],
    params_file: str = "params.yaml",
    root: str | None = None,
) -> dict[str, Any]:
    """Run stage ``name`` with its standard argv, paths under ``work`` (pulling inputs from and
    pushing outputs to ``root`` when it is another place). Raises on failure."""
    from cmrops.stage_command import main

    st = STAGES[name]
    work = Path(work).resolve()
    root = None if not root or same_place(root, work) else root
    # exactly dvc.yaml's command line, run from the work folder: stages stamp the paths they are
    # given into their outputs (e.g. model_dir), so absolute paths would change the bytes
    params_arg = os.path.relpath(Path(params_file).resolve(), work)
    args = argv(name, params_arg)
    with _staged(st.inputs, st.outputs, work, root), _cwd(work):
        log.info("cmrops %s  (in %s)", " ".join(args), work)
        rc = main(args)
        if rc:
            raise StageError(name, rc)
    return {"stage": name, "outputs": list(st.outputs), "work": str(work), "root": root}


@contextlib.contextmanager
def _cwd(path: Path) -> Iterator[None]:
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def same_place(root: str, work: Path) -> bool:
    from cmrops.storage import parse_root

    r = parse_root(root)
    return r.is_local and Path(r.path) == work


# --------------------------------------------------------------------------- preprocess fan-out


def _preprocess_params(params_file: str) -> Any:
    from cmrops.params import load_section
    from cmrops.stages.preprocess import STAGE, PreprocessParams

    return load_section(params_file, STAGE, PreprocessParams)


def preprocess_plan(
    work: str | os.PathLike[str], params_file: str = "params.yaml", root: str | None = None
) -> list[list[int]]:
    """Groups of shard indices, one per mapped task (whole shards, about
    ``preprocess.task_rows`` raw rows each)."""
    from cmrops.stages.preprocess import plan_shards

    work = Path(work).resolve()
    root = None if not root or same_place(root, work) else root
    with _staged(("data/raw",), ("data/interim/shards",), work, root):
        return plan_shards(
            _preprocess_params(params_file), work / "data/raw", work / "data/interim"
        )


def preprocess_shards(
    indices: list[int],
    work: str | os.PathLike[str],
    params_file: str = "params.yaml",
    root: str | None = None,
) -> list[int]:
    """Decode and embed a group of shards (a no-op for those recorded already)."""
    from cmrops import engine
    from cmrops.params import load_section
    from cmrops.stages.preprocess import run_shards

    work = Path(work).resolve()
    root = None if not root or same_place(root, work) else root
    settings = load_section(params_file, engine.SECTION, engine.EngineParams)
    staged = _staged(("data/raw", "data/interim/shards"), ("data/interim/shards",), work, root)
    with staged, engine.session(settings):
        run_shards(
            _preprocess_params(params_file), work / "data/raw", work / "data/interim", indices
        )
    return list(indices)


# --------------------------------------------------------------------------- run summary


def summary(work: str | os.PathLike[str] = ".") -> str:
    """A short text report of a finished run from the metrics files under ``work``: samples
    in / kept / quarantined by stage and reason, cleaning precision/recall on the planted
    defects, split sizes and leakage, and the mAP table by model (method-bits) and direction."""
    import json

    w = Path(work)

    def load(rel: str) -> dict[str, Any]:
        p = w / rel
        return json.loads(p.read_text()) if p.is_file() else {}

    raw, interim = load("data/raw/metrics.json"), load("data/interim/metrics.json")
    quality, split = load("metrics/quality.json"), load("metrics/split.json")
    retrieval = load("metrics/retrieval.json")
    lines = [f"cmrops run summary ({w.resolve()})", ""]
    if raw:
        rows = [
            ("collect", raw.get("quarantined_by_reason", {})),
            ("preprocess", interim.get("quarantined_by_reason", {})),
            ("clean", quality.get("quarantined_by_reason", {})),
        ]
        total_q = sum(n for _, by in rows for n in by.values())
        kept = quality.get("kept", interim.get("kept", raw.get("kept")))
        lines.append(f"samples: {raw.get('inputs')} in, {kept} kept, {total_q} quarantined")
        for stage, by in rows:
            for reason, n in sorted(by.items(), key=lambda kv: (-kv[1], kv[0])):
                lines.append(f"  {stage:<11}{reason:<28}{n:>6}")
    synth = quality.get("synthetic", {}).get("overall")
    if synth:
        lines += [
            "",
            f"cleaning on the planted defects: precision {synth.get('precision')}, recall "
            f"{synth.get('recall')} (clean caught {synth.get('caught')} of the "
            f"{synth.get('relevant')} planted defects that reached it; dropped "
            f"{synth.get('dropped')})",
        ]
    if split:
        sizes = ", ".join(f"{k} {v}" for k, v in split.get("sizes", {}).items())
        leak = split.get("leakage", {}).get("total")
        proto = split.get("protocol", {}).get("name", "")
        lines += ["", f"split ({proto}): {sizes}; leaking near-duplicate pairs: {leak}"]
    models = retrieval.get("models", {})
    if models:
        directions = list(retrieval.get("directions", []))
        head = "mAP (hash codes)"
        lines += ["", f"{head:<22}" + "".join(f"{d:>16}" for d in directions)]

        def order(name: str) -> tuple[str, int]:
            m = models[name]
            return str(m.get("method", name)), int(m.get("bits", 0))

        for name in sorted(models, key=order):
            dirs = models[name].get("directions", {})
            cells = [dirs.get(d, {}).get("hash", {}).get("map") for d in directions]
            lines.append(
                f"  {name:<20}"
                + "".join(f"{c:>16.4f}" if isinstance(c, float) else f"{'-':>16}" for c in cells)
            )
    elif raw:
        lines += ["", "no retrieval metrics (train/evaluate did not run)"]
    lines += _timings(w)
    lines += _release_line(w)
    return "\n".join(lines)


def _timings(work: Path) -> list[str]:
    """Wall-clock seconds per stage of the latest run in the run log (preprocess's mapped shard
    tasks included), or nothing when no run was recorded."""
    from cmrops import runlog

    runs = runlog.read_runs(work)
    if not runs:
        return []
    last = runs[-1].run_id
    mine = [r for r in runs if r.run_id == last]
    done = [r for r in mine if r.part is None and r.status == "success"]
    if not done:
        return []
    cells = [f"{r.stage} {runlog.wall_seconds(mine, r):.1f}" for r in done]
    total = max(r.finished_at for r in mine) - min(r.started_at for r in mine)
    return ["", f"stage seconds (run {last}): " + ", ".join(cells) + f"; {total:.0f} s in all"]


def _release_line(work: Path) -> list[str]:
    """The release this workspace is, when it is one."""
    from cmrops import releases

    try:
        found = releases.list_releases(work, include_remote=False)
    except (OSError, ValueError):
        return []
    if not found:
        return []
    r = found[-1]
    tag = (r.git or {}).get("tag")
    lock = work / "dvc.lock"
    same = lock.is_file() and r.files.get("dvc.lock") == releases.io.sha256_file(lock)
    what = "release" if same else "latest release (the workspace has changed since)"
    return ["", f"{what} {r.id}" + (f", git tag {tag}" if tag else "")
            + ": cmrops release list | show ID | checkout ID"]
