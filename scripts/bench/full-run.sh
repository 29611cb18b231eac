#!/usr/bin/env bash
# The benchmark as run for docs/BENCHMARKS.md on a shared 2-core machine: the full data sizes,
# split into parts so each part's runs fit the time available. Run as root from the repository
# root; `cargo run --release -p strata-bench -- run` alone runs everything with 3 runs each.
set -euo pipefail
cd "$(dirname "$0")/../.."
bench=(cargo run --release -q -p strata-bench -- run)
"${bench[@]}" --workloads seq-large,random-4k --runs "${RUNS_SEQ:-3}" --delay 25ms,0ms
"${bench[@]}" --workloads epoch-small --runs "${RUNS_EPOCH:-2}" --epoch-limit "${EPOCH_LIMIT:-45s}"
"${bench[@]}" --workloads preload --systems strata --runs "${RUNS_PRELOAD:-2}"
if [ "${SKIP_UNCHANGED:-0}" != 1 ]; then
  "${bench[@]}" --workloads list --runs "${RUNS_LIST:-1}" --list-limit "${LIST_LIMIT:-60s}"
  "${bench[@]}" --workloads hit-ratio
fi
