"""Train on the output of the real upstream stages (collect -> preprocess -> label -> clean ->
split), tiny synthetic set, real offline encoders, CPU."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from cmrops import cli

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow  # about a minute on 2 cores: real encoders in preprocess


def test_train_on_the_real_upstream_stages(tmp_path: Path) -> None:
    p = yaml.safe_load((REPO / "params.yaml").read_text())
    p["collect"]["sources"] = [{**p["collect"]["sources"][0], "n": 120}]
    p["preprocess"].update(shard_size=64, n_workers=1, device="cpu")
    p["split"]["protocol"] = "hashing"
    p["split"]["protocols"]["hashing"] = {"kind": "hashing", "query": 20, "train": 60}
    p["train"].update(bits=[32], epochs=20, hidden=[64], batch_size=16, device="cpu")
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(p, sort_keys=False))
    d = {k: str(tmp_path / k) for k in ("raw", "interim", "labelled", "clean", "split")}
    m = str(tmp_path / "metrics")
    P = ["--params", str(params)]
    for argv in (
        ["collect", *P, "--out", d["raw"]],
        ["preprocess", *P, "--raw", d["raw"], "--out", d["interim"]],
        ["label", *P, "--interim", d["interim"], "--out", d["labelled"]],
        [
            "clean",
            *P,
            "--interim",
            d["interim"],
            "--labelled",
            d["labelled"],
            "--raw",
            d["raw"],
            "--out",
            d["clean"],
            "--metrics",
            f"{m}/quality.json",
        ],
        [
            "split",
            *P,
            "--clean",
            d["clean"],
            "--labelled",
            d["labelled"],
            "--out",
            d["split"],
            "--metrics",
            f"{m}/split.json",
        ],
        [
            "train",
            *P,
            "--split",
            d["split"],
            "--clean",
            d["clean"],
            "--interim",
            d["interim"],
            "--labelled",
            d["labelled"],
            "--models",
            str(tmp_path / "models"),
            "--codes",
            str(tmp_path / "codes"),
            "--metrics",
            f"{m}/train.json",
        ],
    ):
        assert cli.main(argv) == 0, argv[0]
    train = json.loads(Path(f"{m}/train.json").read_text())
    assert train["protocol"] == "hashing"
    assert train["roles"]["query"] == 20
    assert train["roles"]["train"] + train["roles"]["val"] == 60
    assert train["features"]["image"]["dim"] == 1280
    assert train["features"]["text"]["dim"] == 384
    rows = pq.read_table(tmp_path / "codes" / "rows.parquet")
    a = pq.read_table(Path(d["split"]) / "assignments.parquet").to_pylist()
    assert rows.num_rows == len(a)
    for name, s in train["models"].items():
        print(f"{name}: best val mAP {s['best_val_map']}, {s['steps']} steps")
        assert s["best_val_map"] is not None, name
        if train["methods"][name.rsplit("-", 1)[0]]["kind"] == "deep":  # cca: a solve, 0 steps
            assert s["steps"] > 0, name
        codes = np.load(tmp_path / "codes" / name / "text_database.npy")
        assert codes.shape == (len(a) - 20, 1)

    # End-to-end fine-tuning of a (tiny, generated) CLIP-style encoder on the same upstream
    # outputs: the stage reads the images collect stored and the normalised captions.
    from tests.tiny_models import tiny_clip

    clip = tiny_clip(tmp_path / "tiny-clip", image_size=32)
    p["train"].update(
        methods=["contrastive"], epochs=2, finetune_encoder=str(clip), encoder_layers=1
    )
    params.write_text(yaml.safe_dump(p, sort_keys=False))
    argv = [
        "train", *P, "--split", d["split"], "--clean", d["clean"], "--interim", d["interim"],
        "--labelled", d["labelled"], "--raw", d["raw"], "--models", str(tmp_path / "ft-models"),
        "--codes", str(tmp_path / "ft-codes"), "--metrics", f"{m}/ft-train.json",
    ]  # fmt: skip
    assert cli.main(argv) == 0
    ft = json.loads(Path(f"{m}/ft-train.json").read_text())
    assert ft["finetune"]["encoder"] == str(clip)
    assert len(ft["finetune"]["encoder_sha256"]) == 64
    assert ft["models"]["contrastive-32"]["steps"] > 0
    config = json.loads((tmp_path / "ft-models" / "contrastive-32" / "config.json").read_text())
    assert config["model"]["encoder"] == str(clip)
    assert config["model"]["image_dim"] == 16
    codes = np.load(tmp_path / "ft-codes" / "contrastive-32" / "image_database.npy")
    assert codes.shape == (len(a) - 20, 1)
    assert cli.main(argv) == 0  # a rerun reuses the finished checkpoint: identical codes
    again = np.load(tmp_path / "ft-codes" / "contrastive-32" / "image_database.npy")
    assert np.array_equal(codes, again)
