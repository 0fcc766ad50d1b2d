"""Running one stage command in this process, as ``cmrops <stage> ...`` does.

:func:`main` parses the arguments with the stage table's parser
(:func:`cmrops.stage_table.build_parser`), sizes the process's threads from ``engine.threads``
of the command's params file (:func:`thread_budget`, before the handler imports torch or ONNX
Runtime), imports the stage's handler and runs it timed and recorded into the run log
(:func:`cmrops.telemetry.record.run_recorded`), then writes what DVC sees of it (its digest
and plot tables, :func:`with_dvc_files`); :func:`call` maps bad input or configuration to one
clear line and exit code 2. The CLI (:mod:`cmrops.cli`) and the
DAG's tasks (:func:`cmrops.pipeline.run_stage`) both run stages through here, so neither imports
the other.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import sys
from collections.abc import Callable, Sequence

from cmrops.stage_table import STAGES, build_parser

__all__ = [
    "RedactingFilter",
    "call",
    "configure_logging",
    "handler_of",
    "main",
    "redact_logs",
    "run",
    "sweep_killed_writes",
    "thread_budget",
    "with_dvc_files",
]


def handler_of(args: argparse.Namespace) -> Callable[[argparse.Namespace], int | None]:
    """The function ``args.handler`` (``"module:function"``) names."""
    module_name, func_name = args.handler.split(":")
    return getattr(importlib.import_module(module_name), func_name)


def run(args: argparse.Namespace) -> int:
    """Run parsed command ``args``; a pipeline stage runs under its stage lock (one copy at a
    time per output folder: a second Airflow attempt waits for the first), after the temporary
    files of killed writes are swept from its outputs, timed into the run log (and pushed)."""
    try:
        thread_budget(args)  # before the command imports torch or ONNX Runtime
    except ValueError as e:  # a bad $CMROPS_THREADS
        print(f"cmrops {args.command}: error: {e}", file=sys.stderr)
        return 2
    func = handler_of(args)
    if args.command in STAGES:
        from cmrops.locks import stage_lock
        from cmrops.telemetry.record import project_root, run_recorded

        output = next(
            getattr(args, a) for a in ("out", "models", "metrics") if getattr(args, a, None)
        )
        with stage_lock(project_root(output, args.params), args.command, output):
            sweep_killed_writes(args)
            return run_recorded(args, lambda: call(with_dvc_files(func), args))
    return call(func, args)


def sweep_killed_writes(args: argparse.Namespace) -> None:
    """Temporary files of writes a killed run left in this stage's output folders: removed
    before it runs again, so none is ever versioned as part of an output (the stage lock is
    held: no live write of this stage is there)."""
    from pathlib import Path

    from cmrops.io import sweep_temporary

    for attr in ("out", "models", "codes", "plots"):
        folder = getattr(args, attr, None)
        if folder and Path(folder).is_dir():
            # preprocess's shards are written by fan-out tasks that hold no stage lock: it
            # sweeps them itself when it plans
            n = sweep_temporary(folder, skip=frozenset({"shards"}))
            if n:
                logging.getLogger("cmrops").info("removed %d temporary file(s) in %s", n, folder)


def thread_budget(args: argparse.Namespace) -> None:
    """Size this process's threads (:mod:`cmrops.threads`) from ``engine.threads`` of the
    command's params file (``$CMROPS_THREADS`` wins; neither: the CPUs it may use)."""
    from cmrops import threads

    setting = None
    if getattr(args, "params", None):
        from cmrops.engine import SECTION, EngineParams
        from cmrops.params import load_section

        with contextlib.suppress(ValueError, FileNotFoundError):  # the command reports those
            setting = load_section(args.params, SECTION, EngineParams).threads
    threads.configure(setting)


def with_dvc_files(
    func: Callable[[argparse.Namespace], int | None],
) -> Callable[[argparse.Namespace], int | None]:
    """The stage command, then what DVC sees of it (its digest and plot tables) when asked."""

    def stage(args: argparse.Namespace) -> int:
        rc = int(func(args) or 0)
        digest, plots = getattr(args, "digest", None), getattr(args, "plots", None)
        if rc == 0 and (digest or plots):
            from cmrops import digest as digests
            from cmrops import plot_tables
            from cmrops.telemetry.record import metrics_file_of

            record = metrics_file_of(args)
            assert record is not None, f"{args.command} names no metrics record"
            if digest:
                digests.write(args.command, record, digest)
            if plots:
                plot_tables.write(args.command, record, plots)
        return rc

    return stage


def call(func: Callable[[argparse.Namespace], int | None], args: argparse.Namespace) -> int:
    """``func(args)`` as an exit code: bad input or configuration (ValueError,
    FileNotFoundError, PermissionError) is one clear line on stderr and 2, any other OS error
    (a full disk, a failing device) one line with the path and 1 (with ``-v``: the traceback).
    Credentials in a URL are masked."""
    from cmrops.errors import os_error_line
    from cmrops.redaction import redact

    try:
        return int(func(args) or 0)
    except (ValueError, FileNotFoundError, PermissionError) as e:
        # Bad input or configuration: one clear line, no traceback (use -v for it).
        if args.verbose:
            raise
        print(f"cmrops {args.command}: error: {redact(str(e))}", file=sys.stderr)
        return 2
    except OSError as e:
        # The machine, not the input: a full disk, a read-only or failing device. One line with
        # the path and what to do; exit 1 (a retry after the cause is fixed may succeed).
        if args.verbose:
            raise
        out = getattr(args, "out", None) or getattr(args, "metrics", None)
        print(f"cmrops {args.command}: error: {os_error_line(e, out)}", file=sys.stderr)
        return 1


def configure_logging(verbose: bool) -> None:
    """Log to stderr (debug with ``-v``), credentials in URLs masked (:class:`RedactingFilter`)."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    redact_logs()


class RedactingFilter(logging.Filter):
    """Masks URL credentials in every record a handler emits (message and arguments)."""

    def filter(self, record: logging.LogRecord) -> bool:
        from cmrops.redaction import redact

        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


def redact_logs() -> None:
    """Install :class:`RedactingFilter` on the root logger's handlers (once): credentials in a
    URL that a library logs (botocore, dvc, urllib3) never reach the log either."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())


def main(argv: Sequence[str]) -> int:
    """``cmrops <stage> --params P ...`` in this process; returns the exit code."""
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    return run(args)


#: Set by :func:`cmrops.pipeline.run_isolated`: the pid of the process that started this one,
#: which this one outlives by at most a moment.
PARENT_ENV = "CMROPS_PARENT_PID"


if __name__ == "__main__":  # a stage in a process of its own (cmrops.pipeline.run_isolated)
    import os

    parent = os.environ.get(PARENT_ENV)
    if parent and parent.isdigit():
        from cmrops.procpool import exit_with_parent

        exit_with_parent(int(parent))
    sys.exit(main(sys.argv[1:]))
