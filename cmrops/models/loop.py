"""The one training loop, for every method and code length.

:func:`fit` is the single entry point of training, for every method of
:data:`cmrops.methods.CATALOGUE`. A closed-form method (``itq``, ``cca``, ``cmfh``) is handed to
:func:`cmrops.models.closed_form.fit` (no optimiser: a float64 solve, same checkpoint folder and
reload rules). A deep method (``dcmh``, ``contrastive``, ``djsrh``) trains a
:class:`~cmrops.models.hasher.CrossModalHasher` on paired embeddings here, the method selecting
the batch loss (:func:`_batch_loss`):

* device: ``auto`` picks CUDA when torch sees a GPU, else the CPU (never a fixed ``cuda:N``);
  on CUDA the forward pass runs under bf16 autocast (losses in float32);
* seeded: the model's initialisation comes from ``(seed, method, n_bits)``; the batch order of
  epoch ``e`` is a permutation drawn from ``(seed, e)``, so it never depends on how the run was
  interrupted; torch, numpy and python RNGs are seeded and their states checkpointed;
  deterministic torch algorithms are switched on for the duration of the call;
* AdamW, gradient-norm clipping, constant learning rate; batches of ``batch_size`` paired
  samples (an incomplete last batch is dropped, so every InfoNCE batch has the same size);
* after each epoch: tie-aware validation mAP (image→text and text→image, averaged) from the
  Rust core's Hamming histograms (:mod:`cmrops.models.ranking`); the best weights are kept and
  training stops after ``patience`` epochs without improvement (0: never early);
* a checkpoint every ``checkpoint_every`` steps and at the end (:mod:`cmrops.models.checkpoint`):
  a rerun after a kill resumes from it and reaches bit-identical weights on the CPU;
* logging: a tqdm bar over steps and one log line per epoch (losses, validation mAP).

The result holds the selected weights (best validation mAP, else the last ones).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from cmrops.methods import METHODS as METHODS
from cmrops.methods import info
from cmrops.models import checkpoint as ckpt
from cmrops.models.djsrh import djsrh_loss, joint_affinity
from cmrops.models.finetune import EncoderHasher, build_hasher
from cmrops.models.hasher import HasherConfig
from cmrops.models.losses import contrastive_loss, dcmh_loss, label_similarity
from cmrops.models.training import ENCODE_BATCH as ENCODE_BATCH
from cmrops.models.training import OPTIONS as OPTIONS
from cmrops.models.training import Hasher as Hasher
from cmrops.models.training import Method as Method
from cmrops.models.training import PairedData as PairedData
from cmrops.models.training import TrainConfig as TrainConfig
from cmrops.models.training import TrainResult as TrainResult
from cmrops.models.training import as_tensor, data_id, model_seed, seed_all, validate
from cmrops.models.training import encode as encode
from cmrops.models.training import run_config as run_config

log = logging.getLogger(__name__)


def fit(
    model_config: HasherConfig,
    config: TrainConfig,
    train: PairedData,
    val: PairedData | None,
    checkpoint_dir: str | os.PathLike[str],
    *,
    device: str = "auto",
    val_database: PairedData | None = None,
    progress: bool = True,
    on_step: Callable[[int], None] | None = None,
) -> TrainResult:
    """Train (or resume, or just reload a finished run from ``checkpoint_dir``).

    Validation queries are ``val``; relevance is label sharing when labels are present (the
    database is ``val_database``, default ``train``), else the paired item (the database is
    ``val`` itself). ``on_step(step)`` is called after every optimiser step (and after that
    step's checkpoint), e.g. to stop a test run half-way."""
    from cmrops.encoders import resolve_device

    method = info(config.method)
    if method.supervised and config.similarity == "labels" and train.labels is None:
        raise ValueError(
            f"method {method.name} is supervised: the training samples need labels (or "
            "similarity: pairs)"
        )
    if method.kind == "closed_form":
        from cmrops.models import closed_form

        return closed_form.fit(
            model_config, config, train, val, checkpoint_dir, val_database=val_database
        )
    if config.method == "djsrh" and (
        model_config.encoder is not None or not isinstance(train.image, np.ndarray)
    ):
        raise ValueError(
            "method djsrh builds its affinity graph from the embeddings; it does not combine "
            "with an encoder to fine-tune (train.finetune_encoder): use dcmh or contrastive"
        )
    dev = torch.device(resolve_device(device))
    if dev.type == "cuda":  # cuBLAS needs this for deterministic results; set before first use
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    run_cfg = run_config(model_config, config, data_id(train, val, val_database))
    directory = Path(checkpoint_dir)
    if ckpt.stale_data(directory, run_cfg):
        # same settings, new data (a scheduled run added samples): this is a new model, not a
        # resume; the old one stays in DVC with the release it was trained on
        log.info("%s: the training data changed since this checkpoint: training afresh", directory)
        ckpt.remove(directory)
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        return _fit(
            model_config,
            config,
            train,
            val,
            val_database,
            directory,
            run_cfg,
            dev,
            progress,
            on_step,
        )
    finally:
        torch.use_deterministic_algorithms(was_deterministic)


def _fused(dev: torch.device) -> bool | None:
    """``fused=True`` where torch has a fused AdamW kernel (CPU, CUDA), else its default."""
    return True if dev.type in ("cpu", "cuda") else None


def _fit(
    model_config: HasherConfig,
    config: TrainConfig,
    train: PairedData,
    val: PairedData | None,
    val_database: PairedData | None,
    directory: Path,
    run_cfg: dict[str, Any],
    dev: torch.device,
    progress: bool,
    on_step: Callable[[int], None] | None,
) -> TrainResult:
    seed = model_seed(config.seed, config.method, model_config.n_bits)
    seed_all(seed)
    model = build_hasher(model_config).to(dev)
    groups = (
        model.param_groups(config.lr, config.encoder_lr)
        if isinstance(model, EncoderHasher)
        else [{"params": list(model.parameters())}]
    )
    # fused: one pass over each parameter (2.8 ms a step against 19 ms for the per-tensor loop,
    # these heads, one CPU thread); elementwise, so the same bytes whatever the thread count
    opt = torch.optim.AdamW(
        groups, lr=config.lr, weight_decay=config.weight_decay, fused=_fused(dev)
    )

    # Everything the loop carries from step to step lives in `state` (JSON) and `best` (tensors).
    state: dict[str, Any] = {
        "step": 0,
        "epoch": 0,
        "batch": 0,
        "done": False,
        "best_val_map": None,
        "best_step": None,
        "bad_epochs": 0,
        "early_stop_step": None,
        "epoch_sums": {},
        "history": [],
        "samples_seen": 0,
    }
    # Wall-clock throughput of this session only: kept out of the checkpoint so that saved
    # state (and everything derived from it) is identical between runs.
    clock = {"seconds": 0.0, "samples": 0}
    best: dict[str, torch.Tensor] | None = None
    resumed_from = None
    if ckpt.exists(directory):
        saved, best = ckpt.load(directory, run_cfg, model, opt)
        state.update({k: saved[k] for k in state if k in saved})
        ckpt.set_rng_state(saved["rng"])
        resumed_from = state["step"]
        log.info("%s: resuming from step %d (epoch %d)", directory, state["step"], state["epoch"])
    labelled = train.labels is not None and val is not None and val.labels is not None
    relevance = "labels" if labelled and config.similarity == "labels" else "pairs"
    if state["done"]:
        model.eval()
        return _result(model, state, relevance, resumed_from, clock)

    # Pixels read from the store (finetune.StoredCrops) stay there; a batch is read when used.
    lazy = not isinstance(train.image, np.ndarray)
    x_img = train.image if lazy else as_tensor(train.image).to(dev)
    x_txt = as_tensor(train.text).to(dev)
    y = (
        torch.from_numpy(train.labels.astype(np.float32)).to(dev)
        if train.labels is not None
        else None
    )
    feats = _affinity_inputs(config, train, dev)
    n = len(train)
    bs = min(config.batch_size, n)
    steps_per_epoch = n // bs
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if dev.type == "cuda"
        else contextlib.nullcontext()
    )
    bar = tqdm(
        total=config.epochs * steps_per_epoch,
        initial=state["step"],
        disable=not progress,
        desc=f"{config.method}-{model_config.n_bits}",
        unit="step",
        leave=False,
    )

    while state["epoch"] < config.epochs:
        order = torch.from_numpy(_epoch_order(config.seed, state["epoch"], n)).to(dev)
        model.train()
        sums = {
            k: torch.tensor(v, dtype=torch.float64, device=dev)
            for k, v in state["epoch_sums"].items()
        }
        t0 = time.perf_counter()
        while state["batch"] < steps_per_epoch:
            idx = order[state["batch"] * bs : (state["batch"] + 1) * bs]
            with autocast:
                images = as_tensor(x_img[idx.cpu().numpy()]).to(dev) if lazy else x_img[idx]
                f, g = model(images, x_txt[idx])
            loss, parts = _batch_loss(config, f, g, idx, y, feats)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(
                    [p for p in model.parameters() if p.requires_grad], config.grad_clip
                )
            opt.step()

            state["step"] += 1
            state["batch"] += 1
            state["samples_seen"] += bs
            clock["samples"] += bs
            for k, v in {"loss": loss.detach(), **parts}.items():  # summed on the device: no sync
                sums[k] = sums[k] + v.double() if k in sums else v.double()
            bar.update(1)
            if config.checkpoint_every and state["step"] % config.checkpoint_every == 0:
                state["epoch_sums"] = {k: float(v) for k, v in sums.items()}  # syncs the device
                clock["seconds"] += time.perf_counter() - t0
                ckpt.save(directory, run_cfg, model, opt, state, best=best)
                t0 = time.perf_counter()
            if on_step is not None:
                on_step(state["step"])
        if dev.type == "cuda":
            torch.cuda.synchronize()  # the steps' kernels have run: time them, not their launch
        clock["seconds"] += time.perf_counter() - t0

        # End of epoch: losses, validation, early stopping.
        losses = {k: float(v) / steps_per_epoch for k, v in sums.items()}
        bar.set_postfix(loss=f"{losses['loss']:.4f}")
        entry: dict[str, Any] = {"epoch": state["epoch"] + 1, "step": state["step"], **losses}
        if val is not None and len(val):
            scores = validate(model, val, val_database or train, relevance, dev)
            entry.update({f"val_{k}": v for k, v in scores.items()})
            if state["best_val_map"] is None or scores["map"] > state["best_val_map"]:
                state.update(best_val_map=scores["map"], best_step=state["step"], bad_epochs=0)
                best = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                state["bad_epochs"] += 1
        state["history"].append(entry)
        log.info(
            "%s-%d epoch %d: %s",
            config.method,
            model_config.n_bits,
            entry["epoch"],
            ", ".join(f"{k} {v:.4f}" for k, v in entry.items() if isinstance(v, float)),
        )
        state.update(epoch=state["epoch"] + 1, batch=0, epoch_sums={})
        if config.patience and state["bad_epochs"] >= config.patience:
            state["early_stop_step"] = state["step"]
            log.info(
                "%s-%d: early stop at step %d (best val mAP %.4f at step %s)",
                config.method,
                model_config.n_bits,
                state["step"],
                state["best_val_map"],
                state["best_step"],
            )
            break
    bar.close()

    state["done"] = True
    if best is not None:
        model.load_state_dict(best)
    ckpt.save(directory, run_cfg, model, opt, state)
    model.eval()
    return _result(model, state, relevance, resumed_from, clock)


