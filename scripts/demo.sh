#!/usr/bin/env bash
# `make demo` (scripts/demo.sh up): Strata on a local one-node "cluster", the way a user meets it.
#   1. setup (fuse3, moto, the local control plane's binaries) and `cargo build` (debug profile)
#      of strata-operator, strata-agent, strata-csi and strata-demo;
#   2. a local Kubernetes control plane (e2e/cluster/cluster.sh) on its own state dir and ports;
#   3. moto S3 on loopback with examples/data plus a generated 128 MiB file;
#   4. strata-demo up: helm install of charts/strata, the operator, node agent and CSI plugin as
#      background processes, a Dataset + CachePolicy, NodePublishVolume through the CSI socket,
#      the preload Job's command and its progress, `kubectl get datasets` at 100%, the first read
#      (warm: 0 blocks from S3); then a pinned path surviving a cache fill: a second Dataset under
#      a CachePolicy with a 32 MiB quota pinning /train/2026-11-21/**, its pin Job, a 128 MiB read,
#      and the pinned files still cached (0 blocks fetched) while /train/2026-11-20 was evicted.
# Everything runs on after it returns; `make demo-down` (scripts/demo.sh down) stops it all.
# `scripts/demo.sh standalone` / `standalone-down`: just the agent's FUSE mount of examples/data.
set -Eeuo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
demo_dir=${STRATA_DEMO_DIR:-/tmp/strata-demo}
export STRATA_DEMO_DIR="$demo_dir"
logs="$demo_dir/logs"
# The demo's own control plane: its own state and ports, so it never touches the one the e2e
# tests share (default state ~/.local/state/strata, port 6443).
export STRATA_STATE="$demo_dir/control-plane"
export STRATA_APISERVER_PORT=${STRATA_DEMO_APISERVER_PORT:-16443}
export STRATA_ETCD_CLIENT_PORT=${STRATA_DEMO_ETCD_CLIENT_PORT:-12379}
export STRATA_ETCD_PEER_PORT=${STRATA_DEMO_ETCD_PEER_PORT:-12380}
export STRATA_KCM_PORT=${STRATA_DEMO_KCM_PORT:-20257}
export STRATA_SCHEDULER_PORT=${STRATA_DEMO_SCHEDULER_PORT:-20259}
s3_port=${STRATA_DEMO_S3_PORT:-19000}
bucket=strata-demo
target_dir=${CARGO_TARGET_DIR:-$repo/target}
bins="$target_dir/debug"

say() { printf 'demo: %s\n' "$*"; }

