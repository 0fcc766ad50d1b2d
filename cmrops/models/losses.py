"""The two training objectives. Both take the continuous head outputs ``f`` (images) and ``g``
(texts) of one batch of paired samples, shape ``(b, n_bits)``, values in (-1, 1).

* :func:`dcmh_loss` - supervised, after DCMH (Jiang & Li, CVPR 2017): the negative
  log-likelihood of the cross-modal label similarity ``S_ij`` (1 when image ``i`` and text ``j``
  share a label) under ``p(S_ij = 1) = sigmoid(θ_ij)``, ``θ_ij = ½ f_i·g_j``, i.e.
  ``-Σ (S_ij θ_ij - log(1 + e^θ_ij))``, computed as a softplus (stable for any ``θ``);
  plus quantisation ``‖B - f‖² + ‖B - g‖²`` with ``B = sign(f + g)`` and bit balance
  ``‖f·1‖² + ‖g·1‖²`` (each bit +1 for half the samples).
* :func:`contrastive_loss` - unsupervised, from the image-text pairing alone: symmetric InfoNCE
  over the batch (the paired text is the positive of an image, every other text a negative, and
  the other way round) on the L2-normalised continuous codes at a temperature; plus the same
  quantisation (``B = sign`` per modality) and balance terms.

Every term is a mean (over pairs, or over samples × bits) so the weights mean the same at any
batch size and code length. Each function returns ``(total, parts)`` where ``parts`` holds the
detached terms for logging.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

Parts = dict[str, torch.Tensor]


def sign(x: torch.Tensor) -> torch.Tensor:
    """±1 (0 maps to +1, matching ``pack_bits(x > 0)`` up to exact zeros, which tanh avoids)."""
    return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)


def quantization(x: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean of ``(b - x)²`` over samples and bits."""
    return (b - x).pow(2).mean()


def balance(x: torch.Tensor) -> torch.Tensor:
    """Mean over bits of the squared batch mean: 0 when every bit is +1 for half the batch."""
    return x.mean(dim=0).pow(2).mean()


def label_similarity(labels_a: torch.Tensor, labels_b: torch.Tensor) -> torch.Tensor:
    """``S_ij = 1`` when multi-hot rows ``a_i`` and ``b_j`` share a label, else 0 (float)."""
    return (labels_a.float() @ labels_b.float().T > 0).float()


def dcmh_loss(
    f: torch.Tensor,
    g: torch.Tensor,
    s: torch.Tensor,
    quantization_weight: float,
    balance_weight: float,
    balanced: bool = False,
) -> tuple[torch.Tensor, Parts]:
    """Pairwise label-likelihood loss; ``s`` is the ``(b, b)`` similarity of images to texts.
    ``balanced`` weights the similar pairs up to as much as the dissimilar ones in total (for
    pair similarity, ``S = I``: one similar text per image among ``b``)."""
    f, g = f.float(), g.float()
    theta = 0.5 * (f @ g.T)
    # softplus(θ) - S θ == -(S θ - log(1 + e^θ)); the BCE-with-logits kernel is the stable form.
    pos = None
    if balanced:
        n_pos = s.sum().clamp(min=1.0)
        pos = ((s.numel() - n_pos) / n_pos).reshape(1)
    nll = F.binary_cross_entropy_with_logits(theta, s, reduction="mean", pos_weight=pos)
    b = sign(f.detach() + g.detach())
    quant = quantization(f, b) + quantization(g, b)
    bal = balance(f) + balance(g)
    total = nll + quantization_weight * quant + balance_weight * bal
    return total, {
        "likelihood": nll.detach(),
        "quantization": quant.detach(),
        "balance": bal.detach(),
    }


def contrastive_loss(
    f: torch.Tensor,
    g: torch.Tensor,
    temperature: float,
    quantization_weight: float,
    balance_weight: float,
) -> tuple[torch.Tensor, Parts]:
    """Symmetric InfoNCE between paired rows of ``f`` and ``g``."""
    f, g = f.float(), g.float()
    logits = F.normalize(f, dim=1) @ F.normalize(g, dim=1).T / temperature
    target = torch.arange(len(f), device=f.device)
    nce = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
    quant = quantization(f, sign(f.detach())) + quantization(g, sign(g.detach()))
    bal = balance(f) + balance(g)
    total = nce + quantization_weight * quant + balance_weight * bal
    return total, {"infonce": nce.detach(), "quantization": quant.detach(), "balance": bal.detach()}
