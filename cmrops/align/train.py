"""Fit an :class:`~cmrops.align.model.Alignment` on a data set's own image-text pairs.

Row ``i`` of ``image`` and of ``text`` is one pair. A seeded permutation holds out
``params.holdout`` of the pairs; the rest train two heads (:class:`~cmrops.align.AlignParams`)
with the symmetric InfoNCE loss (CLIP's: cross-entropy of ``z_i . z_t / temperature`` over the
batch, image->text and text->image averaged), AdamW, batches in an order drawn from the seed every
epoch. Both sides are centred on the training mean first (the frozen embeddings of one encoder
share a large common component that carries no pairing). After each epoch the held-out loss is
measured; the weights of the best epoch are kept and training stops after ``patience`` epochs
without improvement. Everything runs on the CPU under ``torch.use_deterministic_algorithms`` with
the seed fixed, so the same pairs and parameters give the same weights, byte for byte.

The held-out metrics returned: ``loss`` (in batch-sized chunks), ``r1_i2t`` / ``r1_t2i``
(recall@1 with the held-out pairs as the gallery, cut into galleries of at most 1,000),
``swapped_auroc`` (true pairs against deranged captions,
:func:`~cmrops.align.metrics.swapped_caption_auroc`) and the calibrated mismatch threshold
(``calibration``, :func:`~cmrops.align.metrics.calibrate_threshold`).
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import hashlib
import logging
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from cmrops import threads
from cmrops.align.metrics import auroc as _auroc
from cmrops.align.metrics import calibrate_threshold, recall_at_1, swapped_scores
from cmrops.align.model import SIDES, Alignment, Head, normalise
from cmrops.align.params import AlignParams

log = logging.getLogger(__name__)

MIN_PAIRS = 8
#: R@1 is measured in galleries of at most this many held-out pairs (the COCO "1k" convention).
R1_GALLERY = 1000


def data_fingerprint(image: np.ndarray, text: np.ndarray) -> str:
    """SHA-256 over both arrays' dtype, shape and bytes: the identity of the training pairs."""
    h = hashlib.sha256()
    for a in (image, text):
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{tuple(a.shape)}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def split_pairs(n: int, holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted train and held-out row indices: a seeded permutation, ``round(holdout * n)``
    (at least 2) held out, at least 2 left to train."""
    n_hold = max(2, round(holdout * n))
    if n - n_hold < 2:
        raise ValueError(f"{n} pairs are too few to hold out {n_hold} and train on the rest")
    perm = np.random.default_rng([seed, 0xA1]).permutation(n)
    return np.sort(perm[n_hold:]), np.sort(perm[:n_hold])


#: torch's global generator (nn.Linear's initialisation draws from it): seeded, then drawn
#: from, by one fit at a time, so that fits side by side initialise as they would in turn.
_GLOBAL_RNG = threading.Lock()


@contextlib.contextmanager
def _deterministic() -> Iterator[None]:
    import torch

    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was)


def fit_alignment(
    image: np.ndarray, text: np.ndarray, params: AlignParams, *, progress: bool = True
) -> tuple[Alignment, dict[str, Any]]:
    """Train an alignment on the pairs ``(image[i], text[i])``; returns it and the held-out
    metrics (see module docstring). Rows must be finite; they are L2-normalised first."""
    image, text = check_pairs(image, text)
    train_idx, hold_idx = split_pairs(len(image), params.holdout, params.seed)
    return fit_split(image, text, train_idx, hold_idx, params, progress=progress)


def check_pairs(image: np.ndarray, text: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both sides as float32, checked: paired ``(n, d)`` rows, at least :data:`MIN_PAIRS`,
    finite."""
    image = np.asarray(image, dtype=np.float32)
    text = np.asarray(text, dtype=np.float32)
    if image.ndim != 2 or text.ndim != 2 or len(image) != len(text):
        raise ValueError(
            f"expected paired (n, d) arrays, got image {image.shape} and text {text.shape}"
        )
    if len(image) < MIN_PAIRS:
        raise ValueError(f"{len(image)} pairs: an alignment needs at least {MIN_PAIRS}")
    if not (np.isfinite(image).all() and np.isfinite(text).all()):
        raise ValueError("features hold NaN or infinity: pass only samples with embeddings")
    return image, text


def fit_split(
    image: np.ndarray,
    text: np.ndarray,
    train_idx: np.ndarray,
    hold_idx: np.ndarray,
    params: AlignParams,
    *,
    progress: bool = True,
) -> tuple[Alignment, dict[str, Any]]:
    """:func:`fit_alignment` on a given split (row indices); the rows are not re-checked."""
    image = np.asarray(image, dtype=np.float32)
    text = np.asarray(text, dtype=np.float32)
    with _deterministic():
        heads, history = _train(image, text, train_idx, hold_idx, params, progress)
    info: dict[str, Any] = {
        "kind": "learned",
        "params": params.to_dict(),
        "pairs": len(image),
        "train_pairs": len(train_idx),
        "holdout_pairs": len(hold_idx),
        "data_sha256": data_fingerprint(image, text),
        "loss": "symmetric InfoNCE",
        **history,
    }
    alignment = Alignment("learned", heads, info)
    metrics = evaluate(alignment, image[hold_idx], text[hold_idx], params)
    metrics["loss"] = history["best_holdout_loss"]
    alignment.info["holdout"] = metrics
    return alignment, metrics


def fit_splits(
    image: np.ndarray,
    text: np.ndarray,
    splits: Sequence[tuple[np.ndarray, np.ndarray]],
    params: AlignParams,
    *,
    progress: bool = False,
) -> list[tuple[Alignment, dict[str, Any]]]:
    """:func:`fit_split` of each ``(train_idx, hold_idx)`` in ``splits``, in order; the first
    shows progress. Fits run side by side on :func:`~cmrops.threads.fits_at_once` threads of
    this process: each fit runs torch on its own thread alone (the training budget,
    :data:`~cmrops.threads.TRAINING_THREADS`), and torch releases the GIL inside its kernels.
    A fit's bytes do not depend on which thread ran it, nor on what ran beside it: each has
    its own seeded batch order, and initialises its heads from the seeded global generator
    alone (:data:`_GLOBAL_RNG`)."""
    image = np.asarray(image, dtype=np.float32)
    text = np.asarray(text, dtype=np.float32)
    at_once = min(len(splits), threads.fits_at_once())
    if at_once <= 1:
        return [
            fit_split(image, text, tr, ho, params, progress=progress and i == 0)
            for i, (tr, ho) in enumerate(splits)
        ]
    # one switch for the whole batch of fits (each fit's own would restore it under another)
    with _deterministic(), cf.ThreadPoolExecutor(at_once, thread_name_prefix="cmrops-fit") as pool:
        futures = [
            pool.submit(fit_split, image, text, tr, ho, params, progress=progress and i == 0)
            for i, (tr, ho) in enumerate(splits)
        ]
        try:
            return [f.result() for f in futures]
        except BaseException:
            for f in futures:
                f.cancel()
            raise


def evaluate(
    alignment: Alignment, image: np.ndarray, text: np.ndarray, params: AlignParams
) -> dict[str, Any]:
    """R@1 both ways, swapped-caption AUROC and the calibrated threshold on these pairs."""
    true, swapped = swapped_scores(alignment, image, text, params.seed)
    blocks = np.array_split(np.arange(len(image)), max(1, -(-len(image) // R1_GALLERY)))
    r1s = [recall_at_1(alignment, image[b], text[b]) for b in blocks]
    r1 = {
        k: float(np.average([r[k] for r in r1s], weights=[len(b) for b in blocks])) for k in r1s[0]
    }
    return {
        "pairs": len(image),
        "r1_i2t": round(r1["i2t"], 6),
        "r1_t2i": round(r1["t2i"], 6),
        "swapped_auroc": round(_auroc(true, swapped), 6),
        "calibration": calibrate_threshold(true, swapped, params.max_flag_rate),
    }


def _train(
    image: np.ndarray,
    text: np.ndarray,
    train_idx: np.ndarray,
    hold_idx: np.ndarray,
    p: AlignParams,
    progress: bool,
) -> tuple[dict[str, Head], dict[str, Any]]:
    import torch
    from torch import nn

    x = {"image": normalise(image), "text": normalise(text)}
    center = {s: x[s][train_idx].mean(axis=0, dtype=np.float64).astype(np.float32) for s in SIDES}
    data = {s: torch.from_numpy(x[s] - center[s]) for s in SIDES}

    def head(d_in: int) -> nn.Module:
        if p.hidden == 0:
            return nn.Linear(d_in, p.dim)
        return nn.Sequential(
            nn.Linear(d_in, p.hidden), nn.GELU(approximate="tanh"), nn.Linear(p.hidden, p.dim)
        )

    with _GLOBAL_RNG:
        torch.manual_seed(p.seed)
        model = nn.ModuleDict({s: head(x[s].shape[1]) for s in SIDES})
    # fused: one pass over each parameter; elementwise, the same bytes on any thread count
    opt = torch.optim.AdamW(model.parameters(), lr=p.lr, weight_decay=p.weight_decay, fused=True)
    gen = torch.Generator().manual_seed(p.seed)
    tr = torch.from_numpy(train_idx)
    ho = torch.from_numpy(hold_idx)

    def loss_of(rows: torch.Tensor) -> torch.Tensor:
        zi = nn.functional.normalize(model["image"](data["image"][rows]), dim=1)
        zt = nn.functional.normalize(model["text"](data["text"][rows]), dim=1)
        logits = zi @ zt.T / p.temperature
        target = torch.arange(len(rows))
        ce = nn.functional.cross_entropy
        return (ce(logits, target) + ce(logits.T, target)) / 2

    best_loss, best_epoch, best_state = float("inf"), -1, None
    train_losses: list[float] = []
    holdout_losses: list[float] = []
    bar = _progress(p.epochs, progress)
    for epoch in range(p.epochs):
        model.train()
        order = tr[torch.randperm(len(tr), generator=gen)]
        total, batches = 0.0, 0
        for lo in range(0, len(order), p.batch_size):
            rows = order[lo : lo + p.batch_size]
            if len(rows) < 2:
                continue
            opt.zero_grad(set_to_none=True)
            loss = loss_of(rows)
            loss.backward()
            opt.step()
            total += float(loss.detach())
            batches += 1
        model.eval()
        with torch.no_grad():  # in batch-sized chunks: the loss of a training step, any size
            chunks = torch.tensor_split(ho, max(1, len(ho) // p.batch_size))
            hold = sum(float(loss_of(c)) * len(c) for c in chunks) / len(ho)
        train_losses.append(round(total / max(batches, 1), 6))
        holdout_losses.append(round(hold, 6))
        if hold < best_loss:
            best_loss, best_epoch = hold, epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if bar is not None:
            bar.update(1)
            bar.set_postfix(holdout_loss=f"{hold:.4f}")
        if epoch - best_epoch >= p.patience:
            break
    if bar is not None:
        bar.close()
    assert best_state is not None
    model.load_state_dict(best_state)
    heads = {s: _to_head(model[s], center[s]) for s in SIDES}
    history = {
        "epochs_run": len(holdout_losses),
        "best_epoch": best_epoch,
        "best_holdout_loss": round(best_loss, 6),
        "train_loss": train_losses,
        "holdout_loss": holdout_losses,
    }
    log.info("alignment: best held-out loss %.4f at epoch %d", best_loss, best_epoch)
    return heads, history


def _to_head(module: Any, center: np.ndarray) -> Head:
    from torch import nn

    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    layers = tuple(
        (m.weight.detach().numpy().copy(), m.bias.detach().numpy().copy()) for m in linears
    )
    return Head(in_dim=int(linears[0].in_features), center=center, layers=layers)


def _progress(total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc="align", unit="epoch", leave=False)
