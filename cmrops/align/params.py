"""The alignment model's training parameters (:class:`AlignParams`), validated on construction."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class AlignParams:
    """How :func:`cmrops.align.fit_alignment` trains the two heads.

    ``hidden`` 0 makes each head one linear map into the ``dim``-d shared space; a positive
    ``hidden`` makes it a two-layer MLP (linear, GELU, linear). ``holdout`` is the fraction of
    pairs kept out of training for early stopping (held-out InfoNCE loss, ``patience`` epochs) and
    for every reported metric. The mismatch threshold is calibrated on the held-out pairs so that
    at most ``max_flag_rate`` of the true pairs fall below it (see :mod:`cmrops.align.metrics`).
    """

    dim: int = 128
    hidden: int = 0
    epochs: int = 200
    batch_size: int = 256
    lr: float = 1e-3
    temperature: float = 0.05
    weight_decay: float = 0.1
    holdout: float = 0.2
    seed: int = 0
    patience: int = 20
    max_flag_rate: float = 0.03

    def __post_init__(self) -> None:
        if self.dim < 2:
            raise ValueError(f"dim must be >= 2, got {self.dim}")
        if self.hidden < 0:
            raise ValueError(f"hidden must be >= 0 (0: linear heads), got {self.hidden}")
        if self.epochs < 1 or self.patience < 1:
            raise ValueError(
                f"epochs and patience must be >= 1, got {self.epochs} and {self.patience}"
            )
        if self.batch_size < 2:
            raise ValueError(
                f"batch_size must be >= 2 (InfoNCE needs negatives), got {self.batch_size}"
            )
        if not self.lr > 0 or not self.temperature > 0:
            raise ValueError(
                f"lr and temperature must be > 0, got {self.lr} and {self.temperature}"
            )
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not 0.0 < self.holdout < 1.0:
            raise ValueError(f"holdout must be in (0, 1), got {self.holdout}")
        if not 0.0 < self.max_flag_rate < 1.0:
            raise ValueError(f"max_flag_rate must be in (0, 1), got {self.max_flag_rate}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
