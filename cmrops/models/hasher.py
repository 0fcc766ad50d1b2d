"""Cross-modal hashing network: one MLP head per modality on the preprocess embeddings.

Each head maps an embedding to ``n_bits`` continuous outputs in (-1, 1) (``tanh``); the binary
code of a sample is ``sign`` of them, packed with ``cmrops.pack_bits(x > 0)``. Both heads share
the code space, so an image code is compared with a text code by Hamming distance.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

SUPPORTED_BITS = (8, 16, 24, 32, 48, 64, 96, 128, 256)


@dataclass(frozen=True)
class HasherConfig:
    """Shape of a :class:`CrossModalHasher`; stored as ``config.json`` beside the weights."""

    image_dim: int  # input embedding widths (features/meta.json)
    text_dim: int
    n_bits: int  # code length
    hidden: tuple[int, ...] = (1024,)  # hidden layer widths of each head (empty: linear head)
    dropout: float = 0.1
    # End-to-end fine-tuning (cmrops.models.finetune): the dual encoder under the heads, how many
    # of its last blocks train, and the SHA-256 of its weights. None: heads on embeddings.
    encoder: str | None = None
    encoder_layers: int = 2
    encoder_sha256: str | None = None

    def __post_init__(self) -> None:
        if self.image_dim < 1 or self.text_dim < 1:
            raise ValueError(f"embedding dims must be >= 1, got {self.image_dim}/{self.text_dim}")
        if self.n_bits not in SUPPORTED_BITS:
            raise ValueError(f"n_bits must be one of {SUPPORTED_BITS}, got {self.n_bits}")
        if any(h < 1 for h in self.hidden):
            raise ValueError(f"hidden widths must be >= 1, got {list(self.hidden)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.encoder_layers < -1:
            raise ValueError(f"encoder_layers must be >= -1 (-1: all), got {self.encoder_layers}")

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        if self.encoder is None:  # heads on embeddings: the config of every earlier checkpoint
            for k in ("encoder", "encoder_layers", "encoder_sha256"):
                del d[k]
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> HasherConfig:
        return cls(**{**d, "hidden": tuple(d["hidden"])})


class HashHead(nn.Module):
    """``in_dim`` → hidden (Linear, ReLU, Dropout)* → Linear → tanh, ``n_bits`` outputs."""

    def __init__(self, in_dim: int, hidden: tuple[int, ...], n_bits: int, dropout: float) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_dim
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(dropout)]
            width = h
        layers.append(nn.Linear(width, n_bits))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.net(x))


class CrossModalHasher(nn.Module):
    """Image head and text head into one ``n_bits`` code space."""

    def __init__(self, config: HasherConfig) -> None:
        super().__init__()
        self.config = config
        self.image = HashHead(config.image_dim, config.hidden, config.n_bits, config.dropout)
        self.text = HashHead(config.text_dim, config.hidden, config.n_bits, config.dropout)

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.image(image), self.text(text)
