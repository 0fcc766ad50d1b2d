"""Stages beside other work: each stage alone, then beside a CPU hog, as a ratio.

    .venv/bin/python benches/bench_contention.py              # 600 synthetic samples, 3 rounds
    .venv/bin/python benches/bench_contention.py --quick      # 200 samples, 1 round
    .venv/bin/python benches/bench_contention.py --baseline-src /tmp/base   # also an older tree

A small project is built once (collect -> preprocess -> align -> label -> clean -> split). Then
``preprocess``, ``align`` and ``train`` run as ``cmrops`` commands (fresh output folders, so each
redoes its work) **alone**, and **beside a hog**: one busy process per CPU this process may use,
started before the stage and killed after it. Rounds interleave alone / hog runs; each takes the
best of its rounds. The ratio hog / alone is what a stage pays for sharing the machine: a fair
share of a machine whose every core is also wanted by one hog process is 2x; the target is at most
2.2x (issue 20; oversubscribed, spinning thread pools made it 10-20x).

``--baseline-src DIR`` runs the same commands with ``PYTHONPATH=DIR`` too (a checkout of an older
commit whose ``cmrops/_core*.so`` is built or copied in), so before and after come from one run.
Prints the CPU model and the machine's load; writes ``benches/results/contention.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from cmrops.threads import cpu_model

REPO = Path(__file__).resolve().parents[1]
HOG = "while True:\n    pass\n"


def write_params(root: Path, n: int) -> Path:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for source in params["collect"]["sources"]:
        if source.get("kind") == "synthetic":
            source["n"] = n
    params["collect"]["sources"] = [
        s for s in params["collect"]["sources"] if s.get("kind") == "synthetic"
    ]
    params["train"].update(methods=["dcmh", "itq"], bits=[32], epochs=5, patience=0)
    params["split"]["protocols"]["hashing"].update(query=n // 10, train=n // 2)
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def cmrops(args: list[str], cwd: Path, env: dict[str, str]) -> float:
    t = time.perf_counter()
    run = subprocess.run(
        [sys.executable, "-m", "cmrops.cli", *args], cwd=cwd, env=env, capture_output=True,
        text=True,
    )  # fmt: skip
    if run.returncode:
        raise RuntimeError(f"cmrops {' '.join(args)} failed:\n{run.stderr[-3000:]}")
    return time.perf_counter() - t


def stage_args(stage: str, k: str) -> list[str]:
    p = ["--params", "params.yaml"]
    if stage == "preprocess":
        return ["preprocess", *p, "--raw", "raw", "--out", f"runs/interim-{k}"]
    if stage == "align":
        return ["align", *p, "--interim", "interim", "--raw", "raw", "--out", f"runs/align-{k}"]
    return [
        "train", *p, "--split", "split", "--clean", "clean", "--interim", "interim",
        "--labelled", "labelled", "--models", f"runs/models-{k}", "--codes", f"runs/codes-{k}",
        "--metrics", f"runs/train-{k}.json",
    ]  # fmt: skip


def setup(root: Path, env: dict[str, str]) -> None:
    p = ["--params", "params.yaml"]
    cmrops(["collect", *p, "--out", "raw"], root, env)
    cmrops(["preprocess", *p, "--raw", "raw", "--out", "interim"], root, env)
    cmrops(["align", *p, "--interim", "interim", "--raw", "raw", "--out", "align"], root, env)
    cmrops(["label", *p, "--interim", "interim", "--align", "align", "--out", "labelled"],
           root, env)  # fmt: skip
    cmrops(["clean", *p, "--interim", "interim", "--align", "align", "--labelled", "labelled",
            "--raw", "raw", "--out", "clean", "--metrics", "quality.json"], root, env)  # fmt: skip
    cmrops(["split", *p, "--clean", "clean", "--labelled", "labelled", "--out", "split",
            "--metrics", "split.json"], root, env)  # fmt: skip


class Hog:
    """One busy Python process per CPU, for the duration of a ``with`` block."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.procs: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> Hog:
        self.procs = [subprocess.Popen([sys.executable, "-c", HOG]) for _ in range(self.n)]
        time.sleep(0.5)
        return self

    def __exit__(self, *exc: object) -> None:
        for p in self.procs:
            p.kill()
        for p in self.procs:
            p.wait()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="200 samples, one round")
    ap.add_argument("--n", type=int, default=None, help="synthetic samples (default 600)")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--stages", default="preprocess,align,train")
    ap.add_argument("--baseline-src", default=None, help="an older source tree to compare")
    ap.add_argument("--out", default=str(REPO / "benches" / "results" / "contention.json"))
    args = ap.parse_args()
    n = args.n or (200 if args.quick else 600)
    rounds = args.rounds or (1 if args.quick else 3)
    cpus = len(os.sched_getaffinity(0))
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "MKL_"))}
    base_env.pop("CMROPS_THREADS", None)
    trees = {"cmrops": str(REPO)}
    if args.baseline_src:
        trees["baseline"] = str(Path(args.baseline_src).resolve())
    load = os.getloadavg()
    print(f"CPU: {cpu_model()}, {cpus} CPUs for this process; load average {load[0]:.1f}")
    results: dict[str, Any] = {
        "cpu": cpu_model(), "cpus": cpus, "load_average_at_start": load[0], "samples": n,
        "rounds": rounds, "hog_processes": cpus, "stages": {},
    }  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_params(root, n)
        env = {**base_env, "PYTHONPATH": str(REPO)}
        setup(root, env)
        for stage in args.stages.split(","):
            for tree, src in trees.items():
                env = {**base_env, "PYTHONPATH": src}
                alone, hogged = [], []
                for r in range(rounds):
                    for label, times in (("alone", alone), ("hog", hogged)):
                        shutil.rmtree(root / "runs", ignore_errors=True)
                        if label == "hog":
                            with Hog(cpus):
                                times.append(cmrops(stage_args(stage, f"{r}"), root, env))
                        else:
                            times.append(cmrops(stage_args(stage, f"{r}"), root, env))
                row = {
                    "alone_s": round(min(alone), 2),
                    "beside_hog_s": round(min(hogged), 2),
                    "ratio": round(min(hogged) / min(alone), 2),
                }
                results["stages"].setdefault(stage, {})[tree] = row
                print(
                    f"  {stage:<11} {tree:<9} alone {row['alone_s']:>7.2f} s   beside "
                    f"{cpus} busy processes {row['beside_hog_s']:>7.2f} s   ratio "
                    f"{row['ratio']:.2f}x (target <= 2.2x)",
                    flush=True,
                )
    results["load_average_at_end"] = os.getloadavg()[0]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
