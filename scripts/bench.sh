#!/usr/bin/env bash
# `make bench` (root): Strata beside rclone, s3fs and plain GETs on a local SeaweedFS
# behind a delaying proxy (25 ms each way), plus the eviction study. Not part of CI.
# Extra arguments go to strata-bench, e.g. `make bench ARGS=--quick`.
set -euo pipefail
cd "$(dirname "$0")/.."
STRATA_SETUP_BENCH=1 STRATA_SETUP_CLUSTER=0 bash scripts/setup.sh
exec cargo run --release -p strata-bench -- run ${ARGS:-} "$@"
