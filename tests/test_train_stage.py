"""The train stage over files: roles per protocol, outputs (the contract with evaluate), reruns,
params validation and the CLI. Upstream outputs are fabricated with label structure."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cmrops import cli, digest, io, unpack_bits
from cmrops.models.synthetic import synthetic_pairs
from cmrops.params import ParamsError, load_section
from cmrops.schema import ASSIGNMENTS
from cmrops.stages.train import TrainParams, run

FAST = TrainParams(
    methods=("dcmh", "contrastive"),
    bits=(16, 64),
    epochs=6,
    batch_size=64,
    hidden=(64,),
    patience=0,
    checkpoint_every=0,
)


def fabricate(
    root: Path,
    n: int = 400,
    protocol: str = "hashing",
    seed: int = 0,
    dims: tuple[int, int] = (32, 24),
) -> dict[str, Path]:
    """Upstream outputs for ``n`` samples: clean samples, features, labels, assignments."""
    data = synthetic_pairs(n, n_labels=6, image_dim=dims[0], text_dim=dims[1], noise=0.8, seed=seed)
    ids = [hashlib.sha256(f"{seed}-{i}".encode()).hexdigest()[:16] for i in range(n)]
    # feature rows deliberately not in sample order
    perm = np.random.default_rng(seed).permutation(n)
    dirs = {k: root / k for k in ("clean", "interim", "labelled", "split")}
    feat = dirs["interim"] / "features"
    feat.mkdir(parents=True)
    image = np.zeros_like(data.image)
    text = np.zeros_like(data.text)
    image[perm], text[perm] = data.image, data.text
    io.write_npy(feat / "image.npy", image)
    io.write_npy(feat / "text.npy", text)
    io.write_json(
        feat / "meta.json",
        {
            "embeddings": True,
            "rows": n,
            "image": {"encoder": "syn", "dim": dims[0]},
            "text": {"encoder": "syn", "dim": dims[1]},
        },
    )
    io.write_parquet(
        dirs["clean"] / "samples.parquet",
        pa.table({"sample_id": ids, "feature_row": perm.astype(np.int64)}),
    )
    names = [f"class{j}" for j in range(6)]
    rows = [(ids[i], names[j]) for i in range(n) for j in np.flatnonzero(data.labels[i])]
    io.write_parquet(
        dirs["labelled"] / "labels.parquet",
        pa.table(
            {
                "sample_id": [r[0] for r in rows],
                "label": [r[1] for r in rows],
                "source": ["auto"] * len(rows),
                "method": ["provided"] * len(rows),
                "confidence": [1.0] * len(rows),
            }
        ),
    )
    io.write_json(dirs["labelled"] / "vocabulary.json", {"labels": names})
    order = np.argsort(ids)
    r = np.random.default_rng(seed + 1).random(n)
    if protocol == "hashing":
        split = np.where(r < 0.2, "query", "database")
        in_train = (split == "database") & (r < 0.8)
    else:
        split = np.where(r < 0.7, "train", np.where(r < 0.85, "val", "test"))
        in_train = split == "train"
    io.write_parquet(
        dirs["split"] / "assignments.parquet",
        pa.table(
            {
                "sample_id": [ids[i] for i in order],
                "split": split[order].tolist(),
                "in_train": in_train[order].tolist(),
                "group_id": [ids[i] for i in order],
                "protocol": [protocol] * n,
                "seed": [7] * n,
            },
            schema=ASSIGNMENTS,
        ),
    )
    return dirs


def train(root: Path, dirs: dict[str, Path], p: TrainParams = FAST, **kw: Any) -> dict[str, Any]:
    return run(
        p,
        dirs["split"],
        dirs["clean"],
        dirs["interim"],
        kw.pop("labelled", dirs["labelled"]),
        root / "models",
        root / "codes",
        metrics_path=root / "metrics" / "train.json",
        progress=False,
        **kw,
    )


def snapshot(*folders: Path) -> dict[str, str]:
    """Digest of every output file; the wall-clock throughput file is expected to differ."""
    return {
        str(p): io.sha256_file(p)
        for f in folders
        for p in sorted(f.rglob("*"))
        if p.is_file() and p.name != "train_throughput.json"
    }


def test_hashing_protocol_outputs_follow_the_contract(tmp_path: Path) -> None:
    dirs = fabricate(tmp_path)
    m = train(tmp_path, dirs)
    a = pq.read_table(dirs["split"] / "assignments.parquet").to_pylist()
    n_query = sum(x["split"] == "query" for x in a)
    n_db = sum(x["split"] == "database" for x in a)
    n_pool = sum(x["in_train"] for x in a)
    assert m["roles"] == {
        "train": m["roles"]["train"],
        "val": m["roles"]["val"],
        "query": n_query,
        "database": n_db,
    }
    assert m["roles"]["train"] + m["roles"]["val"] == n_pool
    assert m["roles"]["val"] == round(0.1 * n_pool)
    assert m["val_from"] == "train_slice"
    assert set(m["models"]) == {"dcmh-16", "dcmh-64", "contrastive-16", "contrastive-64"}

    rows = pq.read_table(tmp_path / "codes" / "rows.parquet").to_pylist()
    q_ids = [x["sample_id"] for x in a if x["split"] == "query"]
    db_ids = [x["sample_id"] for x in a if x["split"] == "database"]
    assert [r["sample_id"] for r in rows if r["role"] == "query"] == q_ids
    assert [r["sample_id"] for r in rows if r["role"] == "database"] == db_ids
    assert [r["row"] for r in rows if r["role"] == "database"] == list(range(n_db))

    for name, bits in (("dcmh-16", 16), ("contrastive-64", 64)):
        out = tmp_path / "codes" / name
        for kind in ("image", "text"):
            for role, count in (("query", n_query), ("database", n_db)):
                codes = np.load(out / f"{kind}_{role}.npy")
                floats = np.load(out / f"{kind}_{role}_float.npy")
                assert codes.dtype == np.uint64
                assert codes.shape == (count, 1)
                assert floats.dtype == np.float32
                assert floats.shape == (count, bits)
                np.testing.assert_array_equal(unpack_bits(codes, bits), floats > 0)
                if bits < 64:  # padding bits are zero
                    assert not (codes >> np.uint64(bits)).any()
        meta = json.loads((out / "meta.json").read_text())
        assert meta["method"] == name.split("-")[0]
        assert meta["bits"] == bits
        assert meta["protocol"] == "hashing"
        assert meta["split_seed"] == 7
        assert meta["n_query"] == n_query
        assert meta["n_database"] == n_db
        assert meta["model_dir"] == str(tmp_path / "models" / name)
        assert meta["val_relevance"] == "labels"
        assert meta["steps"] == m["models"][name]["steps"] > 0
        model = tmp_path / "models" / name
        assert {p.name for p in model.iterdir()} == {
            "model.safetensors",
            "optimizer.safetensors",
            "state.json",
            "config.json",
        }
    saved = json.loads((tmp_path / "metrics" / "train.json").read_text())
    throughput = json.loads((tmp_path / "metrics" / "train_throughput.json").read_text())
    assert {**saved, "throughput": {k: v for k, v in throughput.items() if k != "device"}} == m
    assert all(t["samples_per_s"] > 0 for k, t in throughput.items() if k != "device")
    assert "samples_per_s" not in json.dumps(saved)  # no wall-clock figures in versioned files
    assert all(s["best_val_map"] > 0.3 for s in m["models"].values())


def test_rerun_is_idempotent_and_resumes_nothing(tmp_path: Path) -> None:
    dirs = fabricate(tmp_path, n=250)
    p = dataclasses.replace(FAST, methods=("contrastive",), bits=(32,), epochs=3)
    train(tmp_path, dirs, p)
    before = snapshot(tmp_path / "models", tmp_path / "codes", tmp_path / "metrics")
    train(tmp_path, dirs, p)
    assert snapshot(tmp_path / "models", tmp_path / "codes", tmp_path / "metrics") == before


def test_changed_params_are_refused_then_restart_retrains(tmp_path: Path) -> None:
    dirs = fabricate(tmp_path, n=250)
    p = dataclasses.replace(FAST, methods=("contrastive",), bits=(32,), epochs=2)
    train(tmp_path, dirs, p)
    q = dataclasses.replace(p, lr=5e-4)
    with pytest.raises(ValueError, match=r"train\.lr: checkpoint 0\.003, now 0\.0005"):
        train(tmp_path, dirs, q)
    m = train(tmp_path, dirs, q, restart=True)
    assert m["models"]["contrastive-32"]["steps"] > 0


def test_a_refusal_in_a_worker_process_fails_the_stage_with_its_reason(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Two deep models on a budget of 2 train in worker processes; a checkpoint of other params
    is refused there, and the stage fails with the worker's own error and message."""
    from cmrops import threads

    dirs = fabricate(tmp_path, n=250)
    p = dataclasses.replace(FAST, methods=("dcmh", "contrastive"), bits=(16,), epochs=2)
    before = threads.current()
    try:
        threads.apply(2)
        train(tmp_path, dirs, p)
        q = dataclasses.replace(p, lr=5e-4)
        with (
            caplog.at_level(logging.INFO, logger="cmrops.stages.train_models"),
            pytest.raises(ValueError, match=r"train\.lr: checkpoint 0\.003, now 0\.0005"),
        ):
            train(tmp_path, dirs, q)
    finally:
        threads.apply(before)
    assert "train: 2 models over 2 worker processes" in caplog.text


