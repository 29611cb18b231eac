#!/usr/bin/env bash
# `make demo` (scripts/demo.sh up): Strata on a local one-node Kubernetes cluster, the way a user
# meets it. On the real node (the default):
#   1. setup (fuse3, moto, runc, CNI plugins, ...) and `cargo build` (debug profile) of
#      strata-operator, strata-agent, strata-csi and strata-demo; the container image from those
#      debug binaries (STRATA_IMAGE_BIN_DIR=target/debug scripts/image.sh strata, ~11 s, 48 MB;
#      `scripts/image.sh strata` without it builds release);
#   2. the demo's own cluster (e2e/cluster/cluster.sh up): control plane AND node (containerd +
#      kubelet), on its own state dir, ports and CIDRs so it runs beside other local clusters;
#      the image imported into the node's containerd (cluster.sh import);
#   3. moto S3 on loopback with examples/data plus a generated 128 MiB file;
#   4. strata-demo node-up: helm install of charts/strata (image.pullPolicy=Never, 1 operator
#      replica on the host network), the operator and node DaemonSet pods Ready, the CSINode
#      listing csi.strata.dev; a Dataset + CachePolicy whose preload Job's pod runs on the
#      kubelet; `kubectl get datasets` at 100%; a busybox pod reading the dataset through its PVC
#      (listing, labels/classes.txt, sha256sums checked against the source, 0 blocks fetched
#      from S3); then a pinned path surviving a cache fill: a second Dataset under a CachePolicy
#      with a 32 MiB quota pinning /train/2026-11-21/**, its pin Job's pod, a 128 MiB read in a
#      pod, and the pinned files still cached (0 blocks fetched) while /train/2026-11-20 was
#      evicted.
# About 2 minutes once everything is built; the first run on a machine also builds Kubernetes,
# containerd and the kubelet from source (cluster.sh build, 12-15 minutes on 2 cores).
# Fallback: when the node cannot come up (no runc, no kubelet build, node not Ready, another
# Strata agent already on this host's /run/strata), or with STRATA_DEMO_NODE=0, the demo says
# "falling back to local processes: <reason>" and runs the control plane only, with the
# operator, agent and CSI plugin as local processes (strata-demo local-up), Job commands run by
# hand and the volume published through the CSI socket.
# Everything runs on after it returns; `make demo-down` (scripts/demo.sh down) stops it all in
# either mode: the demo's pods, helm uninstall, cluster.sh down (kills the containers, unmounts),
# moto, leftover mounts.
# `scripts/demo.sh standalone` / `standalone-down`: just the agent's FUSE mount of examples/data.
set -Eeuo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
demo_dir=${STRATA_DEMO_DIR:-/tmp/strata-demo}
export STRATA_DEMO_DIR="$demo_dir"
logs="$demo_dir/logs"
# The demo's own cluster: its own state, ports and CIDRs, so it never touches the ones the e2e
# tests use (default state ~/.local/state/strata, API 6443; the real-node suite's 7443).
export STRATA_STATE="$demo_dir/control-plane"
export STRATA_APISERVER_PORT=${STRATA_DEMO_APISERVER_PORT:-16443}
export STRATA_ETCD_CLIENT_PORT=${STRATA_DEMO_ETCD_CLIENT_PORT:-12379}
export STRATA_ETCD_PEER_PORT=${STRATA_DEMO_ETCD_PEER_PORT:-12380}
export STRATA_KCM_PORT=${STRATA_DEMO_KCM_PORT:-20257}
export STRATA_SCHEDULER_PORT=${STRATA_DEMO_SCHEDULER_PORT:-20259}
export STRATA_KUBELET_PORT=${STRATA_DEMO_KUBELET_PORT:-20250}
export STRATA_KUBELET_HEALTHZ_PORT=${STRATA_DEMO_KUBELET_HEALTHZ_PORT:-20248}
export STRATA_SERVICE_CIDR=${STRATA_DEMO_SERVICE_CIDR:-10.98.0.0/16}
export STRATA_POD_CIDR=${STRATA_DEMO_POD_CIDR:-10.246.0.0/24}
s3_port=${STRATA_DEMO_S3_PORT:-19000}
bucket=strata-demo
target_dir=${CARGO_TARGET_DIR:-$repo/target}
bins="$target_dir/debug"
# "node" or "local": how the running demo was started, so `up` again and `down` match it.
mode_file="$demo_dir/mode"
# The node DaemonSet's fixed host paths: its agent's API socket and the FUSE mounts of the
# demo's namespace (<mount root>/<namespace>/<dataset>).
agent_socket=/run/strata/agent.sock
agent_mounts=/var/lib/strata/mounts/demo
release=strata
system_ns=strata-system

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
  # What a pod must read back (sha256sum's format, paths as `find .` prints them).
  { (cd examples/data && find . -type f | sort | xargs sha256sum)
    (cd "$demo_dir" && sha256sum random-128MiB.bin | sed 's|  random|  ./generated/random|'); } \
    >"$demo_dir/source.sha256"
  say "uploaded examples/data ($n files) and generated/random-128MiB.bin to s3://$bucket/data/"
}

