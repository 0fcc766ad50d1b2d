"""The train stage's models: each (method, bit length) fitted and its codes written, one model per
worker process when the CPU has room.

Training runs on :data:`cmrops.threads.TRAINING_THREADS` threads so that a model's bytes never
depend on the machine (:func:`cmrops.threads.training`). A second core therefore goes unused by
any one model; it trains *another* model instead: on the CPU, with more than one model to fit
and a thread budget above one, the models are spread over that many ``spawn`` worker processes
(:func:`cmrops.procpool.spawn_pool`, one thread each). Every model is seeded from its own
``(seed, method, bits)`` and fits the same rows in the same order, so the checkpoints, codes and
metrics are byte-identical to training them one after another (``tests/test_train_stage.py``
compares the two). A worker reads the stage's inputs itself, once (:func:`_worker_sets`), rather
than receiving them pickled with every model. On a GPU, or fine-tuning an encoder (the crops
are read lazily from the store), models train one after another in this process.

A killed stage kills its workers (they watch their parent); each model resumes from its own
checkpoint on the rerun.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from cmrops import io, threads

if TYPE_CHECKING:
    from cmrops.models.training import PairedData
    from cmrops.stages.train import TrainParams
    from cmrops.stages.train_inputs import Inputs, Roles

log = logging.getLogger(__name__)

STAGE = "train"
T = TypeVar("T")


@dataclass(frozen=True)
class Sets:
    """The rows each model fits (train), selects on (val, val_db) and codes (query, database)."""

    train: PairedData
    val: PairedData | None
    val_db: PairedData | None
    query: PairedData
    database: PairedData


@dataclass(frozen=True)
class Job:
    """One model to fit, and what its ``meta.json`` records about the data."""

    method: str
    bits: int
    similarity: str  # what a supervised method learns from: "labels" or "pairs"
    feature_dims: tuple[int, int]
    encoder_sha: str | None
    models: Path
    codes: Path
    device: str
    restart: bool
    facts: dict[str, Any]  # media, protocol, split seed, set sizes, val_from

    @property
    def name(self) -> str:
        return f"{self.method}-{self.bits}"


@dataclass(frozen=True)
class Source:
    """Where a worker reads the stage's inputs (the arguments of :func:`load_inputs`)."""

    split: Path
    clean: Path
    interim: Path
    labelled: Path | None


def sets(data: Inputs, roles: Roles, image: Any, text: Any) -> Sets:
    """The role rows of ``image`` / ``text`` (the embeddings, or an encoder's stored crops)."""
    from cmrops.models.training import PairedData

    def part(rows: np.ndarray) -> PairedData:
        return PairedData(
            image[rows], text[rows], None if data.labels is None else data.labels[rows]
        )

    val = part(roles.val) if len(roles.val) else None
    return Sets(
        train=part(roles.train),
        val=val,
        val_db=part(roles.val_database) if val is not None and data.labels is not None else None,
        query=part(roles.query),
        database=part(roles.database),
    )