def test_ratio_protocol_roles(tmp_path: Path) -> None:
    dirs = fabricate(tmp_path, protocol="ratio", n=300)
    p = dataclasses.replace(FAST, methods=("dcmh",), bits=(32,), epochs=2)
    m = train(tmp_path, dirs, p)
    a = pq.read_table(dirs["split"] / "assignments.parquet").to_pylist()
    count = {s: sum(x["split"] == s for x in a) for s in ("train", "val", "test")}
    assert m["roles"] == {
        "train": count["train"],
        "val": count["val"],
        "query": count["test"],
        "database": count["train"] + count["val"],
    }
    assert m["val_from"] == "split"
    rows = pq.read_table(tmp_path / "codes" / "rows.parquet").to_pylist()
    db = [r["sample_id"] for r in rows if r["role"] == "database"]
    assert db == sorted(x["sample_id"] for x in a if x["split"] in ("train", "val"))


def test_without_labels_only_contrastive_and_paired_validation(tmp_path: Path) -> None:
    dirs = fabricate(tmp_path, n=250)
    with pytest.raises(ValueError, match="dcmh is supervised"):
        train(tmp_path, dirs, labelled=None)
    p = dataclasses.replace(FAST, methods=("contrastive",), bits=(16,), epochs=2)
    m = train(tmp_path, dirs, p, labelled=None)
    meta = json.loads((tmp_path / "codes" / "contrastive-16" / "meta.json").read_text())
    assert meta["val_relevance"] == "pairs"
    assert m["labels"] == 0


