"""An alignment on disk: ``config.json`` plus, when learned, ``alignment.safetensors``.

Nothing is pickled. ``config.json`` holds the format and version, the kind, the dimensions, the
description (:attr:`Alignment.info`: training parameters, sizes, the SHA-256 fingerprint of the
training pairs, held-out metrics) and the SHA-256 of the weights file. The weights file holds,
per side, ``<side>.center`` and ``<side>.layers.<k>.{weight,bias}`` (float32). A ``concept``
or ``fused`` alignment also describes each side's map under ``heads`` (:func:`head_spec`): a
concept head's tensors are ``<side>.classifier.{weight,bias}``, ``<side>.class_text`` and
``<side>.center``; a fused head's parts are under ``<side>.part<k>.``. It is written
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
from cmrops.align.model import SIDES, Alignment, Head, SideMap

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
        _head_tensors(alignment.heads[side], f"{side}.", out)
    return out


def _head_tensors(head: SideMap, prefix: str, out: dict[str, np.ndarray]) -> None:
    from cmrops.align.concept import ConceptHead
    from cmrops.align.fusion import FusedHead

    def put(name: str, a: np.ndarray) -> None:
        out[prefix + name] = np.ascontiguousarray(a, dtype=np.float32)

    if isinstance(head, FusedHead):
        for k, part in enumerate(head.parts):
            _head_tensors(part, f"{prefix}part{k}.", out)
        return
    if isinstance(head, ConceptHead):
        put("classifier.weight", head.weight)
        put("classifier.bias", head.bias)
        put("class_text", head.class_text)
        if head.center is not None:
            put("center", head.center)
        return
    if not isinstance(head, Head):
        raise TypeError(f"cannot save a side map of type {type(head).__name__}")
    if head.center is not None:
        put("center", head.center)
    for k, (w, b) in enumerate(head.layers):
        put(f"layers.{k}.weight", w)
        put(f"layers.{k}.bias", b)


def head_spec(head: SideMap) -> dict[str, Any]:
    """The JSON description of one side's map (its tensors are named by :func:`_head_tensors`)."""
    from cmrops.align.concept import ConceptHead
    from cmrops.align.fusion import FusedHead

    if isinstance(head, FusedHead):
        return {
            "type": "fused",
            "weights": [round(w, 9) for w in head.weights],
            "parts": [head_spec(p) for p in head.parts],
        }
    if isinstance(head, ConceptHead):
        return {
            "type": "concept",
            "in_dim": head.in_dim,
            "out_dim": head.out_dim,
            "classes": len(head.weight),
            "top_t": head.top_t,
            "logit_scale": head.logit_scale,
            "centered": head.center is not None,
        }
    assert isinstance(head, Head)
    return {
        "type": "linear" if len(head.layers) < 2 else "mlp",
        "in_dim": head.in_dim,
        "layers": len(head.layers),
        "centered": head.center is not None,
    }


def weights_bytes(alignment: Alignment) -> bytes:
    """The safetensors bytes of a learned alignment's weights (deterministic)."""
    from safetensors.numpy import save

    return save(_tensors(alignment), metadata={"format": FORMAT})


def save_alignment(alignment: Alignment, directory: str | os.PathLike[str]) -> None:
    """Write ``alignment`` into ``directory`` (see module docstring); same alignment, same bytes."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    weights: dict[str, Any] | None = None
    if alignment.kind != "encoder":
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
    }
    if alignment.kind in ("learned", "encoder"):
        config["layers"] = {s: len(alignment.heads[s].layers) for s in SIDES}  # type: ignore[attr-defined]
        config["centered"] = {s: alignment.heads[s].center is not None for s in SIDES}  # type: ignore[attr-defined]
    else:
        config["heads"] = {s: head_spec(alignment.heads[s]) for s in SIDES}
    config["weights"] = weights
    config["info"] = alignment.info
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
    kind = config.get("kind")
    if kind in ("concept", "fused"):
        return _load_composed(d, config)
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


def _load_composed(d: Path, config: dict[str, Any]) -> Alignment:
    """A concept or fused alignment: each side rebuilt from its ``heads`` spec."""
    tensors = _read_weights(d, config.get("weights"))
    try:
        specs = {s: config["heads"][s] for s in SIDES}
        info = dict(config.get("info") or {})
        heads = {s: _build_head(d / WEIGHTS, specs[s], f"{s}.", tensors) for s in SIDES}
    except KeyError as e:
        raise AlignmentError(f"{d}: {e} missing from the alignment; {_HINT} again") from None
    except (TypeError, ValueError) as e:
        raise AlignmentError(f"{d}: malformed alignment ({e}); {_HINT} again") from None
    if tensors:
        raise AlignmentError(f"{d / WEIGHTS}: unexpected tensors {sorted(tensors)[:5]}")
    try:
        return Alignment(config["kind"], heads, info)
    except ValueError as e:
        raise AlignmentError(f"{d}: {e}; {_HINT} again") from None


def _build_head(
    path: Path, spec: dict[str, Any], prefix: str, tensors: dict[str, np.ndarray]
) -> SideMap:
    from cmrops.align.concept import ConceptHead
    from cmrops.align.fusion import FusedHead

    kind = spec["type"]
    if kind == "fused":
        parts = tuple(
            _build_head(path, p, f"{prefix}part{k}.", tensors) for k, p in enumerate(spec["parts"])
        )
        return FusedHead(parts, tuple(float(w) for w in spec["weights"]))
    if kind == "concept":
        center = tensors.pop(prefix + "center") if spec["centered"] else None
        head = ConceptHead(
            tensors.pop(prefix + "classifier.weight"),
            tensors.pop(prefix + "classifier.bias"),
            tensors.pop(prefix + "class_text"),
            int(spec["top_t"]),
            float(spec["logit_scale"]),
            center,
        )
        if head.in_dim != int(spec["in_dim"]) or head.out_dim != int(spec["out_dim"]):
            raise AlignmentError(f"{path}: concept head of {prefix!r} does not match its spec")
        return head
    if kind not in ("linear", "mlp"):
        raise AlignmentError(f"{path}: unknown head type {kind!r}; {_HINT} again")
    center = tensors.pop(prefix + "center") if spec["centered"] else None
    layers = tuple(
        (tensors.pop(f"{prefix}layers.{k}.weight"), tensors.pop(f"{prefix}layers.{k}.bias"))
        for k in range(int(spec["layers"]))
    )
    return _check_head(path, int(spec["in_dim"]), center, layers)


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
