#!/usr/bin/env bash
# The whole test suite: set-up, Rust tests and lints, Python lint, the docs build, pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
scripts/system_packages.sh
export PATH="$PWD/.venv/bin:$PATH" PYO3_PYTHON="$PWD/.venv/bin/python"
export CMROPS_SHARED_DATA="${CMROPS_SHARED_DATA:-$(cd .. && pwd)/shared/data}"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
step "cargo fmt --check";   cargo fmt --all -- --check
step "cargo clippy";        cargo clippy --all-targets --quiet -- -D warnings
                            cargo clippy --all-targets --quiet --no-default-features -- -D warnings
step "cargo test";          cargo test --quiet --no-default-features
step "ruff check";          ruff check .
step "mkdocs build --strict"; NO_MKDOCS_2_WARNING=1 mkdocs build --strict  # the docs site
step "pytest";              python -m pytest "$@"
