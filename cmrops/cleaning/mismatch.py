"""How many pairs to flag as mismatched, read from the score distribution (not a fixed share).

The align stage scores every image-caption pair in its shared space (out of fold when anything
was learned) and, as a **null**, the same images with other samples' captions (seeded
derangements). A mismatched pair - a caption swapped onto the wrong photo - scores like the
null; a correct pair scores higher. So the pair scores ``s`` are a two-component mixture,

    f(s) = (1 - pi) * g(s) + pi * h(s),

``h`` the null's density (known: a Gaussian kernel density estimate of the null scores, Scott's
bandwidth), ``g`` the correct pairs' (a normal distribution, fitted) and ``pi`` the share of
mismatched pairs. :func:`calibrate_mismatch` fits ``pi``, ``g``'s mean and spread by EM (``h``
fixed), then:

1. **Gap test**: is there a null-like component at all? The likelihood ratio of the mixture
   against ``pi = 0`` (one normal fitted to every pair), referred to the boundary distribution
   ``0.5 chi2(0) + 0.5 chi2(1)``; with p-value above ``alpha`` (default 0.01) nothing is
   flagged. On clean data the true pairs' low tail is part of ``g``, and the estimate of ``pi``
   stays at or near 0.
2. **Flag rule**: otherwise a pair is flagged when its score is below the cut where a mismatch
   becomes the likelier explanation - the lowest score at which the posterior
   ``pi h(s) / f(s)`` falls below one half (scanning up from the lowest pair score) - so the
   flag rate follows the data: ~0 on clean data, about the planted share where captions were
   swapped.

The record returned says what was estimated and decided (``mismatch_share``, the test, the cut,
how many pairs it flags), so the flags can be checked.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

#: Significance of the gap test (a mixture with a null-like component vs one normal).
ALPHA = 0.01
#: Posterior probability of a mismatch at which a pair is flagged.
POSTERIOR = 0.5
#: The null density is estimated from at most this many null scores (an even subsample).
MAX_NULL = 4000
_EM_STEPS = 500
_GRID = 2048


def _kde(null: np.ndarray, bandwidth: float):
    def density(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float64)
        out = np.empty(len(x))
        for lo in range(0, len(x), 1024):
            z = (x[lo : lo + 1024, None] - null[None, :]) / bandwidth
            out[lo : lo + 1024] = np.exp(-0.5 * z * z).mean(axis=1)
        return out / (bandwidth * math.sqrt(2 * math.pi))

    return density


def _normal(x: np.ndarray, mu: float, sd: float) -> np.ndarray:
    z = (x - mu) / sd
    return np.exp(-0.5 * z * z) / (sd * math.sqrt(2 * math.pi))


def calibrate_mismatch(
    scores: np.ndarray, null: np.ndarray, *, alpha: float = ALPHA
) -> dict[str, Any]:
    """The mismatch cut for ``scores`` (one per pair) against ``null`` (see module docstring).

    Returns ``threshold`` (flag a pair whose score is below it; ``None``: flag nothing),
    ``flagged`` (pairs of ``scores`` below it), ``flag_rate``, ``mismatch_share`` (the fitted
    ``pi``), the gap test (``likelihood_ratio``, ``p_value``) and the fitted components."""
    s = np.asarray(scores, np.float64)
    s = s[np.isfinite(s)]
    z = np.asarray(null, np.float64)
    z = z[np.isfinite(z)]
    rule = (
        "mixture of the null (images with deranged captions, kernel density) and a normal for "
        f"the correct pairs, fitted by EM; flag only when the likelihood-ratio gap test has p < "
        f"{alpha:g}, then the pairs below the score where P(mismatch | score) falls under "
        f"{POSTERIOR:g}"
    )
    base: dict[str, Any] = {"pairs": len(s), "null_scores": len(z), "rule": rule}
    if len(s) < 3 or len(z) < 3 or np.std(z) == 0 or np.std(s) == 0:
        return {**base, "threshold": None, "flagged": 0, "flag_rate": 0.0,
                "mismatch_share": None, "why": "too few scores to estimate a mixture"}  # fmt: skip
    if len(z) > MAX_NULL:
        z = np.sort(z)[np.linspace(0, len(z) - 1, MAX_NULL).round().astype(np.int64)]
    bw = 1.06 * float(np.std(z)) * len(z) ** -0.2  # Scott's rule
    h = _kde(z, bw)(s)
    mu0, sd0 = float(s.mean()), float(s.std())
    ll0 = float(np.log(np.maximum(_normal(s, mu0, sd0), 1e-300)).sum())
    # EM with h fixed: start with a tenth of the pairs as null-like
    pi, mu, sd = 0.1, mu0, sd0
    for _ in range(_EM_STEPS):
        g = _normal(s, mu, sd)
        mix = pi * h + (1 - pi) * g
        post = pi * h / np.maximum(mix, 1e-300)
        new_pi = float(post.mean())
        wg = 1 - post
        if wg.sum() <= 1e-9:
            break
        mu = float((wg * s).sum() / wg.sum())
        sd = max(float(math.sqrt((wg * (s - mu) ** 2).sum() / wg.sum())), 1e-6)
        converged = abs(new_pi - pi) < 1e-7
        pi = new_pi
        if converged:
            break
    g = _normal(s, mu, sd)
    ll1 = float(np.log(np.maximum(pi * h + (1 - pi) * g, 1e-300)).sum())
    lr = max(0.0, 2 * (ll1 - ll0))
    p_value = 0.5 * math.erfc(math.sqrt(lr / 2)) if lr > 0 else 0.5  # 0.5 * P(chi2_1 > lr)
    fitted = {
        "mismatch_share": round(pi, 6),
        "correct_pairs": {"mean": round(mu, 6), "sd": round(sd, 6)},
        "null": {"mean": round(float(z.mean()), 6), "sd": round(float(z.std()), 6),
                 "bandwidth": round(bw, 6)},
        "likelihood_ratio": round(lr, 6),
        "p_value": float(f"{p_value:.6g}"),
    }  # fmt: skip
    if p_value >= alpha or pi <= 0:
        return {**base, **fitted, "threshold": None, "flagged": 0, "flag_rate": 0.0,
                "why": "no null-like component: the gap test is not significant"}  # fmt: skip
    grid = np.linspace(float(s.min()), float(s.max()), _GRID)
    hg, gg = _kde(z, bw)(grid), _normal(grid, mu, sd)
    posterior = pi * hg / np.maximum(pi * hg + (1 - pi) * gg, 1e-300)
    below = np.flatnonzero(posterior < POSTERIOR)
    if len(below) == 0:  # every score is likelier a mismatch: flag all but the best
        cut = float(grid[-1])
    elif below[0] == 0:  # already the lowest pair is likelier correct
        cut = None
    else:
        cut = float(grid[below[0]])
    flagged = 0 if cut is None else int((s < cut).sum())
    return {
        **base,
        **fitted,
        "threshold": None if cut is None else round(cut, 6),
        "flagged": flagged,
        "flag_rate": round(flagged / len(s), 6),
        "why": (
            "a null-like component: pairs below the cut are likelier mismatched than correct"
            if flagged
            else "a null-like component, but no pair scores where a mismatch is likelier"
        ),
    }