def test_stale_code_folders_are_removed(tmp_path: Path) -> None:
    dirs = fabricate(tmp_path, n=250)
    p = dataclasses.replace(FAST, methods=("contrastive",), bits=(16, 32), epochs=1)
    train(tmp_path, dirs, p)
    (tmp_path / "codes" / "mine").mkdir()  # not ours: kept
    train(tmp_path, dirs, dataclasses.replace(p, bits=(32,)))
    assert sorted(x.name for x in (tmp_path / "codes").iterdir()) == [
        "aligned-float",
        "contrastive-32",
        "mine",
        "rows.parquet",
        "training_samples.parquet",
    ]
    m = train(tmp_path, dirs, dataclasses.replace(p, bits=(32,), float_baseline=False))
    assert m["float_baseline"] is None
    assert not (tmp_path / "codes" / "aligned-float").exists()
    assert not (tmp_path / "models" / "aligned-float").exists()


def test_aligned_float_baseline_is_fitted_on_the_training_pairs_only(tmp_path: Path) -> None:
    from cmrops.align import load_alignment

    dirs = fabricate(tmp_path, n=300)
    p = dataclasses.replace(FAST, methods=("contrastive",), bits=(16,), epochs=1)
    m = train(tmp_path, dirs, p)
    base = m["float_baseline"]
    assert base["kind"] == "learned"
    assert base["train_pairs"] == m["roles"]["train"]
    assert base["why"].startswith("learned on the training pairs")
    out = tmp_path / "codes" / "aligned-float"
    meta = json.loads((out / "meta.json").read_text())
    assert (meta["kind"], meta["stage"]) == ("float_baseline", "train")
    assert (meta["protocol"], meta["split_seed"]) == ("hashing", 7)
    assert (meta["n_query"], meta["n_database"]) == (m["roles"]["query"], m["roles"]["database"])
    assert sorted(x.name for x in out.glob("*.npy") if "_float" not in x.name) == []  # no codes
    alignment = load_alignment(tmp_path / "models" / "aligned-float")
    info = alignment.info
    assert info["train_pairs"] + info["holdout_pairs"] == m["roles"]["train"]
    for side in ("image", "text"):
        for role in ("query", "database"):
            x = np.load(out / f"{side}_{role}_float.npy")
            assert (x.dtype, x.shape) == (np.float32, (meta[f"n_{role}"], alignment.dim))
            np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, rtol=1e-5)
    # The paired caption is nearer than the others: the space is cross-modal.
    qi, qt = np.load(out / "image_query_float.npy"), np.load(out / "text_query_float.npy")
    sims = qi @ qt.T
    assert (np.diag(sims)[:, None] >= sims).mean() > 0.7

    # The query samples' embeddings change: the alignment (training pairs only) does not, but
    # their vectors do - nothing of the query set went into the fit.
    before = io.sha256_file(tmp_path / "models" / "aligned-float" / "alignment.safetensors")
    q_rows = [r["sample_id"] for r in pq.read_table(tmp_path / "codes" / "rows.parquet").to_pylist()
              if r["role"] == "query"]  # fmt: skip
    rows = {r["sample_id"]: r["feature_row"]
            for r in pq.read_table(dirs["clean"] / "samples.parquet").to_pylist()}  # fmt: skip
    image = np.load(dirs["interim"] / "features" / "image.npy")
    image[[rows[s] for s in q_rows[:5]]] *= -1.0
    io.write_npy(dirs["interim"] / "features" / "image.npy", image)
    train(tmp_path, dirs, p)
    after = io.sha256_file(tmp_path / "models" / "aligned-float" / "alignment.safetensors")
    assert after == before
    assert not np.array_equal(np.load(out / "image_query_float.npy"), qi)