def workers_for(jobs: list[Job], device: str, lazy: bool) -> int:
    """Worker processes for ``jobs``: the thread budget (each worker trains on one thread), at
    most one per deep model; 1 (train here) on a GPU, for fine-tuning, or with one model."""
    from cmrops.methods import info

    deep = sum(1 for j in jobs if info(j.method).kind != "closed_form")
    if device != "cpu" or lazy or deep < 2:
        return 1
    return max(1, min(threads.current() // threads.TRAINING_THREADS, deep))


def train_all(
    jobs: list[Job],
    params: TrainParams,
    data_sets: Sets,
    source: Source,
    *,
    workers: int,
    progress: bool,
    alongside: Callable[[], T],
) -> tuple[dict[str, tuple[dict[str, Any], dict[str, Any]]], T]:
    """Fit every job (in this process, or over ``workers`` processes) and run ``alongside``
    (the stage's other fit, the aligned float baseline); (name -> (stats, throughput), in
    ``jobs`` order; what ``alongside`` returned). Over worker processes, ``alongside`` runs
    here while they train: this process would otherwise only wait, and a fit left for after
    the models kept one core busy and the other idle."""
    if workers <= 1:
        done = {j.name: fit_and_write(j, params, data_sets, progress) for j in jobs}
        return done, alongside()
    from cmrops.procpool import spawn_pool

    log.info("train: %d models over %d worker processes (one thread each)", len(jobs), workers)
    level = logging.getLogger().getEffectiveLevel()
    done = {}
    with (
        # the training threads set from this thread, for the fit alongside: OpenBLAS keeps the
        # size this thread set last and ignores a size set from another thread
        threads.training(),
        spawn_pool(workers, threads=threads.TRAINING_THREADS) as pool,
        cf.ThreadPoolExecutor(1, thread_name_prefix="cmrops-alongside") as here,
    ):
        futures = {
            j.name: pool.submit(_in_worker, j, params, source, level) for j in jobs
        }  # fmt: skip
        beside = here.submit(alongside)
        try:
            for i, job in enumerate(jobs, 1):
                done[job.name] = futures[job.name].result()
                log.info("train: %s done [%d/%d]", job.name, i, len(jobs))
            return done, beside.result()
        except BaseException:
            for f in futures.values():  # models not started yet: the stage failed
                f.cancel()
            raise


_WORKER_SETS: dict[tuple[Source, str], Sets] = {}


def _worker_sets(source: Source, params: TrainParams) -> Sets:
    """The stage's sets, read once per worker process (the same function as the parent's)."""
    from cmrops.stages.train_inputs import assign_roles, load_inputs

    key = (source, repr(params))
    if key not in _WORKER_SETS:
        data = load_inputs(source.split, source.clean, source.interim, source.labelled)
        _WORKER_SETS[key] = sets(data, assign_roles(data, params), data.image, data.text)
    return _WORKER_SETS[key]


def _in_worker(
    job: Job, params: TrainParams, source: Source, level: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """One model in a worker process: its log lines go to stderr like the parent's."""
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
        root.setLevel(level)
    return fit_and_write(job, params, _worker_sets(source, params), progress=False)


@threads.training()  # CPU training on a fixed number of threads: the same bytes on any machine
def fit_and_write(
    job: Job, params: TrainParams, data_sets: Sets, progress: bool
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Fit (or resume, or reload) one model, write its codes and ``meta.json``; (stats,
    throughput)."""
    from cmrops.codes import pack_bits
    from cmrops.methods import info
    from cmrops.models import checkpoint as ckpt
    from cmrops.models.loop import encode, fit

    model_dir = job.models / job.name
    if job.restart:
        ckpt.remove(model_dir)
    result = fit(
        params.model_config(*job.feature_dims, job.bits, job.encoder_sha),
        params.train_config(job.method, job.similarity),
        data_sets.train,
        data_sets.val,
        model_dir,
        device=job.device,
        val_database=data_sets.val_db,
        progress=progress,
    )
    out = job.codes / job.name
    out.mkdir(parents=True, exist_ok=True)
    for role, subset in (("query", data_sets.query), ("database", data_sets.database)):
        img, txt = encode(result.model, subset)
        for kind, x in (("image", img), ("text", txt)):
            io.write_npy(out / f"{kind}_{role}.npy", pack_bits(x > 0))
            io.write_npy(out / f"{kind}_{role}_float.npy", x)
    stats = {
        "steps": result.steps,
        "epochs": result.epochs,
        "best_val_map": _round(result.best_val_map),
        "best_step": result.best_step,
        "early_stop_step": result.early_stop_step,
        "final_losses": {k: _round(v) for k, v in result.final_losses.items()},
    }
    supervised = info(job.method).supervised
    meta = {
        "stage": STAGE,
        "method": job.method,
        "method_info": info(job.method).to_json(),
        "bits": job.bits,
        "n_bits": job.bits,
        "words": (job.bits + 63) // 64,
        "code_layout": "uint64; bit j is bit j % 64 of word j // 64; 1 = output > 0",
        "media": job.facts["media"],  # the "image" codes are of this media
        "protocol": job.facts["protocol"],
        "split_seed": job.facts["split_seed"],
        "model_dir": str(model_dir),
        "n_query": job.facts["n_query"],
        "n_database": job.facts["n_database"],
        "train_samples": job.facts["train_samples"],
        "val_samples": job.facts["val_samples"],
        "val_from": job.facts["val_from"],  # model selection: never on the query set
        "val_relevance": result.relevance,
        **({"similarity": job.similarity} if supervised else {}),
        **stats,
    }
    io.write_json(out / "meta.json", meta)
    return stats, {"samples_per_s": round(result.samples_per_s, 1)}


def _round(x: float | None) -> float | None:
    return None if x is None else round(float(x), 6)
