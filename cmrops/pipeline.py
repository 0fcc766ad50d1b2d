"""Running the pipeline's stages (:mod:`cmrops.stage_table` is the table of them).

Airflow and DVC drive the same code with the same arguments: ``dvc.yaml``'s ``cmd`` of each
stage is ``cmrops`` + :func:`argv` (a test checks it), and the DAG's tasks call
:func:`run_stage`, which runs that argv through the stage table's parser
(:func:`cmrops.stage_command.main`, what the ``cmrops`` command runs too) - in a process of its
own for the DAG (``isolated``), as DVC runs it. A worker process runs many tasks one after the
other (``airflow dags test`` all of them, a Celery child several), and what one stage leaves in
the process can change the next one's floats: train run after align in one process wrote query
vectors that differed from ``dvc repro``'s in the last bits (the cause inside the numerical
libraries was not pinned down; MKL's strict reproducibility mode did not remove it).

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
    *,
    isolated: bool = False,
) -> dict[str, Any]:
    """Run stage ``name`` with its standard argv, paths under ``work`` (pulling inputs from and
    pushing outputs to ``root`` when it is another place). ``isolated``: in a child process
    (:func:`run_isolated`), else in this one. Raises on failure."""
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
        rc = run_isolated(args) if isolated else main(args)
        if rc:
            raise StageError(name, rc)
    return {"stage": name, "outputs": list(st.outputs), "work": str(work), "root": root}


def run_isolated(args: Sequence[str]) -> int:
    """``python -m cmrops.stage_command ARGS`` in this folder, its output relayed line by line to
    this process's stdout (the Airflow task log); returns its exit code. The child ends with this
    process (it watches its parent); if this process stops waiting (a task timeout raised here),
    the child is stopped too."""
    import subprocess
    import sys

    from cmrops.stage_command import PARENT_ENV

    env = {**os.environ, PARENT_ENV: str(os.getpid())}
    proc = subprocess.Popen(
        [sys.executable, "-m", "cmrops.stage_command", *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace", env=env,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
        return proc.wait()
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


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

#: Mapped ``preprocess_shards`` tasks one DAG run runs at once (its ``max_active_tis_per_dagrun``).
PREPROCESS_TASKS_AT_ONCE = 4


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
    """Decode and embed a group of shards (a no-op for those recorded already). The task's
    threads are its share of the machine's: up to :data:`PREPROCESS_TASKS_AT_ONCE` groups run
    side by side."""
    from cmrops import engine, threads
    from cmrops.params import load_section
    from cmrops.stages.preprocess import planned_tasks, run_shards

    work = Path(work).resolve()
    root = None if not root or same_place(root, work) else root
    engine_params = load_section(params_file, engine.SECTION, engine.EngineParams)
    params = _preprocess_params(params_file)
    with _staged(("data/raw", "data/interim/shards"), ("data/interim/shards",), work, root):
        beside = min(PREPROCESS_TASKS_AT_ONCE, planned_tasks(params, work / "data/interim"))
        threads.configure(engine_params.threads, side_by_side=beside)
        with engine.session(engine_params):
            run_shards(params, work / "data/raw", work / "data/interim", indices)
    return list(indices)


# --------------------------------------------------------------------------- run summary


def summary(work: str | os.PathLike[str] = ".") -> str:
    """A short text report of a finished run from the metrics files under ``work``: samples
    in / kept / quarantined by stage and reason, cleaning precision/recall on the planted
    defects, split sizes and leakage, and the mAP table by model (method-bits) and direction."""
    from cmrops.telemetry.files import record

    w = Path(work)
    raw, interim = record(w, "collect"), record(w, "preprocess")
    quality, split, retrieval = record(w, "clean"), record(w, "split"), record(w, "evaluate")
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
        relevance = retrieval.get("relevance", {})
        if relevance.get("mode") == "pair":
            lines += ["", *_pair_lines(retrieval, directions)]
            beside = retrieval.get("label_relevance")
            if beside:
                induced = beside.get("relevance", {}).get("labels_induced")
                head = "mAP, label relevance" + (" (induced labels)" if induced else "")
                lines += ["", *_map_lines(beside.get("models", {}), directions, head)]
        else:
            lines += ["", *_map_lines(models, directions, "mAP (hash codes)")]
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


def _model_order(models: dict[str, Any]) -> list[str]:
    def key(name: str) -> tuple[str, int]:
        m = models[name]
        return str(m.get("method", name)), int(m.get("bits", 0))

    return sorted(models, key=key)


def _map_lines(models: dict[str, Any], directions: list[str], head: str) -> list[str]:
    lines = [f"{head:<22}" + "".join(f"{d:>16}" for d in directions)]
    for name in _model_order(models):
        dirs = models[name].get("directions", {})
        cells = [dirs.get(d, {}).get("hash", {}).get("map") for d in directions]
        lines.append(
            f"  {name:<20}"
            + "".join(f"{c:>16.4f}" if isinstance(c, float) else f"{'-':>16}" for c in cells)
        )
    return lines


def _pair_lines(retrieval: dict[str, Any], directions: list[str]) -> list[str]:
    """Caption retrieval under pair relevance: R@1/5/10 and the median rank per direction."""
    models = retrieval.get("models", {})

    def cell(ranks: dict[str, Any] | None) -> str:
        if not ranks:
            return f"{'-':>30}"
        r = ranks.get("recall_at", {})
        vals = " / ".join(
            f"{r[k]:.3f}" if isinstance(r.get(k), float) else "-" for k in sorted(r, key=int)
        )
        med = ranks.get("median_rank")
        return f"{vals + (f'  med {med:g}' if med is not None else ''):>30}"

    some = next(iter(models.values()), {}).get("directions", {})
    first = next(iter(some.values()), {}) if some else {}
    ks = sorted(
        first.get("hash", {}).get("pair_ranks", {}).get("tie_aware", {}).get("recall_at", {}),
        key=int,
    )
    head = f"R@{'/'.join(ks) or 'K'}, median rank (pair relevance: a caption's own photo)"
    lines = [head, f"{'':<22}" + "".join(f"{d:>30}" for d in directions)]
    base = retrieval.get("float_baseline")
    if base:
        dirs = base.get("directions", {})
        lines.append(
            f"  {'aligned float':<20}"
            + "".join(cell(dirs.get(d, {}).get("pair_ranks")) for d in directions)
        )
    for name in _model_order(models):
        dirs = models[name].get("directions", {})
        lines.append(
            f"  {name:<20}"
            + "".join(
                cell(dirs.get(d, {}).get("hash", {}).get("pair_ranks", {}).get("tie_aware"))
                for d in directions
            )
        )
    return lines