# On a failed step: what failed, and the end of every log of the demo.
on_error() {
  local rc=$?
  echo >&2
  echo "demo: FAILED (exit $rc) at: ${BASH_COMMAND}" >&2
  for f in "$logs"/*.log; do
    [ -s "$f" ] || continue
    echo "---- last lines of $f" >&2
    tail -n 12 "$f" >&2
  done
  echo "demo: fix the cause, then run 'make demo' again (or 'make demo-down' to clean up)" >&2
  exit "$rc"
}

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

start_s3() {
  local pidfile="$demo_dir/run/moto.pid"
  if pid_alive "$pidfile"; then
    say "moto S3 already running (pid $(cat "$pidfile")) on 127.0.0.1:$s3_port"
    return
  fi
  if (exec 3<>"/dev/tcp/127.0.0.1/$s3_port") 2>/dev/null; then
    echo "demo: 127.0.0.1:$s3_port is taken by another process; set STRATA_DEMO_S3_PORT" >&2
    return 1
  fi
  setsid nohup moto_server -H 127.0.0.1 -p "$s3_port" </dev/null >"$logs/moto.log" 2>&1 &
  echo $! >"$pidfile"
  for _ in $(seq 100); do
    curl -sf -o /dev/null "http://127.0.0.1:$s3_port/" && break
    pid_alive "$pidfile" || { echo "demo: moto_server exited" >&2; return 1; }
    sleep 0.2
  done
  curl -sf -o /dev/null "http://127.0.0.1:$s3_port/"
  say "started moto S3 (pid $(cat "$pidfile")) on 127.0.0.1:$s3_port"
  # moto keeps objects in memory: a new server gets the data again.
  local s3="http://127.0.0.1:$s3_port/$bucket"
  curl -sf -X PUT -o /dev/null "$s3"
  local n=0 f
  while IFS= read -r f; do
    curl -sf -T "examples/data/$f" -o /dev/null "$s3/data/$f"
    n=$((n + 1))
  done < <(cd examples/data && find . -type f -printf '%P\n' | sort)
  local big="$demo_dir/random-128MiB.bin"
  [ -f "$big" ] || head -c $((128 << 20)) /dev/urandom >"$big"
  curl -sf -T "$big" -o /dev/null "$s3/data/generated/random-128MiB.bin"
  say "uploaded examples/data ($n files) and generated/random-128MiB.bin to s3://$bucket/data/"
}

up() {
  trap on_error ERR
  mkdir -p "$demo_dir/run" "$logs"
  say "setup (fuse3, moto, the local control plane's binaries; skipped when present)"
  bash scripts/setup.sh
  say "building strata-operator, strata-agent, strata-csi, strata-demo (cargo, debug profile, into $target_dir)"
  cargo build -q --bins -p strata-operator -p strata-agent -p strata-csi -p strata-e2e
  say "local control plane (state $STRATA_STATE, kube-apiserver https://127.0.0.1:$STRATA_APISERVER_PORT)"
  # No kubelet yet: the demo runs the components as local processes (issue 21 moves it to the node).
  STRATA_NODE=0 e2e/cluster/cluster.sh up >"$logs/cluster-up.log" 2>&1 || { cat "$logs/cluster-up.log" >&2; false; }
  start_s3
  "$bins/strata-demo" up --bins "$bins" --chart "$repo/charts/strata" \
    --s3-endpoint "http://127.0.0.1:$s3_port" --s3-uri "s3://$bucket/data/"
}

down() {
  if [ ! -d "$demo_dir" ]; then
    say "nothing to stop ($demo_dir does not exist)"
    return
  fi
  if [ -x "$bins/strata-demo" ]; then
    "$bins/strata-demo" down || echo "demo: strata-demo down failed; stopping the rest anyway" >&2
  fi
  local pidfile="$demo_dir/run/moto.pid"
  if pid_alive "$pidfile"; then
    kill -TERM "$(cat "$pidfile")"
    say "stopped moto S3 (pid $(cat "$pidfile"))"
  fi
  # Whatever is still mounted under the demo dir (a process that died before unmounting).
  awk -v d="$demo_dir/" 'index($5, d) == 1 { print $5 }' /proc/self/mountinfo | sort -r |
    while read -r m; do umount -l "$m" && say "unmounted leftover $m"; done
  if [ -d "$STRATA_STATE/cluster" ]; then e2e/cluster/cluster.sh down; fi
  rm -rf "$demo_dir"
  say "stopped everything and removed $demo_dir"
}

# ---- standalone: one agent mounting examples/data, no cluster ---------------------------------
standalone_dir=${STRATA_DEMO_STANDALONE_DIR:-/tmp/strata-demo-standalone}
mnt="$standalone_dir/mnt"
cache="$standalone_dir/cache"
agent_pidfile="$standalone_dir/agent.pid"
agent_log="$standalone_dir/agent.log"

standalone_down() {
  if [ -f "$agent_pidfile" ] && kill -0 "$(cat "$agent_pidfile")" 2>/dev/null; then
    kill -TERM "$(cat "$agent_pidfile")"
    for _ in $(seq 50); do kill -0 "$(cat "$agent_pidfile")" 2>/dev/null || break; sleep 0.1; done
  fi
  if mountpoint -q "$mnt" 2>/dev/null; then fusermount3 -u "$mnt" 2>/dev/null || umount -l "$mnt"; fi
  rm -rf "$standalone_dir"
  echo "demo: stopped and removed $standalone_dir"
}

# Seconds (3 decimals) to read every file under the mount.
time_read_all() {
  local t0 t1
  t0=$(date +%s%N)
  find "$mnt" -type f -exec cat {} + >/dev/null
  t1=$(date +%s%N)
  awk -v ns=$((t1 - t0)) 'BEGIN { printf "%.3f", ns / 1e9 }'
}

standalone() {
  STRATA_SETUP_CLUSTER=0 bash scripts/setup.sh
  echo "demo: building strata-agent (debug profile, as 'up' does)"
  cargo build -q -p strata-agent
  agent="$bins/strata-agent"

  if [ -f "$agent_pidfile" ] && kill -0 "$(cat "$agent_pidfile")" 2>/dev/null; then
    echo "demo: already running (pid $(cat "$agent_pidfile")); '$0 standalone-down' stops it"
  else
    mkdir -p "$mnt" "$cache"
    nohup "$agent" mount "file://$repo/examples/data/" "$mnt" \
      --cache-dir "$cache" --memory 64Mi --disk 512Mi --metadata-ttl 30s \
      --dataset demo/sample >"$agent_log" 2>&1 &
    echo $! >"$agent_pidfile"
    for _ in $(seq 100); do mountpoint -q "$mnt" && break; sleep 0.1; done
    if ! mountpoint -q "$mnt"; then
      echo "demo: the mount did not come up; agent log:" >&2; cat "$agent_log" >&2; exit 1
    fi
  fi

  echo
  echo "Strata is serving examples/data through its cache at: $mnt"
  echo "(agent pid $(cat "$agent_pidfile"), cache in $cache, log in $agent_log)"
  echo
  (cd "$mnt" && find . -maxdepth 3 | sort | head -30)
  echo
  cold=$(time_read_all)
  sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true
  warm=$(time_read_all)
  echo "read every file: cold (from the source) ${cold}s, warm (from the cache, page cache dropped) ${warm}s"
  echo
  echo "Try: ls -R $mnt ; cat $mnt/labels/classes.txt"
  echo "Stop it with: $0 standalone-down"
}

case "${1:-up}" in
  up) up ;;
  down) down ;;
  standalone) standalone ;;
  standalone-down) standalone_down ;;
  *) echo "usage: $0 up|down|standalone|standalone-down" >&2; exit 2 ;;
esac
