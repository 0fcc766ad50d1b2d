"""The thread budget: how many threads each process cmrops starts may use, and setting them.

A machine is shared - by the worker processes of one stage, by Airflow tasks running side by
side, by Ray tasks, by other people's work - so no process sizes its pools from
``os.cpu_count()``. :func:`detect` finds the CPUs this process may really use: its CPU affinity
(``os.sched_getaffinity``) capped by its cgroup's CPU quota (v2 ``cpu.max``, v1
``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``, the smallest along the cgroup's path, rounded down,
at least 1). One setting overrides the detection: ``$CMROPS_THREADS`` (the environment wins), else
``engine.threads`` in ``params.yaml``. A process that runs ``k`` workers at once gives each
:meth:`ThreadBudget.share` ``= max(1, total // k)``.

:func:`apply` sizes every pool of this process to that number before it computes anything:

* torch: ``set_num_threads`` (intra-op) and ``set_num_interop_threads`` (the latter only before
  torch's first parallel op; later calls are skipped) - now, or as soon as torch is imported;
* OpenMP / BLAS pools already loaded (OpenBLAS, MKL, BLIS, libgomp) through ``threadpoolctl``, and
  ``OMP_NUM_THREADS``, ``MKL_NUM_THREADS``, ``OPENBLAS_NUM_THREADS``, ... plus
  ``OMP_WAIT_POLICY=PASSIVE`` in the environment, for libraries loaded later and for every
  process started from here (OpenMP threads then sleep when idle instead of spinning against
  the other processes' threads);
* ONNX Runtime sessions and the Rust core read :func:`current` (``intra_op_num_threads``; the
  ``n_threads`` argument of :mod:`cmrops._core`).

Threads never change what a stage writes: every output is byte-identical whatever the count
(tests check it; ``docs/performance.md`` lists the timings files, the only exception). Training on
the CPU (the train stage, the align stage's heads) is why :func:`training` exists: torch's CPU
kernels reduce in an order that depends on the thread count, so training always runs on
:data:`TRAINING_THREADS` threads, the same on every machine.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import logging
import math
import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

__all__ = [
    "ENV",
    "ThreadBudget",
    "apply",
    "available_cpus",
    "cgroup_cpu_limit",
    "configure",
    "current",
    "detect",
    "training",
    "worker_environment",
]

#: The environment variable that overrides every other source of the budget.
ENV = "CMROPS_THREADS"
CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_SELF_CGROUP = Path("/proc/self/cgroup")
#: Thread-count variables of the OpenMP / BLAS runtimes (read when the library loads).
_COUNT_VARS = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)

_applied: int | None = None

#: Threads of torch / BLAS while a model trains on the CPU: a fixed number, not the budget,
#: because torch's CPU kernels sum in an order that depends on the thread count (a model
#: trained on 1 and on 3 threads differs in its last bits). One thread also never competes:
#: the small models here gain little from a second one, and lose much beside other work.
TRAINING_THREADS = 1


@dataclass(frozen=True)
class ThreadBudget:
    """``total`` threads this process (with the workers it starts) may keep busy, and why."""

    total: int
    source: str  # "CMROPS_THREADS", "engine.threads", "cgroup quota" or "affinity"

    def share(self, workers: int) -> int:
        """Threads each of ``workers`` processes running at once may use."""
        return max(1, self.total // max(1, workers))


# --------------------------------------------------------------------------- detection


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _v2_quota(folder: Path) -> float | None:
    text = _read(folder / "cpu.max")  # "max 100000" or "<quota> <period>"
    if not text:
        return None
    parts = text.split()
    if parts[0] == "max" or len(parts) != 2:
        return None
    try:
        quota, period = int(parts[0]), int(parts[1])
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def _v1_quota(folder: Path) -> float | None:
    quota, period = _read(folder / "cpu.cfs_quota_us"), _read(folder / "cpu.cfs_period_us")
    try:
        q, p = int(quota or ""), int(period or "")
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None  # -1: no quota


def _ancestors(root: Path, rel: str) -> Iterator[Path]:
    """``root/rel`` and each folder above it, up to ``root`` itself."""
    parts = [p for p in rel.split("/") if p and p not in (".", "..")]
    for i in range(len(parts), -1, -1):
        yield root.joinpath(*parts[:i])


def cgroup_cpu_limit(
    cgroup_root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_SELF_CGROUP
) -> float | None:
    """The CPU quota of this process's cgroup in CPUs (e.g. 1.5), the smallest along its path
    (a container's parent can be stricter than the container); None when there is none.

    ``cgroup_root`` is where the cgroup file system is mounted and ``proc_cgroup`` the process's
    ``/proc/self/cgroup``; tests pass a fake tree."""
    limits: list[float] = []
    lines = (_read(proc_cgroup) or "").splitlines()
    for line in lines:
        hierarchy, _, rest = line.partition(":")
        controllers, _, rel = rest.partition(":")
        if hierarchy == "0" and controllers == "":  # v2 unified hierarchy
            folders, quota = list(_ancestors(cgroup_root, rel)), _v2_quota
        elif "cpu" in controllers.split(","):  # v1 cpu controller
            mounts = [cgroup_root / n for n in ("cpu,cpuacct", "cpu", "cpuacct,cpu")]
            folders = [f for m in mounts if m.is_dir() for f in _ancestors(m, rel)]
            quota = _v1_quota
        else:
            continue
        limits += [q for f in folders if (q := quota(f)) is not None]
    if not lines:  # no /proc (another OS, a sandbox): the mount root alone
        limits += [q for q in (_v2_quota(cgroup_root), _v1_quota(cgroup_root / "cpu")) if q]
    return min(limits) if limits else None


def available_cpus(
    cgroup_root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_SELF_CGROUP
) -> tuple[int, str]:
    """``(cpus, source)``: the CPUs this process may use - its affinity, capped by its cgroup
    quota rounded down (at least 1) - and which of the two decided."""
    affinity = getattr(os, "sched_getaffinity", None)  # not on macOS / Windows
    cpus = len(affinity(0)) if affinity else (os.cpu_count() or 1)
    quota = cgroup_cpu_limit(cgroup_root, proc_cgroup)
    if quota is not None and max(1, math.floor(quota)) < cpus:
        return max(1, math.floor(quota)), "cgroup quota"
    return max(1, cpus), "affinity"


def cpu_model() -> str:
    """The CPU's model name (Linux's ``/proc/cpuinfo``; else what :mod:`platform` knows), for
    the benchmarks' reports."""
    for line in (_read(Path("/proc/cpuinfo")) or "").splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    import platform

    return platform.processor() or platform.machine()


