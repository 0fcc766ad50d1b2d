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

__all__ = ["call", "handler_of", "main", "run", "thread_budget", "with_dvc_files"]


def handler_of(args: argparse.Namespace) -> Callable[[argparse.Namespace], int | None]:
    """The function ``args.handler`` (``"module:function"``) names."""
    module_name, func_name = args.handler.split(":")
    return getattr(importlib.import_module(module_name), func_name)


def run(args: argparse.Namespace) -> int:
    """Run parsed command ``args``; a pipeline stage is timed into the run log (and pushed)."""
    try:
        thread_budget(args)  # before the command imports torch or ONNX Runtime
    except ValueError as e:  # a bad $CMROPS_THREADS
        print(f"cmrops {args.command}: error: {e}", file=sys.stderr)
        return 2
    func = handler_of(args)
    if args.command in STAGES:
        from cmrops.telemetry.record import run_recorded

        return run_recorded(args, lambda: call(with_dvc_files(func), args))
    return call(func, args)


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
    FileNotFoundError, PermissionError) is one clear line on stderr and 2 (with ``-v``: the
    traceback)."""
    try:
        return int(func(args) or 0)
    except (ValueError, FileNotFoundError, PermissionError) as e:
        # Bad input or configuration: one clear line, no traceback (use -v for it).
        if args.verbose:
            raise
        print(f"cmrops {args.command}: error: {e}", file=sys.stderr)
        return 2


def configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def main(argv: Sequence[str]) -> int:
    """``cmrops <stage> --params P ...`` in this process; returns the exit code."""
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    return run(args)
