"""The alignment library: determinism, save/load, AUROC on aligned vs random toy pairs, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cmrops.align import (
    AlignmentError,
    AlignParams,
    auroc,
    derangement,
    encoder_alignment,
    fit_alignment,
    load_alignment,
    swapped_caption_auroc,
)
from cmrops.align.store import CONFIG, WEIGHTS, save_alignment, weights_bytes

PARAMS = AlignParams(dim=16, epochs=40, batch_size=64, lr=3e-3, patience=8, seed=1)


def toy_pairs(n: int, seed: int, aligned: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Image and text features of different widths that share a latent (or not)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 6))
    image = z @ rng.normal(size=(6, 32)) + 0.3 * rng.normal(size=(n, 32))
    zt = z if aligned else rng.normal(size=(n, 6))
    text = zt @ rng.normal(size=(6, 24)) + 0.3 * rng.normal(size=(n, 24))
    return image.astype(np.float32), text.astype(np.float32)


@pytest.fixture(scope="module")
def fitted():
    image, text = toy_pairs(400, seed=0)
    return image, text, *fit_alignment(image, text, PARAMS, progress=False)


def test_auroc_rank_based_with_ties():
    assert auroc(np.array([2.0, 3.0]), np.array([0.0, 1.0])) == 1.0
    assert auroc(np.array([0.0]), np.array([1.0])) == 0.0
    assert auroc(np.array([1.0, 1.0]), np.array([1.0])) == 0.5  # ties count half
    assert auroc(np.array([1.0, 3.0]), np.array([2.0])) == 0.5
    with pytest.raises(ValueError, match="positives and negatives"):
        auroc(np.array([]), np.array([1.0]))


def test_derangement_has_no_fixed_point_and_is_seeded():
    for n in (2, 3, 17, 500):
        d = derangement(n, seed=4)
        assert sorted(d.tolist()) == list(range(n))
        assert not (d == np.arange(n)).any()
    assert (derangement(50, 1) == derangement(50, 1)).all()
    assert not (derangement(50, 1) == derangement(50, 2)).all()


def test_learned_alignment_separates_true_from_swapped_pairs(fitted):
    image, text, alignment, metrics = fitted
    assert alignment.kind == "learned"
    assert metrics["swapped_auroc"] > 0.9
    assert metrics["r1_i2t"] > 0.2
    assert metrics["r1_t2i"] > 0.2
    zi, zt = alignment.image(image[:5]), alignment.text(text[:5])
    assert zi.dtype == np.float32
    assert zi.shape == (5, 16)
    assert zt.shape == (5, 16)
    np.testing.assert_allclose(np.linalg.norm(zi, axis=1), 1.0, atol=1e-5)
    cal = metrics["calibration"]
    assert cal["fpr"] <= PARAMS.max_flag_rate
    assert cal["tpr"] > 0.5
    json.dumps(alignment.info)  # JSON-able


def test_random_features_give_chance_auroc():
    image, text = toy_pairs(400, seed=0, aligned=False)
    _, metrics = fit_alignment(image, text, PARAMS, progress=False)
    assert 0.35 < metrics["swapped_auroc"] < 0.65


def test_same_inputs_same_bytes(fitted):
    image, text, alignment, metrics = fitted
    again, metrics2 = fit_alignment(image, text, PARAMS, progress=False)
    assert weights_bytes(again) == weights_bytes(alignment)
    assert metrics2 == metrics
    other, _ = fit_alignment(
        image, text, AlignParams(**{**PARAMS.to_dict(), "seed": 2}), progress=False
    )
    assert weights_bytes(other) != weights_bytes(alignment)


@pytest.mark.parametrize("budget", [2, 3])
def test_fits_side_by_side_give_the_bytes_of_fits_in_turn(fitted, monkeypatch, budget: int):
    """The fold models (and the model on all pairs) fitted on threads side by side, as the
    align stage does with a budget above one, are those fitted one after another."""
    from cmrops import threads
    from cmrops.align.crossfit import fit_with_folds

    image, text, alignment, metrics = fitted
    monkeypatch.setattr(threads, "fits_at_once", lambda: 1)
    one = fit_with_folds(image, text, PARAMS)
    monkeypatch.setattr(threads, "fits_at_once", lambda: budget)
    side = fit_with_folds(image, text, PARAMS)
    assert weights_bytes(one[0]) == weights_bytes(side[0]) == weights_bytes(alignment)
    assert one[1] == side[1] == metrics
    assert len(one[2]) == len(side[2]) == round(1 / PARAMS.holdout)
    for a, b in zip(one[2], side[2], strict=True):
        assert (a.hold == b.hold).all()
        assert weights_bytes(a.model) == weights_bytes(b.model)
        assert a.model.info == b.model.info


def test_save_load_round_trip(fitted, tmp_path: Path):
    image, text, alignment, _ = fitted
    save_alignment(alignment, tmp_path / "a")
    first = {p.name: p.read_bytes() for p in (tmp_path / "a").iterdir()}
    loaded = load_alignment(tmp_path / "a")
    assert loaded.kind == "learned"
    assert loaded.info == alignment.info
    np.testing.assert_array_equal(
        loaded.pair_scores(image, text), alignment.pair_scores(image, text)
    )
    save_alignment(loaded, tmp_path / "a")
    assert {p.name: p.read_bytes() for p in (tmp_path / "a").iterdir()} == first
    config = json.loads((tmp_path / "a" / CONFIG).read_text())
    assert config["info"]["data_sha256"]
    assert config["weights"]["sha256"]


def test_encoder_alignment_is_identity_on_normalised_features(tmp_path: Path):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(7, 12)), rng.normal(size=(7, 12))
    a = encoder_alignment(12)
    assert a.kind == "encoder"
    assert a.dim == 12
    expected = (
        x
        / np.linalg.norm(x, axis=1, keepdims=True)
        * (y / np.linalg.norm(y, axis=1, keepdims=True))
    ).sum(1)
    np.testing.assert_allclose(a.pair_scores(x, y), expected, atol=1e-6)
    save_alignment(a, tmp_path)
    assert not (tmp_path / WEIGHTS).exists()
    b = load_alignment(tmp_path)
    assert b.kind == "encoder"
    assert b.dim == 12
    assert 0.0 <= swapped_caption_auroc(b, x, y, seed=0) <= 1.0


def test_clear_errors(fitted, tmp_path: Path):
    image, text, alignment, _ = fitted
    with pytest.raises(AlignmentError, match=r"config.json: no alignment here; run `cmrops align`"):
        load_alignment(tmp_path / "nothing")
    save_alignment(alignment, tmp_path)
    data = (tmp_path / WEIGHTS).read_bytes()
    (tmp_path / WEIGHTS).write_bytes(data[: len(data) // 2])
    with pytest.raises(AlignmentError, match=r"alignment.safetensors: contents differ"):
        load_alignment(tmp_path)
    (tmp_path / WEIGHTS).unlink()
    with pytest.raises(AlignmentError, match=r"alignment.safetensors: missing"):
        load_alignment(tmp_path)
    (tmp_path / CONFIG).write_text("{not json")
    with pytest.raises(AlignmentError, match="not valid JSON"):
        load_alignment(tmp_path)
    with pytest.raises(ValueError, match=r"expected \(n, 32\) features"):
        alignment.image(text)
    with pytest.raises(ValueError, match="rows must be pairs"):
        alignment.pair_scores(image[:3], text[:4])
    with pytest.raises(ValueError, match="at least 8"):
        fit_alignment(image[:4], text[:4], PARAMS, progress=False)
    with pytest.raises(ValueError, match="NaN"):
        fit_alignment(np.full((10, 32), np.nan, np.float32), text[:10], PARAMS, progress=False)


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [("dim", 1, "dim"), ("holdout", 0.0, "holdout"), ("batch_size", 1, "batch_size"),
     ("temperature", 0.0, "temperature"), ("max_flag_rate", 1.0, "max_flag_rate")],
)  # fmt: skip
def test_params_are_validated(field: str, value: float, match: str):
    with pytest.raises(ValueError, match=match):
        AlignParams(**{field: value})
