#!/usr/bin/env bash
# `make demo`: build strata-agent and mount the embedded sample dataset
# (examples/data, a local directory standing in for a far-away store) through the
# cache, then show it: where it is mounted, what is in it, a cold and a warm read.
# `make demo-down` unmounts it and stops the agent.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
demo_dir=${STRATA_DEMO_DIR:-/tmp/strata-demo}
mnt="$demo_dir/mnt"
cache="$demo_dir/cache"
pidfile="$demo_dir/agent.pid"
log="$demo_dir/agent.log"

down() {
  if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    kill -TERM "$(cat "$pidfile")"
    for _ in $(seq 50); do kill -0 "$(cat "$pidfile")" 2>/dev/null || break; sleep 0.1; done
  fi
  if mountpoint -q "$mnt" 2>/dev/null; then fusermount3 -u "$mnt" 2>/dev/null || umount -l "$mnt"; fi
  rm -rf "$demo_dir"
  echo "demo: stopped and removed $demo_dir"
}

# Seconds (3 decimals) to read every file under the mount.
time_read_all() {
  local t0 t1
  t0=$(date +%s%N)
  find "$mnt" -type f -exec cat {} + >/dev/null
  t1=$(date +%s%N)
  awk -v ns=$((t1 - t0)) 'BEGIN { printf "%.3f", ns / 1e9 }'
}

up() {
  STRATA_SETUP_CLUSTER=0 bash scripts/setup.sh
  echo "demo: building strata-agent (release)"
  cargo build --release -q -p strata-agent
  agent="$repo/target/release/strata-agent"

  if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    echo "demo: already running (pid $(cat "$pidfile")); 'make demo-down' stops it"
  else
    mkdir -p "$mnt" "$cache"
    nohup "$agent" mount "file://$repo/examples/data/" "$mnt" \
      --cache-dir "$cache" --memory 64Mi --disk 512Mi --metadata-ttl 30s \
      --dataset demo/sample >"$log" 2>&1 &
    echo $! >"$pidfile"
    for _ in $(seq 100); do mountpoint -q "$mnt" && break; sleep 0.1; done
    if ! mountpoint -q "$mnt"; then
      echo "demo: the mount did not come up; agent log:" >&2; cat "$log" >&2; exit 1
    fi
  fi

  echo
  echo "Strata is serving examples/data through its cache at: $mnt"
  echo "(agent pid $(cat "$pidfile"), cache in $cache, log in $log)"
  echo
  (cd "$mnt" && find . -maxdepth 3 | sort | head -30)
  echo
  cold=$(time_read_all)
  sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true
  warm=$(time_read_all)
  echo "read every file: cold (from the source) ${cold}s, warm (from the cache, page cache dropped) ${warm}s"
  echo
  echo "Try: ls -R $mnt ; cat $mnt/labels/classes.txt"
  echo "Stop it with: make demo-down"
}

case "${1:-up}" in
  up) up ;;
  down) down ;;
  *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
