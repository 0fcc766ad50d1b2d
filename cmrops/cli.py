"""``cmrops`` command line: a thin shell that parses arguments and calls one library function.

Stage commands share one shape so ``dvc.yaml`` can spell every input and output path::

    cmrops collect    --params params.yaml --out data/raw
    cmrops preprocess --params params.yaml --raw data/raw --out data/interim

Heavy modules are imported only inside the command that needs them.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cmrops", description=__doc__.split("\n\n")[0])
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser("demo", help="demonstrate the Hamming engine on generated codes")
    demo.add_argument("--n", type=int, default=200_000, help="database size (default 200000)")
    demo.add_argument("--bits", type=int, default=64, help="code length, a multiple of 64")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(handler="cmrops.demo:main")

    collect = sub.add_parser("collect", help="gather image-text pairs from the sources in params")
    collect.add_argument("--params", default="params.yaml")
    collect.add_argument("--out", default="data/raw", help="output folder (data/raw)")
    collect.set_defaults(handler="cmrops.stages.collect:cli_main")

    pre = sub.add_parser("preprocess", help="decode, hash, normalise and embed collected samples")
    pre.add_argument("--params", default="params.yaml")
    pre.add_argument("--raw", default="data/raw", help="collect's output folder")
    pre.add_argument("--out", default="data/interim", help="output folder (data/interim)")
    pre.set_defaults(handler="cmrops.stages.preprocess:cli_main")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    module_name, func_name = args.handler.split(":")
    func = getattr(importlib.import_module(module_name), func_name)
    try:
        return int(func(args) or 0)
    except (ValueError, FileNotFoundError, PermissionError) as e:
        # Bad input or configuration: one clear line, no traceback (use -v for it).
        if args.verbose:
            raise
        print(f"cmrops {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
