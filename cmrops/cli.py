"""``cmrops`` command line: a thin shell that parses arguments and calls one library function.

Stage commands share one shape so ``dvc.yaml`` can spell every input and output path::

    cmrops collect    --params params.yaml --out data/raw
    cmrops preprocess --params params.yaml --raw data/raw --out data/interim
    cmrops align      --params params.yaml --interim data/interim --raw data/raw --out data/align
    cmrops label      --params params.yaml --interim data/interim --align data/align
                      --out data/labelled --review-log review/answers.jsonl
    cmrops clean      --params params.yaml --interim data/interim --align data/align
                      --labelled data/labelled --raw data/raw --out data/clean
                      --metrics metrics/quality.json --review-log review/answers.jsonl
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
    cmrops release list | show ID | checkout ID [--project .] [--remote NAME]
    cmrops export --release ID --format webdataset|hf|coco|hashing --out DIR [--force|--resume]
    cmrops datacard [--release ID] [--print]
    cmrops withdraw SAMPLE_ID|SOURCE:KEY|URL ... | --file LIST --reason TEXT; --impact ID
    cmrops ablate [--release ID] [--methods itq,cca] [--bits 32] [--rules a,b]
    cmrops plots page [--project .]
    cmrops metrics serve [--project .] [--host 127.0.0.1] [--port 9108]
    cmrops metrics push [--project .] [--gateway URL] [--job cmrops]

Heavy modules are imported only inside the command that needs them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from cmrops.stage_command import configure_logging, run
from cmrops.stage_table import STAGES, add_parser


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cmrops", description=__doc__.split("\n\n")[0])
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser("demo", help="demonstrate the Hamming engine on generated codes")
    demo.add_argument("--n", type=int, default=200_000, help="database size (default 200000)")
    demo.add_argument("--bits", type=int, default=64, help="code length, a multiple of 64")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(handler="cmrops.demo:main")

    for stage in STAGES.values():  # the pipeline's stages, from the stage table
        add_parser(sub, stage)

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
    for flag, what in (
        ("--image", "image features"),
        ("--text", "text features"),
        ("--labels", "labels (multi-hot or class ids)"),
        ("--train-index", "training (and, without --database-index, database) sample indices"),
        ("--test-index", "test (query) sample indices"),
        ("--database-index", "database sample indices"),
    ):
        imp.add_argument(
            flag, default=None, metavar="VAR",
            help=f"the variable holding the {what}: a name or a dotted path into a MATLAB "
            "struct (data.X1); default: recognised by name",
        )  # fmt: skip
    imp.add_argument(
        "--index-base", choices=["auto", "0", "1"], default="auto",
        help="how index variables count: 1 (MATLAB), 0, or auto (0-based when an index is 0)",
    )  # fmt: skip
    imp.set_defaults(handler="cmrops.benchmarks_data:cli_main")

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

    rel = sub.add_parser("release", help="the releases (versioned runs): list, show, checkout")
    rel_sub = rel.add_subparsers(dest="release_command", required=True, metavar="ACTION")
    for name, text in (
        ("list", "every release known here or in the DVC remote, oldest first"),
        ("show", "one release: its record and headline figures"),
        ("checkout", "restore a release in the workspace (outputs pulled from the remote)"),
    ):
        a = rel_sub.add_parser(name, help=text)
        if name != "list":
            a.add_argument("id", help="a release id, a unique prefix of one, or 'latest'")
        a.add_argument("--project", default=".", help="the project folder (default .)")
        a.add_argument("--remote", help="DVC remote (default: the default remote)")
        if name == "list":
            a.add_argument("--local", action="store_true", help="do not read the remote")
        a.set_defaults(handler=f"cmrops.cli:_release_{name}")

    _hand_on(sub)

    pipe = sub.add_parser("pipeline", help="the stage table shared by dvc.yaml and the DAG")
    pipe_sub = pipe.add_subparsers(dest="pipeline_command", required=True, metavar="ACTION")
    summ = pipe_sub.add_parser("summary", help="report a finished run from its metrics files")
    summ.add_argument("--work", default=".", help="the project folder of the run")
    summ.set_defaults(handler="cmrops.cli:_pipeline_summary")

    plots = sub.add_parser("plots", help="what `dvc plots show` needs")
    plots_sub = plots.add_subparsers(dest="plots_command", required=True, metavar="ACTION")
    page = plots_sub.add_parser(
        "page", help="(re)write .dvc/plots/offline.html: DVC's plots page with vega inline"
    )
    page.add_argument("--project", default=".", help="the project folder (default .)")
    page.set_defaults(handler="cmrops.cli:_plots_page")

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


def _hand_on(sub: Any) -> None:
    """Commands that hand a release on: export, data card, withdrawal, rule ablation."""
    from cmrops.export import FORMATS

    def common(a: argparse.ArgumentParser, release: bool = True) -> None:
        if release:
            a.add_argument("--release", default="latest",
                           help="a release id, a unique prefix, or latest (default)")  # fmt: skip
        a.add_argument("--project", default=".", help="the project folder (default .)")
        a.add_argument("--remote", help="DVC remote (default: the default remote)")

    ex = sub.add_parser("export", help="a release as WebDataset, HF, COCO or hashing files")
    common(ex)
    ex.add_argument("--format", required=True, choices=FORMATS)
    ex.add_argument("--out", required=True, help="an empty folder (or --resume / --force)")
    ex.add_argument("--splits", default="", help="comma-separated sets (default: every set)")
    ex.add_argument("--shard-size", type=int, default=1000,
                    help="samples per tar shard / rows per Parquet file (default 1000)")
    ex.add_argument("--container", choices=("mat", "h5"), default="mat",
                    help="hashing: MATLAB v7.3 .mat (default) or .h5")
    ex.add_argument("--no-media", action="store_true", help="coco: the JSON only")
    how = ex.add_mutually_exclusive_group()
    how.add_argument("--resume", action="store_true", help="finish an interrupted export")
    how.add_argument("--force", action="store_true", help="replace the folder's content")
    ex.set_defaults(handler="cmrops.cli:_export")

    dc = sub.add_parser("datacard", help="(re)build a release's data card and attach it")
    common(dc)
    dc.add_argument("--print", action="store_true", help="print the Markdown card")
    dc.set_defaults(handler="cmrops.datacard:cli_main")

    wd = sub.add_parser("withdraw", help="withdraw samples everywhere, or list where one is")
    common(wd, release=False)
    wd.add_argument("ids", nargs="*", metavar="ID", help="a sample id, a source:key or a URL")
    wd.add_argument("--file", help="a file of ids, one per line (# comments)")
    wd.add_argument("--reason", default="", help="why (a takedown request, a licence change)")
    wd.add_argument("--by", help="who asked (recorded with the tombstone)")
    wd.add_argument("--impact", metavar="ID",
                    help="list every release, export, model and code file holding ID")  # fmt: skip
    wd.add_argument("--json", action="store_true", help="print JSON")
    wd.set_defaults(handler="cmrops.cli:_withdraw")

    ab = sub.add_parser("ablate", help="what each cleaning rule is worth (retrain itq/cca)")
    common(ab)
    ab.add_argument("--methods", help="closed-form methods (default: params ablation.methods)")
    ab.add_argument("--bits", help="code lengths, comma-separated (default: ablation.bits)")
    ab.add_argument("--rules", help="rules to switch off, comma-separated (default: all)")
    ab.add_argument("--no-card", action="store_true", help="do not rebuild the data card")
    ab.set_defaults(handler="cmrops.ablation:cli_main")


def _export(args: argparse.Namespace) -> int:
    from cmrops.export import ExportOptions, export

    opts = ExportOptions(
        splits=tuple(s.strip() for s in args.splits.split(",") if s.strip()),
        shard_size=args.shard_size, container=args.container, media=not args.no_media,
    )  # fmt: skip
    m = export(args.project, args.release, args.format, args.out, options=opts,
               force=args.force, resume=args.resume, remote=args.remote)  # fmt: skip
    sets = ", ".join(f"{k} {v}" for k, v in m["sets"].items())
    print(f"exported release {m['release']} as {m['format']} into {m['path']}: {m['samples']} "
          f"samples ({sets}), {len(m['files'])} files, {m['bytes']} bytes; manifest "
          f"export.json (export {m['export_id']}, recorded with the release)")  # fmt: skip
    return 0


def _withdraw(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from cmrops import withdrawal

    if args.impact:
        if args.ids or args.file:
            raise ValueError("--impact takes one id and nothing else")
        out = withdrawal.impact(args.project, args.impact, args.remote)
        print(json.dumps(out, indent=2) if args.json else _impact_text(out))
        return 0
    ids = list(args.ids)
    if args.file:
        lines = Path(args.file).read_text(encoding="utf-8").splitlines()
        ids += [x.split("#", 1)[0].strip() for x in lines if x.split("#", 1)[0].strip()]
    res = withdrawal.withdraw(args.project, ids, args.reason, args.by, args.remote)
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    for t in res["withdrawn"]:
        print(f"withdrawn {t['request']}: {len(t['sample_ids'])} sample id(s), "
              f"{len(t['media_sha256'])} media file(s), {len(t['urls'])} URL(s)")  # fmt: skip
    for r in res["already_withdrawn"]:
        print(f"already withdrawn: {r}")
    print(f"tombstones: {res['tombstones']}; media removed from the workspace store: "
          f"{len(res['media_removed_from_workspace'])}; {res['next']}")  # fmt: skip
    return 0


def _impact_text(out: dict[str, Any]) -> str:
    ids = out["identities"]
    lines = [f"{out['request']}: {'withdrawn' if out['withdrawn'] else 'not withdrawn'}; "
             f"sample ids {', '.join(ids['sample_ids']) or '-'}"]  # fmt: skip
    for r in out["releases"]:
        if "error" in r:
            lines.append(f"  release {r['id']}: not readable ({r['error']})")
            continue
        for sid, st in r["stages"].items():
            lines.append(f"  release {r['id']}: {sid} clean {st['clean']}, set {st['split']}, "
                         f"codes {st['codes']}, fitted on {st['fitted_on']}")  # fmt: skip
        if r["models"]:
            lines.append(f"    models: {', '.join(r['models'])}")
        if r["code_files"]:
            lines.append(f"    code files: {len(r['code_files'])} (data/codes/...)")
        for e in r["exports"]:
            lines.append(f"    export {e['export_id']} ({e['format']}) at {e['path']}")
    if out["not_in"]:
        lines.append(f"  not in: {', '.join(out['not_in'])}")
    ws = out["workspace"]
    lines.append(f"  workspace: {', '.join(ws['samples']) or 'no sample'}; media in the store: "
                 f"{len(ws.get('media_in_store', []))}")  # fmt: skip
    return "\n".join(lines)


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


def _release_list(args: argparse.Namespace) -> int:
    from cmrops import releases

    found = releases.list_releases(args.project, args.remote, include_remote=not args.local)
    if not found:
        print("no releases yet: a versioned run (make run, or the DAG on params.yaml) makes one")
        return 0
    print(f"{'release':<28}{'created':<26}{'kept':>7}  {'where':<14}git tag")
    for r in found:
        kept = r.summary.get("kept", "-")
        tag = (r.git or {}).get("tag") or "-"
        print(f"{r.id:<28}{r.created:<26}{kept!s:>7}  {'+'.join(r.where):<14}{tag}")
    return 0


def _release_show(args: argparse.Namespace) -> int:
    import json

    from cmrops import releases

    r = releases.find(args.project, args.id, args.remote)
    print(json.dumps({**r.to_json(), "record": str(r.path), "where": list(r.where)}, indent=2))
    return 0


def _release_checkout(args: argparse.Namespace) -> int:
    from cmrops import releases

    r = releases.checkout(args.project, args.id, args.remote)
    print(f"release {r.id} restored in {args.project}: {len(r.files)} recorded files and every "
          "output of its dvc.lock (dvc status: up to date)")
    return 0


def _plots_page(args: argparse.Namespace) -> int:
    from cmrops.plots_page import write_page

    print(f"wrote {write_page(args.project)}")
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
    configure_logging(args.verbose)
    return run(args)  # a pipeline stage is timed into the run log (cmrops.stage_command)


if __name__ == "__main__":
    sys.exit(main())
