"""Where the heavy work of a stage runs: this machine's process pool, or a Ray cluster.

One interface, two implementations, chosen by the ``engine:`` section of ``params.yaml``
(:class:`EngineParams`, which the caller - a stage's command, a DAG task - loads and passes in:
nothing here reads a file):

* :class:`LocalEngine` (``kind: local``) - ``spawn`` worker processes on this machine
  (``concurrent.futures.ProcessPoolExecutor``) and stateful workers (an encoder) in this process;
* :class:`RayEngine` (``kind: ray``) - Ray tasks and actors, on the cluster at ``address`` or on a
  local cluster bound to 127.0.0.1 when ``address`` is null. Ray is imported only here, only then,
  and connected on first use (a stage run with nothing to compute starts no cluster).

A stage asks for :func:`current` (set by :func:`session` around a stage's run; the local engine
with no session), then:

* :meth:`Engine.map_unordered` - ``fn(item)`` (or ``fn(shared, item)``, ``shared`` shipped once:
  the object store on Ray) for every item, yielding ``(item, result)`` as each finishes;
* :meth:`Engine.actors` - a pool of long-lived workers built by a factory (one encoder each,
  ``num_gpus=1`` per actor when asked), fed with :meth:`Actors.submit`.

Every process it starts sizes its threads from the stage's budget (:mod:`cmrops.threads`): a
local worker gets an equal share of this process's, a Ray task or actor the CPUs it reserves (1;
``threads`` overrides both).

The engine only decides *where* code runs, never what it computes: callers write results in a
deterministic order, so both engines give byte-identical outputs. A worker that dies (killed, out
of memory, node lost) raises :class:`EngineError`; the caller has recorded nothing for that item,
so a rerun redoes exactly the unrecorded work. An exception raised by ``fn`` itself is re-raised
as it is (on Ray: an instance of the same class).
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import contextvars
import multiprocessing
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

T = TypeVar("T")

__all__ = [
    "Actors",
    "Engine",
    "EngineError",
    "EngineParams",
    "LocalEngine",
    "RayEngine",
    "current",
    "open_engine",
    "session",
]

SECTION = "engine"


@dataclass(frozen=True)
class EngineParams:
    """The ``engine:`` section of ``params.yaml`` (it never changes what a stage writes)."""

    kind: Literal["local", "ray"] = "local"
    # ray: "auto", "host:port" (a `ray start --head` cluster) or "ray://host:10001" (Ray Client);
    # null = start a local cluster on 127.0.0.1 for the stage's run
    address: str | None = None
    num_cpus: int | None = None  # local Ray cluster only: CPUs it may use (null: every core)
    num_gpus: int | None = None  # local Ray cluster only: GPUs it may use (null: detected)
    embed_actors: int | None = None  # encoder actors (null: one per cluster GPU, else 1)
    max_retries: int = 0  # Ray reruns of a task whose worker died, before the stage fails
    search_chunk: int = 50_000  # query rows per near-duplicate search task (clean)
    # threads this process may use, shared among the workers it runs at once (null: the CPUs
    # it may use - affinity and cgroup quota); $CMROPS_THREADS overrides it
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1 or null, got {self.threads}")
        for name in ("num_cpus", "num_gpus", "embed_actors"):
            value = getattr(self, name)
            if value is not None and value < (1 if name == "embed_actors" else 0):
                raise ValueError(f"{name} must be >= {1 if name == 'embed_actors' else 0}")
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries}")
        if self.search_chunk < 1:
            raise ValueError(f"search_chunk must be >= 1, got {self.search_chunk}")
        if self.kind == "local" and self.address is not None:
            raise ValueError("address is only used with kind: ray (set kind: ray or drop it)")


class EngineError(RuntimeError):
    """A worker died before finishing its item (killed, out of memory, node lost). Work the
    caller recorded is kept; rerunning the stage redoes only what is missing."""


class Actors(ABC):
    """Long-lived workers, each holding one object built by a factory (e.g. an encoder)."""

    @abstractmethod
    def submit(self, key: Any, method: str, *args: Any) -> None:
        """Call ``obj.method(*args)`` on one worker; its result comes back under ``key``."""

    @abstractmethod
    def ready(self) -> Iterator[tuple[Any, Any]]:
        """``(key, result)`` of the calls finished so far (does not wait)."""

    @abstractmethod
    def drain(self) -> Iterator[tuple[Any, Any]]:
        """``(key, result)`` of every call still outstanding, as each finishes."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the workers."""


