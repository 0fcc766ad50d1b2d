"""The evaluate stage on fabricated train outputs: layout and stamps of metrics/retrieval.json,
agreement with cmrops.metrics, cut-off clipping, pair relevance, refusal of stale or broken
inputs, plots that `dvc plots show` renders, the CLI and the params / dvc.yaml entries."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import yaml

import cmrops
from cmrops import cli, io
from cmrops import metrics as M
from cmrops.code_health import code_health
from cmrops.params import ParamsError, load_section
from cmrops.schema import ASSIGNMENTS, LABELS
from cmrops.stages.evaluate import EvaluateParams, run

REPO = Path(__file__).resolve().parents[1]
N_LABELS = 8


def fabricate(
    root: Path,
    n_query: int = 40,
    n_database: int = 300,
    models: tuple[tuple[str, int], ...] = (("dcmh", 16), ("dcmh", 64), ("random", 64)),
    labelled: bool = True,
    seed: int = 0,
) -> dict[str, Any]:
    """Train-like outputs: codes that follow the labels (sign of a noisy label embedding), a
    'random' model whose codes ignore them, labels, a hashing split and rows.parquet."""
    rng = np.random.default_rng(seed)
    n = n_query + n_database
    ids = [f"{x:016x}" for x in rng.choice(2**40, size=n, replace=False)]
    hot = np.zeros((n, N_LABELS), dtype=bool)
    for i in range(n):
        hot[i, rng.choice(N_LABELS, size=int(rng.integers(1, 4)), replace=False)] = True
    q_rows, d_rows = np.arange(n_query), np.arange(n_query, n)
    codes = root / "codes"
    codes.mkdir(parents=True)
    io.write_parquet(
        codes / "rows.parquet",
        pa.table(
            {
                "role": ["query"] * n_query + ["database"] * n_database,
                "row": np.concatenate([np.arange(n_query), np.arange(n_database)]),
                "sample_id": ids,
            }
        ),
    )
    for method, bits in models:
        out = codes / f"{method}-{bits}"
        proto = rng.normal(size=(N_LABELS, bits))
        for modality in ("image", "text"):
            if method == "random":
                x = rng.normal(size=(n, bits))
            else:
                x = hot.astype(float) @ proto + rng.normal(scale=1.2, size=(n, bits))
            x = x.astype(np.float32)
            for role, rows in (("query", q_rows), ("database", d_rows)):
                io.write_npy(out / f"{modality}_{role}.npy", cmrops.pack_bits(x[rows] > 0))
                io.write_npy(out / f"{modality}_{role}_float.npy", x[rows])
        meta = {
            "method": method,
            "bits": bits,
            "n_bits": bits,
            "protocol": "hashing",
            "split_seed": 7,
            "model_dir": f"models/{method}-{bits}",
        }
        io.write_json(out / "meta.json", meta)
    if labelled:
        rows = sorted((ids[i], f"l{j}") for i in range(n) for j in np.flatnonzero(hot[i]))
        io.write_parquet(
            root / "labelled" / "labels.parquet",
            pa.table(
                {
                    "sample_id": [s for s, _ in rows],
                    "label": [lab for _, lab in rows],
                    "source": ["auto"] * len(rows),
                    "method": ["provided"] * len(rows),
                    "confidence": [1.0] * len(rows),
                },
                schema=LABELS,
            ),
        )
    write_split(root, ids, n_query)
    return {"ids": ids, "hot": hot, "n_query": n_query}


def write_split(root: Path, ids: list[str], n_query: int, protocol: str = "hashing", seed: int = 7):
    order = sorted(range(len(ids)), key=lambda i: ids[i])
    spec = {"name": protocol, "kind": "hashing", "query": n_query, "train": 100}
    io.write_parquet(
        root / "split" / "assignments.parquet",
        pa.table(
            {
                "sample_id": [ids[i] for i in order],
                "split": ["query" if i < n_query else "database" for i in order],
                "in_train": [n_query <= i < n_query + 100 for i in order],
                "group_id": [ids[i] for i in order],
                "protocol": [protocol] * len(ids),
                "seed": [seed] * len(ids),
            },
            schema=ASSIGNMENTS.with_metadata({"cmrops.protocol": json.dumps(spec)}),
        ),
    )


def evaluate(root: Path, **kw: Any) -> dict[str, Any]:
    params = dataclasses.replace(EvaluateParams(), **kw)
    return run(
        params, root / "codes", root / "labelled", root / "split",
        root / "metrics" / "retrieval.json", root / "plots",
    )  # fmt: skip


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], dict]:
    root = tmp_path_factory.mktemp("evaluate")
    data = fabricate(root)
    return root, evaluate(root), data


# --------------------------------------------------------------------------- layout


def test_metrics_file_layout_and_stamps(evaluated):
    root, m, _ = evaluated
    assert json.loads((root / "metrics" / "retrieval.json").read_text()) == m
    assert m["split"]["name"] == "hashing"
    assert m["split"]["seed"] == 7
    assert m["split"]["protocol"]["query"] == 40
    assert m["split"]["roles"]["query"] == {"samples": 40, "sets": {"query": 40}, "in_train": 0}
    assert m["split"]["roles"]["database"]["in_train"] == 100
    assert m["relevance"]["mode"] == "labels"
    assert m["relevance"]["vocabulary"] == N_LABELS
    assert "shares at least one label" in m["relevance"]["rule"]
    assert set(m["ties"]) == {"tie_aware", "database_order", "float"}
    assert m["directions"] == ["image_to_text", "text_to_image"]
    assert sorted(m["models"]) == ["dcmh-16", "dcmh-64", "random-64"]
    model = m["models"]["dcmh-64"]
    assert model["method"] == "dcmh"
    assert model["bits"] == 64
    assert model["n_bits"] == 64
    assert model["model_dir"] == "models/dcmh-64"
    assert model["split_seed"] == 7
    assert set(model["code_health"]) == {"image", "text"}
    assert model["code_health"]["text"]["codes"] == 300
    d = model["directions"]["image_to_text"]
    assert (d["queries"], d["database"]) == (40, 300)
    assert d["cutoffs_clipped"] == {"1000": 300, "5000": 300}
    h = d["hash"]
    assert set(h) == {
        "map", "map_relevant_only", "map_database_order", "map_database_order_relevant_only",
        "map_at", "map_at_database_order", "precision_at", "recall_at", "ndcg_at", "within_radius",
    }  # fmt: skip
    assert list(h["map_at"]) == ["50", "1000", "5000"]
    assert list(h["precision_at"]) == ["1", "5", "10", "50", "100", "1000"]
    assert h["within_radius"]["radius"] == 2
    assert set(d["float"]) == {
        "map",
        "map_relevant_only",
        "map_at",
        "precision_at",
        "recall_at",
        "ndcg_at",
    }
    assert d["plots"] == {
        "pr": "pr/dcmh-64_image_to_text.json",
        "pk": "pk/dcmh-64_image_to_text.json",
    }


def test_values_agree_with_the_library(evaluated):
    root, m, data = evaluated
    folder = root / "codes" / "dcmh-16"
    q = io.read_npy(folder / "text_query.npy")
    db = io.read_npy(folder / "image_database.npy")
    ql, dl = data["hot"][:40], data["hot"][40:]
    total, relevant = cmrops.hamming_histogram(q, db, ql, dl)
    s = M.hamming_metrics(total[:, :17], relevant[:, :17], map_at=[50, 300], top_k=[10]).summary()
    h = m["models"]["dcmh-16"]["directions"]["text_to_image"]["hash"]
    assert h["map"] == round(s["map"], 6)
    assert h["map_at"]["50"] == round(s["map_at"][50], 6)
    assert h["map_at"]["5000"] == round(s["map_at"][300], 6) == round(s["map"], 6)  # AP@n = AP
    assert h["precision_at"]["10"] == round(s["precision_at"][10], 6)
    order = M.database_order_metrics(q, db, ql, dl).summary()
    assert h["map_database_order"] == round(order["map"], 6)
    fq = io.read_npy(folder / "text_query_float.npy")
    fdb = io.read_npy(folder / "image_database_float.npy")
    fl = M.cosine_metrics(fq, fdb, ql, dl).summary()
    d = m["models"]["dcmh-16"]["directions"]["text_to_image"]
    assert d["float"]["map"] == round(fl["map"], 6)
    assert d["gap"]["map"] == pytest.approx(fl["map"] - s["map"], abs=2e-6)
    health = code_health(db, 16)
    assert (
        m["models"]["dcmh-16"]["code_health"]["image"]["buckets"]["distinct"]
        == (health["buckets"]["distinct"])
    )


def test_trained_codes_beat_random_codes_and_float_beats_hash(evaluated):
    _, m, _ = evaluated
    for direction in ("image_to_text", "text_to_image"):
        good = m["models"]["dcmh-64"]["directions"][direction]
        bad = m["models"]["random-64"]["directions"][direction]
        assert good["hash"]["map"] > bad["hash"]["map"] + 0.2
        assert good["float"]["map"] >= good["hash"]["map"] - 0.02  # the upper reference
        # 16 bits over 300 items: many ties, and the two tie rules differ
        short = m["models"]["dcmh-16"]["directions"][direction]["hash"]
        assert short["map"] != short["map_database_order"]
        assert abs(short["map"] - short["map_database_order"]) < 0.05


def test_plots_files(evaluated):
    root, m, _ = evaluated
    pr = json.loads((root / "plots" / "pr" / "dcmh-16_image_to_text.json").read_text())
    assert [r["radius"] for r in pr] == sorted(r["radius"] for r in pr)
    assert pr[-1]["radius"] == 16
    assert pr[-1]["recall"] == 1.0
    assert pr[-1]["coverage"] == 1.0
    assert set(pr[0]) == {"radius", "precision", "recall", "coverage"}
    pk = json.loads((root / "plots" / "pk" / "dcmh-16_image_to_text.json").read_text())
    assert [r["k"] for r in pk] == [1, 2, 5, 10, 20, 50, 100, 200, 300]  # clipped, once
    assert set(pk[0]) == {"k", "precision", "precision_database_order", "float_precision"}
    p10 = m["models"]["dcmh-16"]["directions"]["image_to_text"]["hash"]["precision_at"]["10"]
    assert next(r for r in pk if r["k"] == 10)["precision"] == p10
    n_files = len(list((root / "plots").rglob("*.json")))
    assert n_files == 2 * 3 * 2  # pr + pk, 3 models, 2 directions


def test_rerun_is_byte_identical_and_removes_stale_plots(tmp_path):
    fabricate(tmp_path, n_query=20, n_database=120, models=(("dcmh", 16), ("dcmh", 32)))
    evaluate(tmp_path)
    first = (tmp_path / "metrics" / "retrieval.json").read_bytes()
    plot = (tmp_path / "plots" / "pk" / "dcmh-32_text_to_image.json").read_bytes()
    evaluate(tmp_path)
    assert (tmp_path / "metrics" / "retrieval.json").read_bytes() == first
    assert (tmp_path / "plots" / "pk" / "dcmh-32_text_to_image.json").read_bytes() == plot
    shutil.rmtree(tmp_path / "codes" / "dcmh-32")  # train dropped a bit length
    m = evaluate(tmp_path)
    assert list(m["models"]) == ["dcmh-16"]
    assert sorted(p.name for p in (tmp_path / "plots" / "pk").iterdir()) == [
        "dcmh-16_image_to_text.json",
        "dcmh-16_text_to_image.json",
    ]


# --------------------------------------------------------------------------- options


def test_unimodal_directions_models_filter_and_switches(tmp_path):
    fabricate(tmp_path, n_query=20, n_database=100, models=(("dcmh", 16), ("dcmh", 32)))
    m = evaluate(
        tmp_path,
        directions=["image_to_image", "text_to_text", "image_to_text"],
        models=["dcmh-32"],
        map_at=[10],
        top_k=[5],
        pk_curve=[5],
        radius=40,
        database_order=False,
        float_baseline=False,
    )
    assert list(m["models"]) == ["dcmh-32"]
    dirs = m["models"]["dcmh-32"]["directions"]
    assert list(dirs) == ["image_to_image", "text_to_text", "image_to_text"]
    d = dirs["text_to_text"]
    assert "float" not in d
    assert "gap" not in d
    assert "map_database_order" not in d["hash"]
    assert d["hash"]["within_radius"]["radius"] == 32  # clipped to n_bits
    assert d["hash"]["within_radius"]["recall"] == 1.0
    assert "cutoffs_clipped" not in d
    # float files are not needed when the baseline is off
    for f in (tmp_path / "codes" / "dcmh-32").glob("*_float.npy"):
        f.unlink()
    evaluate(tmp_path, models=["dcmh-32"], float_baseline=False)
    with pytest.raises(FileNotFoundError, match="float_baseline: false"):
        evaluate(tmp_path, models=["dcmh-32"])


def test_pair_relevance_for_unlabelled_data(tmp_path):
    fabricate(tmp_path, n_query=30, n_database=90, models=(("dcmh", 64),), labelled=False)
    m = evaluate(tmp_path, directions=["image_to_text", "text_to_image", "text_to_text"])
    assert m["relevance"]["mode"] == "pair"
    assert m["relevance"]["why"].startswith("auto")
    assert m["skipped"] == {"text_to_text": m["skipped"]["text_to_text"]}
    d = m["models"]["dcmh-64"]["directions"]["image_to_text"]
    assert d["database"] == 120  # the query samples' texts and the database's
    assert d["queries_without_relevant"] == 0
    # each query has exactly one relevant item: R@K is the chance it is in the top K
    assert 0 < d["hash"]["recall_at"]["10"] <= 1
    assert d["hash"]["precision_at"]["10"] == pytest.approx(
        d["hash"]["recall_at"]["10"] / 10, abs=1e-6
    )
    assert not (tmp_path / "labelled").exists()
    with pytest.raises(FileNotFoundError, match="relevance: pair"):
        evaluate(tmp_path, relevance="labels")


def test_pair_relevance_matches_a_direct_computation(tmp_path):
    data = fabricate(tmp_path, n_query=25, n_database=60, models=(("dcmh", 32),))
    m = evaluate(tmp_path, relevance="pair", map_at=[5], top_k=[5])
    folder = tmp_path / "codes" / "dcmh-32"
    q = io.read_npy(folder / "image_query.npy")
    db = np.concatenate(
        [io.read_npy(folder / "text_query.npy"), io.read_npy(folder / "text_database.npy")]
    )
    # the ranked items are in sample_id order; the paired item of query i is the one of its id
    order = np.argsort(np.asarray(data["ids"]), kind="stable")
    ids = np.asarray(data["ids"])
    s = M.hamming_metrics(
        *M.histograms(q, db[order], *M.pair_labels(list(ids[:25]), list(ids[order]))), map_at=[5]
    ).summary()
    assert m["models"]["dcmh-32"]["directions"]["image_to_text"]["hash"]["map"] == round(
        s["map"], 6
    )
    assert data["n_query"] == 25


def test_low_confidence_labels_can_be_ignored(tmp_path):
    fabricate(tmp_path, n_query=10, n_database=40, models=(("dcmh", 16),))
    m = evaluate(tmp_path, min_confidence=0.5)
    assert m["relevance"]["min_confidence"] == 0.5
    assert m["relevance"]["unlabelled"] == {"query": 0, "database": 0}
    path = tmp_path / "labelled" / "labels.parquet"
    t = io.read_parquet(path)
    io.write_parquet(path, t.set_column(4, "confidence", pa.array([0.3] * len(t))))
    assert evaluate(tmp_path, min_confidence=0.5)["relevance"]["mode"] == "pair"  # auto
    with pytest.raises(ValueError, match="relevance: pair"):
        evaluate(tmp_path, relevance="labels", min_confidence=0.5)


# --------------------------------------------------------------------------- refusals


@pytest.fixture
def small(tmp_path: Path) -> Path:
    fabricate(tmp_path, n_query=10, n_database=30, models=(("dcmh", 16),))
    return tmp_path


def test_codes_of_another_split_are_refused(small):
    meta_path = small / "codes" / "dcmh-16" / "meta.json"
    meta = json.loads(meta_path.read_text())
    io.write_json(meta_path, {**meta, "split_seed": 8})
    with pytest.raises(ValueError, match="split seed 8"):
        evaluate(small)
    io.write_json(meta_path, {**meta, "protocol": "ratio"})
    with pytest.raises(ValueError, match="protocol 'ratio'"):
        evaluate(small)
    io.write_json(meta_path, meta)
    ids = io.read_parquet(small / "codes" / "rows.parquet")["sample_id"].to_pylist()
    write_split(small, ids[1:], 9)  # the first query sample is not in the split any more
    with pytest.raises(ValueError, match="another split"):
        evaluate(small)


def test_broken_codes_are_refused(small):
    folder = small / "codes" / "dcmh-16"
    good = io.read_npy(folder / "image_query.npy")
    io.write_npy(folder / "image_query.npy", good.astype(np.int64))
    with pytest.raises(ValueError, match="uint64"):
        evaluate(small)
    io.write_npy(folder / "image_query.npy", good[:5])
    with pytest.raises(ValueError, match=r"shape \(10, 1\)"):
        evaluate(small)
    io.write_npy(folder / "image_query.npy", good | np.uint64(1 << 20))
    with pytest.raises(ValueError, match="past n_bits"):
        evaluate(small)
    (folder / "image_query.npy").unlink()
    with pytest.raises(FileNotFoundError, match=r"image_query\.npy"):
        evaluate(small)


def test_missing_inputs_are_named(small, tmp_path_factory):
    with pytest.raises(FileNotFoundError, match="dcmh-99"):
        evaluate(small, models=["dcmh-99"])
    empty = tmp_path_factory.mktemp("empty")
    (empty / "codes").mkdir()
    shutil.copy(small / "codes" / "rows.parquet", empty / "codes" / "rows.parquet")
    shutil.copytree(small / "split", empty / "split")
    with pytest.raises(FileNotFoundError, match="run `cmrops train`"):
        evaluate(empty)
    (empty / "codes" / "rows.parquet").unlink()
    with pytest.raises(FileNotFoundError, match=r"rows\.parquet"):
        evaluate(empty)
    shutil.rmtree(small / "split")
    with pytest.raises(FileNotFoundError, match="cmrops split"):
        evaluate(small)


def test_bad_rows_table_is_refused(small):
    path = small / "codes" / "rows.parquet"
    t = io.read_parquet(path)
    io.write_parquet(path, t.set_column(1, "row", pa.array([0] * len(t), pa.int64())))
    with pytest.raises(ValueError, match=r"0\.\.n-1"):
        evaluate(small)
    t = t.set_column(0, "role", pa.array(["query"] * len(t)))
    io.write_parquet(path, t.set_column(1, "row", pa.array(range(len(t)), pa.int64())))
    with pytest.raises(ValueError, match="no database rows"):
        evaluate(small)


# --------------------------------------------------------------------------- shells


def test_params_section_is_strict_and_matches_the_project_file(tmp_path):
    project = load_section(REPO / "params.yaml", "evaluate", EvaluateParams)
    assert project == EvaluateParams()
    bad = tmp_path / "params.yaml"
    bad.write_text("evaluate:\n  directions: [image_to_sound]\n")
    with pytest.raises(ParamsError, match="directions"):
        load_section(bad, "evaluate", EvaluateParams)
    bad.write_text("evaluate:\n  map_at: [0]\n")
    with pytest.raises(ParamsError, match=">= 1"):
        load_section(bad, "evaluate", EvaluateParams)
    bad.write_text("evaluate:\n  mapk: [5]\n")
    with pytest.raises(ParamsError, match="unknown key"):
        load_section(bad, "evaluate", EvaluateParams)


def test_dvc_stage_declares_inputs_outputs_and_plots():
    stage = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["evaluate"]
    args = stage["cmd"].split()
    assert args[:2] == ["cmrops", "evaluate"]
    flags = dict(zip(args[2::2], args[3::2], strict=True))
    assert flags == {
        "--params": "params.yaml",
        "--codes": "data/codes",
        "--labelled": "data/labelled",
        "--split": "data/split",
        "--metrics": "metrics/retrieval.json",
        "--plots": "plots",
        "--train-metrics": "metrics/train.json",
        "--digest": "metrics/dvc/evaluate.json",
    }
    assert stage["params"] == ["evaluate"]
    for dep in ("cmrops/stages/evaluate.py", "cmrops/metrics.py", "cmrops/codes.py"):
        assert dep in stage["deps"]
        assert (REPO / dep).exists()
    assert {
        "data/codes", "data/labelled/labels.parquet", "data/split/assignments.parquet",
        "data/split/manifests", "metrics/train.json",
    } <= set(stage["deps"])  # fmt: skip
    # the full record is an out (releases restore it); DVC's metrics file is its digest
    assert stage["metrics"] == [{"metrics/dvc/evaluate.json": {"cache": False}}]
    outs = [next(iter(o)) if isinstance(o, dict) else o for o in stage["outs"]]
    assert outs == ["metrics/retrieval.json", "plots/pr", "plots/pk", "plots/retrieval"]
    assert "plots" not in stage  # no chart per file: the top-level plots draw the tables
    plots = {next(iter(p)): next(iter(p.values())) for p in yaml.safe_load(
        (REPO / "dvc.yaml").read_text())["plots"]}  # fmt: skip
    assert plots["precision_recall"]["y"] == {"plots/retrieval/pr.json": "precision"}
    assert plots["precision_at_k"]["y"] == {"plots/retrieval/pk.json": "precision"}
    assert plots["map_by_bits"]["y"] == {"plots/retrieval/map.json": "map"}
    for p in plots.values():
        assert (REPO / ".dvc" / "plots" / f"{p['template']}.json").is_file()


def test_cli_runs_and_dvc_renders_the_plots(tmp_path):
    fabricate(tmp_path, n_query=15, n_database=50, models=(("dcmh", 16),))
    params = tmp_path / "params.yaml"
    params.write_text("evaluate:\n  map_at: [5]\n  top_k: [5]\n  pk_curve: [1, 5, 10]\n")
    # DVC renders the tables through the project's own plots declarations and templates
    spec = yaml.safe_load((REPO / "dvc.yaml").read_text())
    project = spec["stages"]["evaluate"]
    retrieval = [p for p in spec["plots"] if next(iter(p)) != "quarantine"]
    env = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "DVC_NO_ANALYTICS": "1"}
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True, env=env)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=tmp_path, check=True, env=env)
    (tmp_path / "dvc.yaml").write_text(
        yaml.safe_dump({"stages": {"evaluate": project}, "plots": retrieval})
    )
    (tmp_path / ".dvc" / "plots").mkdir()
    for template in (REPO / ".dvc" / "plots").glob("*.json"):
        shutil.copy(template, tmp_path / ".dvc" / "plots" / template.name)
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert (
            cli.main(["evaluate", "--params", "params.yaml", "--codes", "codes"]) == 2
        )  # no data/
        code = cli.main(
            ["evaluate", "--params", "params.yaml", "--codes", "codes", "--labelled", "labelled",
             "--split", "split", "--metrics", "metrics/retrieval.json", "--plots", "plots",
             "--digest", "metrics/dvc/evaluate.json"]
        )  # fmt: skip
    finally:
        os.chdir(cwd)
    assert code == 0
    m = json.loads((tmp_path / "metrics" / "retrieval.json").read_text())
    assert list(m["models"]["dcmh-16"]["directions"]["image_to_text"]["hash"]["map_at"]) == ["5"]
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", "plots", "show", "--json"],
        cwd=tmp_path, capture_output=True, text=True, env=env, check=True,
    )  # fmt: skip
    shown = json.loads(proc.stdout)
    assert not shown.get("errors")
    assert set(shown["data"]) == {"precision_recall", "precision_at_k", "map_by_bits"}
    chart = shown["data"]["precision_at_k"][0]["content"]
    assert chart["encoding"]["x"]["field"] == "k"
    assert chart["encoding"]["color"]["field"] == "method"
    assert chart["encoding"]["row"]["field"] == "direction"
    rows = chart["data"]["values"]
    assert {(r["direction"], r["k"]) for r in rows} == {
        (d, k) for d in ("image_to_text", "text_to_image") for k in (1, 5, 10)
    }
    assert {(r["method"], r["bits"], r["model"]) for r in rows} == {("dcmh", 16, "dcmh-16")}
    mean_ap = shown["data"]["map_by_bits"][0]["content"]["data"]["values"]
    assert sorted(r["direction"] for r in mean_ap) == ["image_to_text", "text_to_image"]
    for r in mean_ap:
        assert r["map"] == m["models"]["dcmh-16"]["directions"][r["direction"]]["hash"]["map"]
    # DVC's metrics file is the record's digest: numbers only
    d = json.loads((tmp_path / "metrics" / "dvc" / "evaluate.json").read_text())
    assert d["models"] == 1
    for short, direction in (("i2t", "image_to_text"), ("t2i", "text_to_image")):
        hash_map = m["models"]["dcmh-16"]["directions"][direction]["hash"]["map"]
        assert d["map"][short] == {"dcmh-16": hash_map}


# --------------------------------------------------------------------------- protocol (issue 13)


def write_manifests_for(root: Path, near_duplicates: list[str]) -> None:
    from cmrops.splitting.manifests import write_manifests

    write_manifests(
        root / "split",
        io.read_parquet(root / "split" / "assignments.parquet"),
        near_duplicates,
        {"near_duplicates": {"rule": "constructed in the test"}},
    )


def aligned_baseline(root: Path, data: dict[str, Any], noise: float, seed: int = 1) -> None:
    """A float-baseline folder as train writes it: L2-normalised float32 rows of one space."""
    rng = np.random.default_rng(seed)
    hot = data["hot"].astype(np.float64)
    proto = rng.normal(size=(hot.shape[1], 32))
    out = root / "codes" / "aligned-float"
    nq = data["n_query"]
    for modality in ("image", "text"):
        x = hot @ proto + rng.normal(scale=noise, size=(len(hot), 32))
        x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
        io.write_npy(out / f"{modality}_query_float.npy", x[:nq])
        io.write_npy(out / f"{modality}_database_float.npy", x[nq:])
    io.write_json(
        out / "meta.json",
        {"kind": "float_baseline", "method": "aligned-float", "protocol": "hashing",
         "split_seed": 7, "n_query": nq, "n_database": len(hot) - nq,
         "alignment": {"model": "constructed"}},
    )  # fmt: skip


def test_protocol_card_and_the_mAP_without_near_duplicate_queries(tmp_path):
    data = fabricate(tmp_path, n_query=30, n_database=120, models=(("dcmh", 32),))
    folder = tmp_path / "codes" / "dcmh-32"
    # a leaking query: query 0's text code is copied into the database, its labels made unique
    ids, n_q = data["ids"], data["n_query"]
    for kind, other in (("text", "image"), ("image", "text")):
        for suffix in ("", "_float"):  # codes and float outputs
            db = io.read_npy(folder / f"{kind}_database{suffix}.npy")
            db[0] = io.read_npy(folder / f"{other}_query{suffix}.npy")[0]
            io.write_npy(folder / f"{kind}_database{suffix}.npy", db)
    labels = io.read_parquet(tmp_path / "labelled" / "labels.parquet").to_pylist()
    labels = [r for r in labels if r["sample_id"] not in (ids[0], ids[n_q])]
    labels += [{**LEAK, "sample_id": ids[0]}, {**LEAK, "sample_id": ids[n_q]}]
    io.write_parquet(
        tmp_path / "labelled" / "labels.parquet",
        pa.Table.from_pylist(sorted(labels, key=lambda r: (r["sample_id"], r["label"])), LABELS),
    )
    m = evaluate(tmp_path)
    assert m["protocol"]["manifests"] is None
    assert m["protocol"]["near_duplicate_queries"]["count"] is None
    assert "manifests" in m["notes"]
    assert "float_baseline" in m["notes"]
    assert "float_baseline" not in m
    assert "map_without_near_duplicate_queries" not in m["models"]["dcmh-32"]["directions"][
        "image_to_text"
    ]["hash"]  # fmt: skip
    write_manifests_for(tmp_path, [ids[0]])
    m = evaluate(tmp_path)
    card = m["protocol"]
    assert card["split"] == {
        "name": "hashing", "spec": {"name": "hashing", "kind": "hashing", "query": 30,
                                    "train": 100}, "seed": 7,
    }  # fmt: skip
    assert card["sizes"] == {
        "query": 30, "database": 120, "ranked_database": 120, "train": 100, "val": 0,
    }  # fmt: skip
    assert card["relevance"]["mode"] == "labels"
    assert card["model_selection"]["rule"].startswith("validation split only")
    assert card["map"]["at_k"]["used"] == {"50": 50, "1000": 120, "5000": 120}
    assert card["ties"] == {"primary": "tie_aware", "secondary": "database_order", "float": "float"}
    man = json.loads((tmp_path / "split" / "manifests" / "manifest.json").read_text())
    assert card["manifests"] == {k: v["sha256"] for k, v in man["files"].items()}
    assert card["near_duplicate_queries"] == {
        "count": 1, "definition": {"rule": "constructed in the test"},
    }  # fmt: skip
    for direction in ("image_to_text", "text_to_image"):
        d = m["models"]["dcmh-32"]["directions"][direction]
        assert d["near_duplicate_queries"] == 1
        for part in ("hash", "float"):
            with_leak = d[part]["map"]
            without = d[part]["map_without_near_duplicate_queries"]
            # the leaking query finds its only relevant item at distance 0: AP 1
            assert with_leak > without, (direction, part)
            assert with_leak == pytest.approx((without * 29 + 1.0) / 30, abs=2e-6)
    # no near-duplicate query: 0 and both figures equal
    write_manifests_for(tmp_path, [])
    d = evaluate(tmp_path)["models"]["dcmh-32"]["directions"]["image_to_text"]
    assert d["near_duplicate_queries"] == 0
    assert d["hash"]["map_without_near_duplicate_queries"] == d["hash"]["map"]
    assert d["float"]["map_without_near_duplicate_queries"] == d["float"]["map"]


LEAK = {"label": "leak-only", "source": "auto", "method": "provided", "confidence": 1.0}


def test_stale_manifests_are_refused(tmp_path):
    data = fabricate(tmp_path, n_query=10, n_database=30, models=(("dcmh", 16),))
    write_split(tmp_path, data["ids"], 12)  # manifests of another query set than the codes'
    write_manifests_for(tmp_path, [])
    write_split(tmp_path, data["ids"], 10)
    with pytest.raises(ValueError, match="not the codes' query set"):
        evaluate(tmp_path)


def test_aligned_float_baseline_and_vs_float_baseline(tmp_path):
    data = fabricate(tmp_path, n_query=30, n_database=120, models=(("dcmh", 32), ("random", 32)))
    aligned_baseline(tmp_path, data, noise=0.3)
    write_manifests_for(tmp_path, [])
    m = evaluate(tmp_path)
    assert "float_baseline" not in m.get("notes", {})
    base = m["float_baseline"]
    assert base["kind"] == "float_baseline"
    assert base["folder"] == "aligned-float"
    assert base["dim"] == 32
    assert "aligned-float" not in m["models"]  # not a hashing model
    for direction in ("image_to_text", "text_to_image"):
        b = base["directions"][direction]
        assert set(b) >= {"map", "map_at", "precision_at", "recall_at", "ndcg_at"}
        assert b["map_without_near_duplicate_queries"] == b["map"]
        # the baseline equals a direct cosine computation
        qm, dm = direction.split("_to_")
        folder = tmp_path / "codes" / "aligned-float"
        hot = data["hot"]
        s = M.cosine_metrics(
            io.read_npy(folder / f"{qm}_query_float.npy"),
            io.read_npy(folder / f"{dm}_database_float.npy"),
            hot[:30], hot[30:],
        ).summary()  # fmt: skip
        assert b["map"] == round(s["map"], 6)
        for name in ("dcmh-32", "random-32"):
            d = m["models"][name]["directions"][direction]
            h = d["hash"]["map"]
            assert d["vs_float_baseline"]["map"] == pytest.approx(h / b["map"], abs=1e-5)
            assert d["vs_float_baseline"]["float_baseline_map"] == b["map"]
        good = m["models"]["dcmh-32"]["directions"][direction]["vs_float_baseline"]["map"]
        bad = m["models"]["random-32"]["directions"][direction]["vs_float_baseline"]["map"]
        assert good > bad
    with pytest.raises(ValueError, match="not a hashing model"):
        evaluate(tmp_path, models=["aligned-float"])
    meta = json.loads((tmp_path / "codes" / "aligned-float" / "meta.json").read_text())
    io.write_json(tmp_path / "codes" / "aligned-float" / "meta.json", {**meta, "n_query": 3})
    with pytest.raises(ValueError, match="n_query"):
        evaluate(tmp_path)


def test_pair_ranks_for_unlabelled_captions_match_a_brute_force_ranking(tmp_path):
    from tests.reference import distances, first_relevant_ranks, hit_rates

    data = fabricate(tmp_path, n_query=20, n_database=40, models=(("dcmh", 16),), labelled=False)
    aligned_baseline(tmp_path, data, noise=0.5)
    m = evaluate(tmp_path, pair_recall_at=[1, 5, 10, 500])
    assert m["protocol"]["relevance"]["mode"] == "pair"
    assert m["protocol"]["sizes"]["ranked_database"] == 60
    folder = tmp_path / "codes" / "dcmh-16"
    q = io.read_npy(folder / "image_query.npy")
    db = np.concatenate(
        [io.read_npy(folder / "text_query.npy"), io.read_npy(folder / "text_database.npy")]
    )
    order = np.argsort(np.asarray(data["ids"]), kind="stable")  # ranked in sample_id order
    d = distances(q, db[order])
    rel = np.asarray(data["ids"])[:20, None] == np.asarray(data["ids"])[order][None, :]
    assert rel.sum(axis=1).tolist() == [1] * 20  # one relevant item: the query's own pair
    out = m["models"]["dcmh-16"]["directions"]["image_to_text"]
    assert out["cutoffs_clipped"]["500"] == 60
    got = out["hash"]["pair_ranks"]
    # database order: the one order a stable sort gives
    ranks = first_relevant_ranks(d, rel, [tuple(range(60))])
    assert got["database_order"]["median_rank"] == pytest.approx(np.median(ranks))
    assert got["database_order"]["mean_rank"] == pytest.approx(ranks.mean(), abs=1e-6)
    for k in (1, 5, 10):
        want = hit_rates(d, rel, [tuple(range(60))], k).mean()
        assert got["database_order"]["recall_at"][str(k)] == pytest.approx(want, abs=1e-6)
    # tie-aware: the mean over random tie orders converges to the exact expectation
    rng = np.random.default_rng(0)
    orders = [tuple(rng.permutation(60)) for _ in range(300)]
    ranks = first_relevant_ranks(d, rel, orders)
    assert got["tie_aware"]["mean_rank"] == pytest.approx(ranks.mean(), rel=0.05)
    assert got["tie_aware"]["recall_at"]["500"] == 1.0
    assert got["tie_aware"]["recall_at"]["10"] == pytest.approx(
        out["hash"]["recall_at"]["10"], abs=1e-6
    )  # one relevant item: R@K = recall@K
    # the float outputs and the aligned baseline rank by cosine
    for part in (out["float"], m["float_baseline"]["directions"]["image_to_text"]):
        pr = part["pair_ranks"]
        assert 1 <= pr["median_rank"] <= 60
        assert 0 <= pr["recall_at"]["1"] <= pr["recall_at"]["5"] <= pr["recall_at"]["10"] <= 1


def test_induced_labels_put_pair_relevance_first_with_labels_beside(tmp_path):
    """Labels the label stage induced from the captions: pair relevance is the primary protocol
    (a caption finds its photo), label relevance is reported beside it, and neither database
    order nor the gallery order favours the query's own pair."""
    fabricate(tmp_path, n_query=20, n_database=60, models=(("dcmh", 32),))
    io.write_json(tmp_path / "labelled" / "vocabulary.json", {"labels": [], "induced": True})
    m = evaluate(tmp_path)
    assert m["relevance"]["mode"] == "pair"
    assert "induced" in m["relevance"]["why"]
    assert "sample_id order" in m["relevance"]["rule"]
    assert m["protocol"]["relevance"]["secondary"] == "labels"
    d = m["models"]["dcmh-32"]["directions"]["text_to_image"]
    assert d["database"] == 80
    assert set(d["hash"]["pair_ranks"]["tie_aware"]["recall_at"]) == {"1", "5", "10"}
    beside = m["label_relevance"]
    assert beside["relevance"]["mode"] == "labels"
    assert beside["relevance"]["labels_induced"] is True
    lab = beside["models"]["dcmh-32"]["directions"]["text_to_image"]
    assert lab["database"] == 60  # label relevance ranks the database only
    assert "plots" not in lab
    assert "pair_ranks" not in lab["hash"]
    # the same as evaluating with relevance: labels on its own
    labels_only = run(
        dataclasses.replace(EvaluateParams(), relevance="labels"),
        tmp_path / "codes", tmp_path / "labelled", tmp_path / "split",
        tmp_path / "m2.json", tmp_path / "plots2",
    )  # fmt: skip
    want = labels_only["models"]["dcmh-32"]["directions"]["text_to_image"]["hash"]["map"]
    assert lab["hash"]["map"] == want
    # the run summary leads with caption retrieval and puts the label mAP beside it
    from cmrops.pipeline import summary

    text = summary(tmp_path)
    assert "R@1/5/10, median rank (pair relevance" in text
    assert text.index("R@1/5/10") < text.index("mAP, label relevance (induced labels)")
    r = d["hash"]["pair_ranks"]["tie_aware"]["recall_at"]
    assert f"{r['1']:.3f} / {r['5']:.3f} / {r['10']:.3f}" in text
    # codes that say nothing (all equal): every item ties, so database order decides. With
    # the query samples' items first, the pair of query i came at rank i + 1 (mean 10.5 of 80);
    # in sample_id order it lands anywhere, as the tie-aware expectation (40.5) says
    const = tmp_path / "codes" / "const-16"
    const.mkdir()
    for modality in ("image", "text"):
        for role, n in (("query", 20), ("database", 60)):
            io.write_npy(const / f"{modality}_{role}.npy", np.zeros((n, 1), np.uint64))
            io.write_npy(const / f"{modality}_{role}_float.npy", np.ones((n, 4), np.float32))
    io.write_json(const / "meta.json", {"method": "const", "bits": 16, "n_bits": 16,
                                       "protocol": "hashing", "split_seed": 7})  # fmt: skip
    pr = evaluate(tmp_path)["models"]["const-16"]["directions"]["text_to_image"]["hash"]
    assert pr["pair_ranks"]["tie_aware"]["mean_rank"] == 40.5
    assert pr["pair_ranks"]["database_order"]["mean_rank"] > 25
