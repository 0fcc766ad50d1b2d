"""The method families beyond dcmh/contrastive: djsrh (deep, joint-semantic affinity), itq
(CCA-ITQ), cca and cmfh (closed form). Each beats random codes clearly on synthetic pairs, is
deterministic, and follows the checkpoint rules (closed form: reload instead of refitting,
refit on new data; djsrh: resume after an interruption to the same weights). CPU only."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cmrops import pack_bits
from cmrops.methods import CATALOGUE, CcaOptions, DjsrhOptions, ItqOptions, info
from cmrops.models import HasherConfig, PairedData, TrainConfig, closed_form, encode, fit
from cmrops.models.checkpoint import CheckpointError
from cmrops.models.djsrh import djsrh_loss, joint_affinity
from cmrops.models.ranking import cross_modal_map
from cmrops.models.synthetic import subset, synthetic_pairs
from tests.test_train_loop import Interrupted, _assert_same_run, _random_map

DIMS = (48, 40)


def _data(n: int = 700, seed: int = 1) -> tuple[PairedData, PairedData, PairedData]:
    d = synthetic_pairs(n, n_labels=8, image_dim=DIMS[0], text_dim=DIMS[1], noise=1.0, seed=seed)
    n_train, n_val = int(n * 0.6), int(n * 0.1)
    return (
        subset(d, np.arange(n_train)),
        subset(d, np.arange(n_train, n_train + n_val)),
        subset(d, np.arange(n_train + n_val, n)),
    )


def _scores(model, query: PairedData, database: PairedData) -> dict[str, float]:  # type: ignore[no-untyped-def]
    qi, qt = (pack_bits(x > 0) for x in encode(model, query))
    di, dt = (pack_bits(x > 0) for x in encode(model, database))
    return cross_modal_map(qi, qt, di, dt, query.labels, database.labels)


def _fit(method: str, bits: int, train, val, directory: Path, **kw):  # type: ignore[no-untyped-def]
    kw = {"epochs": 12, "batch_size": 64, "patience": 0, "checkpoint_every": 0, **kw}
    cfg = TrainConfig(method, **kw)  # type: ignore[arg-type]
    return fit(
        HasherConfig(*DIMS, bits, hidden=(96,)),
        cfg,
        train,
        val,
        directory,
        device="cpu",
        progress=False,
    )


@pytest.mark.parametrize(
    ("method", "bits"), [("djsrh", 32), ("itq", 16), ("itq", 32), ("cca", 16), ("cmfh", 32)]
)
def test_each_method_beats_random_codes_by_a_margin(tmp_path: Path, method: str, bits: int) -> None:
    train, val, query = _data()
    r = _fit(method, bits, train, val, tmp_path / "m")
    s, random = _scores(r.model, query, train), _random_map(bits, query, train)
    print(f"{method}-{bits}: i2t {s['i2t']:.3f} t2i {s['t2i']:.3f}, random codes {random:.3f}")
    # CCA's directions past the label subspace (7 here) carry noise: its known decline with
    # code length (the CCA rows of hashing tables); a smaller margin, still far from chance
    margin = 0.2 if method == "cca" else 0.3
    assert min(s["i2t"], s["t2i"]) >= random + margin, (s, random)
    assert r.best_val_map is not None
    assert r.best_val_map >= random + margin
    assert r.relevance == "labels"
    assert r.final_losses  # the fit's own terms (losses, quantisation, objective, correlation)


@pytest.mark.parametrize("method", ["djsrh", "itq", "cmfh"])
def test_unlabelled_pairs_retrieve_their_partner(tmp_path: Path, method: str) -> None:
    """Without labels, relevance is the paired item: far above the 1/n of random codes."""
    train, val, query = (PairedData(d.image, d.text, None) for d in _data(500))
    r = _fit(method, 32, train, val, tmp_path / "m")
    assert r.relevance == "pairs"
    qi, qt = (pack_bits(x > 0) for x in encode(r.model, query))
    s = cross_modal_map(qi, qt, qi, qt, None, None)
    assert min(s["i2t"], s["t2i"]) > 20 / len(query), s  # random codes: about ln(n)/n


def _bytes(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


@pytest.mark.parametrize("method", ["itq", "cca", "cmfh"])
def test_closed_form_is_deterministic_and_reloads_instead_of_refitting(
    tmp_path: Path, method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    train, val, query = _data(400)
    first = _fit(method, 32, train, val, tmp_path / "a")
    second = _fit(method, 32, train, val, tmp_path / "b")
    assert first.resumed_from_step is None
    assert _bytes(tmp_path / "a") == _bytes(tmp_path / "b")  # same bytes twice
    assert {p.name for p in (tmp_path / "a").iterdir()} == {
        "model.safetensors",
        "config.json",
        "state.json",
    }
    codes = [np.concatenate(encode(r.model, query), axis=1) for r in (first, second)]
    np.testing.assert_array_equal(codes[0], codes[1])
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    assert config["model"] == {"kind": "linear", "image_dim": 48, "text_dim": 40, "n_bits": 32}
    assert set(config["train"]) == {"method", method} | ({"seed"} if method != "cca" else set())

    def no_refit(*args: object) -> None:
        raise AssertionError("refitted a finished model")

    monkeypatch.setitem(closed_form.SOLVERS, method, no_refit)
    before = _bytes(tmp_path / "a")
    again = _fit(method, 32, train, val, tmp_path / "a", djsrh=DjsrhOptions(beta=0.2))
    assert again.resumed_from_step == first.steps  # reloaded; other methods' knobs don't matter
    assert again.best_val_map == first.best_val_map
    assert again.final_losses == first.final_losses
    np.testing.assert_array_equal(np.concatenate(encode(again.model, query), axis=1), codes[0])
    assert _bytes(tmp_path / "a") == before
    # Its own knobs: refused (as a deep model's settings), --restart refits.
    with pytest.raises(CheckpointError, match="config differs"):
        _fit(method, 32, train, val, tmp_path / "a", cca=CcaOptions(0.5), itq=ItqOptions(0.5),
             cmfh=dataclasses.replace(TrainConfig("cmfh").cmfh, mu=10.0))  # fmt: skip
    # New data (a release added samples): refitted, as on an empty folder.
    monkeypatch.undo()
    train2, val2, _ = _data(460, seed=2)
    refit = _fit(method, 32, train2, val2, tmp_path / "a")
    assert refit.resumed_from_step is None
    _fit(method, 32, train2, val2, tmp_path / "fresh")
    assert _bytes(tmp_path / "a") == _bytes(tmp_path / "fresh")


def test_closed_form_bits_beyond_the_canonical_directions_are_refused(tmp_path: Path) -> None:
    train, val, _ = _data(300)
    with pytest.raises(ValueError, match=r"cca-64: only 40 canonical directions exist"):
        _fit("cca", 64, train, val, tmp_path / "m")
    with pytest.raises(ValueError, match=r"itq-64: only 40 canonical"):
        _fit("itq", 64, train, val, tmp_path / "m")
    assert _fit("cmfh", 64, train, val, tmp_path / "m").steps > 0  # no such limit


# --------------------------------------------------------------------------- djsrh


def test_djsrh_affinity_and_loss_follow_the_paper() -> None:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 5, generator=g), torch.randn(8, 4, generator=g)
    opts = DjsrhOptions(beta=0.3, eta=0.4, mu=1.5)
    cos = lambda a: (a / a.norm(dim=1, keepdim=True)) @ (a / a.norm(dim=1, keepdim=True)).T  # noqa: E731
    s = 0.3 * cos(x) + 0.7 * cos(y)
    expect = 1.5 * (0.6 * s + 0.4 * s @ s.T / 8)
    torch.testing.assert_close(joint_affinity(x, y, opts), expect)
    f, h = torch.tanh(torch.randn(8, 16, generator=g)), torch.tanh(torch.randn(8, 16, generator=g))
    total, parts = djsrh_loss(f, h, expect, opts, 0.0, 0.0)
    cross = ((expect - _cos2(f, h)) ** 2).mean()
    torch.testing.assert_close(parts["cross"], cross)
    torch.testing.assert_close(
        total, cross + 0.1 * ((expect - cos(f)) ** 2).mean() + 0.1 * ((expect - cos(h)) ** 2).mean()
    )
    # Codes that reproduce the affinity exactly have zero reconstruction loss.
    _, perfect = djsrh_loss(f, f, cos(f), DjsrhOptions(mu=1.0), 0.0, 0.0)
    assert float(perfect["cross"]) < 1e-10


def _cos2(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a / a.norm(dim=1, keepdim=True)) @ (b / b.norm(dim=1, keepdim=True)).T


DJSRH_MODEL = HasherConfig(*DIMS, 32, hidden=(64,), dropout=0.2)
DJSRH_CFG = TrainConfig("djsrh", epochs=5, batch_size=32, patience=2, checkpoint_every=7)


def test_djsrh_resumes_after_an_interruption_to_the_same_weights(tmp_path: Path) -> None:
    train, val, query = _data(360)
    whole = fit(DJSRH_MODEL, DJSRH_CFG, train, val, tmp_path / "a", device="cpu", progress=False)

    def stop(step: int) -> None:
        if step == 17:
            raise Interrupted

    with pytest.raises(Interrupted):
        fit(DJSRH_MODEL, DJSRH_CFG, train, val, tmp_path / "b", device="cpu", progress=False,
            on_step=stop)  # fmt: skip
    resumed = fit(DJSRH_MODEL, DJSRH_CFG, train, val, tmp_path / "b", device="cpu", progress=False)
    assert resumed.resumed_from_step == 14
    _assert_same_run(tmp_path / "a", tmp_path / "b", whole, resumed, query)
    again = fit(DJSRH_MODEL, DJSRH_CFG, train, val, tmp_path / "b", device="cpu", progress=False)
    assert again.resumed_from_step == resumed.steps  # done: reloaded
    _assert_same_run(tmp_path / "a", tmp_path / "b", whole, again, query)
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    assert config["train"]["djsrh"] == dataclasses.asdict(DjsrhOptions())
    assert not {"cca", "itq", "cmfh"} & set(config["train"])


def test_djsrh_config_change_is_refused_and_other_knobs_keep_old_checkpoints(
    tmp_path: Path,
) -> None:
    """A deep model's config.json holds only its own method's knobs: dcmh/contrastive
    checkpoints of earlier releases stay valid, and a changed djsrh knob is refused."""
    train, val, _ = _data(300)
    cfg = dataclasses.replace(DJSRH_CFG, epochs=1)
    fit(DJSRH_MODEL, cfg, train, val, tmp_path / "d", device="cpu", progress=False)
    with pytest.raises(CheckpointError, match=r"train\.djsrh\.eta: checkpoint 0\.4, now 0\.5"):
        fit(DJSRH_MODEL, dataclasses.replace(cfg, djsrh=DjsrhOptions(eta=0.5)), train, val,
            tmp_path / "d", device="cpu", progress=False)  # fmt: skip
    c = TrainConfig("contrastive", epochs=1, batch_size=32, checkpoint_every=0)
    fit(DJSRH_MODEL, c, train, val, tmp_path / "c", device="cpu", progress=False)
    saved = json.loads((tmp_path / "c" / "config.json").read_text())["train"]
    assert not {"djsrh", "cca", "itq", "cmfh"} & set(saved)
    other = dataclasses.replace(c, djsrh=DjsrhOptions(beta=0.1), itq=ItqOptions(iterations=3))
    again = fit(DJSRH_MODEL, other, train, val, tmp_path / "c", device="cpu", progress=False)
    assert again.resumed_from_step == again.steps


def test_methods_that_need_embeddings_refuse_an_encoder(tmp_path: Path) -> None:
    train, val, _ = _data(200)
    for method in ("djsrh", "itq"):
        with pytest.raises(ValueError, match="does not combine with an encoder"):
            fit(
                HasherConfig(*DIMS, 32, encoder="some/clip"),
                TrainConfig(method),  # type: ignore[arg-type]
                train,
                val,
                tmp_path / method,
                device="cpu",
                progress=False,
            )


def test_catalogue_names_every_method_once() -> None:
    assert set(CATALOGUE) == {"dcmh", "contrastive", "djsrh", "itq", "cca", "cmfh"}
    assert [m for m, i in CATALOGUE.items() if i.supervised] == ["dcmh"]
    assert {info(m).kind for m in ("itq", "cca", "cmfh")} == {"closed_form"}
    with pytest.raises(ValueError, match="unknown method 'hashnet'; choose from: dcmh"):
        info("hashnet")
    with pytest.raises(ValueError, match=r"djsrh\.mu must be"):
        DjsrhOptions(mu=0)


# --------------------------------------------------------------------------- the stage


def test_stage_writes_every_method_in_the_same_layout_and_reruns_identically(
    tmp_path: Path,
) -> None:
    from cmrops.stages.train import TrainParams
    from tests.test_train_stage import fabricate, snapshot, train

    dirs = fabricate(tmp_path, n=300, dims=DIMS)
    p = TrainParams(
        methods=("djsrh", "itq", "cca", "cmfh"),
        bits=(16, 32),
        epochs=2,
        batch_size=64,
        hidden=(32,),
        checkpoint_every=0,
    )
    m = train(tmp_path, dirs, p)
    assert set(m["methods"]) == {"djsrh", "itq", "cca", "cmfh"}
    assert m["methods"]["cmfh"] == info("cmfh").to_json()
    n_query, n_db = m["roles"]["query"], m["roles"]["database"]
    for name in m["models"]:
        method, bits = name.rsplit("-", 1)
        out = tmp_path / "codes" / name
        for kind in ("image", "text"):
            for role, count in (("query", n_query), ("database", n_db)):
                codes = np.load(out / f"{kind}_{role}.npy")
                floats = np.load(out / f"{kind}_{role}_float.npy")
                assert codes.shape == (count, 1)
                assert floats.shape == (count, int(bits))
                assert floats.dtype == np.float32
                np.testing.assert_array_equal(codes, pack_bits(floats > 0))
        meta = json.loads((out / "meta.json").read_text())
        assert meta["method"] == method
        assert meta["method_info"] == info(method).to_json()
        assert meta["best_val_map"] is not None  # every method reports its validation mAP
        if info(method).kind == "closed_form":  # (djsrh: 6 steps here, too few to judge)
            assert meta["best_val_map"] > 0.35, (name, meta["best_val_map"])  # chance: ~0.25
        files = {x.name for x in (tmp_path / "models" / name).iterdir()}
        closed = info(method).kind == "closed_form"
        assert ("optimizer.safetensors" in files) != closed
    before = snapshot(tmp_path / "models", tmp_path / "codes", tmp_path / "metrics")
    train(tmp_path, dirs, p)
    assert snapshot(tmp_path / "models", tmp_path / "codes", tmp_path / "metrics") == before
    with pytest.raises(ValueError, match=r"cca-64: only 40 canonical directions"):
        train(tmp_path, dirs, dataclasses.replace(p, methods=("cca",), bits=(64,)))
