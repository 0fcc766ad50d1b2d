#!/usr/bin/env bash
# The pure Rust core (no Python) cross-compiled for aarch64 and tested under qemu-user: the NEON,
# scalar and portable paths agree with the naive references on an ARM CPU model.
#   needs: rustup's aarch64-unknown-linux-gnu standard library (added here when rustup exists),
#          Debian's cross linker and qemu-user (installed here by scripts/system_packages.sh).
# Not part of scripts/test.sh: on a 2-core machine the build and the emulated run take several
# minutes (most of it building). Arguments go to `cargo test` (e.g. a test name). Exit status 0
# only when every test passed.
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=aarch64-unknown-linux-gnu

if command -v rustup >/dev/null && ! rustup target list --installed | grep -qx "$TARGET"; then
    rustup target add "$TARGET"
fi
scripts/system_packages.sh aarch64
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu"
# Optimised (the emulated kernels are many times slower than native ones) but without the
# release profile's fat LTO, which would make building the test binaries take most of the time;
# a separate target folder keeps the host build's artefacts.
export CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16
cargo test --quiet --release --no-default-features -p cmrops-core --target "$TARGET" \
    --target-dir target/aarch64 "$@"
