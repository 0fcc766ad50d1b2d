"""A tar header bomb: a 1 MiB WebDataset shard whose member header claims far more bytes.

    .venv/bin/python benches/bench_tar_bomb.py

**Baseline**: the standard library's stream reader (``tarfile.open(mode="r|*")`` iterated to
the end), which is how cmrops read shards before: it skips a member by reading its *claimed*
size in 16 KiB steps and keeps stepping after the data ends, so its time grows with the claim.
**cmrops**: :class:`cmrops.sources.WebDatasetSource`, which checks every claimed size before
reading or skipping (uncompressed shards: against the bytes left in the file; compressed ones:
by draining only what is really there) and ends the shard at once as ``truncated_shard``.

Claims of 1 and 4 GiB are timed for both (best of 3, interleaved rounds), 1 PiB (GNU base-256
size field) for cmrops only; the baseline would need days for it at its measured rate. Prints
the CPU model, the times and the ratios baseline / cmrops.
"""

from __future__ import annotations

import random
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cmrops.sources import WebDatasetSource
from cmrops.threads import cpu_model

GIB = 1 << 30


def shard(folder: Path, claim: int) -> Path:
    ti = tarfile.TarInfo("s0.jpg")
    ti.size = claim
    path = folder / f"bomb-{claim}.tar"
    path.write_bytes(ti.tobuf(format=tarfile.GNU_FORMAT) + random.Random(0).randbytes(1 << 20))
    return path


def stdlib(path: Path) -> None:
    try:
        with tarfile.open(path, mode="r|*") as tf:
            for _ in tf:
                pass
    except tarfile.TarError:
        pass


def cmrops(path: Path) -> None:
    reasons = [getattr(r, "reason", None) for r in WebDatasetSource("bench", [path], 64 << 20)]
    if reasons != ["truncated_shard"]:
        raise AssertionError(f"expected one truncated_shard record, got {reasons}")


def best(fn, path: Path, rounds: int = 3) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn(path)
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> int:
    print(f"CPU: {cpu_model()}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for claim in (GIB, 4 * GIB):
            path = shard(folder, claim)
            base, ours = [], []
            for _ in range(3):  # interleaved rounds: both see the same machine load
                base.append(best(stdlib, path, 1))
                ours.append(best(cmrops, path, 1))
            b, o = min(base), min(ours)
            print(
                f"claim {claim // GIB} GiB: stdlib stream reader {b:.3f} s, cmrops {o * 1e3:.2f} ms"
                f" -> {b / o:,.0f}x"
            )
        path = shard(folder, 1 << 50)
        print(f"claim 1 PiB: cmrops {best(cmrops, path) * 1e3:.2f} ms (stdlib: not run)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
