"""The model of the closed-form methods (:mod:`cmrops.models.closed_form`): one affine
projection per modality into the shared ``n_bits`` space, ``z = (x - mean) W - offset``, in
float64; the code is ``sign(z)`` (``pack_bits(z > 0)``), like the MLP heads' outputs.

Its weights are ordinary (frozen) parameters, so a fitted projection is saved, checked and
loaded by :mod:`cmrops.models.checkpoint` like any trained model, and
:func:`cmrops.models.loop.encode` encodes with it unchanged.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class LinearConfig:
    """Shape of a :class:`LinearHasher`; stored in ``config.json`` beside the matrices."""

    image_dim: int
    text_dim: int
    n_bits: int

    def to_json(self) -> dict[str, Any]:
        return {"kind": "linear", **asdict(self)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> LinearConfig:
        if d.get("kind") != "linear":
            raise ValueError(f"not a linear projection config (kind {d.get('kind')!r})")
        return cls(int(d["image_dim"]), int(d["text_dim"]), int(d["n_bits"]))


class LinearHead(nn.Module):
    """``(x - mean) @ weight - offset`` in float64 (inputs of any float type)."""

    def __init__(self, in_dim: int, n_bits: int) -> None:
        super().__init__()
        f64 = torch.float64
        self.mean = nn.Parameter(torch.zeros(in_dim, dtype=f64), requires_grad=False)
        self.weight = nn.Parameter(torch.zeros(in_dim, n_bits, dtype=f64), requires_grad=False)
        self.offset = nn.Parameter(torch.zeros(n_bits, dtype=f64), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.double() - self.mean) @ self.weight - self.offset

    def set(self, mean: np.ndarray, weight: np.ndarray, offset: np.ndarray) -> None:
        for p, a in ((self.mean, mean), (self.weight, weight), (self.offset, offset)):
            if tuple(a.shape) != tuple(p.shape):
                raise ValueError(f"projection shape {a.shape}, expected {tuple(p.shape)}")
            p.data.copy_(torch.from_numpy(np.ascontiguousarray(a, np.float64)))


class LinearHasher(nn.Module):
    """Image projection and text projection into one ``n_bits`` code space."""

    def __init__(self, config: LinearConfig) -> None:
        super().__init__()
        self.config = config
        self.image = LinearHead(config.image_dim, config.n_bits)
        self.text = LinearHead(config.text_dim, config.n_bits)

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.image(image), self.text(text)
