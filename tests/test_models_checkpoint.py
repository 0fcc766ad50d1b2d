"""Checkpoints: round trip, atomic replacement, and refusal of anything corrupt or foreign.
Loading never unpickles."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from cmrops.models import CheckpointError, HasherConfig, TrainConfig, fit
from cmrops.models import checkpoint as ckpt
from cmrops.models.hasher import CrossModalHasher
from cmrops.models.loop import run_config
from cmrops.models.synthetic import subset, synthetic_pairs

MODEL = HasherConfig(16, 12, 16, hidden=(8,))
CFG = TrainConfig("contrastive", epochs=2, batch_size=16, checkpoint_every=0)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    d = synthetic_pairs(80, image_dim=16, text_dim=12, seed=3)
    directory = tmp_path_factory.mktemp("ck") / "contrastive-16"
    fit(
        MODEL,
        CFG,
        subset(d, np.arange(64)),
        subset(d, np.arange(64, 80)),
        directory,
        device="cpu",
        progress=False,
    )
    config = json.loads((directory / "config.json").read_text())
    return directory, config


def _copy(trained: tuple[Path, dict], tmp_path: Path) -> tuple[Path, dict]:
    src, config = trained
    dst = tmp_path / src.name
    shutil.copytree(src, dst)
    return dst, config


def _load(directory: Path, config: dict, model_config: HasherConfig = MODEL) -> dict:
    model = CrossModalHasher(model_config)
    opt = torch.optim.AdamW(model.parameters())
    state, _ = ckpt.load(directory, config, model, opt)
    return state


def _rewrite_state(directory: Path, **changes: object) -> None:
    """Edit state.json (keeping file hashes valid unless a change says otherwise)."""
    s = json.loads((directory / "state.json").read_text())
    s.update(changes)
    (directory / "state.json").write_text(json.dumps(s))


def _rehash(directory: Path) -> None:
    s = json.loads((directory / "state.json").read_text())
    s["files"] = {name: ckpt.io.sha256_file(directory / name) for name in s["files"]}
    (directory / "state.json").write_text(json.dumps(s))


def test_round_trip_restores_weights_and_optimizer(trained, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    directory, config = _copy(trained, tmp_path)
    model = CrossModalHasher(MODEL)
    opt = torch.optim.AdamW(model.parameters())
    state, best = ckpt.load(directory, config, model, opt)
    assert state["done"] is True
    assert best is None
    assert set(json.loads((directory / "state.json").read_text())["files"]) == {
        "model.safetensors",
        "optimizer.safetensors",
        "config.json",
    }
    assert all(len(s) == 3 for s in opt.state_dict()["state"].values())  # step, exp_avg, exp_avg_sq
    assert isinstance(opt.param_groups[0]["betas"], tuple)
    assert config == run_config(MODEL, CFG, config["data"])


def test_loading_never_unpickles(trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    import pickle

    def forbidden(*a: object, **k: object) -> None:
        raise AssertionError("a checkpoint load unpickled something")

    for mod, name in ((torch, "load"), (pickle, "load"), (pickle, "loads"), (pickle, "Unpickler")):
        monkeypatch.setattr(mod, name, forbidden)
    directory, config = _copy(trained, tmp_path)
    state = _load(directory, config)
    ckpt.set_rng_state(state["rng"])


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("state_not_json", "not valid JSON"),
        ("state_foreign", "not a cmrops training checkpoint"),
        ("state_version", "checkpoint version 99"),
        ("truncated_model", "contents differ"),
        ("truncated_model_rehashed", "unreadable safetensors"),
        ("missing_optimizer", "missing"),
        ("renamed_tensor", "tensor names do not fit"),
        ("wrong_shape", "the model needs"),
        ("wrong_dtype", "the model needs"),
        ("no_metadata", "not written by cmrops"),
        ("config_not_json", "not valid JSON"),
        ("optimizer_json", "malformed optimizer state"),
        ("optimizer_shape", "has shape"),
        ("extra_file", "unexpected file"),
        ("rng", "malformed RNG state"),
    ],
)
def test_corrupt_or_foreign_checkpoints_are_refused(
    trained, tmp_path: Path, damage: str, message: str
) -> None:  # type: ignore[no-untyped-def]
    directory, config = _copy(trained, tmp_path)
    model_file = directory / "model.safetensors"
    fmt = {"format": ckpt.FORMAT}
    weights = CrossModalHasher(MODEL).state_dict()
    if damage == "state_not_json":
        (directory / "state.json").write_text('{"format": "cmrops.train.checkpoint", ')
    elif damage == "state_foreign":
        _rewrite_state(directory, format="someone-else")
    elif damage == "state_version":
        _rewrite_state(directory, version=99)
    elif damage.startswith("truncated_model"):
        model_file.write_bytes(model_file.read_bytes()[:100])
        if damage.endswith("rehashed"):
            _rehash(directory)
    elif damage == "missing_optimizer":
        (directory / "optimizer.safetensors").unlink()
    elif damage == "renamed_tensor":
        w = dict(weights)
        w["image.net.9.weight"] = w.pop("image.net.0.weight")
        save_file(w, model_file, metadata=fmt)
        _rehash(directory)
    elif damage == "wrong_shape":
        w = dict(weights)
        w["text.net.0.weight"] = torch.zeros(8, 13)
        save_file(w, model_file, metadata=fmt)
        _rehash(directory)
    elif damage == "wrong_dtype":
        save_file({k: v.double() for k, v in weights.items()}, model_file, metadata=fmt)
        _rehash(directory)
    elif damage == "no_metadata":
        save_file(weights, model_file)
        _rehash(directory)
    elif damage == "config_not_json":
        (directory / "config.json").write_text("{nope")
        _rehash(directory)
    elif damage == "optimizer_json":
        s = json.loads((directory / "state.json").read_text())
        s["optimizer"] = {
            "state": {"0": {"exp_avg": {"tensor": "nowhere"}}},
            "param_groups": s["optimizer"]["param_groups"],
        }
        (directory / "state.json").write_text(json.dumps(s))
    elif damage == "optimizer_shape":
        from safetensors.torch import load_file

        opt = load_file(directory / "optimizer.safetensors")
        opt["state.0.exp_avg"] = torch.zeros(3, 3)
        save_file(opt, directory / "optimizer.safetensors", metadata=fmt)
        _rehash(directory)
    elif damage == "extra_file":
        s = json.loads((directory / "state.json").read_text())
        s["files"]["../../etc/passwd"] = "0" * 64
        (directory / "state.json").write_text(json.dumps(s))
    elif damage == "rng":
        _rewrite_state(directory, rng={"torch": "zz"})
        with pytest.raises(CheckpointError, match=message):
            ckpt.set_rng_state(json.loads((directory / "state.json").read_text())["rng"])
        return
    with pytest.raises(CheckpointError, match=message):
        _load(directory, config)


def test_config_mismatch_is_refused_and_named(trained, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    directory, config = _copy(trained, tmp_path)
    other = json.loads(json.dumps(config))
    other["train"]["lr"] = 0.5
    with pytest.raises(CheckpointError, match=r"train\.lr: checkpoint 0\.003, now 0\.5"):
        _load(directory, other)
    other = {**config, "data": "0" * 64}
    with pytest.raises(CheckpointError, match="data: checkpoint"):
        _load(directory, other)
    # A model of another shape (same config file would not even match; check the tensors too).
    with pytest.raises(CheckpointError):
        _load(directory, config, HasherConfig(16, 12, 32, hidden=(8,)))


def test_a_foreign_directory_is_never_overwritten(tmp_path: Path) -> None:
    d = synthetic_pairs(40, image_dim=16, text_dim=12)
    foreign = tmp_path / "contrastive-16"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(CheckpointError, match="not a cmrops training checkpoint"):
        fit(MODEL, CFG, d, None, foreign, device="cpu", progress=False)
    assert (foreign / "notes.txt").read_text() == "mine"


def test_an_interrupted_replacement_is_recovered(trained, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    directory, config = _copy(trained, tmp_path)
    old = directory.with_name(directory.name + ".old")
    tmp = directory.with_name(directory.name + ".tmp")
    # killed after "dir -> dir.old", before "dir.tmp -> dir": the old checkpoint comes back
    directory.rename(old)
    tmp.mkdir()
    (tmp / "model.safetensors").write_bytes(b"partial")
    assert ckpt.exists(directory)
    assert not old.exists()
    assert not tmp.exists()
    assert _load(directory, config)["done"] is True
    # killed after both renames, before removing dir.old
    shutil.copytree(directory, old)
    assert ckpt.exists(directory)
    assert not old.exists()
