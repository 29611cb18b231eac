#!/usr/bin/env bash
# Runs csi-sanity (github.com/kubernetes-csi/csi-test) against strata-csi backed by a
# real `strata-agent serve` over a local directory. Needs root (FUSE, bind mounts).
#
#   csi/sanity/run.sh [extra csi-sanity flags]
#
# CSI_SANITY: the csi-sanity binary (default: ~/.cache/strata/k8s/*/bin/csi-sanity)
# STRATA_BIN_DIR: where strata-agent and strata-csi are (default: $CARGO_TARGET_DIR/debug or target/debug)
# CSI_SANITY_SKIP: ginkgo skip regex (default: the tests that need CreateVolume, see docs/csi.md)
set -euo pipefail

sanity=${CSI_SANITY:-$(ls -d "$HOME"/.cache/strata/k8s/*/bin/csi-sanity 2>/dev/null | head -1)}
[ -x "$sanity" ] || { echo "csi-sanity not found; build it (e2e/cluster/cluster.sh build) or set CSI_SANITY" >&2; exit 2; }
bin=${STRATA_BIN_DIR:-${CARGO_TARGET_DIR:-target}/debug}
for b in strata-agent strata-csi; do
  [ -x "$bin/$b" ] || { echo "$bin/$b missing; run cargo build -p strata-agent -p strata-csi" >&2; exit 2; }
done
# Node-only driver: no CreateVolume, so the tests that provision a volume first are
# skipped (docs/csi.md lists them and why).
skip=${CSI_SANITY_SKIP:-'ValidateVolumeCapabilities should fail when no volume capabilities are provided|ValidateVolumeCapabilities should return appropriate values|NodeUnpublishVolume should remove target path|NodeGetVolumeStats should fail when volume does not exist on the specified path|already mounted at a different target path'}

work=$(mktemp -d /tmp/strata-sanity.XXXXXX)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  # Detach anything a failed run left mounted under the work dir, deepest first.
  awk -v w="$work" '$5 ~ "^"w {print $5}' /proc/self/mountinfo | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

mkdir -p "$work/source/dir" "$work/datasets"
echo hello >"$work/source/dir/hello.txt"
cat >"$work/datasets/data.yaml" <<YAML
namespace: sanity
name: data
sources:
  - name: local
    uri: file://$work/source
YAML

"$bin/strata-agent" serve --socket "$work/agent.sock" --mount-root "$work/mounts" \
  --cache-dir "$work/cache" --memory 64Mi --disk 256Mi \
  --datasets-dir "$work/datasets" --allow-local-path "$work/source" >"$work/agent.log" 2>&1 &
pids+=($!)
"$bin/strata-csi" --endpoint "unix://$work/csi.sock" --node-id sanity-node \
  --agent-socket "$work/agent.sock" >"$work/csi.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do [ -S "$work/agent.sock" ] && [ -S "$work/csi.sock" ] && break; sleep 0.1; done

status=0
"$sanity" --csi.endpoint "unix://$work/csi.sock" \
  --csi.mountdir "$work/target" --csi.stagingdir "$work/staging" \
  --ginkgo.skip "$skip" "$@" || status=$?
if [ "$status" -ne 0 ]; then
  echo "--- strata-csi log"; tail -50 "$work/csi.log"
  echo "--- strata-agent log"; tail -50 "$work/agent.log"
fi
exit "$status"
