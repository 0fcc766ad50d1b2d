"""Download throughput of the ``urls`` source from a loopback server, safety checks on vs off.

    .venv/bin/python benches/bench_download.py            # 2000 images per run, 3 runs each
    .venv/bin/python benches/bench_download.py --quick    # smaller, one run each (smoke)

The server (aiohttp, in its own process so the client keeps its own GIL) serves N distinct
JPEGs of about 20 kB on 127.0.0.1; server and client share this machine's cores. Rows:

- ``fetcher``: :class:`cmrops.sources.http_fetch.Fetcher` over a thread pool, images kept in
  memory. "checks on" is the default policy: the host (``localhost``) is resolved and every
  address checked (loopback admitted through ``allowed_networks``), the connection pinned,
  X-Robots-Tag, Content-Type and magic bytes checked, byte cap enforced. "checks off":
  ``allow_private_networks`` (no address policy), an IP literal (no lookup), opt-out off.
- ``urllib3``: a plain ``urllib3.PoolManager`` GET of the same URLs with as many threads, no
  checks: how fast a common client is on the same loopback path (context, not a target).
- ``collect``: the whole stage (``cmrops.stages.collect.run``) with one urls source into a fresh
  folder: download, content-addressed store, per-URL journal, status tables, samples.

The ratio is checks-off / checks-on time (> 1: the checks cost that much). For context only,
img2dataset's README reports its own single-machine figure (different hardware, real internet,
resizing included); it is printed, not compared.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cmrops.sources.http_fetch import AddressPolicy, FetchConfig, Fetcher, parse_networks  # noqa: E402

IMG2DATASET = (
    'img2dataset README (github.com/rom1504/img2dataset): "Can download, resize and package '
    '100M urls in 20h on one machine." and, in its 18M-image benchmark, "1350 images/s is the '
    'currently observed performance. 4.8M images per hour, 116M images per 24h." - their '
    "published figure, measured over the internet on their hardware with resizing; not "
    "comparable with a loopback run on 2 shared cores."
)


def start_server(n: int, size: int) -> tuple[subprocess.Popen[str], int, int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.http_fault_server", "--images", str(n), "--bytes", str(size)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().split()
    if not line or line[0] != "PORT":
        proc.kill()
        raise RuntimeError(f"the benchmark server did not start: {line}")
    return proc, int(line[1]), int(line[3])


def fetch_config(checks: bool, concurrency: int) -> FetchConfig:
    if checks:
        policy = AddressPolicy(allowed_networks=parse_networks(["127.0.0.0/8"]))
        return FetchConfig(
            timeout=10, deadline=30, retries=0, policy=policy, max_idle_per_host=concurrency
        )
    return FetchConfig(
        timeout=10,
        deadline=30,
        retries=0,
        policy=AddressPolicy(allow_private=True),
        opt_out_directives=frozenset(),
        max_idle_per_host=concurrency,
    )


def urls_for(port: int, n: int, checks: bool) -> list[str]:
    host = "localhost" if checks else "127.0.0.1"
    return [f"http://{host}:{port}/img/{i}.jpg" for i in range(n)]


def run_fetcher(port: int, n: int, concurrency: int, checks: bool) -> float:
    urls = urls_for(port, n, checks)
    with (
        Fetcher(fetch_config(checks, concurrency)) as f,
        ThreadPoolExecutor(concurrency) as pool,
    ):
        t = time.perf_counter()
        results = list(pool.map(f.fetch, urls))
        elapsed = time.perf_counter() - t
    bad = [r for r in results if not r.ok]
    if bad:
        raise RuntimeError(f"{len(bad)} downloads failed, e.g. {bad[0].status}: {bad[0].detail}")
    return elapsed


def run_urllib3(port: int, n: int, concurrency: int) -> float:
    import urllib3

    urls = urls_for(port, n, False)
    http = urllib3.PoolManager(maxsize=concurrency, retries=False)

    def get(u: str) -> int:
        r = http.request("GET", u, timeout=10)
        assert r.status == 200
        assert r.data[:3] == b"\xff\xd8\xff"
        return len(r.data)

    with ThreadPoolExecutor(concurrency) as pool:
        t = time.perf_counter()
        list(pool.map(get, urls))
        elapsed = time.perf_counter() - t
    http.clear()
    return elapsed


def run_collect(port: int, n: int, concurrency: int, checks: bool, work: Path) -> float:
    from cmrops.params import from_dict
    from cmrops.stages.collect import CollectParams, run

    manifest = work / "urls.csv"
    manifest.write_text(
        "url,captions\n"
        + "".join(f"{u},image {i}\n" for i, u in enumerate(urls_for(port, n, checks)))
    )
    download: dict[str, Any] = {"concurrency": concurrency, "per_host_rate": 0, "retries": 0}
    download |= (
        {"allowed_networks": ["127.0.0.0/8"]}
        if checks
        else {"allow_private_networks": True, "respect_opt_out": False}
    )
    params = from_dict(
        CollectParams,
        {"sources": [{"name": "web", "kind": "urls", "path": str(manifest), "download": download}]},
        "bench",
    )
    out = work / "raw"
    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    m = run(params, out, base_dir=work)
    elapsed = time.perf_counter() - t
    if m["kept"] != n:
        raise RuntimeError(f"collect kept {m['kept']} of {n}: {m['quarantined_by_reason']}")
    return elapsed


def paired(on: Any, off: Any, repeat: int) -> tuple[float, float]:
    """Median times of ``on`` and ``off``, run alternately (drift hits both alike)."""
    t_on, t_off = [], []
    for i in range(repeat):
        first, second = (on, off) if i % 2 == 0 else (off, on)
        a, b = first(), second()
        t_on.append(a if first is on else b)
        t_off.append(b if first is on else a)
    return statistics.median(t_on), statistics.median(t_off)


def median_time(fn: Any, repeat: int) -> float:
    return statistics.median(fn() for _ in range(repeat))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="300 images, one run each")
    ap.add_argument("--images", type=int, default=None)
    ap.add_argument("--repeat", type=int, default=None)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    args = ap.parse_args()
    n = args.images or (300 if args.quick else 2000)
    repeat = args.repeat or (1 if args.quick else 3)

    proc, port, avg = start_server(n, 20_000)
    rows: list[dict[str, Any]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="bench-download-") as tmp:
            work = Path(tmp)
            run_fetcher(port, n, 4, True)  # warm up the server, the imports, the page cache
            run_urllib3(port, n, 4)
            run_collect(port, min(n, 200), 4, True, work)
            for c in args.concurrency:
                on, off = paired(
                    lambda c=c: run_fetcher(port, n, c, True),
                    lambda c=c: run_fetcher(port, n, c, False),
                    repeat,
                )
                base = median_time(lambda c=c: run_urllib3(port, n, c), repeat)
                rows.append({"what": "fetcher", "concurrency": c, "on": on, "off": off,
                             "urllib3": base})  # fmt: skip
            for c in (4, 16):
                on, off = paired(
                    lambda c=c: run_collect(port, n, c, True, work),
                    lambda c=c: run_collect(port, n, c, False, work),
                    repeat,
                )
                rows.append({"what": "collect", "concurrency": c, "on": on, "off": off})
    finally:
        proc.terminate()
        proc.wait(10)

    print(
        f"\n{n} distinct JPEGs (~{avg / 1000:.0f} kB) from 127.0.0.1, median of {repeat}; "
        f"{os.cpu_count()} cores shared by server and client; Python {platform.python_version()}"
    )
    head = (
        f"{'path':<9} {'threads':>7} {'checks on':>11} {'checks off':>11} "
        f"{'off/on time':>11} {'urllib3':>9}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        ips_on, ips_off = n / r["on"], n / r["off"]
        base = f"{n / r['urllib3']:>7.0f}/s" if "urllib3" in r else f"{'-':>9}"
        print(
            f"{r['what']:<9} {r['concurrency']:>7} {ips_on:>9.0f}/s {ips_off:>9.0f}/s "
            f"{r['off'] / r['on']:>11.2f} {base}"
        )
        r.update(images=n, images_per_s_on=ips_on, images_per_s_off=ips_off)
    print("(off/on time < 1: the checks cost that fraction; images/s = images / wall time)")
    print("\nFor context only: " + IMG2DATASET)

    out = ROOT / "bench-results"
    out.mkdir(exist_ok=True)
    (out / "download.json").write_text(
        json.dumps(
            {"rows": rows, "cores": os.cpu_count(), "image_bytes": avg, "context": IMG2DATASET},
            indent=2,
        )
        + "\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
