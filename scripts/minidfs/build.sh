#!/usr/bin/env bash
# Packages the MiniDFS test cluster (scripts/minidfs) into ~/.cache/strata/minidfs (or
# $STRATA_MINIDFS): minidfs.jar and lib/*.jar, run as `java -cp minidfs.jar:lib/* dev.strata.MiniDfs`.
# Needs java 17 and mvn, and Maven Central the first time. Skipped when the output was built from
# this very pom and source; testkit/src/hdfs.rs runs it before each start.
set -euo pipefail
project="$(cd "$(dirname "$0")" && pwd)"
out="${STRATA_MINIDFS:-$HOME/.cache/strata/minidfs}"
mkdir -p "$out"

# Tests in parallel may all call this at once: one builds, the others wait and then skip.
exec 9>"$out/.lock"
flock 9

inputs_hash() {
  (cd "$project" && find pom.xml src -type f | LC_ALL=C sort | xargs sha256sum) | sha256sum | cut -d' ' -f1
}
hash="$(inputs_hash)"
if [ -f "$out/minidfs.jar" ] && [ -d "$out/lib" ] && [ "$(cat "$out/inputs.sha256" 2>/dev/null)" = "$hash" ]; then
  exit 0
fi

echo "setup: mvn package scripts/minidfs (hadoop-client-minicluster) into $out"
build="$out/build"
rm -rf "$build" "$out/lib" "$out/minidfs.jar" "$out/inputs.sha256"
# The build directory is outside the clone so the work tree stays clean. Maven's output is
# kept in a log, shown only when the build fails.
if ! mvn -q -B -Dstyle.color=never -f "$project/pom.xml" -Dmaven.repo.local="$HOME/.cache/strata/m2" \
  -Dminidfs.build.dir="$build" package >"$out/build.log" 2>&1; then
  cat "$out/build.log" >&2
  echo "setup: the MiniDFS build failed (log: $out/build.log)" >&2
  exit 1
fi
mv "$build/minidfs.jar" "$out/minidfs.jar"
mv "$build/lib" "$out/lib"
rm -rf "$build"
echo "$hash" >"$out/inputs.sha256"