def _parse(value: str, where: str) -> int:
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"{where} must be a whole number of threads >= 1, got {value!r}")
    return n


def detect(
    setting: int | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    cgroup_root: Path = CGROUP_ROOT,
    proc_cgroup: Path = PROC_SELF_CGROUP,
) -> ThreadBudget:
    """This process's budget: ``$CMROPS_THREADS``, else ``setting`` (``engine.threads``), else
    the CPUs it may use (:func:`available_cpus`)."""
    env = os.environ if environ is None else environ
    if env.get(ENV, "").strip():
        return ThreadBudget(_parse(env[ENV].strip(), f"${ENV}"), ENV)
    if setting is not None:
        return ThreadBudget(_parse(str(setting), "engine.threads"), "engine.threads")
    cpus, source = available_cpus(cgroup_root, proc_cgroup)
    return ThreadBudget(cpus, source)


# --------------------------------------------------------------------------- applying


def worker_environment(threads: int) -> dict[str, str]:
    """The variables a process started with ``threads`` threads gets before it imports numpy or
    torch: the budget itself and every OpenMP / BLAS count, with passive OpenMP waits."""
    env = {ENV: str(threads), "OMP_WAIT_POLICY": "PASSIVE"}
    env.update({name: str(threads) for name in _COUNT_VARS})
    return env


def apply(threads: int) -> None:
    """Size this process's pools to ``threads`` (see the module docstring); idempotent."""
    global _applied
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    # the OpenMP / BLAS variables, for libraries loaded from now on and the processes started
    # from here; not $CMROPS_THREADS, which stays the user's override (a process sized for one
    # task of an Airflow run must not fix the size of the next task it runs)
    os.environ.update({k: v for k, v in worker_environment(threads).items() if k != ENV})
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=threads)  # OpenBLAS / MKL / OpenMP already loaded (numpy, torch)
    if "torch" in sys.modules:
        _torch_threads(threads)
    else:  # torch caps its own default at the cores it sees: set it once it is imported
        _hook_torch_import()
    if _applied != threads:
        log.debug("thread budget: %d", threads)
    _applied = threads


def _torch_threads(threads: int) -> None:
    import torch as t

    if t.get_num_threads() != threads:
        t.set_num_threads(threads)
    try:
        if t.get_num_interop_threads() != threads:
            t.set_num_interop_threads(threads)
    except RuntimeError:  # the inter-op pool has started already: it can no longer change
        pass


class _TorchImported(importlib.abc.MetaPathFinder):
    """Finds nothing itself: wraps the loader of ``torch`` so that the budget applied last is
    set in torch as soon as torch has been imported (before its first op)."""

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name != "torch":
            return None
        sys.meta_path.remove(self)  # one shot; the other finders locate torch
        spec = importlib.util.find_spec(name)
        loader = spec.loader if spec is not None else None
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        run = loader.exec_module

        def exec_module(module: Any) -> None:
            run(module)
            if _applied is not None:
                _torch_threads(_applied)

        loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def _hook_torch_import() -> None:
    if not any(isinstance(f, _TorchImported) for f in sys.meta_path):
        sys.meta_path.insert(0, _TorchImported())


def configure(setting: int | None = None, *, side_by_side: int = 1) -> ThreadBudget:
    """Detect this process's budget (:func:`detect`), divide it among ``side_by_side`` processes
    like it that run at once (e.g. mapped Airflow tasks), apply it and return it."""
    found = detect(setting)
    budget = ThreadBudget(found.share(side_by_side), found.source)
    apply(budget.total)
    return budget


def current() -> int:
    """The threads this process may use: the budget applied (:func:`apply`), else detected."""
    return _applied if _applied is not None else detect().total


@contextmanager
def training() -> Iterator[None]:
    """Run the block's torch / BLAS work on :data:`TRAINING_THREADS` threads (the same bytes
    whatever the machine or the budget), then restore the budget. Also a decorator
    (``@threads.training()``: the stages' fitting functions)."""
    before = current()
    _outside_training.append(before)
    apply(TRAINING_THREADS)
    try:
        yield
    finally:
        _outside_training.pop()
        apply(before)


#: The budgets :func:`training` replaced, outermost first.
_outside_training: list[int] = []


def fits_at_once() -> int:
    """How many fits of :data:`TRAINING_THREADS` threads each this process may run side by side
    (on threads of its own, e.g. :func:`cmrops.align.train.fit_splits`): its budget divided by
    :data:`TRAINING_THREADS` - the budget in force outside :func:`training`, inside it."""
    budget = _outside_training[0] if _outside_training else current()
    return max(1, budget // TRAINING_THREADS)


@contextmanager
def environment(values: Mapping[str, str]) -> Iterator[None]:
    """Set ``values`` in ``os.environ`` for the block (processes started inside inherit them),
    then put back what was there."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
