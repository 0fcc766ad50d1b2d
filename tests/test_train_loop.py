"""The training loop: both methods learn (well above random codes), early stopping, and a kill
followed by a resume reaches bit-identical codes. CPU only."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from cmrops import pack_bits
from cmrops.models import HasherConfig, PairedData, TrainConfig, encode, fit
from cmrops.models.ranking import cross_modal_map
from cmrops.models.synthetic import subset, synthetic_pairs

REPO = Path(__file__).resolve().parents[1]


def _data(n: int = 700, seed: int = 1) -> tuple[PairedData, PairedData, PairedData]:
    d = synthetic_pairs(n, n_labels=8, image_dim=48, text_dim=32, noise=1.0, seed=seed)
    n_train, n_val = int(n * 0.6), int(n * 0.1)
    return (
        subset(d, np.arange(n_train)),
        subset(d, np.arange(n_train, n_train + n_val)),
        subset(d, np.arange(n_train + n_val, n)),
    )


def _map(model, query: PairedData, database: PairedData) -> float:  # type: ignore[no-untyped-def]
    qi, qt = (pack_bits(x > 0) for x in encode(model, query))
    di, dt = (pack_bits(x > 0) for x in encode(model, database))
    return cross_modal_map(qi, qt, di, dt, query.labels, database.labels)["map"]


def _random_map(bits: int, query: PairedData, database: PairedData, seed: int = 0) -> float:
    rng = np.random.default_rng(seed)
    scores = []
    for _ in range(3):
        qi, qt, di, dt = (
            pack_bits(rng.random((len(x), bits)) < 0.5)
            for x in (query.image, query.text, database.image, database.text)
        )
        scores.append(cross_modal_map(qi, qt, di, dt, query.labels, database.labels)["map"])
    return float(np.mean(scores))


@pytest.mark.parametrize(
    ("method", "bits"), [("dcmh", 16), ("dcmh", 64), ("contrastive", 32), ("contrastive", 128)]
)
def test_training_beats_random_codes_by_a_margin(tmp_path: Path, method: str, bits: int) -> None:
    train, val, query = _data()
    cfg = TrainConfig(method, epochs=15, batch_size=64, patience=0, checkpoint_every=0)  # type: ignore[arg-type]
    r = fit(
        HasherConfig(48, 32, bits, hidden=(96,)),
        cfg,
        train,
        val,
        tmp_path / "m",
        device="cpu",
        progress=False,
    )
    learned, random = _map(r.model, query, train), _random_map(bits, query, train)
    print(f"{method}-{bits}: test mAP {learned:.3f}, random codes {random:.3f}")
    assert learned >= random + 0.3, (learned, random)
    assert r.best_val_map is not None
    assert r.best_val_map >= random + 0.3
    assert r.relevance == "labels"
    first, last = r.history[0]["loss"], r.history[-1]["loss"]
    assert last < first
    assert r.samples_per_s > 0
    assert r.steps == r.epochs * (len(train) // 64)


def test_early_stopping_keeps_the_best_weights(tmp_path: Path) -> None:
    train, val, _ = _data(400)
    cfg = TrainConfig(
        "contrastive", epochs=60, batch_size=64, lr=1e-2, patience=2, checkpoint_every=0
    )
    r = fit(
        HasherConfig(48, 32, 32, hidden=(64,)),
        cfg,
        train,
        val,
        tmp_path / "m",
        device="cpu",
        progress=False,
    )
    assert r.early_stop_step is not None
    assert r.epochs < 60
    maps = [h["val_map"] for h in r.history]
    assert r.best_val_map == max(maps)
    assert r.history[maps.index(max(maps))]["step"] == r.best_step
    assert len(maps) - 1 - maps.index(max(maps)) == 2  # stopped after `patience` worse epochs
    again = _map(r.model, val, train)  # the selected (best) weights, not the last ones
    assert again == pytest.approx(max(maps))


def test_pair_relevance_without_labels(tmp_path: Path) -> None:
    train, val, _ = _data(400)
    drop = lambda d: PairedData(d.image, d.text, None)  # noqa: E731
    cfg = TrainConfig("contrastive", epochs=3, batch_size=64, checkpoint_every=0)
    r = fit(
        HasherConfig(48, 32, 32, hidden=(64,)),
        cfg,
        drop(train),
        drop(val),
        tmp_path / "m",
        device="cpu",
        progress=False,
    )
    assert r.relevance == "pairs"
    assert r.best_val_map is not None
    with pytest.raises(ValueError, match="supervised"):
        fit(
            HasherConfig(48, 32, 32),
            TrainConfig("dcmh"),
            drop(train),
            None,
            tmp_path / "x",
            device="cpu",
            progress=False,
        )


# --------------------------------------------------------------------------- kill and resume

RESUME_MODEL = HasherConfig(48, 32, 32, hidden=(64,), dropout=0.2)  # dropout: the RNG matters
RESUME_CFG = TrainConfig("dcmh", epochs=5, batch_size=32, lr=3e-3, patience=2, checkpoint_every=7)


class Interrupted(Exception):
    pass


def _final(directory: Path, model, query: PairedData) -> dict[str, np.ndarray]:  # type: ignore[no-untyped-def]
    img, txt = encode(model, query)
    return {
        "image": pack_bits(img > 0),
        "text": pack_bits(txt > 0),
        "float": np.concatenate([img, txt]),
        **load_file(directory / "model.safetensors"),
        **{f"opt.{k}": v for k, v in load_file(directory / "optimizer.safetensors").items()},
    }


def _assert_same_run(a: Path, b: Path, ra, rb, query: PairedData) -> None:  # type: ignore[no-untyped-def]
    fa, fb = _final(a, ra.model, query), _final(b, rb.model, query)
    assert fa.keys() == fb.keys()
    for k in fa:
        np.testing.assert_array_equal(fa[k], fb[k], err_msg=k)
    sa, sb = (json.loads((d / "state.json").read_text()) for d in (a, b))
    for s in (sa, sb):
        for k in ("rng", "files"):
            s.pop(k)
    assert sa == sb
    assert ra.final_losses == rb.final_losses
    assert ra.best_val_map == rb.best_val_map


def test_resume_after_an_exception_gives_identical_results(tmp_path: Path) -> None:
    train, val, query = _data(360)
    whole = fit(RESUME_MODEL, RESUME_CFG, train, val, tmp_path / "a", device="cpu", progress=False)

    def stop(step: int) -> None:
        if step == 17:  # between the checkpoints at 14 and 21: steps 15-17 are redone
            raise Interrupted

    with pytest.raises(Interrupted):
        fit(
            RESUME_MODEL,
            RESUME_CFG,
            train,
            val,
            tmp_path / "b",
            device="cpu",
            progress=False,
            on_step=stop,
        )
    assert json.loads((tmp_path / "b" / "state.json").read_text())["step"] == 14
    resumed = fit(
        RESUME_MODEL, RESUME_CFG, train, val, tmp_path / "b", device="cpu", progress=False
    )
    assert resumed.resumed_from_step == 14
    _assert_same_run(tmp_path / "a", tmp_path / "b", whole, resumed, query)
    # A finished checkpoint is reloaded, not retrained.
    again = fit(RESUME_MODEL, RESUME_CFG, train, val, tmp_path / "b", device="cpu", progress=False)
    assert again.resumed_from_step == resumed.steps
    _assert_same_run(tmp_path / "a", tmp_path / "b", whole, again, query)


_CHILD = """
import os, signal, sys
import numpy as np
sys.path.insert(0, {tests!r})
from test_train_loop import RESUME_CFG, RESUME_MODEL, _data
from cmrops.models import fit

