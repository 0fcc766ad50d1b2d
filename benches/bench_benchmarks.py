"""Every training method on the standard benchmarks, beside the published figures, in one process.

    .venv/bin/python benches/bench_benchmarks.py                       # Wikipedia stand-in
    .venv/bin/python benches/bench_benchmarks.py --wiki wikiData.mat   # the real file
    .venv/bin/python benches/bench_benchmarks.py --wiki raw_features.mat \\
        trainset_txt_img_cat.list testset_txt_img_cat.list              # the original release
    .venv/bin/python benches/bench_benchmarks.py --mirflickr mirflickr25k-lall.mat \\
        mirflickr25k-yall.mat mirflickr25k-iall-vgg.mat                 # MIRFlickr, DCMH files
    .venv/bin/python benches/bench_benchmarks.py --mirflickr-standin   # its stand-in too

**Data.** Wikipedia (2,173 train = database / 693 queries, 10 classes) and optionally MIRFlickr-25K
(DCMH protocol: 2,000 queries, 10,000 of the rest train), imported with
:func:`cmrops.benchmarks_data.import_benchmark`. Without a file, a stand-in with the published
layout and random class-structured features is written (:mod:`cmrops.benchmark_layouts`).
**Numbers on a stand-in are not comparable with the published ones**: they show that the
pipeline runs, and how the methods rank on easy synthetic data.

**Methods.** Every method of ``train.methods`` in params (or ``--methods``; ``--all-methods``:
every method cmrops has), each at 16/32/64/128 bits, through the real stages:
:func:`cmrops.stages.train.run` then :func:`cmrops.stages.evaluate.run`, with the params file's
``train`` and ``evaluate`` sections except ``--epochs`` (default 10, instead of params' 50, so
that the run takes minutes on 2 cores), ``checkpoint_every: 0`` and the device (``--device``,
default cpu). Each method trains and is evaluated on its own, so a method that cannot run on a
data set (CCA-based codes cannot be longer than the narrower modality: Wikipedia's text is 10-d)
is reported "not trained" with its reason while the others run.

**Figures.** mAP image->text and text->image over the whole database, ties broken by database
order (what the papers compute; the tie-aware mAP and the mAP without near-duplicate queries are
in the JSON), beside the published value of the same method from
``benches/published_benchmarks.json`` (paper, table, protocol, features and where it was read;
n/a where none was found). Results go to ``benches/results/benchmarks.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cmrops import benchmark_layouts
from cmrops.benchmarks_data import import_benchmark
from cmrops.models.loop import METHODS
from cmrops.params import load_section
from cmrops.stages import evaluate, train

HERE = Path(__file__).resolve().parent
PUBLISHED = HERE / "published_benchmarks.json"
DIRECTIONS = ("image_to_text", "text_to_image")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", default=str(HERE.parent / "params.yaml"))
    ap.add_argument("--wiki", nargs="+", default=None, help="the real Wikipedia file(s)")
    ap.add_argument(
        "--wiki-layout",
        default="hashing",
        choices=("hashing", "original", "deep"),
        help="layout of the Wikipedia stand-in (without --wiki)",
    )
    ap.add_argument("--mirflickr", nargs="+", default=None, help="MIRFlickr DCMH-layout files")
    ap.add_argument(
        "--mirflickr-standin",
        action="store_true",
        help="also run the MIRFlickr stand-in (512-d image features, not 4,096)",
    )
    ap.add_argument("--methods", nargs="+", default=None, help="default: params train.methods")
    ap.add_argument("--all-methods", action="store_true", help=f"every method: {list(METHODS)}")
    ap.add_argument("--bits", nargs="+", type=int, default=[16, 32, 64, 128])
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--work", default=None, help="working folder (default: a temporary one)")
    ap.add_argument("--out", default=str(HERE / "results" / "benchmarks.json"))
    args = ap.parse_args()

    base = load_section(args.params, "train", train.TrainParams)
    methods = tuple(METHODS) if args.all_methods else tuple(args.methods or base.methods)
    tp = dataclasses.replace(
        base,
        methods=methods,
        bits=tuple(args.bits),
        epochs=args.epochs,
        checkpoint_every=0,
        device=args.device,
    )
    ep = load_section(args.params, "evaluate", evaluate.EvaluateParams)
    published = json.loads(PUBLISHED.read_text(encoding="utf-8"))

    with tempfile.TemporaryDirectory(prefix="bench-benchmarks-") as tmp:
        work = Path(args.work) if args.work else Path(tmp)
        sets: list[tuple[str, list[Path], bool, dict[str, Any]]] = []
        if args.wiki:
            sets.append(("wikipedia", [Path(f) for f in args.wiki], False, {}))
        else:
            files = benchmark_layouts.write_wikipedia(work / "wikipedia-src", args.wiki_layout)
            sets.append(("wikipedia", files, True, {}))
        dcmh = {"query": 2000, "train": 10000, "seed": 0}
        if args.mirflickr:
            sets.append(("mirflickr", [Path(f) for f in args.mirflickr], False, dcmh))
        elif args.mirflickr_standin:
            files = benchmark_layouts.write_mirflickr_dcmh(work / "mirflickr-src", image_dim=512)
            sets.append(("mirflickr", files, True, dcmh))

        results = {
            "about": "mAP (whole database, ties by database order) of every method at each code "
            "length, beside published figures; stand-in numbers are NOT comparable with them",
            "machine": {"python": platform.python_version(), "platform": platform.platform()},
            "train": {
                "methods": list(methods),
                "bits": list(args.bits),
                "epochs": args.epochs,
                "hidden": list(tp.hidden),
                "batch_size": tp.batch_size,
                "device": args.device,
            },
            "datasets": {},
        }
        for name, files, standin, split in sets:
            print(f"\n== {name}: {'STAND-IN (synthetic, layout only)' if standin else files}")
            results["datasets"][name] = run_one(name, files, standin, split, tp, ep, work)
        for name, res in results["datasets"].items():
            print_table(name, res, published.get(name, {}))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    print(f"\nwrote {out}")
    return 0


def run_one(
    name: str,
    files: list[Path],
    standin: bool,
    split: dict[str, int],
    tp: train.TrainParams,
    ep: evaluate.EvaluateParams,
    work: Path,
) -> dict[str, Any]:
    data, run_dir = work / name / "data", work / name / "run"
    summary = import_benchmark(files, data, name=name, **split)
    models: dict[str, Any] = {}
    errors: dict[str, str] = {}
    seconds: dict[str, float] = {}
    baseline: dict[str, Any] | None = None  # the aligned float baseline, fitted once
    for method in tp.methods:  # one train + evaluate per method: one failing leaves the others
        out = run_dir / method
        t0 = time.perf_counter()
        try:
            train.run(
                dataclasses.replace(tp, methods=(method,), float_baseline=baseline is None),
                data / "split", data / "clean", data / "interim", data / "labelled",
                out / "models", out / "codes", progress=False,
            )  # fmt: skip
        except ValueError as e:  # e.g. CCA-based codes longer than the text features are wide
            errors[method] = str(e)
            print(f"  {method}: not trained: {e}")
            continue
        seconds[method] = round(time.perf_counter() - t0, 1)
        metrics = evaluate.run(ep, out / "codes", data / "labelled", data / "split",
                               out / "retrieval.json", out / "plots")  # fmt: skip
        if baseline is None and metrics.get("float_baseline"):
            fb = metrics["float_baseline"]
            baseline = {
                "alignment": fb.get("alignment"),
                "dim": fb.get("dim"),
                **{d: {"map": fb["directions"][d]["map"]} for d in DIRECTIONS
                   if d in fb["directions"]},
            }  # fmt: skip
        for model, entry in sorted(metrics["models"].items()):
            models[model] = {
                d: {
                    "map_database_order": entry["directions"][d]["hash"].get("map_database_order"),
                    "map_tie_aware": entry["directions"][d]["hash"]["map"],
                    "map_without_near_duplicate_queries": entry["directions"][d]["hash"].get(
                        "map_without_near_duplicate_queries"
                    ),
                }
                for d in DIRECTIONS
                if d in entry["directions"]
            }
    if baseline is not None:  # codes as a share of the aligned float baseline (tie-aware mAP)
        for dirs in models.values():
            for d, v in dirs.items():
                if d in baseline and baseline[d]["map"]:
                    v["vs_float_baseline"] = round(v["map_tie_aware"] / baseline[d]["map"], 4)
    return {
        "standin": standin,
        "files": [str(f) for f in files] if not standin else [f.name for f in files],
        "import": {
            k: summary[k]
            for k in (
                "sets",
                "in_train",
                "image_dim",
                "text_dim",
                "labels",
                "near_duplicate_queries",
                "protocol",
            )
        },
        "train_seconds": seconds,
        "errors": errors,
        "float_baseline": baseline,
        "models": models,
    }


def _published(pub: dict[str, Any], method: str, bits: int) -> list[tuple[str, Any]]:
    rows = []
    for i, e in enumerate(pub.get("entries", [])):
        if e["method"] == method:
            rows.append((f"[{i + 1}]", e["bits"].get(str(bits))))
    return rows


def print_table(name: str, res: dict[str, Any], pub: dict[str, Any]) -> None:
    tag = " (STAND-IN: not comparable with the published figures)" if res["standin"] else ""
    imp = res["import"]
    print(
        f"\n{name}{tag}: sets {imp['sets']}, in_train {imp['in_train']}, image "
        f"{imp['image_dim']}-d, text {imp['text_dim']}-d, {imp['labels']} labels; "
        f"{imp['near_duplicate_queries']['count']} near-duplicate queries; "
        f"training {sum(res['train_seconds'].values()):.1f} s"
    )
    print(f"{'model':<18}{'I->T':>8}{'T->I':>8}   published I->T / T->I [source]")
    order = sorted(res["models"], key=lambda m: (m.rsplit("-", 1)[0], int(m.rsplit("-", 1)[1])))
    for model in order:
        dirs = res["models"][model]
        method, bits = model.rsplit("-", 1)
        ours = [dirs.get(d, {}).get("map_database_order") for d in DIRECTIONS]
        cells = "".join(f"{v:>8.4f}" if v is not None else f"{'n/a':>8}" for v in ours)
        pubs = _published(pub, method, int(bits))
        shown = (
            "; ".join(f"{v[0]:.4f} / {v[1]:.4f} {ref}" if v else f"n/a {ref}" for ref, v in pubs)
            or "n/a"
        )
        print(f"{model:<18}{cells}   {shown}")
    base = res.get("float_baseline")
    if base:
        cells = "".join(f"{base[d]['map']:>8.4f}" if d in base else f"{'n/a':>8}"
                        for d in DIRECTIONS)  # fmt: skip
        print(f"{'aligned float':<18}{cells}   (cosine, {base['dim']}-d; fitted on the training"
              " pairs; tie-aware)")  # fmt: skip
        for model in order:
            ratios = [res["models"][model].get(d, {}).get("vs_float_baseline") for d in DIRECTIONS]
            if model.endswith("-64") and None not in ratios:
                print(f"  {model} / aligned float: {ratios[0]:.1%} I->T, {ratios[1]:.1%} T->I")
    for method, why in res.get("errors", {}).items():
        print(f"{method:<18}{'n/a':>8}{'n/a':>8}   not trained: {why}")
    for i, e in enumerate(pub.get("entries", [])):
        print(
            f"  [{i + 1}] {e['paper_method']} ({e['relation']}): {e['paper']}, {e['table']}; "
            f"protocol: {e['protocol']}; features: {e['features']}; read at {e['source']}"
        )
    if pub.get("note"):
        print(f"  note: {pub['note']}")


if __name__ == "__main__":
    raise SystemExit(main())
