"""The zero-pair prior (the concept bridge), its fusion with learned heads, and the mismatch
calibration read from the score distribution - on small constructed data (no model loads)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cmrops.align import AlignParams, fit_alignment, load_alignment
from cmrops.align.concept import ConceptHead, ConceptParams, class_texts, concept_alignment
from cmrops.align.fusion import choose_weight, fuse
from cmrops.align.model import normalise
from cmrops.align.store import CONFIG, WEIGHTS, save_alignment
from cmrops.cleaning.mismatch import calibrate_mismatch

PARAMS = AlignParams(dim=8, epochs=30, batch_size=64, lr=3e-3, patience=6, seed=2)


def concept_world(n: int, seed: int = 0, classes: int = 12, dim: int = 16, tdim: int = 10):
    """A classifier over ``classes`` concepts and captions that name them: image features are a
    class direction plus noise, captions the class's text embedding plus noise."""
    rng = np.random.default_rng(seed)
    weight = rng.normal(size=(classes, dim)).astype(np.float32)
    bias = np.zeros(classes, np.float32)
    class_text = normalise(rng.normal(size=(classes, tdim)).astype(np.float32))
    cls = rng.integers(0, classes, n)
    image = weight[cls] + 0.4 * rng.normal(size=(n, dim))
    text = class_text[cls] + 0.3 * rng.normal(size=(n, tdim))
    return weight, bias, class_text, image.astype(np.float32), text.astype(np.float32)


def test_concept_head_is_the_weighted_mean_of_the_top_classes():
    weight, bias, class_text, image, _ = concept_world(20)
    head = ConceptHead(weight, bias, class_text, top_t=3, logit_scale=4.0)
    p = head.probabilities(image)
    assert np.allclose(p.sum(axis=1), 1.0)
    top = np.argsort(-p, axis=1)[:, :3]
    w = np.take_along_axis(p, top, axis=1)
    want = normalise(
        np.einsum("nt,ntd->nd", w / w.sum(1, keepdims=True), class_text[top]).astype(np.float32)
    )
    assert np.allclose(head(image), want, atol=1e-5)
    with pytest.raises(ValueError, match="expected"):
        head(image[:, :5])
    with pytest.raises(ValueError, match="top_t"):
        ConceptParams(top_t=0)


def test_concept_alignment_needs_no_pairs_and_round_trips(tmp_path: Path):
    weight, bias, class_text, image, text = concept_world(200)
    a = concept_alignment(weight, bias, class_text, ConceptParams(top_t=3, logit_scale=4.0),
                          image=image, text=text)  # fmt: skip
    assert a.kind == "concept"
    assert a.info["pairs_used"] == 0
    true = a.pair_scores(image, text)
    swapped = a.pair_scores(image, np.roll(text, 1, axis=0))
    assert (true > swapped).mean() > 0.85  # captions meet their images with zero pairs
    save_alignment(a, tmp_path / "a")
    b = load_alignment(tmp_path / "a")
    assert b.kind == "concept"
    assert np.array_equal(b.image(image), a.image(image))
    assert np.array_equal(b.text(text), a.text(text))
    save_alignment(a, tmp_path / "again")
    for name in (CONFIG, WEIGHTS):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "again" / name).read_bytes()


def test_fused_scores_are_the_weighted_sum_and_round_trip(tmp_path: Path):
    weight, bias, class_text, image, text = concept_world(300, seed=1)
    prior = concept_alignment(weight, bias, class_text, ConceptParams(top_t=3, logit_scale=4.0))
    learned, _ = fit_alignment(image, text, PARAMS, progress=False)
    fused = fuse(prior, learned, 0.3)
    want = 0.3 * prior.pair_scores(image, text) + 0.7 * learned.pair_scores(image, text)
    assert np.allclose(fused.pair_scores(image, text), want, atol=1e-5)
    assert np.allclose(np.linalg.norm(fused.image(image), axis=1), 1.0, atol=1e-5)
    save_alignment(fused, tmp_path / "f")
    back = load_alignment(tmp_path / "f")
    assert back.kind == "fused"
    assert np.allclose(back.pair_scores(image, text), want, atol=1e-5)
    with pytest.raises(ValueError, match="weight"):
        fuse(prior, learned, 1.5)


def test_choose_weight_follows_the_better_part():
    weight, bias, class_text, image, text = concept_world(240, seed=3)
    good_prior = concept_alignment(
        weight, bias, class_text, ConceptParams(top_t=2, logit_scale=4.0)
    )
    rng = np.random.default_rng(0)
    useless = concept_alignment(
        rng.normal(size=weight.shape).astype(np.float32), bias, class_text, ConceptParams()
    )
    learned, _ = fit_alignment(image[:160], text[:160], PARAMS, progress=False)
    fold = [(learned, image[160:], text[160:])]
    w_good, rec = choose_weight(good_prior, fold)
    w_bad, bad = choose_weight(useless, fold)
    assert w_good > w_bad
    assert rec["holdout_pairs"] == 80
    assert rec["mrr"][f"{w_good:g}"] == max(rec["mrr"].values())
    assert w_good == rec["best_by_mrr"]  # here the prior alone (the better part) is best
    # a useless prior: whatever small weight wins on these 80 pairs is within the noise of the
    # choice, so the learned heads are kept as they are (fused == learned, never below it)
    assert w_bad == 0.0
    assert bad["better_part"] == 0.0
    assert bad["gain_over_part"]["mean"] <= bad["gain_over_part"]["se"]


def test_mismatch_calibration_flags_nothing_on_clean_pairs_and_finds_planted_ones():
    rng = np.random.default_rng(5)
    null = rng.normal(0.0, 0.15, 3000)  # images with other samples' captions
    clean = rng.normal(0.5, 0.12, 1000)  # correct pairs only
    c = calibrate_mismatch(clean, null)
    assert c["flagged"] == 0
    assert c["threshold"] is None
    assert c["mismatch_share"] < 0.01
    # 4 % of the pairs swapped: their scores come from the null
    swapped = rng.normal(0.0, 0.15, 40)
    mixed = np.concatenate([clean[:960], swapped])
    c = calibrate_mismatch(mixed, null)
    assert c["p_value"] < 1e-6
    assert 0.02 < c["mismatch_share"] < 0.07
    flagged = mixed < c["threshold"]
    caught = flagged[960:].sum()
    assert caught >= 34  # recall >= 0.85
    assert flagged.sum() - caught <= 6  # few correct pairs lost
    # a fixed share would flag 3 % of the clean pairs whatever the data
    assert (clean < np.quantile(clean, 0.03)).sum() == 30
    assert calibrate_mismatch(clean[:2], null)["flagged"] == 0  # too few to fit: nothing
    # an alignment that barely separates pairs from the null (a few dozen training pairs): a
    # mixture would call most pairs mismatched; nothing is flagged, and the record says why
    r = np.random.default_rng(0)  # (without the guard: a share of 0.88, 35 of 40 flagged)
    weak = np.concatenate([r.normal(0.0, 0.15, 34), r.normal(0.4, 0.15, 6)])
    c = calibrate_mismatch(weak, null)
    assert c["mismatch_share"] > 0.5
    assert (c["flagged"], c["threshold"]) == (0, None)
    assert "does not separate" in c["why"]


def test_class_names_ship_offline():
    texts = class_texts()
    assert len(texts) == 1000
    assert texts[388][0] == "a photo of a giant panda."
    assert sum(len(t) == 2 for t in texts) >= 950  # most classes have a description
    assert all(len(t) == 1 for t in class_texts(descriptions=False))
