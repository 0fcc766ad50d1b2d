"""Running one stage command in this process, as ``cmrops <stage> ...`` does.

:func:`main` parses the arguments with the stage table's parser
(:func:`cmrops.stage_table.build_parser`), imports the stage's handler and runs it timed and
recorded into the run log (:func:`cmrops.telemetry.record.run_recorded`); :func:`call` maps bad
input or configuration to one clear line and exit code 2. The CLI (:mod:`cmrops.cli`) and the
DAG's tasks (:func:`cmrops.pipeline.run_stage`) both run stages through here, so neither imports
the other.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Sequence

from cmrops.stage_table import STAGES, build_parser

__all__ = ["call", "handler_of", "main", "run"]


def handler_of(args: argparse.Namespace) -> Callable[[argparse.Namespace], int | None]:
    """The function ``args.handler`` (``"module:function"``) names."""
    module_name, func_name = args.handler.split(":")
    return getattr(importlib.import_module(module_name), func_name)


def run(args: argparse.Namespace) -> int:
    """Run parsed command ``args``; a pipeline stage is timed into the run log (and pushed)."""
    func = handler_of(args)
    if args.command in STAGES:
        from cmrops.telemetry.record import run_recorded

        return run_recorded(args, lambda: call(func, args))
    return call(func, args)


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
