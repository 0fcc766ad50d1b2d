"""End-to-end fine-tuning: hashing heads on an aligned CLIP-style dual encoder, trained together.

When ``train.finetune_encoder`` names a dual encoder (a Hugging Face id already in the local
cache, or a directory written by ``save_pretrained``: CLIP, SigLIP, anything with
``get_image_features`` / ``get_text_features``), each modality's hashing head sits on the
encoder's projected, L2-normalised features instead of the embeddings preprocess wrote, and
the last ``encoder_layers`` transformer blocks of both towers (with their final norms and the
projections) are trained with the heads, at their own learning rate (``encoder_lr``); the rest
of the encoder stays frozen. ``encoder_layers: -1`` trains all of it.

Inputs are what the encoder needs, prepared once by :func:`prepare_images` and
:func:`tokenize_captions`:

* images: ``uint8`` ``(n, size, size, 3)`` centre crops at the encoder's input size, normalised
  on the device with the processor's mean and std; from the stage, a :class:`StoredCrops` that
  decodes them from collect's store batch by batch (memory does not grow with the data set);
* captions: ``int64`` ``(n, 2, length)`` - token ids and attention mask stacked, one caption per
  sample.

Checkpoints hold only what training changes (the heads and the unfrozen encoder blocks): the
frozen rest comes from the encoder's own weights, whose SHA-256 is part of the model config, so
a resume or a reload against different encoder weights is refused. Loading uses safetensors
only (``use_safetensors=True``): no pickle, ever.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cmrops.encoders import _features
from cmrops.models.hasher import HasherConfig, HashHead

log = logging.getLogger(__name__)

#: Rows per forward pass when encoding a set with an encoder model (pixels are large).
ENCODE_BATCH = 64


class EncoderError(ValueError):
    """The configured encoder cannot be fine-tuned (missing, not a dual encoder, no weights)."""


# --------------------------------------------------------------------------- the encoder files


def encoder_dir(spec: str) -> Path:
    """The local directory of ``spec`` (see :func:`cmrops.encoders.resolve_model_dir`)."""
    from cmrops.encoders import resolve_model_dir

    return resolve_model_dir(spec)


@cache
def weights_sha256(directory: str) -> str:
    """SHA-256 over the encoder's safetensors weight files (name and content, sorted)."""
    import hashlib

    files = sorted(Path(directory).glob("*.safetensors"))
    if not files:
        raise EncoderError(
            f"{directory}: no *.safetensors weights; fine-tuning loads safetensors only (convert "
            "the checkpoint with save_pretrained(..., safe_serialization=True))"
        )
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + b"\0")
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def load_dual_encoder(directory: str | Path) -> tuple[nn.Module, Any]:
    """A fresh (trainable, CPU) copy of the dual encoder in ``directory`` and its config."""
    from transformers import AutoConfig, AutoModel

    try:
        config = AutoConfig.from_pretrained(str(directory), local_files_only=True)
        model = AutoModel.from_pretrained(
            str(directory), local_files_only=True, use_safetensors=True
        )
    except (OSError, ValueError) as e:
        raise EncoderError(
            f"{directory}: cannot load a transformers model with safetensors weights ({e})"
        ) from e
    if not (hasattr(model, "get_image_features") and hasattr(model, "get_text_features")):
        raise EncoderError(
            f"{directory}: {type(model).__name__} is not an aligned dual encoder (no "
            "get_image_features/get_text_features); fine-tuning needs a CLIP-style model"
        )
    return model.float(), config


def projection_dim(directory: str | Path) -> int:
    """Width of the encoder's shared image-text feature space."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(directory), local_files_only=True)
    dim = getattr(config, "projection_dim", None)
    if not dim:
        text = getattr(config, "text_config", None)
        dim = getattr(text, "hidden_size", None)
    if not dim:
        raise EncoderError(f"{directory}: cannot tell the encoder's feature width from its config")
    return int(dim)


# --------------------------------------------------------------------------- inputs


def image_stats(directory: str | Path) -> tuple[int, tuple[float, ...], tuple[float, ...]]:
    """``(size, mean, std)`` of the encoder's image processor (ImageNet values without one)."""
    from cmrops.encoders import IMAGENET_MEAN, IMAGENET_STD, _load_image_processor, _processor_size

    processor = _load_image_processor(Path(directory))
    if processor is None:
        return 224, tuple(IMAGENET_MEAN), tuple(IMAGENET_STD)
    mean = tuple(float(x) for x in getattr(processor, "image_mean", IMAGENET_MEAN))
    std = tuple(float(x) for x in getattr(processor, "image_std", IMAGENET_STD))
    return _processor_size(processor), mean, std


