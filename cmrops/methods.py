"""The catalogue of cross-modal hashing methods ``cmrops train`` knows, and their knobs.

Torch-free on purpose: params validation (:class:`cmrops.stages.train.TrainParams`) and the
records of what a model is (``meta.json``, ``train.json``) read it without importing torch.

Two kinds of training share one stage, one checkpoint layout and one codes layout:

* ``deep`` - an MLP head per modality trained by the one flat loop
  (:func:`cmrops.models.loop.fit`); the method selects the batch loss.
* ``closed_form`` - linear projections solved in float64 numpy, no optimiser
  (:mod:`cmrops.models.closed_form`); codes are ``sign`` of the centred projections.

Each method's own knobs are a frozen dataclass here, a sub-section of ``train:`` in
params.yaml (``train.djsrh``, ``train.cca``, ``train.itq``, ``train.cmfh``); the defaults are the
papers'.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class MethodInfo:
    """What a method is: recorded in each model's ``meta.json`` and in ``train.json``."""

    name: str
    kind: Literal["deep", "closed_form"]
    family: str
    supervised: bool
    paper: str

    def to_json(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "family": self.family,
            "supervised": self.supervised,
            "paper": self.paper,
        }


CATALOGUE: dict[str, MethodInfo] = {
    m.name: m
    for m in (
        MethodInfo(
            "dcmh",
            "deep",
            "supervised deep hashing (pairwise label likelihood)",
            True,
            "Jiang & Li, Deep Cross-Modal Hashing, CVPR 2017",
        ),
        MethodInfo(
            "contrastive",
            "deep",
            "unsupervised deep hashing (symmetric InfoNCE on the pairing)",
            False,
            "van den Oord et al. 2018 / Radford et al. 2021 (InfoNCE), with DCMH's quantisation",
        ),
        MethodInfo(
            "djsrh",
            "deep",
            "unsupervised deep hashing, joint-semantic affinity graph (DJSRH / UCCH family)",
            False,
            "Su, Zhong & Zhang, Deep Joint-Semantics Reconstructing Hashing, ICCV 2019",
        ),
        MethodInfo(
            "itq",
            "closed_form",
            "training-free baseline: CCA shared space, PCA, ITQ rotation (CCA-ITQ)",
            False,
            "Gong, Lazebnik, Gordo & Perronnin, Iterative Quantization, TPAMI 2013",
        ),
        MethodInfo(
            "cca",
            "closed_form",
            "canonical correlation analysis, top-bits directions, sign",
            False,
            "Hotelling 1936; the CCA row of cross-modal hashing tables (e.g. Gong et al. 2013)",
        ),
        MethodInfo(
            "cmfh",
            "closed_form",
            "matrix factorisation: collective latent factors with linear projections",
            False,
            "Ding, Guo & Zhou, Collective Matrix Factorization Hashing, CVPR 2014 / TIP 2016",
        ),
    )
}
METHODS: tuple[str, ...] = tuple(CATALOGUE)
DEEP_METHODS: tuple[str, ...] = tuple(m for m, i in CATALOGUE.items() if i.kind == "deep")
CLOSED_FORM_METHODS: tuple[str, ...] = tuple(
    m for m, i in CATALOGUE.items() if i.kind == "closed_form"
)


def info(method: str) -> MethodInfo:
    """The catalogue entry of ``method``; an unknown name gets the list to choose from."""
    try:
        return CATALOGUE[method]
    except KeyError:
        raise ValueError(f"unknown method {method!r}; {describe()}") from None


def describe() -> str:
    """One line per method, for error messages."""
    rows = [
        f"{m} ({i.kind}, {'supervised' if i.supervised else 'unsupervised'}: {i.family})"
        for m, i in CATALOGUE.items()
    ]
    return "choose from: " + "; ".join(rows)


# --------------------------------------------------------------------------- method knobs


def _finite(owner: str, name: str, value: float, low: float, high: float = math.inf) -> None:
    if not (math.isfinite(value) and low <= value <= high):
        bounds = f">= {low}" if high == math.inf else f"in [{low}, {high}]"
        raise ValueError(f"{owner}.{name} must be {bounds}, got {value}")


