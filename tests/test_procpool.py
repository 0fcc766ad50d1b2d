"""spawn_pool: workers start without re-running the parent's ``__main__`` script (under an Airflow 3
task that script is ``airflow``, which a child process cannot import: DB access is blocked)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = textwrap.dedent(
    """
    import sys
    if __name__ != "__main__":  # what an airflow task's script does in a spawned child
        raise SystemExit("the worker re-ran the parent's script")
    import concurrent.futures as cf, multiprocessing
    from cmrops.procpool import spawn_pool

    if sys.argv[1] == "plain":
        ctx = multiprocessing.get_context("spawn")
        pool_cm = cf.ProcessPoolExecutor(2, mp_context=ctx)
    else:
        pool_cm = spawn_pool(2)
    with pool_cm as pool:
        print(sorted(pool.map(abs, [-3, -1, -2, -4])))
    print(hasattr(sys.modules["__main__"], "__file__"))
    """
)


def _run(tmp_path: Path, mode: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "task.py"
    script.write_text(SCRIPT)
    return subprocess.run(
        [sys.executable, str(script), mode], capture_output=True, text=True, timeout=300
    )


def test_workers_do_not_rerun_the_parents_script(tmp_path: Path) -> None:
    ok = _run(tmp_path, "spawn_pool")
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert ok.stdout.split("\n")[:2] == ["[1, 2, 3, 4]", "True"]  # and __file__ is back


def test_a_plain_spawn_pool_would_fail_there(tmp_path: Path) -> None:
    bad = _run(tmp_path, "plain")
    assert bad.returncode != 0
    assert "BrokenProcessPool" in bad.stderr or "terminated abruptly" in bad.stderr