def _crop(path: str | Path, size: int) -> np.ndarray:
    """One image of the store, safe-decoded and centre-cropped: ``uint8 (size, size, 3)``."""
    from cmrops.imaging import ImageRejected, decode_image, resize_for_encoder

    try:
        decoded = decode_image(Path(path).read_bytes())
    except (OSError, ImageRejected) as e:
        raise EncoderError(
            f"{path}: cannot read this image for fine-tuning ({e}); re-run `cmrops collect` "
            "and `cmrops preprocess`"
        ) from e
    return resize_for_encoder(decoded.image, size)


class StoredCrops:
    """Centre crops of images in collect's store, decoded when read: an array-like of ``uint8``
    ``(n, size, size, 3)`` that never holds more than the rows asked for.

    Indexing with an int gives one crop (an ndarray); with a slice, an index array or a mask, it
    gives another :class:`StoredCrops` over those rows (nothing decoded yet); ``np.asarray``
    decodes the rows. Batches of a training epoch are therefore read from the store one batch
    at a time, with the same pixels as a decoded array (decoding is deterministic)."""

    dtype = np.dtype(np.uint8)
    ndim = 4

    def __init__(self, paths: Sequence[str | Path], size: int) -> None:
        self._paths = np.asarray([str(p) for p in paths], dtype=object)
        self.size = size

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self._paths), self.size, self.size, 3)

    def __len__(self) -> int:
        return len(self._paths)

    def __getitem__(self, key: Any) -> Any:
        first, rest = (key[0], key[1:]) if isinstance(key, tuple) else (key, ())
        if isinstance(first, int | np.integer):
            crop = _crop(self._paths[first], self.size)
            return crop[rest] if rest else crop
        view = StoredCrops([], self.size)
        view._paths = self._paths[np.asarray(first) if isinstance(first, list) else first]
        return np.asarray(view)[(slice(None), *rest)] if rest else view

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        out = np.empty(self.shape, np.uint8)
        for i, p in enumerate(self._paths):
            out[i] = _crop(p, self.size)
        return out if dtype is None else out.astype(dtype)


def prepare_images(paths: Sequence[Path], size: int, progress: bool = True) -> StoredCrops:
    """The centre crops of ``paths`` at ``size`` x ``size``, read from the store on demand.

    The images passed preprocess already; each is decoded once here, so that one that no longer
    decodes (the store was changed under the pipeline) raises with its path before training
    starts rather than half-way. Nothing is kept: memory does not grow with the data set."""
    from tqdm.auto import tqdm

    for p in tqdm(paths, desc="images", unit="img", disable=not progress):
        _crop(p, size)
    return StoredCrops(paths, size)


