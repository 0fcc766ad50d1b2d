#!/usr/bin/env bash
# The main job: the whole cmrops pipeline through Airflow itself, versioned with DVC.
#
#   1. set-up (scripts/bootstrap.sh: .venv, pinned packages, the Rust extension);
#   2. a project-local Airflow: SQLite metadata DB in .airflow/, DAGs from dags/, the gpu pool;
#   3. the DVC remote checked (default: the local folder .dvc-remote/);
#   4. `airflow dags test cmrops_pipeline` on params.yaml (the built-in synthetic set by default):
#      collect -> preprocess (one mapped task per shard) -> align -> label -> clean -> split -> train
#      -> evaluate -> version (dvc commit + dvc push + a release: cmrops release list);
#      each task's log is written where the Airflow UI reads it;
#   5. a summary, then how to open the dashboard and the Airflow UI.
# Exits non-zero when any task failed.
#
# Your own data: edit collect.sources in params.yaml (see the comments there). Other knobs
# (environment; a run with CMROPS_PARAMS or an override in CMROPS_MAIN_CONF is a trial: it runs
# in .cmrops/trials/<id>/ and leaves the project's release alone):
#   CMROPS_PARAMS        another params file (relative to the project)
#   CMROPS_MAIN_CONF     JSON for the DAG's params, e.g. '{"synthetic_n": 500, "push": false}'
#   CMROPS_SKIP_SETUP=1  skip scripts/bootstrap.sh (the environment is ready)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
T0=$(date +%s)
say() { printf '\033[1m[main]\033[0m %s\n' "$*" >&2; }

if [[ "${CMROPS_SKIP_SETUP:-0}" != 1 ]]; then
    scripts/bootstrap.sh
fi
export CMROPS_PROJECT="$ROOT" AIRFLOW_HOME="${CMROPS_AIRFLOW_HOME:-$ROOT/.airflow}"
# shellcheck source=scripts/airflow_env.sh
source scripts/airflow_env.sh   # the DB is migrated by the process that runs the DAG, below

if ! git -C "$ROOT" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    dvc config --local core.no_scm true   # a tarball, not a git checkout: DVC without git
fi
say "DVC remote: $(cmrops storage check)"

CONF=${CMROPS_MAIN_CONF:-'{}'}
if [[ -n "${CMROPS_PARAMS:-}" ]]; then
    CONF=$(python -c 'import json,sys; c=json.loads(sys.argv[1]); c["params_file"]=sys.argv[2]; print(json.dumps(c))' "$CONF" "$CMROPS_PARAMS")
fi
LOG="$AIRFLOW_HOME/main_job-$(date -u +%Y%m%dT%H%M%SZ).log"
say "Airflow in $AIRFLOW_HOME (SQLite): running the DAG cmrops_pipeline (dags test, conf $CONF); full log: $LOG"
set +e
# One Airflow process: the metadata DB migrated (SQLite in $AIRFLOW_HOME), the gpu pool, the run.
QCONF=$(python -c 'import shlex, sys; print(shlex.quote(sys.argv[1]))' "$CONF")  # one argument
python -m cmrops.airflow_cli --init "dags test cmrops_pipeline -c $QCONF" >"$LOG" 2>&1 &
PID=$!
# progress: one line per finished task
tail -n +1 -F "$LOG" 2>/dev/null --pid=$PID \
    | grep --line-buffered -oE '\[DAG TEST\] end task task_id=[a-z_]+( map_index=[0-9-]+)?|new_state=(failed|up_for_retry)' \
    | sed -u -e 's/\[DAG TEST\] end task task_id=/  done: /' -e 's/ map_index=-1//' >&2
wait $PID
RC=$?
set -e
STATE=$(grep -oE 'DagRun Finished: dag_id=cmrops_pipeline.*state=[a-z_]+' "$LOG" | tail -1 | grep -oE 'state=[a-z_]+$' | cut -d= -f2 || true)
SECS=$(( $(date +%s) - T0 ))
if [[ $RC -ne 0 || "$STATE" != success ]]; then
    say "FAILED: the DAG run ended in state '${STATE:-unknown}' (airflow exit $RC) after ${SECS}s."
    grep -nE 'new_state=failed|ERROR|Traceback|error:' "$LOG" | tail -n 15 >&2 || true
    say "full log: $LOG"
    exit 1
fi

# the folder the run worked in: the project, or a trial's own workspace
WORK=$(python -c 'import json, sys; from cmrops import dag_tasks; print(dag_tasks.resolve(sys.argv[1], json.loads(sys.argv[2])).work)' "$ROOT" "$CONF")
echo
cmrops pipeline summary --work "$WORK"
echo
if [[ "$WORK" != "$ROOT" ]]; then
    echo "trial run: outputs in $WORK (not versioned; the project's release is untouched)"
elif dvc status --cloud -q >/dev/null 2>&1; then
    echo "DVC: every output is committed (dvc.lock) and in the remote ($(cmrops storage check | sed -E 's/.* - //'))"
else
    echo "DVC: outputs committed; some are not in the remote yet (run: dvc push)"
fi
DASHBOARD="dashboard   make dashboard   (Streamlit on 127.0.0.1 only)
              then open http://127.0.0.1:8501"
cat <<MSG

Finished in ${SECS}s. Next:
  $DASHBOARD
  Airflow UI  source scripts/airflow_env.sh && airflow standalone
              then open http://127.0.0.1:${AIRFLOW__API__PORT:-8080} and log in as "admin"; the password is
              printed by standalone and kept in $AIRFLOW_HOME/simple_auth_manager_passwords.json.generated
              (the run you just made is listed under the DAG cmrops_pipeline, with its task logs;
              the DAG is paused: unpausing waits for the next cron slot, Trigger runs now)
  releases    .venv/bin/cmrops release list   (checkout ID restores one, bytes from the DVC remote)
  rebuild     .venv/bin/dvc repro   (same stages, same bytes; only what changed reruns)
MSG
