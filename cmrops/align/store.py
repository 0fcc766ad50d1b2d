"""An alignment on disk: ``config.json`` plus, when learned, ``alignment.safetensors``.

Nothing is pickled. ``config.json`` holds the format and version, the kind, the dimensions, the
description (:attr:`Alignment.info`: training parameters, sizes, the SHA-256 fingerprint of the
training pairs, held-out metrics) and the SHA-256 of the weights file. The weights file holds,
per side, ``<side>.center`` and ``<side>.layers.<k>.{weight,bias}`` (float32). It is written
first and ``config.json`` last, each atomically, so a directory whose config names a hash the
weights do not have is a torn or replaced write, and :func:`load_alignment` says so.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from cmrops import io
from cmrops.align.model import SIDES, Alignment, Head

FORMAT = "cmrops.align"
VERSION = 1
CONFIG = "config.json"
WEIGHTS = "alignment.safetensors"
_HINT = "run `cmrops align` (or `dvc repro align`) to write it"


class AlignmentError(ValueError):
    """An alignment directory is missing, corrupt or foreign; the message says what to run."""


def _tensors(alignment: Alignment) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for side in SIDES:
        head = alignment.heads[side]
        if head.center is not None:
            out[f"{side}.center"] = np.ascontiguousarray(head.center, dtype=np.float32)
        for k, (w, b) in enumerate(head.layers):
            out[f"{side}.layers.{k}.weight"] = np.ascontiguousarray(w, dtype=np.float32)
            out[f"{side}.layers.{k}.bias"] = np.ascontiguousarray(b, dtype=np.float32)
    return out


def weights_bytes(alignment: Alignment) -> bytes:
    """The safetensors bytes of a learned alignment's weights (deterministic)."""
    from safetensors.numpy import save

    return save(_tensors(alignment), metadata={"format": FORMAT})


def save_alignment(alignment: Alignment, directory: str | os.PathLike[str]) -> None:
    """Write ``alignment`` into ``directory`` (see module docstring); same alignment, same bytes."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    weights: dict[str, Any] | None = None
    if alignment.kind == "learned":
        data = weights_bytes(alignment)
        io.write_bytes(d / WEIGHTS, data)
        weights = {"file": WEIGHTS, "sha256": hashlib.sha256(data).hexdigest()}
    else:
        (d / WEIGHTS).unlink(missing_ok=True)
    config = {
        "format": FORMAT,
        "version": VERSION,
        "kind": alignment.kind,
        "dim": alignment.dim,
        "image_dim": alignment.heads["image"].in_dim,
        "text_dim": alignment.heads["text"].in_dim,
        "layers": {s: len(alignment.heads[s].layers) for s in SIDES},
        "centered": {s: alignment.heads[s].center is not None for s in SIDES},
        "weights": weights,
        "info": alignment.info,
    }
    io.write_json(d / CONFIG, config)


def load_alignment(directory: str | os.PathLike[str]) -> Alignment:
    """Read an alignment written by :func:`save_alignment`, checking it fully.

    Raises :class:`AlignmentError` naming the file and what to run when anything is missing,
    unreadable, of another format or version, or does not match its recorded hash and shapes."""
    d = Path(directory)
    path = d / CONFIG
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AlignmentError(f"{path}: no alignment here; {_HINT}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise AlignmentError(f"{path}: not valid JSON ({e}); {_HINT} again") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise AlignmentError(f"{path}: not a cmrops alignment config; {_HINT}")
    if config.get("version") != VERSION:
        raise AlignmentError(
            f"{path}: alignment version {config.get('version')!r}, this cmrops reads "
            f"version {VERSION}; {_HINT} again"
        )
    try:
        kind = config["kind"]
        dims = {"image": int(config["image_dim"]), "text": int(config["text_dim"])}
        layers = {s: int(config["layers"][s]) for s in SIDES}
        centered = {s: bool(config["centered"][s]) for s in SIDES}
        info = dict(config.get("info") or {})
    except (KeyError, TypeError, ValueError) as e:
        raise AlignmentError(f"{path}: malformed ({e!r}); {_HINT} again") from None
    if kind == "encoder":
        if any(layers.values()) or any(centered.values()) or dims["image"] != dims["text"]:
            raise AlignmentError(f"{path}: an encoder alignment has no layers; {_HINT} again")
        heads = {s: Head(in_dim=dims[s]) for s in SIDES}
        return Alignment("encoder", heads, info)
    if kind != "learned":
        raise AlignmentError(f"{path}: unknown alignment kind {kind!r}; {_HINT} again")
    tensors = _read_weights(d, config.get("weights"))
    heads = {}
    try:
        for s in SIDES:
            center = tensors.pop(f"{s}.center") if centered[s] else None
            ls = tuple(
                (tensors.pop(f"{s}.layers.{k}.weight"), tensors.pop(f"{s}.layers.{k}.bias"))
                for k in range(layers[s])
            )
            heads[s] = _check_head(d / WEIGHTS, dims[s], center, ls)
    except KeyError as e:
        raise AlignmentError(f"{d / WEIGHTS}: tensor {e} missing; {_HINT} again") from None
    if tensors:
        raise AlignmentError(f"{d / WEIGHTS}: unexpected tensors {sorted(tensors)[:5]}")
    try:
        return Alignment("learned", heads, info)
    except ValueError as e:
        raise AlignmentError(f"{d}: {e}; {_HINT} again") from None


def _read_weights(d: Path, spec: Any) -> dict[str, np.ndarray]:
    from safetensors.numpy import load

    path = d / WEIGHTS
    if not isinstance(spec, dict) or spec.get("file") != WEIGHTS or "sha256" not in spec:
        raise AlignmentError(f"{d / CONFIG}: names no weights file; {_HINT} again")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise AlignmentError(f"{path}: missing (named by {CONFIG}); {_HINT} again") from None
    if hashlib.sha256(data).hexdigest() != spec["sha256"]:
        raise AlignmentError(
            f"{path}: contents differ from the sha256 in {CONFIG} (truncated or replaced); "
            f"{_HINT} again"
        )
    try:
        return dict(load(data))
    except Exception as e:  # SafetensorError: bad header, ...
        raise AlignmentError(f"{path}: unreadable safetensors file ({e}); {_HINT} again") from None


def _check_head(
    path: Path,
    in_dim: int,
    center: np.ndarray | None,
    layers: tuple[tuple[np.ndarray, np.ndarray], ...],
) -> Head:
    if center is not None and center.shape != (in_dim,):
        raise AlignmentError(f"{path}: center of shape {center.shape}, expected ({in_dim},)")
    width = in_dim
    for k, (w, b) in enumerate(layers):
        if w.dtype != np.float32 or w.ndim != 2 or w.shape[1] != width or b.shape != (w.shape[0],):
            raise AlignmentError(
                f"{path}: layer {k} is {w.dtype} {w.shape} + {b.shape}, expected float32 "
                f"(out, {width}) + (out,)"
            )
        width = w.shape[0]
    return Head(in_dim=in_dim, center=center, layers=layers)
