"""The thread budget: CPUs from affinity and cgroup quotas (fake cgroup trees), the override
order, and what a process and its spawned workers end up with."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cmrops import threads
from cmrops.threads import ThreadBudget, available_cpus, cgroup_cpu_limit, detect

AFFINITY = len(os.sched_getaffinity(0))


def _tree(tmp_path: Path, proc: str, files: dict[str, str]) -> tuple[Path, Path]:
    root = tmp_path / "cgroup"
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    root.mkdir(exist_ok=True)
    self_cgroup = tmp_path / "self_cgroup"
    self_cgroup.write_text(proc)
    return root, self_cgroup


def test_v2_quota_is_the_smallest_along_the_path(tmp_path: Path) -> None:
    root, proc = _tree(
        tmp_path,
        "0::/kubepods/pod1/task\n",
        {
            "cpu.max": "max 100000\n",
            "kubepods/cpu.max": "800000 100000\n",  # 8 CPUs for all pods
            "kubepods/pod1/cpu.max": "150000 100000\n",  # 1.5 for this one
            "kubepods/pod1/task/cpu.max": "max 100000\n",
        },
    )
    assert cgroup_cpu_limit(root, proc) == pytest.approx(1.5)
    cpus, source = available_cpus(root, proc)
    assert (cpus, source) == ((1, "cgroup quota") if AFFINITY > 1 else (1, "affinity"))


def test_v2_without_a_quota_is_the_affinity(tmp_path: Path) -> None:
    root, proc = _tree(tmp_path, "0::/user.slice\n", {"user.slice/cpu.max": "max 100000\n"})
    assert cgroup_cpu_limit(root, proc) is None
    assert available_cpus(root, proc) == (AFFINITY, "affinity")


def test_a_namespaced_container_reads_its_root(tmp_path: Path) -> None:
    # inside a container with a cgroup namespace the path is "/" and the files are at the root
    root, proc = _tree(tmp_path, "0::/\n", {"cpu.max": "50000 100000\n"})
    assert cgroup_cpu_limit(root, proc) == pytest.approx(0.5)
    assert available_cpus(root, proc)[0] == 1  # rounded down, but never below one


def test_v1_cfs_quota(tmp_path: Path) -> None:
    root, proc = _tree(
        tmp_path,
        "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n",
        {
            "cpu,cpuacct/cpu.cfs_quota_us": "-1\n",
            "cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "300000\n",
            "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n",
            "cpu,cpuacct/cpu.cfs_period_us": "100000\n",
        },
    )
    assert cgroup_cpu_limit(root, proc) == pytest.approx(3.0)
    cpus, _ = available_cpus(root, proc)
    assert cpus == min(3, AFFINITY)


def test_unreadable_or_malformed_files_mean_no_quota(tmp_path: Path) -> None:
    root, proc = _tree(tmp_path, "0::/a\n", {"a/cpu.max": "garbage\n", "cpu.max": "0 0\n"})
    assert cgroup_cpu_limit(root, proc) is None
    assert cgroup_cpu_limit(tmp_path / "missing", tmp_path / "missing-proc") is None


def test_override_order_and_shares(tmp_path: Path) -> None:
    root, proc = _tree(tmp_path, "0::/\n", {"cpu.max": "max 100000\n"})
    auto = detect(environ={}, cgroup_root=root, proc_cgroup=proc)
    assert auto == ThreadBudget(AFFINITY, "affinity")
    assert detect(3, environ={}, cgroup_root=root, proc_cgroup=proc) == ThreadBudget(
        3, "engine.threads"
    )
    env = {threads.ENV: "5"}
    assert detect(3, environ=env, cgroup_root=root, proc_cgroup=proc).total == 5  # env wins
    assert ThreadBudget(8, "x").share(4) == 2
    assert ThreadBudget(2, "x").share(4) == 1  # never zero
    with pytest.raises(ValueError, match=r"CMROPS_THREADS must be a whole number"):
        detect(environ={threads.ENV: "many"})
    with pytest.raises(ValueError, match=r"engine\.threads"):
        detect(0, environ={})


PROBE = textwrap.dedent(
    """
    import json, os, sys
    from cmrops import threads
    budget = threads.configure(None, side_by_side=int(sys.argv[1]))
    import torch
    from threadpoolctl import threadpool_info
    from cmrops.procpool import spawn_pool
    from tests.thread_probe import report
    with spawn_pool(2) as pool:
        workers = list(pool.map(report, range(2)))
    print(json.dumps({
        "budget": budget.total, "current": threads.current(), "torch": torch.get_num_threads(),
        "pools": sorted({i["num_threads"] for i in threadpool_info()}),
        "omp": os.environ["OMP_NUM_THREADS"], "wait": os.environ["OMP_WAIT_POLICY"],
        "cmrops_threads_env": os.environ.get("CMROPS_THREADS"), "workers": workers,
    }))
    """
)


def _probe(side_by_side: int, env_threads: str | None) -> dict[str, object]:
    import json

    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "MKL_"))}
    env.pop(threads.ENV, None)
    if env_threads is not None:
        env[threads.ENV] = env_threads
    run = subprocess.run(
        [sys.executable, "-c", PROBE, str(side_by_side)],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_a_process_and_its_workers_apply_the_budget() -> None:
    # CMROPS_THREADS=8 (more than this machine may have: an override is obeyed), two tasks side
    # by side: this process gets 4, each of its 2 workers 2 - in its environment before numpy and
    # torch load, and applied once it runs
    got = _probe(2, "8")
    assert (got["budget"], got["current"], got["torch"], got["omp"]) == (4, 4, 4, "4")
    # OpenBLAS never starts more threads than the CPUs online (it caps its own pool there)
    assert set(got["pools"]) <= {4, min(4, os.cpu_count() or 1)}
    assert 4 in got["pools"]
    assert got["wait"] == "PASSIVE"
    assert got["cmrops_threads_env"] == "8"  # the user's override is left as it was
    for w in got["workers"]:
        assert w == {"env": "2", "omp": "2", "wait": "PASSIVE", "torch": 2, "pools": [2]}


def test_a_bad_override_is_a_clear_cli_error(tmp_path: Path) -> None:
    env = {**os.environ, threads.ENV: "0"}
    run = subprocess.run(
        [sys.executable, "-m", "cmrops.cli", "split", "--params", str(tmp_path / "p.yaml")],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert run.returncode == 2
    assert "CMROPS_THREADS must be a whole number of threads >= 1, got '0'" in run.stderr


def test_fits_at_once_is_the_budget_outside_training(monkeypatch: pytest.MonkeyPatch) -> None:
    # threads.training() sets the training threads, and restores the budget after; what runs
    # inside it may still run that many single-thread fits side by side
    def apply(n: int) -> None:
        threads._applied = n  # restored by monkeypatch

    monkeypatch.setattr(threads, "_applied", 3)
    monkeypatch.setattr(threads, "apply", apply)
    assert threads.fits_at_once() == 3
    with threads.training():
        assert threads.current() == threads.TRAINING_THREADS
        assert threads.fits_at_once() == 3
        with threads.training():
            assert threads.fits_at_once() == 3
    assert threads.current() == threads.fits_at_once() == 3
