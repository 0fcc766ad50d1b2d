"""What the Airflow DAG hands to Airflow besides its tasks: the failure and deadline hooks, and
task logs for runs that have no log writer of their own.

**Failure hook** (:func:`on_failure`, every task's and the DAG's ``on_failure_callback``): one
``ERROR`` log line naming the DAG, run, task, try and error, then - when configured in the
environment of the scheduler / workers - a JSON POST to ``$CMROPS_ALERT_WEBHOOK`` (Slack-, Teams-
or Alertmanager-style receivers accept it; 5 s timeout, never raises) and an email to
``$CMROPS_ALERT_EMAIL`` through Airflow's SMTP connection (``smtp_default``). The webhook URL may
carry a token: it is never logged.

**Deadline hook** (:func:`deadline_missed`): the same alert when a run is still going
``schedule.deadline_minutes`` after it was queued (an Airflow ``DeadlineAlert``; the triggerer
runs it).

**Task logs of ``airflow dags test``** (:func:`task_log`): a real scheduler's task supervisor
writes each task's log where the UI reads it; ``airflow dags test`` (the main job) runs tasks
in-process and writes none. Around a task body, :func:`task_log` writes the task's log records
into that same file, in the JSON-lines form the UI shows, when (and only when) the task runs
in-process.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger("cmrops.alerts")

__all__ = [
    "EMAIL_ENV",
    "WEBHOOK_ENV",
    "alert",
    "deadline_missed",
    "on_failure",
    "task_log",
]

WEBHOOK_ENV = "CMROPS_ALERT_WEBHOOK"
EMAIL_ENV = "CMROPS_ALERT_EMAIL"


# --------------------------------------------------------------------------- alerts


def alert(kind: str, details: dict[str, Any]) -> dict[str, bool]:
    """Log the alert and send it to the configured receivers; which ones were reached."""
    text = f"cmrops {kind}: " + ", ".join(f"{k}={v}" for k, v in details.items() if v is not None)
    log.error(text)
    sent = {"webhook": False, "email": False}
    url = os.environ.get(WEBHOOK_ENV, "").strip()
    if url:
        import urllib.request

        payload = {"text": text, "kind": kind, **{k: _jsonable(v) for k, v in details.items()}}
        req = urllib.request.Request(
            url, json.dumps(payload).encode(), {"Content-Type": "application/json"},
            method="POST",
        )  # fmt: skip
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                sent["webhook"] = 200 <= resp.status < 300
        except Exception as e:  # an alert must never fail the callback
            log.warning("alert webhook ($%s) not reached: %s", WEBHOOK_ENV, type(e).__name__)
    to = os.environ.get(EMAIL_ENV, "").strip()
    if to:
        try:
            from airflow.providers.smtp.hooks.smtp import SmtpHook

            with SmtpHook() as smtp:
                smtp.send_email_smtp(to=to, subject=f"[cmrops] {kind}", html_content=text)
            sent["email"] = True
        except Exception as e:
            log.warning("alert email to $%s not sent: %s: %s", EMAIL_ENV, type(e).__name__, e)
    return sent


def _jsonable(v: Any) -> Any:
    return v if isinstance(v, str | int | float | bool | type(None)) else str(v)


def on_failure(context: Any) -> None:
    """``on_failure_callback`` of every task and of the DAG run."""
    ti = context.get("ti") or context.get("task_instance")
    dag_run = context.get("dag_run")
    exc = context.get("exception")
    alert(
        "task failed" if ti is not None else "run failed",
        {
            "dag_id": getattr(dag_run, "dag_id", None) or getattr(ti, "dag_id", None),
            "run_id": getattr(dag_run, "run_id", None) or getattr(ti, "run_id", None),
            "task_id": getattr(ti, "task_id", None),
            "map_index": getattr(ti, "map_index", None),
            "try_number": getattr(ti, "try_number", None),
            "error": (f"{type(exc).__name__}: {exc}"[:500] if exc else context.get("reason")),
        },
    )


async def deadline_missed(context: Any = None, **kwargs: Any) -> None:
    """A ``DeadlineAlert`` callback: the run is still going past its deadline."""
    dag_run = context.get("dag_run") if isinstance(context, dict) else None

    def get(key: str) -> Any:
        return dag_run.get(key) if isinstance(dag_run, dict) else getattr(dag_run, key, None)

    alert("deadline missed", {"dag_id": get("dag_id"), "run_id": get("run_id"), **kwargs})


# --------------------------------------------------------------------------- task logs


def _in_process() -> bool:
    """The task runs inside ``airflow dags test`` (no supervisor writes its log)."""
    try:
        from airflow.sdk.execution_time import task_runner
        from airflow.sdk.execution_time.supervisor import InProcessSupervisorComms
    except ImportError:
        return False
    return isinstance(getattr(task_runner, "SUPERVISOR_COMMS", None), InProcessSupervisorComms)


def _log_path(context: Any) -> Path:
    """Where the UI reads this try's log: ``[logging] base_log_folder`` /
    ``log_filename_template`` rendered as Airflow renders it."""
    import jinja2
    from airflow.configuration import conf

    ti = context["ti"]
    base = Path(conf.get("logging", "base_log_folder"))
    template = conf.get("logging", "log_filename_template")
    rel = jinja2.Template(template).render(ti=ti, try_number=ti.try_number)
    return base / rel


class _JsonLines(logging.Handler):
    """Log records as the JSON lines Airflow 3's task log reader parses."""

    def __init__(self, path: Path) -> None:
        super().__init__(logging.INFO)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = path.open("a", encoding="utf-8")

    def write_event(self, created: float, level: str, logger: str, event: str) -> None:
        line = {
            "timestamp": dt.datetime.fromtimestamp(created, dt.UTC).isoformat(),
            "level": level,
            "logger": logger,
            "event": event,
        }
        self._fh.write(json.dumps(line) + "\n")
        self._fh.flush()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            event = record.getMessage()
            if record.exc_info and record.exc_info[1] is not None:
                event += f"\n{type(record.exc_info[1]).__name__}: {record.exc_info[1]}"
            self.write_event(record.created, record.levelname.lower(), record.name, event)
        except Exception:
            self.handleError(record)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._fh.close()
        super().close()