class Engine(ABC):
    kind: str
    params: EngineParams

    @abstractmethod
    def map_unordered(
        self,
        fn: Callable[..., Any],
        items: Sequence[T],
        *,
        workers: int | None = None,
        shared: Any = None,
    ) -> Iterator[tuple[T, Any]]:
        """``(item, fn(item))`` - or ``fn(shared, item)`` when ``shared`` is given - in the
        order they finish. ``workers``: the local pool's size (0: run in this process, one item
        after another); Ray schedules on the cluster's CPUs and ignores it."""

    @abstractmethod
    def actors(self, factory: Callable[[], Any], *, size: int, gpu: bool) -> Actors:
        """``size`` workers each holding ``factory()`` (``gpu``: one GPU each)."""

    def gpus(self) -> int | None:
        """GPUs the actors can use (None: whatever this process sees)."""
        return None

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release what the engine started."""


def _died(fn: Callable[..., Any], k: int, n: int, why: object) -> EngineError:
    name = getattr(fn, "__qualname__", repr(fn))
    return EngineError(
        f"a worker died running {name} on item {k + 1} of {n} ({why}); nothing of that item "
        "was recorded - rerun the stage: finished work is kept, only the rest is redone"
    )


# --------------------------------------------------------------------------- local


class LocalEngine(Engine):
    """``spawn`` worker processes on this machine; actors live in this process."""

    kind = "local"

    def __init__(self, params: EngineParams | None = None) -> None:
        self.params = params or EngineParams()

    def map_unordered(
        self,
        fn: Callable[..., Any],
        items: Sequence[T],
        *,
        workers: int | None = None,
        shared: Any = None,
    ) -> Iterator[tuple[T, Any]]:
        args: Callable[[T], tuple[Any, ...]] = (
            (lambda it: (it,)) if shared is None else (lambda it: (shared, it))
        )
        if workers == 0 or multiprocessing.current_process().daemon:
            # a daemonic process (e.g. a worker of a process pool) may not have children: the
            # same function runs here, one item after another, with the same results
            for item in items:
                yield item, fn(*args(item))
            return
        n = min(workers or os.cpu_count() or 1, len(items))
        if n == 0:
            return
        from cmrops.procpool import spawn_pool

        with spawn_pool(n) as pool:  # each worker: an n-th of this process's thread budget
            futures = {pool.submit(fn, *args(it)): (k, it) for k, it in enumerate(items)}
            try:
                for fut in cf.as_completed(futures):
                    k, item = futures[fut]
                    try:
                        result = fut.result()
                    except cf.process.BrokenProcessPool as e:
                        raise _died(fn, k, len(items), e) from e
                    yield item, result
            finally:
                for fut in futures:  # a failure or an abandoned iterator: start nothing more
                    fut.cancel()

    def actors(self, factory: Callable[[], Any], *, size: int, gpu: bool) -> Actors:
        return _InProcessActors(factory)


class _InProcessActors(Actors):
    """One object, built on first use, called synchronously in this process."""

    def __init__(self, factory: Callable[[], Any]) -> None:
        self._factory = factory
        self._obj: Any = None
        self._done: list[tuple[Any, Any]] = []

    def submit(self, key: Any, method: str, *args: Any) -> None:
        if self._obj is None:
            self._obj = self._factory()
        self._done.append((key, getattr(self._obj, method)(*args)))

    def ready(self) -> Iterator[tuple[Any, Any]]:
        while self._done:
            yield self._done.pop(0)

    def drain(self) -> Iterator[tuple[Any, Any]]:
        return self.ready()


# --------------------------------------------------------------------------- ray


def _ray_task(threads: int, fn: Callable[..., Any], *args: Any) -> Any:
    """The body of a Ray task: size its threads (:mod:`cmrops.threads`), then ``fn(*args)``."""
    from cmrops.threads import apply, detect

    apply(detect(threads).total)
    return fn(*args)


class _Host:
    """The body of a Ray actor: holds ``factory()`` and calls its methods."""

    def __init__(self, factory: Callable[[], Any], threads: int) -> None:
        from cmrops.threads import apply, detect

        apply(detect(threads).total)
        self._obj = factory()

    def call(self, method: str, *args: Any) -> Any:
        return getattr(self._obj, method)(*args)


class RayEngine(Engine):
    """Ray tasks (one CPU each) and actors, on a running cluster or a local one."""

    kind = "ray"

    def __init__(self, params: EngineParams) -> None:
        self.params = params
        self._ray: Any = None  # connected on first use: a stage with nothing to do starts nothing
        self._owned = False
        self._died_types: tuple[type[BaseException], ...] = ()

    def _connect(self) -> Any:
        if self._ray is not None:
            return self._ray
        params = self.params
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        if params.address is None:
            # Ray otherwise advertises this node on its first routable address, not loopback
            os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        try:
            import ray
        except ImportError as e:  # pragma: no cover - ray is in the pinned environment
            raise ImportError("engine kind ray needs the ray package (pip install 'ray')") from e
        if not ray.is_initialized():
            if params.address is None:
                ray.init(
                    address="local",
                    include_dashboard=False,
                    num_cpus=params.num_cpus,
                    num_gpus=params.num_gpus,
                    namespace="cmrops",
                )
            else:
                try:
                    ray.init(address=params.address, namespace="cmrops")
                except ConnectionError as e:
                    raise ConnectionError(
                        f"engine.address {params.address!r}: no Ray cluster answers there ({e});"
                        " start one with `ray start --head` or set address: null for a local one"
                    ) from e
            self._owned = True
        x = ray.exceptions
        self._died_types = (
            x.WorkerCrashedError,
            x.RayActorError,  # ActorDiedError, ActorUnavailableError
            x.NodeDiedError,
            x.OutOfMemoryError,
            x.ObjectLostError,
            x.LocalRayletDiedError,
        )
        self._ray = ray
        return ray

    def start(self) -> RayEngine:
        """Connect now (else on first use)."""
        self._connect()
        return self

    def gpus(self) -> int:
        return int(self._connect().cluster_resources().get("GPU", 0))

    def get(self, ref: Any, fn: Callable[..., Any], k: int, n: int) -> Any:
        """``ray.get`` with a dead worker turned into :class:`EngineError`."""
        ray = self._connect()
        try:
            return ray.get(ref)
        except self._died_types as e:
            raise _died(fn, k, n, type(e).__name__) from e
        except ray.exceptions.RayTaskError as e:
            cause = e.as_instanceof_cause()
            if isinstance(cause, self._died_types):
                raise _died(fn, k, n, type(cause).__name__) from e
            raise cause from None

    def map_unordered(
        self,
        fn: Callable[..., Any],
        items: Sequence[T],
        *,
        workers: int | None = None,
        shared: Any = None,
    ) -> Iterator[tuple[T, Any]]:
        if not items:
            return
        ray = self._connect()
        name = getattr(fn, "__qualname__", "task")
        task = ray.remote(_ray_task).options(
            num_cpus=1, max_retries=self.params.max_retries, name=name
        )
        head = (self.task_threads(), fn) + (() if shared is None else (ray.put(shared),))
        pending = {task.remote(*head, it): (k, it) for k, it in enumerate(items)}
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                k, item = pending.pop(done[0])
                yield item, self.get(done[0], fn, k, len(items))
        finally:
            for ref in pending:
                ray.cancel(ref, force=True)

    def task_threads(self) -> int:
        """Threads of each task and actor: the one CPU each reserves, or ``threads`` (the
        worker's ``$CMROPS_THREADS`` wins over both)."""
        return self.params.threads or 1

    def actors(self, factory: Callable[[], Any], *, size: int, gpu: bool) -> Actors:
        ray = self._connect()
        host = ray.remote(_Host).options(
            num_cpus=1, num_gpus=1 if gpu else 0, max_restarts=0, max_task_retries=0
        )
        threads = self.task_threads()
        return _RayActors(self, [host.remote(factory, threads) for _ in range(max(size, 1))])

    def close(self) -> None:
        if self._owned:
            self._ray.shutdown()
            self._owned = False
        self._ray = None


class _RayActors(Actors):
    def __init__(self, engine: RayEngine, handles: list[Any]) -> None:
        self._engine, self._handles = engine, handles
        self._load = [0] * len(handles)
        self._pending: dict[Any, tuple[Any, int]] = {}
        self._n = 0

    def submit(self, key: Any, method: str, *args: Any) -> None:
        a = min(range(len(self._handles)), key=self._load.__getitem__)
        self._load[a] += 1
        self._pending[self._handles[a].call.remote(method, *args)] = (key, a)
        self._n += 1

    def _take(self, ref: Any) -> tuple[Any, Any]:
        key, a = self._pending.pop(ref)
        self._load[a] -= 1
        return key, self._engine.get(ref, _Host.call, self._n - len(self._pending) - 1, self._n)

    def ready(self) -> Iterator[tuple[Any, Any]]:
        if not self._pending:
            return
        done, _ = self._engine._ray.wait(
            list(self._pending), num_returns=len(self._pending), timeout=0
        )
        for ref in done:
            yield self._take(ref)

    def drain(self) -> Iterator[tuple[Any, Any]]:
        while self._pending:
            done, _ = self._engine._ray.wait(list(self._pending), num_returns=1)
            yield self._take(done[0])

    def close(self) -> None:
        for h in self._handles:
            self._engine._ray.kill(h)
        self._handles, self._pending = [], {}


# --------------------------------------------------------------------------- session


_CURRENT: contextvars.ContextVar[Engine | None] = contextvars.ContextVar("engine", default=None)


def open_engine(params: EngineParams) -> Engine:
    return RayEngine(params) if params.kind == "ray" else LocalEngine(params)


@contextlib.contextmanager
def session(params: EngineParams | Engine) -> Iterator[Engine]:
    """Make an engine :func:`current` for the block (and close it after, when opened here)."""
    engine = params if isinstance(params, Engine) else open_engine(params)
    token = _CURRENT.set(engine)
    try:
        yield engine
    finally:
        _CURRENT.reset(token)
        if not isinstance(params, Engine):
            engine.close()


def current() -> Engine:
    """The engine of the enclosing :func:`session`; the local engine outside one."""
    return _CURRENT.get() or LocalEngine()
