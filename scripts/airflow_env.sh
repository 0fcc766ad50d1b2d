#!/usr/bin/env bash
# Source me: a project-local Airflow (SQLite metadata DB in .airflow/, DAGs from dags/).
#   source scripts/airflow_env.sh            # environment only
#   source scripts/airflow_env.sh --init     # also: airflow db migrate + the "gpu" pool
_cmrops_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export CMROPS_PROJECT="${CMROPS_PROJECT:-$_cmrops_root}"
export AIRFLOW_HOME="${AIRFLOW_HOME:-$_cmrops_root/.airflow}"
export AIRFLOW__CORE__DAGS_FOLDER="$CMROPS_PROJECT/dags"
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__CORE__UNIT_TEST_MODE=False
export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN="sqlite:///$AIRFLOW_HOME/airflow.db"
export AIRFLOW__CORE__EXECUTOR="${AIRFLOW__CORE__EXECUTOR:-LocalExecutor}"
export AIRFLOW__API__HOST="${AIRFLOW__API__HOST:-127.0.0.1}"
export AIRFLOW__API__PORT="${AIRFLOW__API__PORT:-8080}"
export AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT=120
export AIRFLOW__LOGGING__LOGGING_LEVEL="${AIRFLOW__LOGGING__LOGGING_LEVEL:-INFO}"
export NO_PROXY="${NO_PROXY:-127.0.0.1,localhost}"
[[ -d "$_cmrops_root/.venv/bin" ]] && export PATH="$_cmrops_root/.venv/bin:$PATH"
mkdir -p "$AIRFLOW_HOME"
if [[ "${1:-}" == "--init" ]]; then
    # one process for both commands: Airflow's import is paid once (cmrops/airflow_cli.py)
    python -m cmrops.airflow_cli --init >"$AIRFLOW_HOME/db-migrate.log" 2>&1 \
        || { cat "$AIRFLOW_HOME/db-migrate.log" >&2; return 1 2>/dev/null || exit 1; }
fi
unset _cmrops_root