def kill(step):
    if step == {kill_at}:
        os.kill(os.getpid(), signal.SIGKILL)

train, val, _ = _data(360)
fit(RESUME_MODEL, RESUME_CFG, train, val, {directory!r}, device="cpu", progress=False, on_step=kill)
"""


def test_resume_after_sigkill_gives_identical_codes(tmp_path: Path) -> None:
    train, val, query = _data(360)
    whole = fit(RESUME_MODEL, RESUME_CFG, train, val, tmp_path / "a", device="cpu", progress=False)
    child = textwrap.dedent(_CHILD).format(
        tests=str(REPO / "tests"), kill_at=24, directory=str(tmp_path / "b")
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", child], env=env, capture_output=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    assert json.loads((tmp_path / "b" / "state.json").read_text())["step"] == 21
    resumed = fit(
        RESUME_MODEL, RESUME_CFG, train, val, tmp_path / "b", device="cpu", progress=False
    )
    assert resumed.resumed_from_step == 21
    _assert_same_run(tmp_path / "a", tmp_path / "b", whole, resumed, query)


def test_new_data_trains_a_new_model_other_settings_are_refused(tmp_path: Path) -> None:
    """A finished checkpoint on other data (a scheduled run added samples) is a model of an
    earlier release: the run trains afresh, as on an empty folder. Other settings are refused."""
    from cmrops.models.checkpoint import CheckpointError

    train, val, _ = _data(360)
    fit(RESUME_MODEL, RESUME_CFG, train, val, tmp_path / "m", device="cpu", progress=False)
    train2, val2, query2 = _data(420, seed=2)  # a new release of the data
    again = fit(RESUME_MODEL, RESUME_CFG, train2, val2, tmp_path / "m", device="cpu",
                progress=False)  # fmt: skip
    assert again.resumed_from_step is None
    fresh = fit(RESUME_MODEL, RESUME_CFG, train2, val2, tmp_path / "f", device="cpu",
                progress=False)  # fmt: skip
    _assert_same_run(tmp_path / "m", tmp_path / "f", again, fresh, query2)
    other = dataclasses.replace(RESUME_CFG, lr=RESUME_CFG.lr * 2)
    with pytest.raises(CheckpointError, match="config differs"):
        fit(RESUME_MODEL, other, train2, val2, tmp_path / "m", device="cpu", progress=False)


def _pair_recall_at_10(model, data: PairedData) -> float:  # type: ignore[no-untyped-def]
    """Text -> image R@10 of the pair over the Hamming ranking (tie-aware)."""
    from cmrops import metrics as M

    img, txt = encode(model, data)
    ids = np.arange(len(data))
    m = M.hamming_metrics(*M.histograms(pack_bits(txt > 0), pack_bits(img > 0), ids, ids),
                          top_k=[10])  # fmt: skip
    return float(m.rank_summary()["recall_at"][10])


def test_dcmh_learns_the_pairing_when_told_to(tmp_path: Path) -> None:
    """Labels that restate one coarse bit of what a pair shares (as keyword labels induced from
    the captions do): dcmh on them finds a caption's own photo poorly; with ``similarity:
    pairs`` (S = I, the similar pairs weighted up to the dissimilar ones) it learns the pairing."""
    rng = np.random.default_rng(3)
    n, latent = 500, 16
    z = rng.standard_normal((n, latent))
    image = z @ rng.standard_normal((latent, 48)) + 0.5 * rng.standard_normal((n, 48))
    text = z @ rng.standard_normal((latent, 32)) + 0.5 * rng.standard_normal((n, 32))
    labels = np.stack([z[:, 0] > 0, z[:, 0] <= 0], axis=1)  # one coarse bit of the pair
    data = PairedData(image.astype(np.float32), text.astype(np.float32), labels)
    train, val = subset(data, np.arange(350)), subset(data, np.arange(350, 400))
    test = subset(data, np.arange(400, 500))
    recall = {}
    for sim in ("labels", "pairs"):
        cfg = TrainConfig("dcmh", epochs=6, batch_size=64, checkpoint_every=0, similarity=sim)  # type: ignore[arg-type]
        r = fit(HasherConfig(48, 32, 32, hidden=(64,)), cfg, train, val, tmp_path / sim,
                device="cpu", progress=False)  # fmt: skip
        assert r.relevance == sim
        recall[sim] = _pair_recall_at_10(r.model, test)
    # measured: labels 0.32, pairs 0.96 (8 epochs); chance is 0.1
    assert recall["pairs"] > 0.7, recall
    assert recall["pairs"] > recall["labels"] + 0.3, recall
    # labels are not needed for pair similarity
    r = fit(HasherConfig(48, 32, 32, hidden=(64,)),
            TrainConfig("dcmh", epochs=1, checkpoint_every=0, similarity="pairs"),
            PairedData(train.image, train.text, None), None, tmp_path / "nolabels",
            device="cpu", progress=False)  # fmt: skip
    assert r.relevance == "pairs"
