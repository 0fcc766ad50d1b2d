"""A real multi-process Airflow 3 deployment for tests (no tests here).

:class:`AirflowCluster` starts, each in its own process group with its log in ``home/logs/``:

* the metadata DB: SQLite in ``home`` (``airflow db migrate``, WAL journal). Airflow 3 accepts it
  with every executor: task processes never open the DB, they talk to the API server's execution
  API, so only the scheduler, DAG processor and API server (all on this machine) use the file;
* the ``gpu`` pool (one slot, as ``scripts/airflow_env.sh --init`` makes it);
* ``airflow api-server`` (REST API + execution API, on a free loopback port);
* ``airflow scheduler`` and ``airflow dag-processor`` (DAGs from ``project/dags``);
* with ``executor="CeleryExecutor"``: ``redis-server`` on a free loopback port (broker and result
  backend) and one ``airflow celery worker`` per :class:`Worker`, each with its *own*
  ``AIRFLOW_HOME`` (``home/workers/<name>``, task logs there), ``CMROPS_PROJECT`` (its DAG folder
  and work folder) and cwd: the workers share no folder with each other or with the scheduler.

Task instances record the worker's :attr:`Worker.name` as their ``hostname``
(``[core] hostname_callable`` = :func:`hostname`), so a test can tell which worker ran what.

Usage::

    with AirflowCluster(tmp / "af", project, executor="CeleryExecutor",
                        workers=[Worker("a", proj_a), Worker("b", proj_b)], env=s3_env) as af:
        af.unpause()
        run_id = af.trigger({"push": False})
        state = af.wait(run_id)                      # "success" / "failed"
        assert state == "success", af.describe(run_id)
        hosts = {ti["hostname"] for ti in af.task_instances(run_id)}
        af.kill_worker("a")                          # SIGKILL its whole process group

``executor="LocalExecutor"`` (``workers=[]``) gives a scheduler-driven deployment for scheduled
runs: the scheduler runs the tasks itself, in ``project``.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
HOSTNAME_ENV = "AIRFLOW_CLUSTER_HOSTNAME"
TERMINAL = frozenset({"success", "failed"})
#: SQLite waits for a lock instead of failing at once (the scheduler, DAG processor and API
#: server write the same file; a loaded machine can hold a lock for seconds).
SQLITE_CONNECT_ARGS: dict[str, Any] = {"timeout": 60}


def hostname() -> str:
    """``[core] hostname_callable`` of the cluster: the worker's name, else the machine's."""
    return os.environ.get(HOSTNAME_ENV) or socket.getfqdn()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ClusterError(AssertionError):
    """A component did not start, died, or a run did not finish in time (the message carries
    the tails of the component logs)."""


@dataclass
class Worker:
    """One ``airflow celery worker``: ``name`` (Celery node ``name@host`` and the task instances'
    hostname), ``project`` (its own copy of the project: ``CMROPS_PROJECT``, DAG folder, cwd),
    the queues it consumes, its Celery pool (Airflow's default ``prefork``) and concurrency
    (tasks at a time), and extra environment."""

    name: str
    project: Path
    queues: tuple[str, ...] = ("default",)
    pool: str = "prefork"
    concurrency: int = 1
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class _Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None


class AirflowCluster:
    """Context manager: ``__enter__`` starts everything and waits until the DAG ``dag_id`` is
    parsed and every worker is ready; ``__exit__`` (or :meth:`close`) stops every process group.

    ``env`` is added to every component's environment (e.g. S3 endpoint and credentials, or
    ``AIRFLOW__...`` overrides); a :class:`Worker`'s own ``env`` comes on top for that worker."""

    def __init__(
        self,
        home: Path,
        project: Path,
        executor: str = "CeleryExecutor",
        workers: list[Worker] | None = None,
        env: Mapping[str, str] | None = None,
        dag_id: str = "cmrops_pipeline",
        start_timeout: float = 600,
    ) -> None:
        self.home = Path(home).resolve()
        self.project = Path(project).resolve()
        self.executor = executor
        self.workers = {w.name: w for w in workers or []}
        self.extra_env = dict(env or {})
        self.dag_id = dag_id
        self.start_timeout = start_timeout
        self.celery = executor.rsplit(".", 1)[-1] == "CeleryExecutor"
        if self.workers and not self.celery:
            raise ValueError(f"workers are Celery workers: executor is {executor}")
        self.logs = self.home / "logs"
        self.api_port = free_port()
        self.redis_port = free_port() if self.celery else 0
        self.api_url = f"http://127.0.0.1:{self.api_port}"
        self._jwt_secret = secrets.token_hex(32)
        self._secret_key = secrets.token_hex(16)
        self._procs: dict[str, _Proc] = {}
        self._ready_offset: dict[str, int] = {}  # worker -> its log's size when (re)started
        self._stopped: set[str] = set()  # components stopped on purpose (kill/stop_worker)
        self._token = ""

    # ------------------------------------------------------------------ environment

    def _base_env(self, airflow_home: Path, project: Path) -> dict[str, str]:
        e = dict(os.environ)
        pythonpath = [str(REPO), *filter(None, [e.get("PYTHONPATH", "")])]
        e.update(
            PATH=f"{BIN}{os.pathsep}{e.get('PATH', '')}",
            PYTHONPATH=os.pathsep.join(pythonpath),
            NO_PROXY="127.0.0.1,localhost",
            no_proxy="127.0.0.1,localhost",
            DVC_NO_ANALYTICS="1",
            GIT_TERMINAL_PROMPT="0",
            AIRFLOW_HOME=str(airflow_home),
            CMROPS_PROJECT=str(project),
            AIRFLOW__CORE__DAGS_FOLDER=str(project / "dags"),
            AIRFLOW__CORE__EXECUTOR=self.executor,
            AIRFLOW__CORE__LOAD_EXAMPLES="False",
            AIRFLOW__CORE__UNIT_TEST_MODE="False",
            AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT="120",
            AIRFLOW__CORE__HOSTNAME_CALLABLE=f"{__name__}.hostname",
            AIRFLOW__CORE__EXECUTION_API_SERVER_URL=f"{self.api_url}/execution/",
            AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS="True",
            AIRFLOW__API__HOST="127.0.0.1",
            AIRFLOW__API__PORT=str(self.api_port),
            AIRFLOW__API__WORKERS="1",
            AIRFLOW__API__SECRET_KEY=self._secret_key,
            AIRFLOW__API_AUTH__JWT_SECRET=self._jwt_secret,
            AIRFLOW__LOGGING__LOGGING_LEVEL="INFO",
            # a task whose process died (worker SIGKILLed) is failed (and retried) after a
            # minute, not the default five
            AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT="60",
            AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL="5",
        )
        for key in [k for k in e if k.startswith(("AIRFLOW__DATABASE__", "AIRFLOW__CELERY__"))]:
            del e[key]  # the outer shell's settings never leak in
        if self.celery:
            e.update(
                AIRFLOW__CELERY__BROKER_URL=f"redis://127.0.0.1:{self.redis_port}/0",
                AIRFLOW__CELERY__RESULT_BACKEND=f"redis://127.0.0.1:{self.redis_port}/1",
            )
        e.update(self.extra_env)
        return e

    def control_env(self) -> dict[str, str]:
        """The environment of the scheduler, DAG processor, API server and CLI calls."""
        e = self._base_env(self.home, self.project)
        e.update(
            AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{self.home}/airflow.db",
            AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS=f"{__name__}.SQLITE_CONNECT_ARGS",
        )
        e.setdefault(HOSTNAME_ENV, "control")
        return e

    def worker_env(self, w: Worker) -> dict[str, str]:
        """A worker's environment: its own home and project; no metadata DB at all (a DB URL
        pointing into its own empty home, never opened)."""
        home = self.home / "workers" / w.name
        e = self._base_env(home, w.project)
        e.update(
            AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{home}/unused.db",
            AIRFLOW__CELERY__POOL=w.pool,
            AIRFLOW__CELERY__WORKER_CONCURRENCY=str(w.concurrency),
        )
        e[HOSTNAME_ENV] = w.name
        e.update(w.env)
        return e

    # ------------------------------------------------------------------ processes

    def _spawn(self, name: str, args: list[str], env: dict[str, str], cwd: Path) -> _Proc:
        old = self._procs.get(name)
        if old is not None and old.alive:
            raise ClusterError(f"{name} is running already")
        self.logs.mkdir(parents=True, exist_ok=True)
        log = self.logs / f"{name}.log"
        with log.open("ab") as out:
            popen = subprocess.Popen(
                args,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stopped as one
            )
        proc = _Proc(name, popen, log)
        self._procs[name] = proc
        return proc

    def airflow(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """Run an ``airflow`` CLI command against the metadata DB (raises on failure)."""
        proc = subprocess.run(
            ["airflow", *args],
            cwd=self.project,
            env=self.control_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if proc.returncode:
            raise ClusterError(
                f"airflow {' '.join(args)} failed ({proc.returncode}):\n"
                f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
            )
        return proc

    def start(self) -> AirflowCluster:
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def _start(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self.start_timeout
        if self.celery:
            self._spawn(
                "redis",
                [
                    "redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1",
                    "--save", "", "--appendonly", "no", "--dir", str(self.home),
                ],
                dict(os.environ),
                self.home,
            )  # fmt: skip
        self.airflow("db", "migrate", timeout=max(60.0, deadline - time.monotonic()))
        with contextlib.closing(sqlite3.connect(self.home / "airflow.db")) as db:
            db.execute("PRAGMA journal_mode=WAL")  # readers do not block the writer
        self.airflow("pools", "set", "gpu", "1", "GPU steps (train): one at a time")
        control = self.control_env()
        self._spawn("api-server", ["airflow", "api-server"], control, self.project)
        self._spawn("scheduler", ["airflow", "scheduler"], control, self.project)
        self._spawn("dag-processor", ["airflow", "dag-processor"], control, self.project)
        for name in self.workers:
            self.start_worker(name, wait=False)
        self._wait_for(self._api_up, deadline, "the API server to answer")
        self._wait_for(self._dag_parsed, deadline, f"DAG {self.dag_id} to be parsed")
        self.wait_workers(deadline - time.monotonic())

    def start_worker(self, worker: Worker | str, wait: bool = True) -> None:
        """Start a Celery worker: a new :class:`Worker` (replacing a stopped one of that name), or
        the one named (again, after :meth:`kill_worker` / :meth:`stop_worker`)."""
        if isinstance(worker, Worker):
            if not self.celery:
                raise ValueError(f"workers are Celery workers: executor is {self.executor}")
            self.workers[worker.name] = worker
        w = self.workers[worker.name if isinstance(worker, Worker) else worker]
        env = self.worker_env(w)
        Path(env["AIRFLOW_HOME"]).mkdir(parents=True, exist_ok=True)
        log = self.logs / f"worker-{w.name}.log"
        self._ready_offset[w.name] = log.stat().st_size if log.exists() else 0
        self._stopped.discard(f"worker-{w.name}")
        self._spawn(
            f"worker-{w.name}",
            [
                "airflow", "celery", "worker", "--celery-hostname", f"{w.name}@%h",
                "--queues", ",".join(w.queues), "--concurrency", str(w.concurrency),
                "--skip-serve-logs", "--without-mingle", "--without-gossip",
            ],
            env,
            w.project,
        )  # fmt: skip
        if wait:
            self.wait_workers()

    def wait_workers(self, timeout: float | None = None) -> None:
        """Wait until every started worker logged that it is ready to consume tasks."""
        deadline = time.monotonic() + (self.start_timeout if timeout is None else timeout)
        for name in self.workers:
            if f"worker-{name}" in self._procs and f"worker-{name}" not in self._stopped:
                self._wait_for(lambda n=name: self._worker_ready(n), deadline, f"worker {name}")

    def _worker_ready(self, name: str) -> bool:
        log = self.logs / f"worker-{name}.log"
        if not log.exists():
            return False
        with log.open("rb") as f:
            f.seek(self._ready_offset.get(name, 0))
            return b" ready." in f.read()

    def kill_worker(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to the worker's whole process group (Celery, its pool and the task
        processes it is running) and wait until every process of it is gone."""
        proc = self._procs[f"worker-{name}"]
        self._stopped.add(proc.name)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.popen.pid, sig)
        proc.popen.wait(timeout=120)
        if not self._wait_group_gone(proc.popen.pid, 60):
            raise ClusterError(f"worker {name}: processes left after signal {sig}")

    def stop_worker(self, name: str, timeout: float = 120) -> None:
        """Warm shutdown (SIGTERM: Celery finishes its running tasks), SIGKILL after
        ``timeout``."""
        proc = self._procs[f"worker-{name}"]
        self._stopped.add(proc.name)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.popen.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.popen.wait(timeout=timeout)
        self.kill_worker(name)  # whatever is left of the group

    def alive(self) -> dict[str, bool]:
        """Component name -> whether its process still runs."""
        return {name: p.alive for name, p in self._procs.items()}

    def close(self) -> None:
        """Stop every process group: SIGTERM, then SIGKILL what is left after 30 s. Idempotent;
        raises when a process group survives both."""
        procs = list(self._procs.values())
        for p in reversed(procs):  # workers first, Redis last
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.popen.pid, signal.SIGTERM)
        end = time.monotonic() + 30
        for p in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.popen.wait(timeout=max(0.1, end - time.monotonic()))
        survivors = []
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.popen.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.popen.wait(timeout=30)
            if not self._wait_group_gone(p.popen.pid, 30):
                survivors.append(p.name)
        if survivors:
            raise ClusterError(f"process groups left running: {survivors}")

    @staticmethod
    def _wait_group_gone(pgid: int, timeout: float) -> bool:
        """Whether no process of group ``pgid`` is left within ``timeout`` seconds."""
        end = time.monotonic() + timeout
        while True:
            try:
                os.killpg(pgid, 0)
            except (ProcessLookupError, PermissionError):  # gone (or the id now is another's)
                return True
            if time.monotonic() > end:
                return False
            time.sleep(0.2)

    def __enter__(self) -> AirflowCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ REST API

    def api(self, method: str, path: str, body: Any = None, timeout: float = 60) -> Any:
        """One call to the REST API (``/api/v2`` + ``path``); the decoded JSON answer."""
        if not self._token:
            self._token = str(self._request("GET", "/auth/token", None, timeout)["access_token"])
        return self._request(method, f"/api/v2{path}", body, timeout)

    def _request(self, method: str, path: str, body: Any, timeout: float) -> Any:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.api_url + path, data, headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                text = resp.read().decode()
        except urllib.error.HTTPError as e:
            detail = e.read().decode(errors="replace")[:2000]
            raise ClusterError(f"{method} {path}: HTTP {e.code}: {detail}") from e
        return json.loads(text) if text else None

    def _api_up(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.api_url}/api/v2/monitor/health", timeout=10):
                return True
        except (OSError, urllib.error.URLError):
            return False

    def _dag_parsed(self) -> bool:
        try:
            self.api("GET", f"/dags/{self.dag_id}")
            return True
        except ClusterError as e:
            if "HTTP 404" in str(e):
                return False
            raise

    def _wait_for(self, ready: Any, deadline: float, what: str) -> None:
        while not ready():
            dead = [n for n, a in self.alive().items() if not a and n not in self._stopped]
            if dead:
                raise ClusterError(f"while waiting for {what}: {dead} exited\n{self.log_tails()}")
            if time.monotonic() > deadline:
                raise ClusterError(f"timed out waiting for {what}\n{self.log_tails()}")
            time.sleep(1)

    def pause(self) -> None:
        self.api("PATCH", f"/dags/{self.dag_id}", {"is_paused": True})

    def unpause(self) -> None:
        self.api("PATCH", f"/dags/{self.dag_id}", {"is_paused": False})

    def trigger(self, conf: Mapping[str, Any] | None = None, run_id: str | None = None) -> str:
        """Trigger a run now with ``conf`` (the DAG must be unpaused to run); its ``run_id``."""
        body: dict[str, Any] = {"logical_date": None, "conf": dict(conf or {})}
        if run_id:
            body["dag_run_id"] = run_id
        return str(self.api("POST", f"/dags/{self.dag_id}/dagRuns", body)["dag_run_id"])

    def runs(self) -> list[dict[str, Any]]:
        """Every run of the DAG (``dag_run_id``, ``state``, ``run_type``, dates, ``conf``...),
        oldest first."""
        out = self.api("GET", f"/dags/{self.dag_id}/dagRuns?limit=1000&order_by=run_after")
        return list(out["dag_runs"])

    def run(self, run_id: str) -> dict[str, Any]:
        return dict(self.api("GET", f"/dags/{self.dag_id}/dagRuns/{run_id}"))

    def wait(self, run_id: str, timeout: float = 1200, poll: float = 3) -> str:
        """Poll until the run is in a terminal state (or ``timeout`` seconds pass: ClusterError
        with the logs); the state. Fails early when a component process died."""
        deadline = time.monotonic() + timeout
        while True:
            state = str(self.run(run_id)["state"])
            if state in TERMINAL:
                return state
            dead = [n for n, a in self.alive().items() if not a and not n.startswith("worker-")]
            if dead:
                raise ClusterError(f"{dead} exited during run {run_id}\n{self.describe(run_id)}")
            if time.monotonic() > deadline:
                raise ClusterError(f"run {run_id} still {state} after {timeout}s\n"
                                   f"{self.describe(run_id)}")  # fmt: skip
            time.sleep(poll)

    def task_instances(self, run_id: str) -> list[dict[str, Any]]:
        """Every task instance of the run, mapped ones included (``task_id``, ``map_index``,
        ``state``, ``hostname``, ``try_number``...)."""
        path = f"/dags/{self.dag_id}/dagRuns/{run_id}/taskInstances?limit=1000"
        return list(self.api("GET", path)["task_instances"])

    def task_states(self, run_id: str) -> dict[str, str | None]:
        """``task_id`` (``task_id[i]`` for mapped ones) -> state."""
        return {_ti_key(ti): ti["state"] for ti in self.task_instances(run_id)}

    def tries(self, run_id: str, task_id: str, map_index: int = -1) -> list[dict[str, Any]]:
        """Every try of one task instance, oldest first (``try_number``, ``state``,
        ``hostname``)."""
        path = f"/dags/{self.dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/{map_index}/tries"
        return list(self.api("GET", path)["task_instances"])

    # ------------------------------------------------------------------ diagnostics

    def log_tails(self, chars: int = 3000) -> str:
        """The end of every component's log."""
        parts = []
        for p in self._procs.values():
            text = p.log.read_text(errors="replace") if p.log.exists() else ""
            state = "running" if p.alive else f"exited {p.popen.returncode}"
            parts.append(f"----- {p.name} ({state}; {p.log}) -----\n{text[-chars:]}")
        return "\n".join(parts)

    def task_logs(self, chars: int = 3000) -> str:
        """The end of every task log the workers (or the scheduler) wrote, one line per event
        (Airflow 3 writes them as JSON lines), errors with their exception."""
        homes = [self.home, *(self.home / "workers" / n for n in self.workers)]
        parts = []
        for home in homes:
            for f in sorted((home / "logs").rglob("*.log")) if (home / "logs").is_dir() else []:
                lines = [_log_line(line) for line in f.read_text(errors="replace").splitlines()]
                parts.append(f"----- {f} -----\n" + "\n".join(lines)[-chars:])
        return "\n".join(parts)

    def describe(self, run_id: str) -> str:
        """Task states and hosts of a run, then the task logs and component logs: for assertion
        messages."""
        try:
            tis = "\n".join(
                f"  {_ti_key(ti):<24} {ti['state']!s:<16} try {ti['try_number']} "
                f"on {ti['hostname'] or '-'}"
                for ti in self.task_instances(run_id)
            )
        except Exception as e:  # the API server may be the thing that died
            tis = f"  (task instances unavailable: {e})"
        return f"run {run_id}:\n{tis}\n{self.task_logs()}\n{self.log_tails()}"


def _log_line(line: str) -> str:
    try:
        d = json.loads(line)
    except ValueError:
        return line
    if not isinstance(d, dict):
        return line
    text = f"{d.get('timestamp', '')} {d.get('level', '')} {d.get('event', '')}"
    for err in d.get("error_detail") or []:
        frames = err.get("frames") or [{}]
        last = frames[-1]
        text += (
            f"\n    {err.get('exc_type')}: {err.get('exc_value')} "
            f"(at {last.get('filename')}:{last.get('lineno')})"
        )
    return text


def _ti_key(ti: Mapping[str, Any]) -> str:
    mi = ti.get("map_index", -1)
    return str(ti["task_id"]) if mi is None or mi < 0 else f"{ti['task_id']}[{mi}]"
