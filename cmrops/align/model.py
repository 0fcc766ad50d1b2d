"""The alignment: two heads into one L2-normalised space, applied in numpy.

A side (``image`` or ``text``) is ``normalise(x)``, minus the training mean (``center``), then
the head's layers - one linear map, or linear, GELU (tanh form), linear - then L2-normalised.
:func:`encoder_alignment` is the identity on normalised features: what the two towers of one
aligned dual encoder (CLIP, SigLIP) already give; it has no weights and ``kind == "encoder"``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np

Side = Literal["image", "text"]
SIDES: tuple[Side, Side] = ("image", "text")
#: ``learned``: trained heads; ``encoder``: the identity of an aligned dual encoder; ``concept``:
#: the zero-pair bridge through ImageNet classes (:mod:`cmrops.align.concept`); ``fused``: a
#: weighted sum of the scores of two alignments (:mod:`cmrops.align.fusion`).
Kind = Literal["learned", "encoder", "concept", "fused"]


class SideMap(Protocol):
    """One side's map into the shared space: ``(n, in_dim)`` -> ``(n, out_dim)`` unit rows."""

    @property
    def in_dim(self) -> int: ...

    @property
    def out_dim(self) -> int: ...

    def __call__(self, x: np.ndarray) -> np.ndarray: ...


def normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero), float32."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms == 0, np.float32(1.0), norms)


def gelu(x: np.ndarray) -> np.ndarray:
    """GELU, tanh approximation (``torch.nn.GELU(approximate="tanh")``)."""
    c = np.float32(math.sqrt(2.0 / math.pi))
    return np.float32(0.5) * x * (np.float32(1.0) + np.tanh(c * (x + np.float32(0.044715) * x**3)))


@dataclass(frozen=True)
class Head:
    """One side's map: ``center`` (in_dim,) or None and ``layers`` [(W (out, in), b (out,))]."""

    in_dim: int
    center: np.ndarray | None = None
    layers: tuple[tuple[np.ndarray, np.ndarray], ...] = ()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.in_dim:
            raise ValueError(f"expected (n, {self.in_dim}) features, got {x.shape}")
        if not np.isfinite(x).all():
            raise ValueError("features hold NaN or infinity; score only measured rows")
        h = normalise(x)
        if self.center is not None:
            h = h - self.center
        for k, (w, b) in enumerate(self.layers):
            h = h @ w.T + b
            if k < len(self.layers) - 1:
                h = gelu(h)
        return normalise(h)

    @property
    def out_dim(self) -> int:
        return int(self.layers[-1][0].shape[0]) if self.layers else self.in_dim


@dataclass(frozen=True)
class Alignment:
    """Maps image and text features into one space; rows of both outputs are unit vectors."""

    kind: Kind
    heads: dict[str, SideMap]
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if set(self.heads) != set(SIDES):
            raise ValueError(
                f"an alignment needs an image and a text head, got {sorted(self.heads)}"
            )
        if self.heads["image"].out_dim != self.heads["text"].out_dim:
            raise ValueError(
                f"image head gives {self.heads['image'].out_dim}-d, text head "
                f"{self.heads['text'].out_dim}-d: the shared space must be one dimension"
            )

    @property
    def dim(self) -> int:
        return self.heads["image"].out_dim

    def image(self, x: np.ndarray) -> np.ndarray:
        """``(n, dim)`` float32, L2-normalised rows."""
        return self.heads["image"](x)

    def text(self, x: np.ndarray) -> np.ndarray:
        """``(n, dim)`` float32, L2-normalised rows."""
        return self.heads["text"](x)

    def pair_scores(self, image_x: np.ndarray, text_x: np.ndarray) -> np.ndarray:
        """Row-wise cosine of ``image(image_x[i])`` and ``text(text_x[i])``, float64 ``(n,)``."""
        if len(image_x) != len(text_x):
            raise ValueError(f"{len(image_x)} images but {len(text_x)} texts: rows must be pairs")
        zi, zt = self.image(image_x), self.text(text_x)
        return np.einsum("ij,ij->i", zi, zt, dtype=np.float64)


def encoder_alignment(dim: int) -> Alignment:
    """The identity on L2-normalised features of an aligned dual encoder of width ``dim``."""
    if dim < 1:
        raise ValueError(f"dim must be >= 1, got {dim}")
    heads = {side: Head(in_dim=dim) for side in SIDES}
    return Alignment(
        "encoder",
        heads,
        {"kind": "encoder", "dim": dim, "map": "identity on L2-normalised features"},
    )
