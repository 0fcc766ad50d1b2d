"""Fitting the closed-form methods (``itq``, ``cca``, ``cmfh``): no optimiser, no epochs.

:func:`fit` is what :func:`cmrops.models.loop.fit` hands a closed-form method to. It centres the
training embeddings, calls the method's solver in float64 numpy (:mod:`.itq`, :mod:`.cca`,
:mod:`.cmfh`), and stores the projections as a :class:`~cmrops.models.linear.LinearHasher` in
the same checkpoint folder layout as a trained model (``model.safetensors``, ``config.json``,
``state.json``; no optimizer file), through :mod:`cmrops.models.checkpoint`. The same rules hold:

* the config holds the model shape, the method, its own knobs (and the seed, where the solver
  draws from one) and the data fingerprint; a rerun with the same config reloads the stored
  matrices instead of refitting (``resumed_from_step`` = the stored iteration count);
* the same config on other data refits (a model of an earlier release); other knobs are
  refused (``--restart`` discards them);
* a kill during the fit leaves no checkpoint (it is written once, when done), so a rerun
  simply fits again - in seconds - to the same bytes.

Validation mAP on the validation split is computed as for the deep methods (there is nothing
to select, but it is reported for comparison).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cmrops.models import cca, cmfh, itq
from cmrops.models import checkpoint as ckpt
from cmrops.models.cca import Solution
from cmrops.models.hasher import HasherConfig
from cmrops.models.linear import LinearConfig, LinearHasher
from cmrops.models.training import (
    PairedData,
    TrainConfig,
    TrainResult,
    data_id,
    model_seed,
    seed_all,
    validate,
)

log = logging.getLogger(__name__)

SOLVERS: dict[str, Callable[[np.ndarray, np.ndarray, int, Any, int], Solution]] = {
    "itq": itq.solve,
    "cca": cca.solve,
    "cmfh": cmfh.solve,
}
SEEDED = ("itq", "cmfh")  # solvers that draw from the seed (random rotation / initialisation)


def run_config(model: LinearConfig, config: TrainConfig, data_id: str) -> dict[str, Any]:
    """The ``config.json`` of a closed-form model: a reload must match it exactly."""
    train: dict[str, Any] = {"method": config.method}
    if config.method in SEEDED:
        train["seed"] = config.seed
    train[config.method] = asdict(getattr(config, config.method))
    return {"model": model.to_json(), "train": train, "data": data_id}


def fit(
    model_config: HasherConfig,
    config: TrainConfig,
    train: PairedData,
    val: PairedData | None,
    checkpoint_dir: str | os.PathLike[str],
    *,
    val_database: PairedData | None = None,
) -> TrainResult:
    """Fit (or reload) the closed-form model ``config.method`` (see module docstring)."""
    method = config.method
    if method not in SOLVERS:
        raise ValueError(f"{method!r} is not a closed-form method ({', '.join(SOLVERS)} are)")
    if model_config.encoder is not None or not isinstance(train.image, np.ndarray):
        raise ValueError(
            f"method {method} is a linear projection of the embeddings; it does not combine "
            "with an encoder to fine-tune (train.finetune_encoder): use dcmh or contrastive"
        )
    shape = LinearConfig(model_config.image_dim, model_config.text_dim, model_config.n_bits)
    run_cfg = run_config(shape, config, data_id(train, val, val_database))
    directory = Path(checkpoint_dir)
    if ckpt.stale_data(directory, run_cfg):
        log.info("%s: the training data changed since this fit: fitting afresh", directory)
        ckpt.remove(directory)
    model = LinearHasher(shape)
    labelled = train.labels is not None and val is not None and val.labels is not None
    relevance = "labels" if labelled else "pairs"
    if ckpt.exists(directory):
        state, _ = ckpt.load(directory, run_cfg, model)  # refuses another config
        if state.get("done"):
            model.eval()
            return _result(model, state, relevance, resumed_from=state["step"], per_s=0.0)
        ckpt.remove(directory)  # (never written unfinished; refit whatever this is)

    t0 = time.perf_counter()
    x = np.asarray(train.image, np.float64)
    y = np.asarray(train.text, np.float64)
    means = x.mean(axis=0), y.mean(axis=0)
    xc, yc = x - means[0], y - means[1]
    seed = model_seed(config.seed, method, shape.n_bits)
    seed_all(seed)  # the checkpoint records the RNG states: the same whatever ran before
    sol = SOLVERS[method](xc, yc, shape.n_bits, getattr(config, method), seed)
    for head, mean, centred, w in (
        (model.image, means[0], xc, sol.image),
        (model.text, means[1], yc, sol.text),
    ):
        offset = (
            np.median(centred @ w, axis=0) if sol.threshold == "median" else np.zeros(w.shape[1])
        )
        head.set(mean, w, offset)
    model.eval()
    seconds = time.perf_counter() - t0

    state: dict[str, Any] = {
        "step": sol.iterations,
        "epoch": 0,
        "batch": 0,
        "done": True,
        "best_val_map": None,
        "best_step": None,
        "bad_epochs": 0,
        "early_stop_step": None,
        "epoch_sums": {},
        "history": sol.history,
        "samples_seen": len(train),
        "summary": sol.summary,
    }
    if val is not None and len(val):
        scores = validate(model, val, val_database or train, relevance, torch.device("cpu"))
        state.update(best_val_map=scores["map"], best_step=sol.iterations, val=scores)
    ckpt.save(directory, run_cfg, model, None, state)
    log.info(
        "%s-%d: fitted in %.2fs (%d iterations), val mAP %s",
        method,
        shape.n_bits,
        seconds,
        sol.iterations,
        "-" if state["best_val_map"] is None else f"{state['best_val_map']:.4f}",
    )
    return _result(model, state, relevance, resumed_from=None, per_s=len(train) / seconds)


def _result(
    model: LinearHasher,
    state: dict[str, Any],
    relevance: str,
    resumed_from: int | None,
    per_s: float,
) -> TrainResult:
    return TrainResult(
        model=model,
        steps=state["step"],
        epochs=state["epoch"],
        best_val_map=state["best_val_map"],
        best_step=state["best_step"],
        early_stop_step=None,
        final_losses=dict(state["summary"]),
        samples_per_s=per_s,
        relevance=relevance,
        resumed_from_step=resumed_from,
        history=list(state["history"]),
    )
