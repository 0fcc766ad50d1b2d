"""Several ``airflow`` CLI commands in one process, so Airflow's import is paid once.

    python -m cmrops.airflow_cli "db migrate" "dags test cmrops_pipeline"
    python -m cmrops.airflow_cli --init "dags test cmrops_pipeline"   # INIT's commands first

Each argument is one command line of the ``airflow`` CLI (split as a shell would), run in order
through Airflow's own parser and entry steps (:func:`airflow.__main__.main`'s: the default
configuration written when missing). The first command that fails ends the run with its exit
status. Importing Airflow and building its parser take seconds, in every process: ``make run``
used to start three ``airflow`` processes before its DAG began.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Sequence

#: What a project-local Airflow needs before a run: its metadata DB at the current schema, and
#: the ``gpu`` pool the train task runs in (one slot: one GPU step at a time).
INIT = ("db migrate", "pools set gpu 1 'GPU steps (train): one at a time'")


def run(commands: Sequence[str]) -> int:
    """Run each command line in order; the exit status of the first that fails, else 0."""
    from airflow.cli import cli_parser
    from airflow.configuration import write_default_airflow_configuration_if_needed

    parser = cli_parser.get_parser()
    for line in commands:
        args = parser.parse_args(shlex.split(line))
        if args.subcommand not in ("lazy_loaded", "version"):
            write_default_airflow_configuration_if_needed()
        try:
            args.func(args)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            if code:
                print(f"airflow {line}: exit status {code}", file=sys.stderr)
                return code
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    commands = list(sys.argv[1:] if argv is None else argv)
    if commands[:1] == ["--init"]:
        commands = [*INIT, *commands[1:]]
    if not commands:
        print(__doc__, file=sys.stderr)
        return 2
    return run(commands)


if __name__ == "__main__":
    sys.exit(main())