@dataclass(frozen=True)
class DjsrhOptions:
    """DJSRH's joint-semantic affinity ``S = β cos(F_I) + (1 - β) cos(F_T)``, refined as
    ``S~ = (1 - η) S + η S Sᵀ / b`` and scaled by ``μ``; the loss weights the intra-modal
    reconstructions by ``λ1`` (image-image) and ``λ2`` (text-text). Defaults: the paper's
    (β 0.6 is its NUS-WIDE value, between MIRFlickr's 0.9 and Wikipedia's 0.3; η 0.4, μ 1.5,
    λ 0.1)."""

    beta: float = 0.6
    eta: float = 0.4
    mu: float = 1.5
    lambda_image: float = 0.1  # λ1: ||μ S~ - cos(B_I, B_I)||²
    lambda_text: float = 0.1  # λ2: ||μ S~ - cos(B_T, B_T)||²
    # Cosines of the embeddings centred by the training mean (the pipeline's embeddings are not
    # zero-mean: uncentred, every pair looks similar). false: the paper's raw cosines.
    centre: bool = True

    def __post_init__(self) -> None:
        _finite("djsrh", "beta", self.beta, 0.0, 1.0)
        _finite("djsrh", "eta", self.eta, 0.0, 1.0)
        _finite("djsrh", "mu", self.mu, 1e-9)
        _finite("djsrh", "lambda_image", self.lambda_image, 0.0)
        _finite("djsrh", "lambda_text", self.lambda_text, 0.0)


@dataclass(frozen=True)
class CcaOptions:
    """Regularised CCA: ``reg`` times the mean variance is added to each modality's covariance
    diagonal (scale-free; it keeps high-dimensional embeddings on a few thousand pairs from
    fitting noise). The default is ours: the best of 1e-4 ... 100 on synthetic pairs of the
    default encoders' widths (1280/384, 1,700 training pairs); 1e-4 fits noise there."""

    reg: float = 1.0

    def __post_init__(self) -> None:
        _finite("cca", "reg", self.reg, 1e-12)


@dataclass(frozen=True)
class ItqOptions:
    """CCA-ITQ: CCA shared space (``reg`` as :class:`CcaOptions`), directions weighted by their
    canonical correlation to the power ``power`` (Gong et al. use 4), PCA to ``bits`` dims,
    ``iterations`` of ITQ from a seeded random rotation (Gong et al.: 50)."""

    reg: float = 1.0
    power: float = 4.0
    iterations: int = 50

    def __post_init__(self) -> None:
        _finite("itq", "reg", self.reg, 1e-12)
        _finite("itq", "power", self.power, 0.0)
        if self.iterations < 0:
            raise ValueError(f"itq.iterations must be >= 0, got {self.iterations}")


@dataclass(frozen=True)
class CmfhOptions:
    """CMFH: ``image_weight`` (the paper's λ) weighs the image factorisation against the text
    one (``1 - λ``), ``μ`` the projection
    terms ``||V - P X||²``, ``γ`` the Frobenius regularisers; at most ``iterations`` alternating
    updates, stopping when the objective falls by less than ``tol`` (relative). Defaults: Ding
    et al.'s released code (λ 0.5, γ 0.001, 100 iterations, 0.01) except ``μ``: theirs is 100
    for raw features; on standardised embeddings 1 is measured far better (see
    :mod:`cmrops.models.cmfh`)."""

    image_weight: float = 0.5  # λ
    mu: float = 1.0
    gamma: float = 0.001
    iterations: int = 100
    tol: float = 0.01

    def __post_init__(self) -> None:
        _finite("cmfh", "image_weight", self.image_weight, 1e-9, 1.0 - 1e-9)
        _finite("cmfh", "mu", self.mu, 1e-12)
        _finite("cmfh", "gamma", self.gamma, 1e-12)
        _finite("cmfh", "tol", self.tol, 0.0)
        if self.iterations < 1:
            raise ValueError(f"cmfh.iterations must be >= 1, got {self.iterations}")
