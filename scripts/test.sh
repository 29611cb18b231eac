#!/usr/bin/env bash
# `make test`: set up a fresh machine, then lint and run every test in the workspace
# (unit, integration against real S3 + FUSE, CSI over its socket, and the suites
# that run against the local control plane).
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)

bash scripts/setup.sh

# The suites that need Kubernetes start the local control plane themselves (once,
# shared by all test binaries); stop it when the run ends, pass or fail.
if [ "${STRATA_KEEP_CLUSTER:-0}" != 1 ]; then
  trap 'e2e/cluster/cluster.sh down >/dev/null 2>&1 || true' EXIT
fi

cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace --no-fail-fast -- --test-threads="${STRATA_TEST_THREADS:-2}"

# The CSI conformance suite (csi-sanity, built with the control plane) against the
# real plugin and agent.
cargo build -q -p strata-agent -p strata-csi
STRATA_BIN_DIR="${CARGO_TARGET_DIR:-target}/debug" csi/sanity/run.sh

# A short fuzz run over path normalization and the agent's HTTP request handling
# (longer by hand: scripts/fuzz.sh 3600). Its build is kept outside the clone so a
# machine builds it once.
if cargo +nightly --version >/dev/null 2>&1; then
  command -v cargo-fuzz >/dev/null || cargo install -q --locked cargo-fuzz@0.13.2
  CARGO_TARGET_DIR="$HOME/.cache/strata/fuzz-target" scripts/fuzz.sh "${STRATA_FUZZ_SECONDS:-20}"
else
  echo "make test: WARNING: no nightly toolchain (rustup toolchain install nightly), fuzz run skipped" >&2
fi

echo "make test: all passed in $(( $(date +%s) - start ))s"
