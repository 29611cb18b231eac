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
# The real-node suite (e2e/tests/real_node.rs) has its own cluster with a kubelet, on the
# state dir and ports of e2e/cluster/node-suite.env.
node_suite_env() { grep -v '^#' e2e/cluster/node-suite.env | sed "s#=~/#=$HOME/#"; }
if [ "${STRATA_KEEP_CLUSTER:-0}" != 1 ]; then
  trap 'e2e/cluster/cluster.sh down >/dev/null 2>&1 || true
        env $(node_suite_env) e2e/cluster/cluster.sh down >/dev/null 2>&1 || true' EXIT
fi

cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings

# The house (docs/architecture.md): only the allowed arrows between crates.
house_check() {
  local crate=$1 forbidden=$2 why=$3 found
  found=$(cargo tree -q -e normal -p "$crate" --prefix none | awk '{print $1}' | grep -xE "$forbidden" | sort -u || true)
  if [ -n "$found" ]; then
    echo "make test: $crate depends on $(echo "$found" | tr '\n' ' ')- $why" >&2
    exit 1
  fi
}
house_check strata-engine 'kube|k8s-openapi|strata-crds|fuser|warp' "the engine runs without Kubernetes, FUSE or the HTTP server"
house_check strata-wire 'kube|k8s-openapi|strata-engine|strata-agent|object_store|fuser|warp' "the wire types link nothing heavy"
house_check strata-store 'kube|k8s-openapi|strata-crds|strata-engine|strata-agent|fuser|warp' "the store builder is shared by the engine and the operator, and links neither"
house_check strata-csi 'strata-agent|strata-engine|fuser|object_store|warp' "the CSI plugin talks to the agent through strata-wire only"
house_check strata-operator 'strata-agent|strata-engine|fuser' "the operator does not link the engine"
house_check strata-holder 'strata-agent|strata-engine|fuser|tokio|object_store|warp' "the mount holder outlives agents and must stay small: a bug in it loses every mount"
cargo test --workspace --no-fail-fast -- --test-threads="${STRATA_TEST_THREADS:-2}"

# The CSI conformance suite (csi-sanity, built with the control plane) against the
# real plugin and agent.
cargo build -q -p strata-agent -p strata-csi
STRATA_BIN_DIR="${CARGO_TARGET_DIR:-target}/debug" csi/sanity/run.sh

# The Containerfile and scripts/image.sh put the same files in the Strata image.
scripts/image/files_agree.sh

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