def tokenize_captions(directory: str | Path, captions: Sequence[str]) -> np.ndarray:
    """Token ids and attention masks of ``captions``: ``int64 (n, 2, length)``, padded to the
    longest caption (at most the encoder's maximum length)."""
    from transformers import AutoConfig, AutoTokenizer

    from cmrops.encoders import _text_max_length

    config = AutoConfig.from_pretrained(str(directory), local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    max_length = _text_max_length(Path(directory), tokenizer, config)
    siglip = str(getattr(config, "model_type", "")).startswith("siglip")
    enc = tokenizer(
        list(captions),
        padding="max_length" if siglip else "longest",
        truncation=True,
        max_length=max_length,
        return_tensors="np",
    )
    ids = np.asarray(enc["input_ids"], np.int64)
    mask = np.asarray(enc.get("attention_mask", np.ones_like(ids)), np.int64)
    return np.stack([ids, mask], axis=1)


# --------------------------------------------------------------------------- the model


def _share(tower: nn.Module, encoder: nn.Module) -> None:
    """Give a tower the dual encoder without registering it: the :class:`EncoderHasher` owns it
    (one copy of each weight in ``state_dict`` and ``parameters()``; ``.to()`` moves it)."""
    object.__setattr__(tower, "encoder", encoder)


class _ImageTower(nn.Module):
    def __init__(
        self, encoder: nn.Module, head: HashHead, mean: Iterable[float], std: Iterable[float]
    ):
        super().__init__()
        _share(self, encoder)
        self.head = head
        self.register_buffer("mean", torch.tensor(list(mean)).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(list(std)).view(1, 3, 1, 1), persistent=False)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.permute(0, 3, 1, 2).float().div(255.0)
        x = (x - self.mean) / self.std
        feats = _features(self.encoder.get_image_features(pixel_values=x))
        return self.head(nn.functional.normalize(feats.float(), dim=-1))


class _TextTower(nn.Module):
    def __init__(self, encoder: nn.Module, head: HashHead):
        super().__init__()
        _share(self, encoder)
        self.head = head

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        ids, mask = tokens[:, 0], tokens[:, 1]
        width = max(int(mask.sum(1).max()), 1)  # drop the batch's all-padding tail
        feats = _features(
            self.encoder.get_text_features(input_ids=ids[:, :width], attention_mask=mask[:, :width])
        )
        return self.head(nn.functional.normalize(feats.float(), dim=-1))


class EncoderHasher(nn.Module):
    """A dual encoder with one hashing head per modality (``.image`` and ``.text`` take pixels
    and tokens; see module docstring). Shares the interface of
    :class:`~cmrops.models.hasher.CrossModalHasher`."""

    encode_batch = ENCODE_BATCH

    def __init__(self, config: HasherConfig) -> None:
        super().__init__()
        if config.encoder is None:
            raise ValueError("EncoderHasher needs a config with an encoder")
        self.config = config
        directory = encoder_dir(config.encoder)
        digest = weights_sha256(str(directory))
        if config.encoder_sha256 is not None and digest != config.encoder_sha256:
            raise EncoderError(
                f"{directory}: encoder weights changed (sha256 {digest[:12]}..., the model was "
                f"configured with {config.encoder_sha256[:12]}...)"
            )
        encoder, _ = load_dual_encoder(directory)
        _freeze(encoder, config.encoder_layers)
        _, mean, std = image_stats(directory)
        self.encoder = encoder
        self.image = _ImageTower(
            encoder,
            HashHead(config.image_dim, config.hidden, config.n_bits, config.dropout),
            mean,
            std,
        )
        self.text = _TextTower(
            encoder, HashHead(config.text_dim, config.hidden, config.n_bits, config.dropout)
        )
        self._trained = {name for name, p in self.named_parameters() if p.requires_grad}

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.image(image), self.text(text)

    def param_groups(self, lr: float, encoder_lr: float) -> list[dict[str, Any]]:
        """Optimizer groups: the heads at ``lr``, the unfrozen encoder blocks at ``encoder_lr``."""
        heads = [*self.image.head.parameters(), *self.text.head.parameters()]
        head_ids = {id(p) for p in heads}
        enc = [p for p in self.encoder.parameters() if p.requires_grad and id(p) not in head_ids]
        groups: list[dict[str, Any]] = [{"params": heads, "lr": lr}]
        if enc:
            groups.append({"params": enc, "lr": encoder_lr})
        return groups

    # Checkpoints hold the trained tensors only: the frozen encoder comes from its own files.
    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:  # type: ignore[override]
        full = super().state_dict(*args, **kwargs)
        prefix = str(kwargs.get("prefix", args[1] if len(args) > 1 else ""))
        return {k: v for k, v in full.items() if k[len(prefix) :] in self._trained}

    def load_state_dict(  # type: ignore[override]
        self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False
    ) -> Any:
        unexpected = sorted(set(state_dict) - self._trained)
        missing = sorted(self._trained - set(state_dict))
        if strict and (unexpected or missing):
            raise RuntimeError(
                f"weights do not fit the fine-tuned model (missing {missing[:5]}, unexpected "
                f"{unexpected[:5]})"
            )
        return super().load_state_dict(state_dict, strict=False, assign=assign)


def _freeze(encoder: nn.Module, layers: int) -> None:
    """Train the last ``layers`` blocks of each tower plus its final norm and projection (all of
    the encoder when ``layers`` is -1, only the heads when 0)."""
    if layers < 0:
        return
    for p in encoder.parameters():
        p.requires_grad_(False)
    if layers == 0:
        return
    trainable: list[nn.Module] = []
    for tower_name in ("vision_model", "text_model"):
        tower = getattr(encoder, tower_name, None)
        blocks = getattr(getattr(tower, "encoder", None), "layers", None)
        if tower is None or blocks is None:
            raise EncoderError(
                f"{type(encoder).__name__}: no {tower_name}.encoder.layers to unfreeze; set "
                "train.encoder_layers to -1 (all) or 0 (heads only)"
            )
        trainable += list(blocks)[-layers:]
        for norm in ("post_layernorm", "final_layer_norm", "head"):
            if getattr(tower, norm, None) is not None:
                trainable.append(getattr(tower, norm))
    for proj in ("visual_projection", "text_projection"):
        if getattr(encoder, proj, None) is not None:
            trainable.append(getattr(encoder, proj))
    for m in trainable:
        for p in m.parameters():
            p.requires_grad_(True)


# --------------------------------------------------------------------------- construction


def build_hasher(config: HasherConfig) -> nn.Module:
    """The model of ``config``: heads on embeddings, or heads on a fine-tuned encoder."""
    if config.encoder is None:
        from cmrops.models.hasher import CrossModalHasher

        return CrossModalHasher(config)
    return EncoderHasher(config)


def model_from_config(model: dict[str, Any]) -> nn.Module:
    """The (untrained) model a checkpoint's ``config.json`` ``model`` section describes: the
    linear projections of a closed-form method (``kind: linear``), or :func:`build_hasher`'s."""
    if model.get("kind") == "linear":
        from cmrops.models.linear import LinearConfig, LinearHasher

        return LinearHasher(LinearConfig.from_json(model))
    return build_hasher(HasherConfig.from_json(model))