class _Tee(io.TextIOBase):
    """A text stream that passes writes on and logs each whole line (what a stage prints)."""

    def __init__(self, inner: Any, handler: _JsonLines, level: str) -> None:
        self._inner, self._handler, self._level, self._buf = inner, handler, level, ""

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        self._inner.write(s)
        self._buf += s
        *lines, self._buf = self._buf.split("\n")
        for line in lines:
            if line.strip():
                self._handler.write_event(time.time(), self._level, "stdout", line)
        return len(s)

    def flush(self) -> None:
        self._inner.flush()


@contextlib.contextmanager
def task_log(context: Any) -> Iterator[None]:
    """Write the block's log records to the task's log file when it runs in-process (``airflow
    dags test``); a no-op under a real supervisor, which writes that file itself."""
    if not _in_process():
        yield
        return
    try:
        handler: _JsonLines | None = _JsonLines(_log_path(context))
    except Exception as e:  # a log file is a convenience: never fail the task for it
        logging.getLogger(__name__).warning("task log file not written: %s", e)
        handler = None
    if handler is None:
        yield
        return
    root = logging.getLogger()
    root.addHandler(handler)
    level = root.level
    root.setLevel(min(level, logging.INFO) if level else logging.INFO)
    try:
        with contextlib.redirect_stdout(_Tee(sys.stdout, handler, "info")), \
                contextlib.redirect_stderr(_Tee(sys.stderr, handler, "warning")):
            yield
    except BaseException:
        logging.getLogger("cmrops.task").exception("task failed")
        raise
    finally:
        root.setLevel(level)
        root.removeHandler(handler)
        handler.close()
