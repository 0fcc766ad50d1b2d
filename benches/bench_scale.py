"""Time and peak memory of collect -> split at growing sizes (embeddings off), stage by stage.

    .venv/bin/python benches/bench_scale.py --sizes 10000 100000 1000000
    .venv/bin/python benches/bench_scale.py --sizes 2000 --keep       # a smoke run; keep the data
    .venv/bin/python benches/bench_scale.py --sizes 1000000 --generate-only   # data only (kept)
    .venv/bin/python benches/bench_scale.py --sizes 1000000 --interim-only    # label/clean/split
    .venv/bin/python benches/bench_scale.py --sizes 1000000 --stages collect  # a prefix only
    .venv/bin/python benches/bench_scale.py --merge a.json b.json   # one table of several runs

For each size N the bench writes a synthetic *manifest* data set under ``--workdir``: N distinct
tiny images (32 px BMP, one in 16 JPEG: a seeded 6 x 6 colour field enlarged, so pHashes
differ), 1-3 captions each from a small vocabulary and filler words (so keyword labels exist and
captions rarely repeat), provided labels on half the rows, and planted defects (about 0.5%
exact copies, 0.5% near copies, 0.2% repeated rows, 0.2% caption-less rows). It writes a params
file (the repository's defaults, a manifest source, ``embeddings: false``, the ``words``
tokenizer, a label vocabulary) and runs collect, preprocess, label, clean and split, each as its
own ``cmrops`` process.

Per stage it records the wall time and two memory figures:

- ``peak_rss``: the peak of the summed RSS of the stage's process tree (the stage and its worker
  processes), sampled every 50 ms with psutil. Pages shared between a parent and its forked
  workers count once per process, so this is an upper bound of the real footprint;
- ``max_proc_rss``: the largest RSS any single process of the stage reached (``wait4``'s
  ``ru_maxrss``, exact, not sampled).

The table shows both per size and how each grows from one size to the next (``x9.8`` = 9.8 times
the smaller size's figure; bounded memory shows as about x1). Results go to
``benches/results/scale.json``; the generated data is deleted unless ``--keep``.
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing as mp
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import contextlib
import itertools

import psutil
import yaml
from PIL import Image

from cmrops.pipeline import argv

REPO = Path(__file__).resolve().parents[1]
STAGES = ("collect", "preprocess", "label", "clean", "split")
VOCAB = (
    "cat", "dog", "bird", "horse", "car", "bus", "boat", "tree", "house", "bridge",
    "flower", "chair", "table", "clock", "bottle", "apple", "train", "kite", "river", "road",
)  # fmt: skip
SCENES = ("on a sunny day", "at night", "in the snow", "near the water", "in a small town")
#: Filler words (pseudo-words from syllables) so that captions, like real ones, rarely repeat.
FILLER = tuple(
    a + b + c
    for a in ("ka", "lo", "mi", "su", "te", "ro", "na", "vi")
    for b in ("ra", "po", "li", "me", "du", "sa", "fe", "go")
    for c in "nrlstmkpdgbz"
)
CHUNK = 5000  # images per generation task
PER_DIR = 1000  # images per folder


SIDE = 32  # image side in pixels (a 3 KiB BMP): tiny, so 1M images fit a few GB of disk


def _bilinear(n_in: int, n_out: int) -> np.ndarray:
    """The (n_out, n_in) matrix of bilinear interpolation from n_in to n_out samples."""
    pos = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, n_in - 1)
    w = np.zeros((n_out, n_in))
    w[np.arange(n_out), lo] += 1 - (pos - lo)
    w[np.arange(n_out), hi] += pos - lo
    return w


_UP = _bilinear(6, SIDE)
_BMP_HEADER = (
    b"BM" + (54 + SIDE * SIDE * 3).to_bytes(4, "little") + bytes(4) + (54).to_bytes(4, "little")
    + (40).to_bytes(4, "little") + SIDE.to_bytes(4, "little") + SIDE.to_bytes(4, "little")
    + (1).to_bytes(2, "little") + (24).to_bytes(2, "little") + bytes(4)
    + (SIDE * SIDE * 3).to_bytes(4, "little") + bytes(16)
)  # fmt: skip


def _bmp(pixels: np.ndarray) -> bytes:
    """A 24-bit BMP of an RGB (SIDE, SIDE, 3) array: rows bottom-up, BGR (no padding needed)."""
    return _BMP_HEADER + np.ascontiguousarray(pixels[::-1, :, ::-1]).tobytes()


def _jpeg(pixels: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _generate_chunk(task: tuple[Path, int, int, int]) -> list[str]:
    """Write images ``start .. start+count`` of set ``seed``; return their manifest lines.

    Every random draw of the chunk is made up front (one generator per chunk, seeded by its
    start) and the images are seeded 6 x 6 colour fields enlarged bilinearly, all at once, so
    pHashes differ. Most are BMP (encoding is a header and a copy); one in 16 is JPEG."""
    root, seed, start, count = task
    rng = np.random.default_rng((seed, start))
    kind = rng.random(count)
    fields = rng.random((count, 3, 6, 6)) * 255
    pixels = (_UP @ fields @ _UP.T).round().astype(np.uint8).transpose(0, 2, 3, 1)
    n_labels = rng.integers(1, 3, size=count)
    label_ids = rng.integers(len(VOCAB), size=(count, 2))
    n_caps = rng.integers(1, 4, size=count)
    scenes = rng.integers(len(SCENES), size=(count, 3))
    filler = rng.integers(len(FILLER), size=(count, 3, 8))
    provided = rng.random(count) < 0.5
    lines = []
    last = -1
    for j, i in enumerate(range(start, start + count)):
        folder = f"images/{i // PER_DIR:05d}"
        if i % PER_DIR == 0 or j == 0:
            (root / folder).mkdir(parents=True, exist_ok=True)
        if kind[j] < 0.005 and last >= 0:  # exact copy, new captions: clean exact_duplicate
            data, ext = _bmp(pixels[last]), "bmp"
        elif kind[j] < 0.01 and last >= 0:  # near copy: a little brighter, as JPEG
            brighter = np.clip(pixels[last].astype(np.int16) + 3, 0, 255).astype(np.uint8)
            data, ext = _jpeg(brighter, 90), "jpg"
        elif i % 16 == 0:
            data, ext = _jpeg(pixels[j], 85), "jpg"
        else:
            data, ext = _bmp(pixels[j]), "bmp"
        rel = f"{folder}/{i:07d}.{ext}"
        with open(root / rel, "wb") as fh:
            fh.write(data)
        if kind[j] >= 0.01:
            last = j
        labels = sorted({VOCAB[k] for k in label_ids[j, : n_labels[j]]})
        words = " and a ".join(labels)
        caps = [
            f"a photo of a {words} {SCENES[scenes[j, c]]} with "
            + " ".join(FILLER[w] for w in filler[j, c])
            for c in range(n_caps[j])
        ]
        if 0.01 <= kind[j] < 0.012:
            caps = []  # collect quarantines it: missing_caption
        row: dict[str, Any] = {"image": rel, "captions": caps}
        if provided[j]:
            row["labels"] = labels
        line = json.dumps(row, separators=(",", ":"))
        lines.append(line)
        if 0.012 <= kind[j] < 0.014:
            lines.append(line)  # the same row again: collect quarantines it (duplicate_input)
    return lines


def generate(root: Path, n: int, seed: int = 0, procs: int = 2) -> float:
    """Write the manifest data set of ``n`` images under ``root``; return the seconds taken."""
    t0 = time.perf_counter()
    if (root / "pairs.jsonl").is_file() and (root / ".n").read_text() == str(n):
        return 0.0  # kept from an earlier --keep run
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    tasks = [(root, seed, s, min(CHUNK, n - s)) for s in range(0, n, CHUNK)]
    with mp.get_context("fork").Pool(procs) as pool, (root / "pairs.jsonl").open("w") as fh:
        for lines in pool.imap(_generate_chunk, tasks):
            fh.write("\n".join(lines) + "\n")
    (root / ".n").write_text(str(n))
    return time.perf_counter() - t0


def synthesise_interim(root: Path, n: int, seed: int = 0) -> float:
    """Write into ``root`` the ``data/interim`` folder preprocess would write for ``n`` such
    samples (embeddings off), with no images: the hashes are drawn (0.5% exact and 0.5% near
    copies planted) instead of measured. Lets label, clean and split run at a size the image
    stages would take hours to reach on a busy machine; returns the seconds taken."""

    from cmrops.io import parquet_writer, write_json
    from cmrops.schema import INTERIM_SAMPLES, QUARANTINE

    t0 = time.perf_counter()
    rng = np.random.default_rng((seed, n, 1))
    ids = np.unique(rng.integers(0, 2**63, size=n + n // 100, dtype=np.uint64))[:n]
    ids = np.sort(ids)  # sorted numbers = sorted fixed-width hex strings
    phash = rng.integers(0, 2**63, size=n, dtype=np.uint64)
    dhash = rng.integers(0, 2**63, size=n, dtype=np.uint64)
    simhash = rng.integers(0, 2**63, size=n, dtype=np.uint64)
    sha = rng.integers(0, 2**63, size=(n, 4), dtype=np.uint64)
    kind = rng.random(n)
    copy_of = rng.integers(0, n, size=n)
    exact = kind < 0.005
    near = (kind >= 0.005) & (kind < 0.01)
    for arr in (phash, dhash):
        arr[exact | near] = arr[copy_of[exact | near]]
        arr[near] ^= np.uint64(1) << rng.integers(0, 64, size=int(near.sum())).astype(np.uint64)
    sha[exact] = sha[copy_of[exact]]
    out = root
    (out / "features").mkdir(parents=True, exist_ok=True)
    write_json(out / "features" / "meta.json", {"embeddings": False, "rows": 0})
    with parquet_writer(out / "quarantine.parquet", QUARANTINE):
        pass
    step = 65_536
    with parquet_writer(out / "samples.parquet", INTERIM_SAMPLES) as writer:
        for lo in range(0, n, step):
            hi = min(n, lo + step)
            rows = []
            for i in range(lo, hi):
                r = np.random.default_rng((seed, i))
                labels = sorted({VOCAB[k] for k in r.integers(len(VOCAB), size=r.integers(1, 3))})
                words = " and a ".join(labels)
                caps = [
                    f"a photo of a {words} {SCENES[r.integers(len(SCENES))]} with "
                    + " ".join(FILLER[w] for w in r.integers(len(FILLER), size=8))
                    for _ in range(int(r.integers(1, 4)))
                ]
                digest = "".join(f"{int(x):016x}" for x in sha[i])
                rows.append({
                    "sample_id": f"{int(ids[i]):016x}", "source": "bench",
                    "source_key": f"{i + 1}:images/{i // PER_DIR:05d}/{i:07d}.bmp",
                    "image_sha256": digest, "image_path": f"objects/{digest[:2]}/{digest}",
                    "image_bytes": 3126, "captions": caps,
                    "labels": labels if r.random() < 0.5 else [], "extra": "{}",
                    "width": SIDE, "height": SIDE, "format": "BMP", "n_frames": 1,
                    "phash": int(phash[i]), "dhash": int(dhash[i]),
                    "caption_simhash": int(simhash[i]), "captions_norm": caps,
                    "caption_chars_cut": 0, "token_counts": [len(c.split()) for c in caps],
                    "feature_row": -1,
                })  # fmt: skip
            writer.write_rows(rows)
    return time.perf_counter() - t0


def write_params(root: Path) -> Path:
    """The repository's params with the bench's source, embeddings off and a vocabulary."""
    data = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    data["collect"]["sources"] = [
        {"name": "bench", "kind": "manifest", "path": str(root / "pairs.jsonl")}
    ]
    data["preprocess"].update({"embeddings": False, "tokenizer": "words", "n_workers": 2})
    data["label"]["vocabulary"] = list(VOCAB)
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def _tree_rss(proc: psutil.Process) -> int:
    total = 0
    try:
        tree = [proc, *proc.children(recursive=True)]
    except psutil.Error:  # the stage just ended
        return 0
    for p in tree:
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total


def run_stage(name: str, params: Path, root: Path, log: Path) -> dict[str, Any]:
    """Run one stage as its own process; its wall time, sampled tree RSS peak and max RSS."""
    cmd = [sys.executable, "-m", "cmrops.cli", *argv(name, str(params), str(root))]
    env = {**os.environ, "PYTHONPATH": str(REPO), "TQDM_DISABLE": "1"}
    t0 = time.perf_counter()
    with log.open("w") as out:
        child = subprocess.Popen(cmd, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT)
        proc = psutil.Process(child.pid)
        peak = 0
        done = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, _tree_rss(proc))
                done.wait(0.05)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, usage = os.wait4(child.pid, 0)
        done.set()
        sampler.join()
        child.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - t0
    if child.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise SystemExit(f"cmrops {name} failed (exit {child.returncode}); log {log}:\n{tail}")
    return {
        "seconds": seconds,
        "peak_rss": peak,
        "max_proc_rss": usage.ru_maxrss * 1024,  # KiB on Linux
    }


def bench_size(
    workdir: Path,
    n: int,
    keep: bool,
    partial: Path,
    interim_only: bool = False,
    only: tuple[str, ...] = STAGES,
) -> dict[str, Any]:
    """Generate and run size ``n``; after each stage its figures so far go to ``partial``.
    ``interim_only``: synthesise the interim table and run label, clean and split only."""
    root = workdir / f"n{n}"
    for out in ("data", "metrics"):
        shutil.rmtree(root / out, ignore_errors=True)
    cache = workdir / f"n{n}-interim"  # the synthesised table, reused by a --keep rerun
    if interim_only:
        gen = 0.0
        if not (cache / "samples.parquet").is_file():
            gen = synthesise_interim(cache, n)
        shutil.copytree(cache, root / "data" / "interim")
        print(f"N={n}: interim table synthesised in {gen:.0f} s under {cache}", flush=True)
    else:
        gen = generate(root, n)
        print(f"N={n}: data set generated in {gen:.0f} s under {root}", flush=True)
    params = write_params(root)
    stages: dict[str, Any] = {}
    for name in [s for s in (STAGES[2:] if interim_only else STAGES) if s in only]:
        stages[name] = r = run_stage(name, params, root, root / f"{name}.log")
        r["load_average_1min"] = os.getloadavg()[0]  # the machine is shared: how busy it was
        partial.parent.mkdir(parents=True, exist_ok=True)
        partial.write_text(json.dumps({"n": n, "stages": stages}, indent=2) + "\n")
        print(
            f"  {name:<10} {r['seconds']:8.1f} s  peak tree RSS {_mib(r['peak_rss'])}  "
            f"max process RSS {_mib(r['max_proc_rss'])}",
            flush=True,
        )
    raw = root / "data/raw/metrics.json"
    split_path = root / "metrics/split.json"
    split = json.loads(split_path.read_text()) if split_path.is_file() else {}
    disk = sum(f.stat().st_size for f in (root / "data").rglob("*") if f.is_file())
    result = {
        "n": n,
        "input": "synthesised interim table" if interim_only else "manifest and images",
        "generate_seconds": gen,
        "kept_by_collect": json.loads(raw.read_text())["kept"] if raw.is_file() else None,
        "split_sizes": split.get("sizes"),
        "data_bytes": disk,
        "stages": stages,
    }
    if not keep:
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(cache, ignore_errors=True)
    return result


def _mib(b: float) -> str:
    return f"{b / 2**20:7.0f} MiB"


def _growth(a: float, b: float) -> str:
    return f"x{b / a:.1f}" if a > 0 else "-"


def table(results: list[dict[str, Any]]) -> str:
    sizes = [r["n"] for r in results]
    head = ["stage", "metric", *(f"N={n:,}" for n in sizes)]
    head += [f"{a:,}->{b:,}" for a, b in itertools.pairwise(sizes)]
    rows = [head]
    for name in STAGES:
        for metric, fmt in (
            ("seconds", lambda v: f"{v:.1f} s"),
            ("peak_rss", lambda v: f"{v / 2**20:.0f} MiB"),
            ("max_proc_rss", lambda v: f"{v / 2**20:.0f} MiB"),
        ):
            vals = [r["stages"].get(name, {}).get(metric) for r in results]
            row = [name, metric, *("-" if v is None else fmt(v) for v in vals)]
            row += [
                "-" if a is None or b is None else _growth(a, b)
                for a, b in itertools.pairwise(vals)
            ]
            rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/cmrops-bench-scale"))
    ap.add_argument("--keep", action="store_true", help="keep the generated data and outputs")
    ap.add_argument("--out", type=Path, default=REPO / "benches" / "results" / "scale.json")
    ap.add_argument(
        "--generate-only", action="store_true", help="write the data sets (kept) and stop"
    )
    ap.add_argument(
        "--interim-only",
        action="store_true",
        help="no images: synthesise data/interim and run label, clean and split only",
    )
    ap.add_argument(
        "--stages",
        nargs="+",
        choices=STAGES,
        default=list(STAGES),
        help="run only these (in pipeline order; each needs its inputs, e.g. collect first)",
    )
    ap.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        help="no run: print one table of these result files (and write it to --out); a size in "
        "several files is merged stage by stage, later files winning",
    )
    args = ap.parse_args()
    if args.merge:
        by_n: dict[int, dict[str, Any]] = {}
        for f in args.merge:
            data = json.loads(f.read_text())
            for r in data.get("results", [data]):  # a .partial.json is one bare result
                merged = by_n.setdefault(r["n"], {"n": r["n"], "stages": {}, "inputs": []})
                merged["stages"].update(r["stages"])
                merged["inputs"].append({k: v for k, v in r.items() if k != "stages"})
        results = [by_n[n] for n in sorted(by_n)]
        print(table(results))
        _write(args.out, results)
        return
    if args.generate_only:
        for n in sorted(args.sizes):
            print(f"N={n}: generated in {generate(args.workdir / f'n{n}', n):.0f} s", flush=True)
        return
    results = []
    for n in sorted(args.sizes):
        partial = args.out.with_name(f"{args.out.stem}-n{n}.partial.json")
        results.append(
            bench_size(args.workdir, n, args.keep, partial, args.interim_only, tuple(args.stages))
        )
        partial.unlink()
    print()
    print(table(results))
    _write(args.out, results)


def _write(out: Path, results: list[dict[str, Any]]) -> None:
    report = {
        "machine": {
            "cpus": os.cpu_count(),
            "memory_bytes": psutil.virtual_memory().total,
            "python": platform.python_version(),
        },
        "results": results,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwritten {out}")


if __name__ == "__main__":
    main()
