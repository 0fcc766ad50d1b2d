"""``cmrops`` command line: a thin shell that parses arguments and calls one library function.

Stage commands share one shape so ``dvc.yaml`` can spell every input and output path::

    cmrops collect    --params params.yaml --out data/raw
    cmrops preprocess --params params.yaml --raw data/raw --out data/interim
    cmrops align      --params params.yaml --interim data/interim --raw data/raw --out data/align
    cmrops label      --params params.yaml --interim data/interim --align data/align
                      --out data/labelled
    cmrops clean      --params params.yaml --interim data/interim --align data/align
                      --labelled data/labelled --raw data/raw --out data/clean
                      --metrics metrics/quality.json
    cmrops split      --params params.yaml --clean data/clean --labelled data/labelled
                      --out data/split --metrics metrics/split.json
    cmrops train      --params params.yaml --split data/split --clean data/clean
                      --interim data/interim --labelled data/labelled --models models
                      --codes data/codes --metrics metrics/train.json
    cmrops evaluate   --params params.yaml --codes data/codes --labelled data/labelled
                      --split data/split --metrics metrics/retrieval.json --plots plots
                      --train-metrics metrics/train.json
    cmrops storage check [--url URL | --remote NAME]
    cmrops pipeline summary [--work .]
    cmrops metrics serve [--project .] [--host 127.0.0.1] [--port 9108]
    cmrops metrics push [--project .] [--gateway URL] [--job cmrops]

Heavy modules are imported only inside the command that needs them.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Sequence


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

    align = sub.add_parser(
        "align", help="a shared image-text space: learned heads or the encoder's"
    )
    align.add_argument("--params", default="params.yaml")
    align.add_argument("--interim", default="data/interim", help="preprocess's output folder")
    align.add_argument("--raw", default="data/raw", help="collect's folder (synthetic truth)")
    align.add_argument("--out", default="data/align", help="output folder (data/align)")
    align.set_defaults(handler="cmrops.stages.align:cli_main")

    label = sub.add_parser("label", help="label samples: source, keywords, zero-shot, manual")
    label.add_argument("--params", default="params.yaml")
    label.add_argument("--interim", default="data/interim", help="preprocess's output folder")
    label.add_argument("--align", default="data/align", help="align's output folder")
    label.add_argument("--out", default="data/labelled", help="output folder (data/labelled)")
    label.set_defaults(handler="cmrops.stages.label:cli_main")

    clean = sub.add_parser("clean", help="drop duplicates, broken pairs and off-topic samples")
    clean.add_argument("--params", default="params.yaml")
    clean.add_argument("--interim", default="data/interim", help="preprocess's output folder")
    clean.add_argument("--align", default="data/align", help="align's output folder")
    clean.add_argument("--labelled", default="data/labelled", help="label's output folder")
    clean.add_argument("--raw", default="data/raw", help="collect's folder (synthetic truth)")
    clean.add_argument("--out", default="data/clean", help="output folder (data/clean)")
    clean.add_argument("--metrics", default="metrics/quality.json", help="metrics file")
    clean.set_defaults(handler="cmrops.stages.clean:cli_main")

    split = sub.add_parser("split", help="group-aware stratified splits with a leakage audit")
    split.add_argument("--params", default="params.yaml")
    split.add_argument("--clean", default="data/clean", help="clean's output folder")
    split.add_argument("--labelled", default="data/labelled", help="label's output folder")
    split.add_argument("--out", default="data/split", help="output folder (data/split)")
    split.add_argument("--metrics", default="metrics/split.json", help="metrics file")
    split.set_defaults(handler="cmrops.stages.split:cli_main")

    train = sub.add_parser("train", help="train cross-modal hashing models and write their codes")
    train.add_argument("--params", default="params.yaml")
    train.add_argument("--split", default="data/split", help="split's output folder")
    train.add_argument("--clean", default="data/clean", help="clean's output folder")
    train.add_argument("--interim", default="data/interim", help="preprocess's output folder")
    train.add_argument("--labelled", default="data/labelled", help="label's output folder")
    train.add_argument("--models", default="models", help="checkpoint folders (models)")
    train.add_argument("--codes", default="data/codes", help="output folder (data/codes)")
    train.add_argument("--metrics", default="metrics/train.json", help="metrics file")
    train.add_argument(
        "--raw", default=None, help="collect's output folder: images for finetune_encoder"
    )
    train.add_argument(
        "--restart", action="store_true", help="discard existing checkpoints, train from scratch"
    )
    train.set_defaults(handler="cmrops.stages.train:cli_main")

    imp = sub.add_parser(
        "import-benchmark",
        help="import a cross-modal hashing benchmark (.mat/.h5 features: MIRFlickr, NUS-WIDE, ...)",
    )
    imp.add_argument("files", nargs="+", help="the benchmark's .mat / .h5 file(s)")
    imp.add_argument("--out", required=True, help="folder to write clean/interim/labelled/split")
    imp.add_argument("--name", default=None, help="dataset name (default: from the file name)")
    imp.add_argument("--query", type=int, default=2000, help="query size, if no fixed split")
    imp.add_argument("--train", type=int, default=10000, help="training set size (idem)")
    imp.add_argument("--seed", type=int, default=0)
    imp.add_argument("--no-normalize", action="store_true", help="keep features unnormalised")
    imp.add_argument(
        "--near-duplicate-cosine",
        type=float,
        default=0.99,
        help="cosine from which a database row makes a query a near-duplicate one",
    )
    imp.set_defaults(handler="cmrops.benchmarks_data:cli_main")

    ev = sub.add_parser("evaluate", help="retrieval metrics of the trained hashing models")
    ev.add_argument("--params", default="params.yaml")
    ev.add_argument("--codes", default="data/codes", help="train's codes folder")
    ev.add_argument("--labelled", default="data/labelled", help="label's output folder")
    ev.add_argument("--split", default="data/split", help="split's output folder")
    ev.add_argument("--metrics", default="metrics/retrieval.json", help="metrics file")
    ev.add_argument("--plots", default="plots", help="folder of the DVC plot files")
    ev.add_argument(
        "--train-metrics", default=None, help="train's metrics JSON (val_from, protocol card)"
    )
    ev.set_defaults(handler="cmrops.stages.evaluate:cli_main")

    storage = sub.add_parser("storage", help="storage roots and the DVC remote")
    storage_sub = storage.add_subparsers(dest="storage_command", required=True, metavar="ACTION")
    check = storage_sub.add_parser(
        "check", help="is the DVC remote (or --url) reachable and writable? exit 1 when not"
    )
    check.add_argument("--url", help="a storage root URL (folder or s3://bucket/prefix)")
    check.add_argument("--remote", help="a DVC remote name (default: the default remote)")
    check.add_argument("--repo", default=".", help="the DVC repository (for --remote)")
    check.add_argument("--no-create-bucket", action="store_true", help="do not create it")
    check.set_defaults(handler="cmrops.cli:_storage_check")

    pipe = sub.add_parser("pipeline", help="the stage table shared by dvc.yaml and the DAG")
    pipe_sub = pipe.add_subparsers(dest="pipeline_command", required=True, metavar="ACTION")
    summ = pipe_sub.add_parser("summary", help="report a finished run from its metrics files")
    summ.add_argument("--work", default=".", help="the project folder of the run")
    summ.set_defaults(handler="cmrops.cli:_pipeline_summary")

    met = sub.add_parser("metrics", help="Prometheus metrics of a project (serve, push)")
    met_sub = met.add_subparsers(dest="metrics_command", required=True, metavar="ACTION")
    serve = met_sub.add_parser("serve", help="serve /metrics over HTTP until SIGTERM/Ctrl-C")
    serve.add_argument("--project", default=".", help="the project folder (default .)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=9108, help="TCP port (default 9108; 0: any)")
    serve.set_defaults(handler="cmrops.cli:_metrics_serve")
    push = met_sub.add_parser("push", help="push every stage's metrics to a Pushgateway")
    push.add_argument("--project", default=".", help="the project folder (default .)")
    push.add_argument("--gateway", help="Pushgateway URL (default $CMROPS_PUSHGATEWAY_URL)")
    push.add_argument("--job", default="cmrops", help="job label (default cmrops)")
    push.set_defaults(handler="cmrops.cli:_metrics_push")
    return p


def _metrics_serve(args: argparse.Namespace) -> int:
    from cmrops.telemetry.serve import serve

    serve(args.project, host=args.host, port=args.port, announce=lambda s: print(s, flush=True))
    return 0


def _metrics_push(args: argparse.Namespace) -> int:
    from cmrops.redaction import redact_url
    from cmrops.telemetry import push

    gateway = args.gateway or push.gateway_from_env()
    if not gateway:
        raise ValueError(f"no Pushgateway: pass --gateway URL or set ${push.GATEWAY_ENV}")
    try:
        stages = push.push_project(args.project, gateway, args.job, push.timeout_from_env())
    except push.PushError as e:
        print(f"cmrops metrics push: {e}", file=sys.stderr)
        return 1
    print(f"pushed metrics of {', '.join(stages)} to {redact_url(gateway)} (job {args.job})")
    return 0


def _pipeline_summary(args: argparse.Namespace) -> int:
    from cmrops.pipeline import summary

    print(summary(args.work))
    return 0


def _storage_check(args: argparse.Namespace) -> int:
    from cmrops import storage
    from cmrops.redaction import redact, redact_url

    endpoint = access_key = secret_key = None
    if args.url:
        url = args.url
    else:
        from cmrops.versioning import VersioningError, remote_info

        try:
            info = remote_info(args.repo, args.remote)
        except VersioningError as e:
            print(f"cmrops storage check: error: {redact(str(e))}", file=sys.stderr)
            return 2
        url, endpoint = info.url, info.endpoint
        access_key, secret_key = info.access_key, info.secret_key
    res = storage.check(
        url, endpoint, not args.no_create_bucket, access_key=access_key, secret_key=secret_key
    )
    state = "OK" if res.ok else "FAILED"
    print(
        f"storage check {state}: {redact_url(res.url)} reachable={res.reachable} "
        f"writable={res.writable} ({res.seconds}s) - {redact(res.detail)}"
    )
    return 0 if res.ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    _redact_logs()
    module_name, func_name = args.handler.split(":")
    func = getattr(importlib.import_module(module_name), func_name)
    from cmrops.pipeline import STAGES

    if args.command in STAGES:  # every stage run is timed into the run log (and pushed)
        from cmrops.locks import stage_lock
        from cmrops.telemetry.record import project_root, run_recorded

        # one copy at a time per output folder (a second Airflow attempt waits for the first)
        output = next(
            getattr(args, a) for a in ("out", "models", "metrics") if getattr(args, a, None)
        )
        with stage_lock(project_root(args.params), args.command, output):
            _sweep_killed_writes(args)
            return run_recorded(args, lambda: _call(func, args))
    return _call(func, args)


def _sweep_killed_writes(args: argparse.Namespace) -> None:
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


def _call(func: Callable[[argparse.Namespace], int | None], args: argparse.Namespace) -> int:
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


class _RedactingFilter(logging.Filter):
    """Masks URL credentials in every record a handler emits (message and arguments)."""

    def filter(self, record: logging.LogRecord) -> bool:
        from cmrops.redaction import redact

        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


def _redact_logs() -> None:
    """Install :class:`_RedactingFilter` on the root logger's handlers (once): credentials in a
    URL that a library logs (botocore, dvc, urllib3) never reach the log either."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, _RedactingFilter) for f in handler.filters):
            handler.addFilter(_RedactingFilter())


if __name__ == "__main__":
    sys.exit(main())
