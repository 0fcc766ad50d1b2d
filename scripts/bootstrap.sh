#!/usr/bin/env bash
# Set up everything cmrops needs on a fresh machine, idempotently:
#   1. a project-local virtual environment in .venv (Python 3.11+),
#   2. every Python package pinned in requirements/lock.txt (one resolve),
#   3. the Rust extension cmrops._core, built in release mode into the venv.
# Each step is skipped when its inputs have not changed since it last succeeded.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=.venv
UV_VERSION=0.13.8
PY=${PYTHON:-python3}

log() { printf '\033[1m[bootstrap]\033[0m %s\n' "$*" >&2; }

if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "cmrops needs Python 3.11 or newer; set PYTHON=/path/to/python3.11" >&2
    exit 1
fi
if ! command -v cargo >/dev/null; then
    echo "cmrops builds a Rust extension: install a Rust toolchain (https://rustup.rs) first" >&2
    exit 1
fi

if [[ ! -x $VENV/bin/python ]]; then
    log "creating $VENV"
    "$PY" -m venv "$VENV"
fi
if [[ ! -x $VENV/bin/uv ]] || [[ "$($VENV/bin/uv --version | cut -d' ' -f2)" != "$UV_VERSION" ]]; then
    log "installing uv $UV_VERSION"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "uv==$UV_VERSION"
fi

stamp() { sha256sum "$@" | sha256sum | cut -c1-16; }

LOCK_STAMP=$(stamp requirements/lock.txt)
if [[ "$(cat $VENV/.lock-stamp 2>/dev/null)" != "$LOCK_STAMP" ]]; then
    log "installing pinned packages from requirements/lock.txt (first time: several minutes)"
    VIRTUAL_ENV=$VENV "$VENV/bin/uv" pip sync --quiet requirements/lock.txt
    echo "$LOCK_STAMP" > $VENV/.lock-stamp
    rm -f $VENV/.core-stamp
fi

CORE_STAMP=$(stamp Cargo.toml Cargo.lock pyproject.toml $(find rust_core -name '*.rs' -o -name Cargo.toml | sort))
if [[ "$(cat $VENV/.core-stamp 2>/dev/null)" != "$CORE_STAMP" ]] || ! "$VENV/bin/python" -c 'import cmrops._core' 2>/dev/null; then
    log "building the Rust extension cmrops._core (release)"
    VIRTUAL_ENV=$(pwd)/$VENV PATH=$(pwd)/$VENV/bin:$PATH \
        "$VENV/bin/maturin" develop --release --uv --quiet
    echo "$CORE_STAMP" > $VENV/.core-stamp
fi
# Bytecode, compiled once here: uv does not write it, and a machine with PYTHONDONTWRITEBYTECODE
# (CI, containers) would otherwise compile torch, Airflow and the rest again in every process
# it starts (each Airflow task, each stage: import torch alone took 8.6 s instead of 2.9 s)
if [[ "$(cat $VENV/.bytecode-stamp 2>/dev/null)" != "$LOCK_STAMP" ]]; then
    log "compiling the packages' bytecode (once per lock: a minute or two)"
    # a few files in packages' test folders are not valid Python 3.11 (they stay uncompiled)
    "$VENV/bin/python" -m compileall -q -j 0 \
        "$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
        >/dev/null 2>&1 || true
    echo "$LOCK_STAMP" > $VENV/.bytecode-stamp
fi

# DVC 3.67.1 fails `dvc repro --dry` / `dvc exp run --dry` on a fresh clone (a missing input is
# hashed for a run-cache lookup): cmrops/dvc_fixes.py carries DVC's own fix, loaded at start-up
SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
PTH="import cmrops.dvc_fixes  # cmrops: DVC's fix of dry runs on a fresh clone (cmrops/dvc_fixes.py)"
if [[ "$(cat "$SITE/cmrops_dvc_fixes.pth" 2>/dev/null)" != "$PTH" ]]; then
    log "installing cmrops_dvc_fixes.pth (dvc --dry on a fresh clone)"
    echo "$PTH" > "$SITE/cmrops_dvc_fixes.pth"
fi

# `dvc plots show` writes a page that loads vega from a CDN; .dvc/config names this one instead,
# with the libraries inline (cmrops/plots_page.py), so the plots render offline
PAGE_STAMP=$(stamp requirements/lock.txt cmrops/plots_page.py)
if [[ "$(cat $VENV/.plots-page-stamp 2>/dev/null)" != "$PAGE_STAMP" ]] || [[ ! -s .dvc/plots/offline.html ]]; then
    log "writing .dvc/plots/offline.html (dvc plots show, offline)"
    "$VENV/bin/cmrops" plots page >/dev/null
    echo "$PAGE_STAMP" > $VENV/.plots-page-stamp
fi
log "ready: $VENV"