def test_bad_upstream_is_reported(tmp_path: Path) -> None:
    dirs = fabricate(tmp_path, n=120)
    p = dataclasses.replace(FAST, methods=("contrastive",), bits=(16,), epochs=1)
    t = pq.read_table(dirs["clean"] / "samples.parquet")
    io.write_parquet(dirs["clean"] / "samples.parquet", t.slice(0, 100))
    with pytest.raises(ValueError, match="split is stale"):
        train(tmp_path, dirs, p)
    rows = t["feature_row"].to_numpy().copy()
    rows[3] = -1
    io.write_parquet(
        dirs["clean"] / "samples.parquet", t.set_column(1, "feature_row", pa.array(rows))
    )
    with pytest.raises(ValueError, match="no embeddings"):
        train(tmp_path, dirs, p)
    with pytest.raises(FileNotFoundError, match="cmrops split"):
        train(tmp_path, {**dirs, "split": tmp_path / "nowhere"}, p)


# --------------------------------------------------------------------------- params and CLI


def _params(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(body)
    return path


def test_params_section_loads_strictly(tmp_path: Path) -> None:
    p = load_section(
        _params(tmp_path, "train:\n  bits: [32]\n  methods: contrastive\n"), "train", TrainParams
    )
    assert p.bits == (32,)
    assert p.methods == ("contrastive",)
    assert load_section(_params(tmp_path, "train:\n  bits: 64\n"), "train", TrainParams).bits == (
        64,
    )
    bad = {
        "  bitz: [32]\n": "unknown key",
        "  bits: [33]\n": "not supported",
        "  bits: [32, 32]\n": "must not repeat",
        "  methods: [dcmh, hashnet]\n": r"unknown \['hashnet'\]; choose from: dcmh \(deep, super",
        "  methods: [itq]\n  finetune_encoder: clip\n": "work on the embeddings",
        "  djsrh:\n    beta: 1.5\n": r"djsrh\.beta must be in \[0\.0, 1\.0\]",
        "  djsrh:\n    gamma: 1\n": r"train\.djsrh: unknown key\(s\) gamma; allowed: beta, centre",
        "  itq:\n    iterations: -1\n": "itq.iterations must be >= 0",
        "  itq: 3\n": "expected a mapping",
        "  cca:\n    reg: 0\n": "cca.reg must be",
        "  cmfh:\n    image_weight: 1.0\n": "cmfh.image_weight must be in",
        "  cmfh:\n    iterations: 0\n": "cmfh.iterations must be >= 1",
        "  lr: 0\n": "lr must be",
        "  epochs: 0\n": "epochs must be",
        "  val_fraction: 1.5\n": "val_fraction",
        "  device: tpu\n": "not one of",
        "  temperature: -1\n": "temperature",
        "  hidden: [0]\n": "hidden widths",
        "  finetune_encoder: ''\n": "finetune_encoder: empty",
        "  encoder_layers: -2\n": "encoder_layers",
        "  encoder_lr: 0\n": "encoder_lr must be",
    }
    for line, msg in bad.items():
        with pytest.raises(ParamsError, match=msg):
            load_section(_params(tmp_path, "train:\n" + line), "train", TrainParams)


def test_repository_params_yaml_has_a_valid_train_section() -> None:
    root = Path(__file__).resolve().parents[1]
    p = load_section(root / "params.yaml", "train", TrainParams)
    assert p.bits == (16, 32, 64, 128)
    assert p.methods == ("dcmh", "contrastive", "itq", "cca", "cmfh")  # djsrh: opt-in (CI time)
    assert p.finetune_encoder is None


def test_cli_trains_and_reports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dirs = fabricate(tmp_path, n=200)
    params = _params(
        tmp_path,
        "train:\n  methods: [contrastive]\n  bits: [32]\n  epochs: 2\n  batch_size: 64\n"
        "  hidden: [32]\n",
    )
    args = [
        "train",
        "--params",
        str(params),
        "--split",
        str(dirs["split"]),
        "--clean",
        str(dirs["clean"]),
        "--interim",
        str(dirs["interim"]),
        "--labelled",
        str(dirs["labelled"]),
        "--models",
        str(tmp_path / "models"),
        "--codes",
        str(tmp_path / "codes"),
        "--metrics",
        str(tmp_path / "m.json"),
    ]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "contrastive-32:" in out
    assert "samples/s" in out
    assert (tmp_path / "codes" / "contrastive-32" / "image_query.npy").is_file()
    params.write_text("train:\n  bits: [31]\n")
    assert cli.main(args) == 2
    assert "bits" in capsys.readouterr().err


def test_dvc_exp_run_sets_the_bit_lengths(tmp_path: Path) -> None:
    """``dvc exp run -S 'train.bits=[32]'`` on the repository's train stage (inputs fabricated)."""
    import shutil
    import subprocess
    import sys

    import yaml

    bindir = Path(sys.executable).parent
    # dvc is in the lock and git is on every machine: their absence is a broken set-up, a failure
    assert (bindir / "dvc").is_file(), f"dvc missing from {bindir}: run scripts/bootstrap.sh"
    assert shutil.which("git"), "git is not on PATH"
    repo = Path(__file__).resolve().parents[1]
    fabricate(tmp_path / "data", n=160, dims=(48, 40))  # cca/itq need bits <= both dims
    # deps that only fine-tuning reads (the images and captions); present in every real run
    shutil.copy(tmp_path / "data/clean/samples.parquet", tmp_path / "data/interim/samples.parquet")
    (tmp_path / "data/raw/objects").mkdir(parents=True)
    (tmp_path / "data/raw/objects/.keep").write_text("")
    stage = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]["train"]
    stage["deps"] = [d for d in stage["deps"] if d.startswith("data/")]  # the code is imported
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"train": stage}}))
    project = yaml.safe_load((repo / "params.yaml").read_text())
    p = project["train"]
    p.update(bits=[16, 64], epochs=1, hidden=[16], batch_size=32, device="cpu")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"train": p, "align": project["align"]}))
    env = {
        **os.environ,
        "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(repo),
        "DVC_NO_ANALYTICS": "1",
        "GIT_TERMINAL_PROMPT": "0",
    }

    def sh(*args: str) -> None:
        proc = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]

    sh("git", "init", "-q", "-b", "main")
    sh("dvc", "init", "-q")
    sh("git", "add", "-A")
    sh("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    sh("dvc", "exp", "run", "-S", "train.bits=[32]")
    models = sorted(f"{method}-32" for method in p["methods"])  # every default method
    assert len(models) == 5
    assert sorted(x.name for x in (tmp_path / "data" / "codes").iterdir()) == [
        "aligned-float",  # the aligned float baseline
        *models,
        "rows.parquet",
        "training_samples.parquet",
    ]
    m = json.loads((tmp_path / "metrics" / "train.json").read_text())
    assert sorted(m["models"]) == models


def test_validation_slice_never_leaves_fewer_than_two_training_samples() -> None:
    # 19 training-pool samples: one near-duplicate group of 17 and two singletons. Holding the
    # big group out (its hash may come first) would leave 2 or 1 to train on; it is passed over.
    from cmrops.stages.train import Inputs, assign_roles

    n = 21
    ids = [f"s{i:02d}" for i in range(n)]
    split = np.array(["database"] * 19 + ["query"] * 2, dtype=object)
    group = ["big"] * 17 + ["s17", "s18", "s19", "s20"]
    x = np.ones((n, 4), np.float32)
    data = Inputs(
        ids=ids,
        split=split,
        in_train=np.arange(n) < 19,
        group_id=group,
        protocol="hashing",
        split_seed=0,
        image=x,
        text=x,
        labels=None,
        features={},
    )
    for seed in range(8):
        roles = assign_roles(data, TrainParams(val_fraction=0.5, seed=seed))
        assert len(roles.train) >= 2
        assert len(roles.val) >= 1
        assert not {group[i] for i in roles.val} & {group[i] for i in roles.train}


def test_thread_count_never_changes_the_bytes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A budget of 1 or 3 threads: the same models, codes and metrics. CPU training runs on
    threads.TRAINING_THREADS whatever the budget (torch's reductions depend on the count); a
    budget of 3 spreads the models over worker processes instead (one per deep model, here 2),
    and that changes no byte either."""
    from cmrops import threads

    dirs = fabricate(tmp_path / "data", n=250)
    p = dataclasses.replace(FAST, methods=("dcmh", "contrastive", "itq"), bits=(16,), epochs=2)
    before = threads.current()
    outs = []
    root = tmp_path / "run"  # one folder: outputs stamp the paths they were given
    try:
        for n in (1, 3):
            threads.apply(n)
            caplog.clear()
            with caplog.at_level(logging.INFO, logger="cmrops.stages.train_models"):
                train(root, dirs, p)
            spread = "train: 3 models over 2 worker processes" in caplog.text
            assert spread == (n == 3), caplog.text
            outs.append(snapshot(root / "models", root / "codes", root / "metrics"))
            shutil.rmtree(root)
    finally:
        threads.apply(before)
    assert outs[0] == outs[1]


def test_closed_form_models_wider_than_the_data_are_skipped(tmp_path: Path) -> None:
    """A small set (a trial of the DAG) has fewer canonical directions than CCA/ITQ's bits: those
    models are skipped with the reason in the metrics, the others train; nothing trainable at
    all is an error that names the limit."""
    dirs = fabricate(tmp_path, n=250)  # dims (32, 24): at most 24 canonical directions
    p = dataclasses.replace(FAST, methods=("itq", "contrastive"), bits=(16, 32), epochs=1)
    m = train(tmp_path, dirs, p)
    assert sorted(m["models"]) == ["contrastive-16", "contrastive-32", "itq-16"]
    assert "only 24 canonical directions" in m["not_trained"]["itq-32"]
    assert not (tmp_path / "codes" / "itq-32").exists()
    assert digest.digest("train", m)  # the DVC digest takes the record as it is
    with pytest.raises(ValueError, match=r"no model can be trained .*itq-32: only 24"):
        train(tmp_path, dirs, dataclasses.replace(p, methods=("itq",), bits=(32,)))
