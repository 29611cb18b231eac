#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for a fixed time and fails on any finding.
#   scripts/fuzz.sh [SECONDS_PER_TARGET]   (default 30; e.g. 3600 by hand)
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`).
# Findings are left in fuzz/artifacts/<target>/; turn each into a regression input in
# fuzz/regressions/<target>/ (replayed first on every run) and a unit test.
set -euo pipefail

seconds="${1:-30}"
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root/fuzz"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target/fuzz}"
# Safe Rust everywhere in Strata: the sanitizer adds little and doubles the build.
sanitizer="${FUZZ_SANITIZER:-none}"

if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "fuzz.sh: needs nightly and cargo-fuzz: rustup toolchain install nightly && cargo install cargo-fuzz" >&2
  exit 2
fi

targets=$(cargo +nightly fuzz list)
cargo +nightly fuzz build -s "$sanitizer" >/dev/null  # all targets
failed=0
for target in $targets; do
  corpus="corpus/$target"
  mkdir -p "$corpus" "regressions/$target"
  log="$(mktemp)"
  started=$(date +%s)
  # Regression inputs first (each must pass), then a timed run from the corpus.
  if ! cargo +nightly fuzz run -s "$sanitizer" "$target" "$corpus" "regressions/$target" -- \
    -max_total_time="$seconds" -max_len=4096 -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 >"$log" 2>&1; then
    failed=1
    echo "fuzz.sh: $target FOUND A FAILURE (artifacts in fuzz/artifacts/$target):" >&2
    grep -E "panicked|ERROR|SUMMARY|Test unit written" "$log" | head -20 >&2 || tail -40 "$log" >&2
  fi
  execs=$(grep -Eo "stat::number_of_executed_units: *[0-9]+" "$log" | grep -Eo "[0-9]+$" || echo "?")
  echo "fuzz.sh: $target: $execs execs in $(($(date +%s) - started)) s"
  rm -f "$log"
done
exit "$failed"