# Why the node cannot run the demo, or nothing when it can (checked before the cluster starts).
node_blocker() {
  [ "${STRATA_DEMO_NODE:-1}" = 0 ] && { echo "STRATA_DEMO_NODE=0"; return; }
  command -v runc >/dev/null || { echo "runc is not installed (scripts/setup.sh installs it)"; return; }
  # The DaemonSet's agent socket is a fixed host path: a second Strata agent on this machine
  # would take it over from the first.
  if [ -S "$agent_socket" ] && curl -s -o /dev/null --max-time 2 --unix-socket "$agent_socket" http://agent/; then
    echo "another Strata agent serves $agent_socket (a node pod of another local cluster?); the node DaemonSet's host paths are fixed, so two cannot run on one machine"
    return
  fi
  if ss -Htln "sport = :7070" | grep -q .; then
    echo "port 7070 (the chart's node.agentPort, on the host network) is in use"
  fi
}

# The cluster with its node; on failure, the reason on stdout and the control plane may still run.
node_cluster_up() {
  if e2e/cluster/cluster.sh up >"$logs/cluster-up.log" 2>&1; then return 0; fi
  grep -h '\[cluster\] error' "$logs/cluster-up.log" | tail -n 1 | sed 's/^\[cluster\] error: //' | grep . ||
    echo "cluster.sh up failed (see $logs/cluster-up.log)"
  return 1
}

control_plane_up() {
  STRATA_NODE=0 e2e/cluster/cluster.sh up >>"$logs/cluster-up.log" 2>&1 || { cat "$logs/cluster-up.log" >&2; false; }
}

up() {
  trap on_error ERR
  mkdir -p "$demo_dir/run" "$logs"
  say "setup (fuse3, moto, runc, CNI plugins, the local cluster's binaries; skipped when present)"
  bash scripts/setup.sh
  say "building strata-operator, strata-agent, strata-csi, strata-demo (cargo, debug profile, into $target_dir)"
  cargo build -q --bins -p strata-operator -p strata-agent -p strata-csi -p strata-holder -p strata-e2e
  local mode reason=""
  mode=$(cat "$mode_file" 2>/dev/null || true)
  if [ -z "$mode" ]; then
    reason=$(node_blocker)
    mode=node
    [ -z "$reason" ] || mode=local
  fi
  if [ "$mode" = node ]; then
    local image="$demo_dir/images/strata.tar" t0=$SECONDS
    say "container image from the DEBUG binaries in $bins (STRATA_IMAGE_BIN_DIR=$bins scripts/image.sh strata; without STRATA_IMAGE_BIN_DIR it builds release)"
    mkdir -p "$demo_dir/images"
    STRATA_IMAGE_BIN_DIR="$bins" scripts/image.sh strata "$image" 2>"$logs/image.log" || { cat "$logs/image.log" >&2; false; }
    say "$(tail -n 1 "$logs/image.log" | sed 's/^\[image\] //') in $((SECONDS - t0))s"
    say "local cluster with its node: kube-apiserver https://127.0.0.1:$STRATA_APISERVER_PORT, kubelet :$STRATA_KUBELET_PORT, pods $STRATA_POD_CIDR (state $STRATA_STATE; log $logs/cluster-up.log)"
    t0=$SECONDS
    if reason=$(node_cluster_up); then
      say "$(grep -h 'Ready in' "$logs/cluster-up.log" | tail -n 1 | sed 's/^\[cluster\] //') (cluster up in $((SECONDS - t0))s)"
      e2e/cluster/cluster.sh import "$image" 2>&1 | sed 's/^\[image\] /demo: /'
    else
      mode=local
    fi
  fi
  if [ "$mode" = local ]; then
    [ -z "$reason" ] || say "falling back to local processes: $reason"
    say "local control plane only (state $STRATA_STATE, kube-apiserver https://127.0.0.1:$STRATA_APISERVER_PORT)"
    control_plane_up
  fi
  echo "$mode" >"$mode_file"
  start_s3
  # A failed step's message names the fix; a backtrace would bury it.
  export RUST_BACKTRACE=0 RUST_LIB_BACKTRACE=0
  if [ "$mode" = node ]; then
    local kubelet_dir
    kubelet_dir=$(e2e/cluster/cluster.sh paths | sed -n 's/^KUBELET_DIR=//p')
    "$bins/strata-demo" node-up --chart "$repo/charts/strata" --kubelet-dir "$kubelet_dir" \
      --disk-cache "$demo_dir/node-cache" --source-sums "$demo_dir/source.sha256" \
      --s3-endpoint "http://127.0.0.1:$s3_port" --s3-uri "s3://$bucket/data/"
  else
    "$bins/strata-demo" local-up --bins "$bins" --chart "$repo/charts/strata" \
      --s3-endpoint "http://127.0.0.1:$s3_port" --s3-uri "s3://$bucket/data/"
    say "this ran WITHOUT the real node (local processes; see above for why)"
  fi
}

