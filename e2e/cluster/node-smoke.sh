#!/usr/bin/env bash
# Smoke test of the local cluster's node (after `cluster.sh up`, same environment): the node is
# Ready, a hostNetwork pod on the pause and busybox images runs to completion and prints what it
# was asked to, a pod on the bridge network gets an address from the pod range, and, when the
# Strata image was imported, a pod runs strata-agent from it. Deletes its namespace at the end.
#
#   e2e/cluster/node-smoke.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

log() { printf '[node-smoke] %s\n' "$*" >&2; }
die() {
	printf '[node-smoke] FAILED: %s\n' "$*" >&2
	exit 1
}

declare -A paths
while IFS='=' read -r k v; do paths[$k]="$v"; done < <("$here/cluster.sh" paths)
export KUBECONFIG="${paths[KUBECONFIG]}"
kubectl() { "${paths[BIN_DIR]}/kubectl" "$@"; }
node="${paths[NODE_NAME]}"
ns="node-smoke-$$"
start=$SECONDS

[[ "$(kubectl get node "$node" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>&1)" == True ]] ||
	die "node $node is not Ready (cluster.sh up; cluster.sh status)"
log "node $node Ready"

kubectl create namespace "$ns" >/dev/null
trap 'kubectl delete namespace "$ns" --wait=false >/dev/null 2>&1 || true' EXIT

# pod NAME IMAGE HOSTNET COMMAND: a run-once pod on the node.
pod() {
	kubectl -n "$ns" apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Pod
metadata: {name: $1}
spec:
  nodeName: $node
  hostNetwork: $3
  restartPolicy: Never
  automountServiceAccountToken: false
  containers:
  - name: main
    image: $2
    imagePullPolicy: Never
    command: ["sh", "-c", "$4"]
YAML
}

# finished NAME: waits for the pod to succeed, prints its log.
finished() {
	local phase="" deadline=$((SECONDS + 90))
	while ((SECONDS < deadline)); do
		phase="$(kubectl -n "$ns" get pod "$1" -o jsonpath='{.status.phase}')"
		[[ "$phase" == Succeeded ]] && break
		[[ "$phase" == Failed ]] && die "pod $1 failed: $(kubectl -n "$ns" logs "$1" 2>&1 | tail -5)"
		sleep 1
	done
	[[ "$phase" == Succeeded ]] || die "pod $1 not done after 90s (phase '$phase'):
$(kubectl -n "$ns" describe pod "$1" | tail -8)"
	kubectl -n "$ns" logs "$1"
}

# shellcheck disable=SC2016 # expanded by the pod's shell
pod hostnet strata.local/busybox:1.35 true 'echo sum $(sha256sum /bin/busybox | cut -c1-12)'
pod bridge strata.local/busybox:1.35 false 'echo up'
out="$(finished hostnet)"
[[ "$out" == "sum $(sha256sum /bin/busybox | cut -c1-12)" ]] || die "hostnet pod printed '$out'"
log "hostNetwork pod (pause + busybox) ran to completion: $out"
finished bridge >/dev/null
log "bridge-network pod ran at $(kubectl -n "$ns" get pod bridge -o jsonpath='{.status.podIP}')"

image="$("$here/../../scripts/image.sh" name strata)"
if "${paths[BIN_DIR]}/ctr" --address "${paths[CONTAINERD_ADDRESS]}" -n k8s.io images ls -q 2>/dev/null | grep -qx "$image"; then
	kubectl -n "$ns" run strata --image="$image" --image-pull-policy=Never --restart=Never \
		--overrides="{\"spec\":{\"hostNetwork\":true,\"nodeName\":\"$node\"}}" --command -- strata-agent --version >/dev/null
	log "Strata image: $(finished strata)"
else
	log "Strata image $image not imported; skipped (scripts/image.sh strata; cluster.sh import target/images/strata.tar)"
fi
log "passed in $((SECONDS - start))s"
