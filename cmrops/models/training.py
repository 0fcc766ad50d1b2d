"""What training is given and gives back, shared by the training loop and the closed-form methods.

:class:`TrainConfig` (one model's optimisation settings), :class:`PairedData` (paired samples
and their labels), :class:`TrainResult`, :func:`run_config` (a run's ``config.json``),
:func:`encode` (continuous codes in fixed batches), :func:`validate` (validation mAP), and the
seeds and data fingerprint a checkpoint is keyed by. :mod:`cmrops.models.loop` (deep methods,
and :func:`~cmrops.models.loop.fit`, the single entry point) and :mod:`cmrops.models.closed_form`
both build on it.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from cmrops.codes import pack_bits
from cmrops.methods import METHODS as METHODS
from cmrops.methods import CcaOptions, CmfhOptions, DjsrhOptions, ItqOptions, info
from cmrops.models import checkpoint as ckpt
from cmrops.models.finetune import EncoderHasher
from cmrops.models.hasher import CrossModalHasher, HasherConfig
from cmrops.models.linear import LinearHasher
from cmrops.models.ranking import cross_modal_map

Method = Literal["dcmh", "contrastive", "djsrh", "itq", "cca", "cmfh"]
OPTIONS = ("djsrh", "cca", "itq", "cmfh")  # TrainConfig fields holding one method's knobs
ENCODE_BATCH = 4096  # fixed, so codes never depend on how many rows are encoded at once
Hasher = CrossModalHasher | EncoderHasher | LinearHasher


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings of one model (the ``train:`` params minus what selects models)."""

    method: Method
    epochs: int = 50
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 1e-4
    quantization_weight: float = 0.05  # γ: ‖B - F‖² term
    balance_weight: float = 1.0  # η: ‖F·1‖² term
    temperature: float = 0.1  # contrastive only
    grad_clip: float = 1.0  # max gradient norm; 0 = no clipping
    patience: int = 10  # epochs without a better validation mAP before stopping; 0 = never
    checkpoint_every: int = 200  # steps; 0 = only at the end
    seed: int = 0
    encoder_lr: float = 1e-5  # learning rate of the fine-tuned encoder blocks (finetune only)
    # What a supervised method (dcmh) counts as similar: "labels" - image i and text j share a
    # label; "pairs" - only the pair itself (S = I), for labels induced from the captions, which
    # say little that the pairing does not, and for data without labels.
    similarity: Literal["labels", "pairs"] = "labels"
    # One method's own knobs each (cmrops.methods); only the trained method's go to config.json.
    djsrh: DjsrhOptions = field(default_factory=DjsrhOptions)
    cca: CcaOptions = field(default_factory=CcaOptions)
    itq: ItqOptions = field(default_factory=ItqOptions)
    cmfh: CmfhOptions = field(default_factory=CmfhOptions)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("patience", "checkpoint_every", "seed"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("lr", "encoder_lr"):
            v = getattr(self, name)
            if not (v > 0 and math.isfinite(v)):
                raise ValueError(f"{name} must be a positive number, got {v}")
        for name in ("weight_decay", "quantization_weight", "balance_weight", "grad_clip"):
            v = getattr(self, name)
            if not (v >= 0 and math.isfinite(v)):
                raise ValueError(f"{name} must be a finite number >= 0, got {v}")
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.similarity not in ("labels", "pairs"):
            raise ValueError(f"similarity must be 'labels' or 'pairs', got {self.similarity!r}")


@dataclass
class PairedData:
    """Paired samples (row ``i`` of ``image`` goes with row ``i`` of ``text``) and their
    multi-hot labels (``None`` when the data has no labels). The rows are embeddings, or, for a
    fine-tuned encoder (:mod:`cmrops.models.finetune`), ``uint8`` pixels and ``int64`` tokens."""

    image: np.ndarray  # (n, image_dim) float32, or (n, size, size, 3) uint8
    text: np.ndarray  # (n, text_dim) float32, or (n, 2, length) int64
    labels: np.ndarray | None = None  # (n, n_labels) bool

    def __post_init__(self) -> None:
        if self.image.ndim < 2 or self.text.ndim < 2 or len(self.image) != len(self.text):
            raise ValueError(
                f"image/text: expected (n, ...) arrays of equal n, got {self.image.shape} and "
                f"{self.text.shape}"
            )
        if self.labels is not None and (self.labels.ndim != 2 or len(self.labels) != len(self)):
            raise ValueError(f"labels: expected ({len(self)}, n_labels), got {self.labels.shape}")

    def __len__(self) -> int:
        return len(self.image)


@dataclass
class TrainResult:
    """What :func:`fit` returns: the selected model (eval mode) and how training went."""

    model: Hasher
    steps: int
    epochs: int  # epochs completed
    best_val_map: float | None  # None without a validation set
    best_step: int | None
    early_stop_step: int | None  # the step training stopped at when patience ran out
    final_losses: dict[str, float]  # mean of each loss term over the last epoch
    samples_per_s: float  # training samples per second of optimisation (this session; not saved)
    relevance: str  # "labels" or "pairs": what validation counted as relevant
    resumed_from_step: int | None  # step of the checkpoint this call continued from
    history: list[dict[str, Any]] = field(default_factory=list)  # one entry per epoch


def run_config(model_config: HasherConfig, train_config: TrainConfig, data_id: str) -> dict:
    """The ``config.json`` of a run: a resume must match it exactly."""
    train = asdict(train_config)
    if model_config.encoder is None:  # no encoder to fine-tune: the setting means nothing
        del train["encoder_lr"]
    for name in OPTIONS:  # other methods' knobs: changing them must not invalidate this model
        if name != train_config.method:
            del train[name]
    if train["similarity"] == "labels" or not info(train_config.method).supervised:
        del train["similarity"]  # the default, or meaningless: configs stay as they were
    return {"model": model_config.to_json(), "train": train, "data": data_id}


def encode(
    model: Hasher, data: PairedData, device: str | torch.device | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Continuous codes ``(image, text)``, float32 ``(n, n_bits)``, in eval mode and float32
    (no autocast), in fixed batches of :data:`ENCODE_BATCH` rows (fewer for an encoder model)."""
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    step = int(getattr(model, "encode_batch", ENCODE_BATCH))
    was_training = model.training
    model.eval()
    out: list[list[np.ndarray]] = [[], []]
    with torch.inference_mode():
        for j, (head, x) in enumerate(((model.image, data.image), (model.text, data.text))):
            for lo in range(0, len(x), step):
                batch = as_tensor(x[lo : lo + step])
                out[j].append(head(batch.to(dev)).float().cpu().numpy())
    model.train(was_training)
    k = model.config.n_bits
    img = np.concatenate(out[0]) if out[0] else np.zeros((0, k), np.float32)
    txt = np.concatenate(out[1]) if out[1] else np.zeros((0, k), np.float32)
    return img, txt


def validate(
    model: Hasher,
    val: PairedData,
    database: PairedData,
    relevance: str,
    dev: torch.device,
) -> dict[str, float]:
    qi, qt = (pack_bits(x > 0) for x in encode(model, val, dev))
    if relevance == "pairs":
        return cross_modal_map(qi, qt, qi, qt, None, None)
    di, dt = (pack_bits(x > 0) for x in encode(model, database, dev))
    return cross_modal_map(qi, qt, di, dt, val.labels, database.labels)


def as_tensor(a: Any) -> torch.Tensor:
    """Embeddings as float32; pixels (uint8) and tokens (int64) keep their type."""
    if np.issubdtype(a.dtype, np.floating):
        return torch.from_numpy(np.ascontiguousarray(a, np.float32))
    return torch.from_numpy(np.ascontiguousarray(a))


def model_seed(seed: int, method: str, n_bits: int) -> int:
    digest = hashlib.sha256(f"{seed}:{method}:{n_bits}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def seed_all(seed: int) -> None:
    """Seed torch, numpy's global and python's RNG from a model's seed: a checkpoint records
    their states, which must then be a function of the model alone, not of what the process
    trained before it (or whether it trained it in a worker process)."""
    import random

    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - for any code that uses the global RNG
    random.seed(seed)


def data_id(train: PairedData, val: PairedData | None, database: PairedData | None) -> str:
    arrays = []
    for part in (train, val, database):
        if part is not None:
            arrays += [part.image, part.text]
            if part.labels is not None:
                arrays.append(part.labels)
        arrays.append(np.zeros(0, np.int8))  # separator: (train, None) != (None, train)
    return ckpt.fingerprint(*arrays)
