"""Export throughput and memory against a plain tar of the same media, in one process.

    .venv/bin/python benches/bench_export.py --project PROJECT [--release ID] [--rounds 3]

``PROJECT`` is any cmrops project with a release (``make run``, or the tiny one the tests build:
``tests/handon_project.py``). Each round exports the release into a fresh folder in every format
(``webdataset``, ``hf``, ``coco``, ``hashing``) and, as the **baseline**, writes the same samples'
media - read from the same DVC cache objects, in the same order - into one tar with
``tarfile`` and nothing else (no captions, no JSON, no manifest, no card): the I/O floor an
export cannot beat. Rounds are interleaved (baseline, then each format) and the best of
``--rounds`` is kept, so a busy machine slows every row alike.

Figures per row: seconds, samples/s, MB/s of output, the ratio of its time to the baseline's,
the peak of Python allocations (``tracemalloc``) and the peak of the resident set above the
row's start (sampled every 2 ms from ``/proc/self/statm``). The first export of a process
imports ``webdataset`` / ``datasets`` / ``h5py``: an untimed warm-up round goes first.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tarfile
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cmrops import releases
from cmrops.export import FORMATS, ExportOptions, export
from cmrops.export.stream import ReleaseSamples
from cmrops.release_data import ReleaseData
from cmrops.threads import cpu_model


class _Rss:
    """Peak resident set above the start, sampled every 2 ms."""

    def __init__(self) -> None:
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.start = self._now()
        self.peak = self.start
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _now(self) -> int:
        return int(Path("/proc/self/statm").read_text().split()[1]) * self.page

    def _run(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, self._now())

    def __enter__(self) -> _Rss:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self._now())


def baseline(project: Path, rid: str, out: Path) -> int:
    """Every sample's media into one tar, nothing else."""
    data = ReleaseData(project, releases.find(project, rid))
    samples = ReleaseSamples(data)
    out.mkdir(parents=True)
    with tarfile.open(out / "media.tar", "w") as tar:
        for s in samples:
            path = data.path(f"data/raw/{s.media_path}")
            tar.add(path, arcname=f"{s.sample_id}.{s.ext}")
    return (out / "media.tar").stat().st_size


def measure(fn: Callable[[], int]) -> dict[str, float]:
    tracemalloc.start()
    with _Rss() as rss:
        t0 = time.perf_counter()
        size = fn()
        seconds = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {"seconds": seconds, "bytes": size, "py_peak": peak, "rss_peak": rss.peak - rss.start}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--project", required=True)
    ap.add_argument("--release", default="latest")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--shard-size", type=int, default=1000)
    args = ap.parse_args()
    project = Path(args.project).resolve()
    rel = releases.find(project, args.release)
    n = sum(ReleaseSamples(ReleaseData(project, rel)).sets.values())
    tmp = Path(tempfile.mkdtemp(prefix="bench-export-"))
    rows: dict[str, list[dict[str, float]]] = {}

    def one(name: str, k: int) -> int:
        out = tmp / f"{name}-{k}"
        if name == "baseline":
            return baseline(project, rel.id, out)
        m: dict[str, Any] = export(project, rel.id, name, out, record=False,
                                   options=ExportOptions(shard_size=args.shard_size))  # fmt: skip
        return int(m["bytes"])

    try:
        for name in ("baseline", *FORMATS):  # warm-up: imports, the DVC cache in the page cache
            one(name, -1)
        for k in range(args.rounds):
            for name in ("baseline", *FORMATS):
                rows.setdefault(name, []).append(measure(lambda name=name, k=k: one(name, k)))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    best = {name: min(r, key=lambda x: x["seconds"]) for name, r in rows.items()}
    base = best["baseline"]["seconds"]
    print(f"export of release {rel.id} ({n} samples), CPU {cpu_model()}, {os.cpu_count()} CPUs "
          f"seen, best of {args.rounds} interleaved rounds; baseline: tarfile of the same media")
    print(f"{'row':<12}{'seconds':>9}{'samples/s':>11}{'MB/s':>8}{'x baseline':>12}"
          f"{'py peak MB':>12}{'RSS peak MB':>13}")  # fmt: skip
    for name, b in best.items():
        print(f"{name:<12}{b['seconds']:>9.3f}{n / b['seconds']:>11.1f}"
              f"{b['bytes'] / b['seconds'] / 1e6:>8.2f}{b['seconds'] / base:>12.2f}"
              f"{b['py_peak'] / 1e6:>12.2f}{b['rss_peak'] / 1e6:>13.2f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