def _affinity_inputs(
    config: TrainConfig, train: PairedData, dev: torch.device
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """What DJSRH's affinity graph is built from: the training embeddings (float32, centred by
    their mean when ``djsrh.centre``); None for the other methods."""
    if config.method != "djsrh":
        return None
    x, y = (torch.from_numpy(np.asarray(a, np.float64)) for a in (train.image, train.text))
    if config.djsrh.centre:
        x, y = x - x.mean(dim=0), y - y.mean(dim=0)
    return x.float().to(dev), y.float().to(dev)


def _batch_loss(
    config: TrainConfig,
    f: torch.Tensor,
    g: torch.Tensor,
    idx: torch.Tensor,
    labels: torch.Tensor | None,
    feats: tuple[torch.Tensor, torch.Tensor] | None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The method's objective on one batch (rows ``idx`` of the training set)."""
    qw, bw = config.quantization_weight, config.balance_weight
    if config.method == "dcmh":
        if config.similarity == "pairs":  # S = I: image i is similar to its own text only
            eye = torch.eye(len(idx), device=f.device)
            return dcmh_loss(f, g, eye, qw, bw, balanced=True)
        assert labels is not None
        return dcmh_loss(f, g, label_similarity(labels[idx], labels[idx]), qw, bw)
    if config.method == "djsrh":
        assert feats is not None
        target = joint_affinity(feats[0][idx], feats[1][idx], config.djsrh)
        return djsrh_loss(f, g, target, config.djsrh, qw, bw)
    return contrastive_loss(f, g, config.temperature, qw, bw)


def _result(
    model: Hasher,
    state: dict[str, Any],
    relevance: str,
    resumed_from: int | None,
    clock: dict[str, float],
) -> TrainResult:
    history = state["history"]
    last = history[-1] if history else {}
    final = {
        k: v for k, v in last.items() if k not in ("epoch", "step") and not k.startswith("val_")
    }
    secs = clock["seconds"]
    return TrainResult(
        model=model,
        steps=state["step"],
        epochs=state["epoch"],
        best_val_map=state["best_val_map"],
        best_step=state["best_step"],
        early_stop_step=state["early_stop_step"],
        final_losses=final,
        samples_per_s=clock["samples"] / secs if secs > 0 else 0.0,
        relevance=relevance,
        resumed_from_step=resumed_from,
        history=history,
    )


def _epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)