# The node mode's workloads, gracefully while the cluster still runs: the demo's pods (the
# kubelet unpublishes their volumes), then the release (the agent unmounts on SIGTERM).
node_workloads_down() {
  local kubeconfig="$STRATA_STATE/cluster/kubeconfig"
  [ -f "$kubeconfig" ] || return 0
  eval "$(e2e/cluster/cluster.sh env)"
  kubectl get --raw /readyz >/dev/null 2>&1 || return 0
  if kubectl -n demo delete pods --all --wait --timeout=60s >/dev/null 2>&1; then
    say "deleted the demo's pods"
  else
    say "the demo's pods did not go within 60s; cluster.sh down kills them"
  fi
  # An agent removes its socket path when it stops: with another cluster's agent listening on
  # the same fixed path, a graceful stop of ours would remove theirs. cluster.sh down kills ours.
  local listeners
  listeners=$(ss -Hxl | awk -v s="$agent_socket" '$5 == s' | wc -l)
  if [ "$listeners" -gt 1 ]; then
    say "not uninstalling gracefully: $listeners Strata agents listen on $agent_socket (another local cluster's too), and ours would remove that path on exit; cluster.sh down kills ours"
  elif helm status "$release" -n "$system_ns" >/dev/null 2>&1; then
    if helm uninstall "$release" -n "$system_ns" --wait --timeout 90s >/dev/null; then
      say "helm uninstall $release"
    else
      say "helm uninstall $release failed; cluster.sh down stops its pods"
    fi
    kubectl -n "$system_ns" wait --for=delete pod -l 'app.kubernetes.io/name in (strata-node,strata-holder)' --timeout=60s >/dev/null 2>&1 || true
  fi
}

down() {
  if [ ! -d "$demo_dir" ]; then
    say "nothing to stop ($demo_dir does not exist)"
    return
  fi
  local mode
  mode=$(cat "$mode_file" 2>/dev/null || echo unknown)
  if [ "$mode" != local ]; then node_workloads_down || true; fi
  if [ "$mode" != node ] && [ -x "$bins/strata-demo" ]; then
    "$bins/strata-demo" local-down || echo "demo: strata-demo local-down failed; stopping the rest anyway" >&2
  fi
  local pidfile="$demo_dir/run/moto.pid"
  if pid_alive "$pidfile"; then
    kill -TERM "$(cat "$pidfile")"
    say "stopped moto S3 (pid $(cat "$pidfile"))"
  fi
  # The cluster with the demo's env (its node: kills the containers, unmounts under its dir).
  if [ -d "$STRATA_STATE/cluster" ]; then e2e/cluster/cluster.sh down; fi
  # Whatever is still mounted: under the demo dir (a process that died before unmounting), and
  # the demo namespace's FUSE mounts an agent killed by `down` could not remove.
  awk -v d="$demo_dir/" -v a="$agent_mounts/" 'index($5, d) == 1 || index($5, a) == 1 { print $5 }' /proc/self/mountinfo | sort -r |
    while read -r m; do umount -l "$m" && say "unmounted leftover $m"; done
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
