"""DJSRH's objective (Su, Zhong & Zhang, "Deep Joint-Semantics Reconstructing Hashing for
Large-Scale Unsupervised Cross-Modal Retrieval", ICCV 2019): unsupervised, from a per-batch
affinity graph over the *input* features of both modalities.

For a batch of ``b`` pairs with embeddings ``x`` (image) and ``y`` (text):

* ``S = β cos(x, x) + (1 - β) cos(y, y)`` - the joint-semantics affinity;
* ``S~ = (1 - η) S + η S Sᵀ / b`` - refined by its second-order neighbourhood;
* loss ``‖μS~ - cos(B_I, B_T)‖² + λ1 ‖μS~ - cos(B_I, B_I)‖² + λ2 ‖μS~ - cos(B_T, B_T)‖²``
  (means over the ``b × b`` entries, as the authors' code's ``mse_loss``), where ``B`` are the
  continuous head outputs ``f``/``g`` and ``cos`` their row-normalised dot products;
* plus the loop's shared quantisation and bit-balance terms (as every method here; set
  ``train.quantization_weight``/``balance_weight`` to 0 for the paper's loss alone).

``centre`` subtracts the training mean from the embeddings before the cosines (the embeddings
of pretrained encoders are far from zero-mean, so raw cosines call every pair similar; the
authors' code maps ``cos`` of non-negative CNN features by ``2c - 1`` for the same reason).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cmrops.methods import DjsrhOptions
from cmrops.models.losses import Parts, balance, quantization, sign


def cosine(a: torch.Tensor) -> torch.Tensor:
    """``(b, b)`` cosine similarities of the rows of ``a``."""
    a = F.normalize(a.float(), dim=1)
    return a @ a.T


def joint_affinity(x: torch.Tensor, y: torch.Tensor, options: DjsrhOptions) -> torch.Tensor:
    """``μ S~`` of one batch of (already centred, if so configured) embeddings."""
    s = options.beta * cosine(x) + (1.0 - options.beta) * cosine(y)
    refined = (1.0 - options.eta) * s + options.eta * (s @ s.T) / len(s)
    return options.mu * refined


def djsrh_loss(
    f: torch.Tensor,
    g: torch.Tensor,
    target: torch.Tensor,
    options: DjsrhOptions,
    quantization_weight: float,
    balance_weight: float,
) -> tuple[torch.Tensor, Parts]:
    """The loss of one batch; ``target`` is :func:`joint_affinity` of its embeddings."""
    f, g = f.float(), g.float()
    bi, bt = F.normalize(f, dim=1), F.normalize(g, dim=1)
    cross = (target - bi @ bt.T).pow(2).mean()
    intra_i = (target - bi @ bi.T).pow(2).mean()
    intra_t = (target - bt @ bt.T).pow(2).mean()
    recon = cross + options.lambda_image * intra_i + options.lambda_text * intra_t
    quant = quantization(f, sign(f.detach())) + quantization(g, sign(g.detach()))
    bal = balance(f) + balance(g)
    total = recon + quantization_weight * quant + balance_weight * bal
    return total, {
        "cross": cross.detach(),
        "intra_image": intra_i.detach(),
        "intra_text": intra_t.detach(),
        "quantization": quant.detach(),
        "balance": bal.detach(),
    }
