"""Worker processes that start clean wherever the parent runs.

``spawn`` workers re-run the parent's ``__main__`` script before they unpickle their work. Under
an Airflow 3 task that script is ``airflow``: importing it in the child fails, because the task
supervisor blocks metadata-DB access in task processes (``sql_alchemy_conn`` =
``airflow-db-not-allowed:///``). The work itself never needs the parent's ``__main__`` (it is a
function of an importable module), so :func:`spawn_pool` hides that script from
:mod:`multiprocessing` while its pool lives, then puts it back.

Each worker gets its share of the parent's thread budget (:mod:`cmrops.threads`): in its
environment (``CMROPS_THREADS``, ``OMP_NUM_THREADS``, ... and passive OpenMP waits), so the
libraries it loads start with that many threads, and applied again once it runs.

Workers end with their parent. A parent killed with SIGKILL (an Airflow task past its timeout,
an OOM kill) cannot shut its pool down, and a worker waiting on the pool's queue would then wait
forever, holding memory and the task's output pipes; each worker therefore watches its parent
and exits once it is gone.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import multiprocessing
import os
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

__all__ = ["exit_with_parent", "spawn_pool"]


@contextlib.contextmanager
def _main_script_hidden() -> Iterator[None]:
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if main is None or path is None or getattr(main, "__spec__", None) is not None:
        yield  # started with -m or interactively: multiprocessing imports it by name or not at all
        return
    del main.__file__
    try:
        yield
    finally:
        main.__file__ = path


class _EnvironmentProcess(multiprocessing.context.SpawnProcess):
    """A ``spawn`` process started with ``env`` added to this process's environment (set only
    while the child is started, then put back)."""

    env: dict[str, str] = {}  # noqa: RUF012 - replaced per instance

    @staticmethod
    def _Popen(process_obj: Any) -> Any:
        from cmrops.threads import environment

        with environment(process_obj.env):
            return multiprocessing.context.SpawnProcess._Popen(process_obj)


class _SpawnWithEnvironment(multiprocessing.context.SpawnContext):
    """The ``spawn`` context whose processes start with ``env`` in their environment."""

    def __init__(self, env: dict[str, str]) -> None:
        super().__init__()
        self._env = env

    def Process(self, *args: Any, **kwargs: Any) -> _EnvironmentProcess:  # type: ignore[override]
        process = _EnvironmentProcess(*args, **kwargs)
        process.env = dict(self._env)
        return process


@contextlib.contextmanager
def spawn_pool(max_workers: int, threads: int | None = None) -> Iterator[cf.ProcessPoolExecutor]:
    """A ``spawn`` process pool (a context manager, like the executor itself) whose workers do
    not re-run the parent's ``__main__`` script: it stays hidden while the pool lives, since
    workers start on demand. Each worker uses ``threads`` threads (None: an equal share of this
    process's budget, :func:`cmrops.threads.current`) and ends with its parent."""
    from cmrops import threads as budget

    if threads is None:
        threads = max(1, budget.current() // max(1, max_workers))
    ctx = _SpawnWithEnvironment(budget.worker_environment(threads))
    with (
        _main_script_hidden(),
        cf.ProcessPoolExecutor(
            max_workers, mp_context=ctx, initializer=_start_worker, initargs=(threads, os.getpid())
        ) as pool,
    ):
        yield pool


def _start_worker(threads: int, parent: int) -> None:
    """Worker initializer: its thread budget applied, and a watch that ends it with its parent."""
    from cmrops import threads as budget

    budget.apply(threads)
    exit_with_parent(parent)


#: How often a worker checks that its parent is alive (seconds).
PARENT_CHECK_S = 0.5


def exit_with_parent(parent: int) -> None:
    """A daemon thread that ends this process once ``parent`` is gone (in a pool worker, and in a
    stage the DAG runs in a process of its own): the process is re-parented, so ``getppid``
    changes. A file it was writing is left as a temporary file, which the next run sweeps."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_CHECK_S)
        os._exit(70)  # EX_SOFTWARE; nobody is left to read it

    threading.Thread(target=watch, name="cmrops-parent-watch", daemon=True).start()
