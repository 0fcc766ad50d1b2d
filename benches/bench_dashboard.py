"""The dashboard's heavy paths at 100,000 samples, in one process: the embedding map and the
review list.

    .venv/bin/python benches/bench_dashboard.py                 # 100k samples (~10 min on 2 cores)
    .venv/bin/python benches/bench_dashboard.py --n 20000 --no-tsne

**Map** (:func:`cmrops.embedmap.compute`) on ``--n`` clustered 384-d embeddings (a mixture of 40
Gaussian clusters, float32, seeded): PCA - the named baseline - then UMAP (its first call in a
process includes numba's JIT compilation, timed apart on 2,000 points), and t-SNE on
``--tsne-n`` points (default 10,000: it does not scale to 100k in minutes). Seconds and the
peak resident memory of the process (``ru_maxrss``) after each, with ratios to PCA; plus the
size of the Plotly figure the Map page sends to the browser for ``--n`` points
(:func:`dashboards.pages.map.figure`, serialised as Streamlit does).

**Review list** (:mod:`cmrops.review_items`) on a project folder holding a review queue of
``--n`` samples, their interim rows and three label candidates each: the one-time build, the
light index read, and reading one page of 25 items from the built file - against the named
baseline of what a page would otherwise do on each rerun: read the whole queue CSV with pandas.
Best of ``--rounds`` interleaved rounds. Results go to ``benches/results/dashboard.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from cmrops.threads import cpu_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

HERE = Path(__file__).resolve().parent


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def clustered(n: int, dim: int = 384, k: int = 40, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, dim)).astype(np.float32)
    x = centres[rng.integers(0, k, n)] + 0.35 * rng.normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def timed(fn: Any, *args: Any, **kw: Any) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn(*args, **kw)
    return out, time.perf_counter() - t0


def bench_map(n: int, tsne_n: int | None) -> dict[str, Any]:
    from cmrops.embedmap import compute

    x = clustered(n)
    out: dict[str, Any] = {"n": n, "dim": int(x.shape[1])}
    _, t = timed(compute, x, "pca", 0)
    out["pca_s"], out["pca_peak_mib"] = round(t, 3), round(peak_mib(), 1)
    _, t = timed(compute, x[:2000], "umap", 0)
    out["umap_first_call_2k_s"] = round(t, 3)  # numba JIT + 2k points
    _, t2 = timed(compute, x[:2000], "umap", 0)
    out["umap_2k_warm_s"] = round(t2, 3)
    out["umap_jit_s_estimate"] = round(t - t2, 3)
    xy, t = timed(compute, x, "umap", 0)
    out["umap_s"], out["umap_peak_mib"] = round(t, 3), round(peak_mib(), 1)
    out["umap_vs_pca"] = round(out["umap_s"] / max(out["pca_s"], 1e-9), 1)
    again, _ = timed(compute, x[:5000], "umap", 0)
    same, _ = timed(compute, x[:5000], "umap", 0)
    out["umap_seeded_identical"] = bool(np.array_equal(again, same))
    if tsne_n:
        _, tp = timed(compute, x[:tsne_n], "pca", 0)
        _, tt = timed(compute, x[:tsne_n], "tsne", 0)
        _, tu = timed(compute, x[:tsne_n], "umap", 0)
        out["tsne"] = {
            "n": tsne_n,
            "tsne_s": round(tt, 3),
            "umap_s": round(tu, 3),
            "pca_s": round(tp, 3),
            "tsne_vs_umap": round(tt / max(tu, 1e-9), 2),
            "peak_mib": round(peak_mib(), 1),
        }
    out["figure"] = bench_figure(xy)
    return out


def bench_figure(xy: np.ndarray) -> dict[str, Any]:
    import pandas as pd
    import plotly.io

    from dashboards.pages import map as map_page

    n = len(xy)
    rng = np.random.default_rng(1)
    frame = pd.DataFrame(
        {
            "sample_id": [f"{i:016x}" for i in range(n)],
            "x": xy[:, 0],
            "y": xy[:, 1],
            "caption": [f"a caption of sample number {i} with a few words" for i in range(n)],
            "label": rng.choice([f"label{j}" for j in range(30)], n),
        }
    )
    fig, t = timed(map_page.figure, frame, "label")
    text, ts = timed(plotly.io.to_json, fig, validate=False)
    return {
        "n": n,
        "traces": len(fig.data),
        "build_s": round(t, 3),
        "to_json_s": round(ts, 3),
        "json_mib": round(len(text) / 2**20, 2),
    }


def review_project(root: Path, n: int) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from cmrops import io
    from cmrops.labels.review import write_queue_csv
    from cmrops.schema import LABEL_EVIDENCE, LABELS

    rng = np.random.default_rng(0)
    ids = sorted(f"{i:016x}" for i in rng.choice(2**60, n, replace=False))
    labels = [f"label{j}" for j in range(30)]
    (root / "data/labelled").mkdir(parents=True)
    (root / "data/interim").mkdir(parents=True)
    samples = pa.table(
        {
            "sample_id": ids,
            "source": ["synthetic"] * n,
            "source_key": [f"img/{i}.jpg" for i in range(n)],
            "image_path": [f"objects/{s[:2]}/{s}" for s in ids],
            "captions": [[f"a caption of {s}", f"another caption of {s}"] for s in ids],
        }
    )
    io.write_parquet(root / "data/interim/samples.parquet", samples)
    conf = rng.random((n, 3))
    picks = rng.integers(0, 30, (n, 3))
    ev = [
        {
            "sample_id": s,
            "label": labels[picks[i, j]],
            "source": "auto",
            "method": m,
            "confidence": float(conf[i, j]),
            "passed": conf[i, j] > 0.4,
            "selected": j == 0,
            "detail": "{}",
        }
        for i, s in enumerate(ids)
        for j, m in enumerate(("provided", "keyword", "zeroshot"))
    ]
    ev.sort(key=lambda r: (r["sample_id"], r["label"], r["method"]))
    io.write_parquet(
        root / "data/labelled/evidence.parquet", pa.Table.from_pylist(ev, schema=LABEL_EVIDENCE)
    )
    lab = [
        {
            "sample_id": s,
            "label": labels[picks[i, 0]],
            "source": "auto",
            "method": "provided",
            "confidence": float(conf[i, 0]),
        }
        for i, s in enumerate(ids)
    ]
    io.write_parquet(root / "data/labelled/labels.parquet", pa.Table.from_pylist(lab, LABELS))
    order = np.argsort(-conf[:, 0])
    rows = [
        {
            "rank": r + 1,
            "sample_id": ids[i],
            "source": "synthetic",
            "source_key": f"img/{i}",
            "image_path": f"objects/{ids[i][:2]}/{ids[i]}",
            "captions": [f"a caption of {ids[i]}"],
            "auto_labels": [labels[picks[i, 0]]],
            "candidates": "",
            "reason": "uncertain",
            "priority": float(conf[i, 0]),
            "detail": "keyword near its threshold",
            "answer": "",
        }
        for r, i in enumerate(order)
    ]
    write_queue_csv(root / "data/labelled/review_queue.csv", rows)
    del pq
    return root


def bench_review(n: int, rounds: int) -> dict[str, Any]:
    import pandas as pd

    from cmrops import review_items

    with tempfile.TemporaryDirectory() as tmp:
        root = review_project(Path(tmp) / "project", n)
        before = peak_mib()
        path, build_s = timed(review_items.build, root, "labels")
        assert path is not None
        out: dict[str, Any] = {
            "n": n,
            "build_s": round(build_s, 3),
            "build_peak_mib": round(peak_mib(), 1),
            "peak_before_mib": round(before, 1),
            "file_mib": round(path.stat().st_size / 2**20, 2),
        }
        best = {"light_s": 1e9, "page_s": 1e9, "page_middle_s": 1e9, "baseline_csv_s": 1e9}
        for _ in range(rounds):  # interleaved: each round runs all of them
            light, t = timed(review_items.light, path)
            best["light_s"] = min(best["light_s"], t)
            pos = light["pos"].to_pylist()
            _, t = timed(review_items.page, path, pos[:25])
            best["page_s"] = min(best["page_s"], t)
            mid = n // 2
            _, t = timed(review_items.page, path, pos[mid : mid + 25])
            best["page_middle_s"] = min(best["page_middle_s"], t)
            _, t = timed(pd.read_csv, root / "data/labelled/review_queue.csv")
            best["baseline_csv_s"] = min(best["baseline_csv_s"], t)
        out.update({k: round(v, 4) for k, v in best.items()})
        out["page_vs_baseline"] = round(best["page_s"] / best["baseline_csv_s"], 4)
        out["light_plus_page_vs_baseline"] = round(
            (best["light_s"] + best["page_s"]) / best["baseline_csv_s"], 4
        )
        return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--tsne-n", type=int, default=10_000)
    ap.add_argument("--no-tsne", action="store_true")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "dashboard.json")
    args = ap.parse_args()
    result: dict[str, Any] = {
        "cpu": cpu_model(),
        "cores": len(__import__("os").sched_getaffinity(0)),
        "python": platform.python_version(),
    }
    print(f"CPU: {result['cpu']} ({result['cores']} usable cores)", flush=True)
    result["review"] = bench_review(args.n, args.rounds)
    print(json.dumps(result["review"], indent=2), flush=True)
    result["map"] = bench_map(args.n, None if args.no_tsne else args.tsne_n)
    print(json.dumps(result["map"], indent=2), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
