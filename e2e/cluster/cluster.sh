#!/usr/bin/env bash
# Local Kubernetes cluster built from upstream Go modules: a control plane (etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler) on 127.0.0.1 and one real node (containerd + kubelet)
# on this machine. See README.md next to this file for what differs from a production node.
#
#   cluster.sh build   compile pinned binaries into $STRATA_CACHE/k8s/<version>/bin (reused when present)
#   cluster.sh up      generate PKI + kubeconfig, start the control plane, wait for /readyz, then
#                      start the node and wait for it to be Ready (--no-node or STRATA_NODE=0: skip)
#   cluster.sh down    stop exactly the processes `up` started (pid files), the node's containers
#                      and mounts, and remove their state
#   cluster.sh import TAR...  load image tars (scripts/image.sh) into the node's containerd
#   cluster.sh env     print export lines (KUBECONFIG, PATH)
#   cluster.sh status  show which components run, whether /readyz is ok and the node is Ready
#   cluster.sh paths   print KEY=value lines (unquoted) for programs: KUBECONFIG, BIN_DIR, versions
set -euo pipefail

# ---- pinned versions ---------------------------------------------------------------------------
K8S_VERSION="${STRATA_K8S_VERSION:-v1.37.2}"
ETCD_VERSION="${STRATA_ETCD_VERSION:-v3.7.3}"
HELM_VERSION="${STRATA_HELM_VERSION:-v3.22.0}"
CSI_TEST_VERSION="${STRATA_CSI_TEST_VERSION:-v5.6.0}"
# Kubernetes 1.36+ needs containerd 2.x; Debian 12 ships 1.6, so it is built from its Go module.
CONTAINERD_VERSION="${STRATA_CONTAINERD_VERSION:-v2.4.2}"

CACHE_ROOT="${STRATA_CACHE:-$HOME/.cache/strata}"
K8S_DIR="$CACHE_ROOT/k8s/$K8S_VERSION"
BIN_DIR="$K8S_DIR/bin"
SRC_DIR="$K8S_DIR/src"
STATE_ROOT="${STRATA_STATE:-$HOME/.local/state/strata}"
STATE_DIR="$STATE_ROOT/cluster"
KUBECONFIG_PATH="$STATE_DIR/kubeconfig"

API_PORT="${STRATA_APISERVER_PORT:-6443}"
ETCD_CLIENT_PORT="${STRATA_ETCD_CLIENT_PORT:-2379}"
ETCD_PEER_PORT="${STRATA_ETCD_PEER_PORT:-2380}"
KCM_PORT="${STRATA_KCM_PORT:-10257}"
SCHED_PORT="${STRATA_SCHEDULER_PORT:-10259}"
SERVICE_CIDR="${STRATA_SERVICE_CIDR:-10.96.0.0/16}"
READY_TIMEOUT="${STRATA_READY_TIMEOUT:-120}"
# STRATA_NODE=0: control plane only (no kubelet, no containerd), as before the real node existed.
WITH_NODE="${STRATA_NODE:-1}"

COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler)

# ---- the node (containerd + kubelet) -----------------------------------------------------------
NODE_NAME="${STRATA_NODE_NAME:-strata-node}"
NODE_DIR="$STATE_DIR/node"
# The kubelet refuses a loopback node IP, and the apiserver reaches the kubelet (logs, exec) at
# this address: the machine's own, the source address of its default route (else its first
# global one, not a CNI bridge).
node_ip() {
	ip -4 route get 1.1.1.1 2>/dev/null | sed -n 's/.* src \([0-9.]*\).*/\1/p' | head -1 | grep . ||
		ip -4 -o addr show scope global | awk '$2 !~ /^(strata-|cni)/ { sub(/\/.*/, "", $4); print $4; exit }'
}
NODE_IP="${STRATA_NODE_IP:-$(node_ip || true)}"
# The chart's node.kubeletDir must be this path for the CSI plugin's sockets and mounts to meet
# the kubelet's (`cluster.sh paths` prints it as KUBELET_DIR).
KUBELET_DIR="$NODE_DIR/kubelet"
CONTAINERD_DIR="$NODE_DIR/containerd"
CONTAINERD_SOCK="$CONTAINERD_DIR/containerd.sock"
KUBELET_PORT="${STRATA_KUBELET_PORT:-10250}"
KUBELET_HEALTHZ_PORT="${STRATA_KUBELET_HEALTHZ_PORT:-10248}"
# Pods without hostNetwork get an address on this node-local bridge (no masquerade, no
# kube-proxy): enough for the runtime to report its network ready.
POD_CIDR="${STRATA_POD_CIDR:-10.244.0.0/24}"
CNI_BIN_DIR="${STRATA_CNI_BIN_DIR:-/usr/lib/cni}"
# Host-wide names that must differ between two clusters on one machine: the kubelet's cgroup
# root (a kubelet removes pod cgroups it does not know under its root) and the CNI bridge.
NODE_INSTANCE="strata-$API_PORT"
PAUSE_IMAGE="${STRATA_PAUSE_NAME:-strata.local/pause:3.10}"
NODE_COMPONENTS=(containerd kubelet)
# Host directories pods propagate mounts from (Bidirectional): the agent's FUSE mount dir.
NODE_SHARED_DIRS="${STRATA_NODE_SHARED_DIRS:-/var/lib/strata/mounts}"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
IMAGE_DIR="$CACHE_ROOT/images"

log() { printf '[cluster] %s\n' "$*" >&2; }
die() {
	printf '[cluster] error: %s\n' "$*" >&2
	exit 1
}

need() {
	local tool
	for tool in "$@"; do
		command -v "$tool" >/dev/null ||
			die "$tool is required but not installed (Debian packages: openssl curl iproute2 util-linux coreutils)"
	done
}

# ---- build -------------------------------------------------------------------------------------

# A binary counts as built when it exists and its stamp records the pinned version it came from.
built() { [[ -x "$BIN_DIR/$1" && "$(cat "$BIN_DIR/.$1.version" 2>/dev/null)" == "$2" ]]; }
BUILT_ANY=0
stamp() {
	echo "$2" >"$BIN_DIR/.$1.version"
	BUILT_ANY=1
}

go_env() {
	export GOFLAGS="${GOFLAGS:-} -mod=mod -buildvcs=false"
	export CGO_ENABLED="${CGO_ENABLED:-0}"
	# Upstream modules may declare a newer `go` line than the installed toolchain; let Go fetch it.
	export GOTOOLCHAIN="${GOTOOLCHAIN:-auto}"
	[[ "$GOTOOLCHAIN" == local ]] && export GOTOOLCHAIN=auto
	command -v go >/dev/null || die "go is not installed (need Go >= 1.26 on PATH)"
}

build_etcd() {
	built etcd "$ETCD_VERSION" && return 0
	local dir="$SRC_DIR/etcd"
	log "building etcd $ETCD_VERSION"
	rm -rf "$dir" && mkdir -p "$dir"
	# etcd's root module carries replace directives, so `go install go.etcd.io/etcd/v3@v` fails;
	# a tiny main that calls the server's entry point resolves cleanly.
	cat >"$dir/go.mod" <<GOMOD
module strata.local/etcdbuild

go 1.26.0

require go.etcd.io/etcd/server/v3 $ETCD_VERSION
GOMOD
	cat >"$dir/main.go" <<'GOSRC'
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GOSRC
	(cd "$dir" && go mod tidy && go build -trimpath -ldflags='-s -w' -o "$BIN_DIR/etcd" .)
	stamp etcd "$ETCD_VERSION"
}

K8S_COMMANDS=(kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet)

build_kubernetes() {
	local want=("${K8S_COMMANDS[@]}") missing=() b
	for b in "${want[@]}"; do
		[[ "$b" == kubelet ]] && ((!WITH_NODE)) && continue
		built "$b" "$K8S_VERSION" || missing+=("$b")
	done
	((${#missing[@]})) || return 0
	local dir="$SRC_DIR/kubernetes"
	log "building kubernetes $K8S_VERSION (${missing[*]})"
	rm -rf "$dir" && mkdir -p "$dir"
	local modfile
	modfile="$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)",/\1/p')"
	[[ -f "$modfile" ]] || die "could not download k8s.io/kubernetes@$K8S_VERSION"
	# k8s.io/kubernetes requires its staging modules at v0.0.0 and points them at ./staging via
	# replace; replaces in a dependency are ignored, so re-point each one to the published v0.x.y.
	local staging_version="v0.${K8S_VERSION#v1.}"
	{
		printf 'module strata.local/k8sbuild\n\ngo 1.26.0\n\nrequire k8s.io/kubernetes %s\n\nreplace (\n' "$K8S_VERSION"
		sed -n 's#^[[:space:]]*\(k8s\.io/[^ ]*\) => \./staging/.*#\1#p' "$modfile" |
			while read -r m; do printf '\t%s => %s %s\n' "$m" "$m" "$staging_version"; done
		printf ')\n\n'
		for b in "${want[@]}"; do printf 'tool k8s.io/kubernetes/cmd/%s\n' "$b"; done
	} >"$dir/go.mod"
	local minor="${K8S_VERSION#v1.}"
	minor="${minor%%.*}"
	local ldflags="-s -w"
	for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
		ldflags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
		ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
	done
	(
		cd "$dir"
		go mod tidy
		# Only what is missing: adding the kubelet to a cache that has the rest costs one link.
		go build -trimpath -ldflags="$ldflags" -o "$BIN_DIR/" "${missing[@]/#/k8s.io/kubernetes/cmd/}"
	)
	for b in "${missing[@]}"; do stamp "$b" "$K8S_VERSION"; done
}

build_tool_module() { # name version module-path package-path ldflags
	local name="$1" version="$2" module="$3" pkg="$4" ldflags="$5"
	built "$name" "$version" && return 0
	local dir="$SRC_DIR/$name"
	log "building $name $version"
	rm -rf "$dir" && mkdir -p "$dir"
	printf 'module strata.local/%sbuild\n\ngo 1.26.0\n\nrequire %s %s\n\ntool %s\n' \
		"$name" "$module" "$version" "$pkg" >"$dir/go.mod"
	(cd "$dir" && go mod tidy && go build -trimpath -ldflags="$ldflags" -o "$BIN_DIR/$name" "$pkg")
	stamp "$name" "$version"
}

# containerd, its runc shim and ctr come from one module without replace directives, so
# `go install pkg@version` resolves exactly containerd's own go.mod. CGO_ENABLED=0 as upstream
# builds the shim; the daemon loses only the btrfs snapshotter (overlayfs is what we use).
CONTAINERD_COMMANDS=(containerd containerd-shim-runc-v2 ctr)

build_containerd() {
	local b stale=0
	for b in "${CONTAINERD_COMMANDS[@]}"; do built "$b" "$CONTAINERD_VERSION" || stale=1; done
	((stale)) || return 0
	log "building containerd $CONTAINERD_VERSION (${CONTAINERD_COMMANDS[*]})"
	local mod=github.com/containerd/containerd/v2
	local ldflags="-s -w -X $mod/version.Version=${CONTAINERD_VERSION#v} -X $mod/version.Package=$mod"
	local pkgs=("${CONTAINERD_COMMANDS[@]/#/$mod/cmd/}")
	GOBIN="$BIN_DIR" GOFLAGS=-buildvcs=false go install -trimpath -ldflags="$ldflags" \
		"${pkgs[@]/%/@$CONTAINERD_VERSION}" ||
		die "building containerd $CONTAINERD_VERSION failed (the Go module proxy must serve $mod)"
	for b in "${CONTAINERD_COMMANDS[@]}"; do stamp "$b" "$CONTAINERD_VERSION"; done
}

cmd_build() {
	go_env
	mkdir -p "$BIN_DIR" "$SRC_DIR"
	# Concurrent builds (CI plus a test that found binaries missing) would clobber each other.
	exec 8>"$K8S_DIR/.build.lock"
	flock 8
	local start=$SECONDS
	build_etcd
	build_kubernetes
	build_tool_module helm "$HELM_VERSION" helm.sh/helm/v3 helm.sh/helm/v3/cmd/helm \
		"-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
	build_tool_module csi-sanity "$CSI_TEST_VERSION" github.com/kubernetes-csi/csi-test/v5 \
		github.com/kubernetes-csi/csi-test/v5/cmd/csi-sanity "-s -w"
	((WITH_NODE)) && build_containerd
	if ((BUILT_ANY)); then
		log "build finished in $((SECONDS - start))s (wall) -> $BIN_DIR"
	else
		log "binaries up to date in $BIN_DIR"
	fi
}

# ---- PKI ---------------------------------------------------------------------------------------

PKI_DIR="$STATE_DIR/pki"

# The first IP of the service range is the in-cluster address of the `kubernetes` Service.
service_ip() {
	local net="${SERVICE_CIDR%/*}"
	echo "${net%.*}.$((${net##*.} + 1))"
}

new_key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

# sign_cert name subject extensions: a key + certificate signed by the local CA.
sign_cert() {
	local name="$1" subj="$2" ext="$3"
	new_key "$PKI_DIR/$name.key"
	openssl req -new -key "$PKI_DIR/$name.key" -subj "$subj" -out "$PKI_DIR/$name.csr" 2>/dev/null
	openssl x509 -req -in "$PKI_DIR/$name.csr" -CA "$PKI_DIR/ca.crt" -CAkey "$PKI_DIR/ca.key" \
		-CAcreateserial -days 365 -sha256 -out "$PKI_DIR/$name.crt" \
		-extfile <(printf '%s\n' "basicConstraints=critical,CA:FALSE" \
			"keyUsage=critical,digitalSignature,keyEncipherment" "$ext") 2>/dev/null
	rm -f "$PKI_DIR/$name.csr"
}

gen_pki() {
	mkdir -p "$PKI_DIR" && chmod 700 "$PKI_DIR"
	new_key "$PKI_DIR/ca.key"
	openssl req -x509 -new -key "$PKI_DIR/ca.key" -subj "/CN=strata-local-ca" -days 365 -sha256 \
		-addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
		-out "$PKI_DIR/ca.crt" 2>/dev/null
	sign_cert apiserver "/CN=kube-apiserver" \
		"extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,IP:$(service_ip),DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
	sign_cert etcd-server "/CN=etcd" "extendedKeyUsage=serverAuth,clientAuth
subjectAltName=IP:127.0.0.1,DNS:localhost"
	sign_cert apiserver-etcd-client "/CN=kube-apiserver-etcd-client" "extendedKeyUsage=clientAuth"
	sign_cert admin "/O=system:masters/CN=strata-admin" "extendedKeyUsage=clientAuth"
	sign_cert controller-manager "/CN=system:kube-controller-manager" "extendedKeyUsage=clientAuth"
	sign_cert scheduler "/CN=system:kube-scheduler" "extendedKeyUsage=clientAuth"
	# The node: the kubelet's client identity (the Node authorizer and NodeRestriction admit
	# system:node:<name> in system:nodes), its serving certificate, and the apiserver's client
	# certificate for logs/exec (the kubelet authorises it by webhook; system:masters may do all).
	sign_cert kubelet-client "/O=system:nodes/CN=system:node:$NODE_NAME" "extendedKeyUsage=clientAuth"
	sign_cert kubelet-serving "/CN=$NODE_NAME" "extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,${NODE_IP:+IP:$NODE_IP,}DNS:localhost,DNS:$NODE_NAME"
	sign_cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" \
		"extendedKeyUsage=clientAuth"
	# Service-account token signing pair (private half for the apiserver and controller-manager).
	new_key "$PKI_DIR/sa.key"
	openssl pkey -in "$PKI_DIR/sa.key" -pubout -out "$PKI_DIR/sa.pub" 2>/dev/null
	chmod 600 "$PKI_DIR"/*.key
}

b64() { base64 -w0 <"$1"; }

# write_kubeconfig file client-cert-name: a kubeconfig with embedded credentials, written atomically
# because tests in other processes may be reading it.
write_kubeconfig() {
	local out="$1" who="$2"
	cat >"$out.tmp" <<KCFG
apiVersion: v1
kind: Config
clusters:
- name: strata-local
  cluster:
    server: https://127.0.0.1:$API_PORT
    certificate-authority-data: $(b64 "$PKI_DIR/ca.crt")
users:
- name: $who
  user:
    client-certificate-data: $(b64 "$PKI_DIR/$who.crt")
    client-key-data: $(b64 "$PKI_DIR/$who.key")
contexts:
- name: strata-local
  context:
    cluster: strata-local
    user: $who
current-context: strata-local
KCFG
	chmod 600 "$out.tmp" && mv "$out.tmp" "$out"
}

# ---- processes ---------------------------------------------------------------------------------

pid_file() { echo "$STATE_DIR/run/$1.pid"; }

# Prints the pid of a component started by us, if that exact binary is still running under it
# (guards against killing an unrelated process that reused the pid).
running_pid() {
	local f pid exe
	f="$(pid_file "$1")"
	[[ -f "$f" ]] || return 1
	pid="$(cat "$f")"
	exe="$(readlink "/proc/$pid/exe" 2>/dev/null)" || return 1
	[[ "$exe" == "$BIN_DIR/$1" ]] || return 1
	echo "$pid"
}

start_component() {
	local name="$1"
	shift
	mkdir -p "$STATE_DIR/run" "$STATE_DIR/logs"
	# setsid: the control plane outlives the shell or test process that started it and does not
	# get its Ctrl-C; no inherited fds, so a caller capturing our output is not kept waiting.
	# 8>&- 9>&-: the long-lived process must not inherit (and so hold forever) the build/up locks.
	setsid "$BIN_DIR/$name" "$@" </dev/null >>"$STATE_DIR/logs/$name.log" 2>&1 8>&- 9>&- &
	local pid=$!
	echo "$pid" >"$(pid_file "$name")"
	# Until exec completes, /proc/<pid>/exe is still bash/setsid; wait for it so later liveness
	# checks (which compare the executable) are not fooled.
	for _ in $(seq 1 100); do
		running_pid "$name" >/dev/null && break
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.05
	done
	log "started $name (pid $pid, log $STATE_DIR/logs/$name.log)"
}

port_free() { ! ss -Htln "sport = :$1" | grep -q .; }

# wait_https name url: poll until the endpoint answers 200 "ok", failing early if the process died.
wait_https() {
	local name="$1" url="$2" deadline=$((SECONDS + READY_TIMEOUT)) body=""
	shift 2
	while ((SECONDS < deadline)); do
		running_pid "$name" >/dev/null || die "$name exited during start-up; last log lines:
$(tail -n 20 "$STATE_DIR/logs/$name.log" 2>/dev/null)"
		body="$(curl -sS --max-time 5 --cacert "$PKI_DIR/ca.crt" "$@" "$url" 2>&1)" && [[ "$body" == ok ]] && return 0
		sleep 0.5
	done
	die "$name not ready after ${READY_TIMEOUT}s at $url (last answer: ${body:0:300}); see $STATE_DIR/logs/$name.log"
}

apiserver_ready() {
	[[ -f "$PKI_DIR/admin.crt" ]] || return 1
	[[ "$(curl -sS --max-time 5 --cacert "$PKI_DIR/ca.crt" --cert "$PKI_DIR/admin.crt" --key "$PKI_DIR/admin.key" \
		"https://127.0.0.1:$API_PORT/readyz" 2>/dev/null)" == ok ]]
}

all_running() {
	local c
	for c in "${COMPONENTS[@]}"; do running_pid "$c" >/dev/null || return 1; done
}

any_running() {
	local c
	for c in "${COMPONENTS[@]}"; do running_pid "$c" >/dev/null && return 0; done
	return 1
}

# stop_pid name pid: SIGTERM, up to 10 s, then SIGKILL.
stop_pid() {
	local c="$1" pid="$2"
	kill -TERM "$pid" 2>/dev/null || true
	for _ in $(seq 1 50); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.2
	done
	if kill -0 "$pid" 2>/dev/null; then
		log "$c (pid $pid) ignored SIGTERM; sending SIGKILL"
		kill -KILL "$pid" 2>/dev/null || true
	fi
	log "stopped $c (pid $pid)"
}

stop_all() {
	local c pid i
	for ((i = ${#COMPONENTS[@]} - 1; i >= 0; i--)); do
		c="${COMPONENTS[i]}"
		pid="$(running_pid "$c")" || continue
		stop_pid "$c" "$pid"
	done
}

# ---- the node ----------------------------------------------------------------------------------

node_running() {
	local c
	for c in "${NODE_COMPONENTS[@]}"; do running_pid "$c" >/dev/null || return 1; done
}

kubectl_admin() { "$BIN_DIR/kubectl" --kubeconfig "$KUBECONFIG_PATH" "$@"; }

# The cgroup hierarchies the kubelet's cgroupfs driver writes to: every v1 hierarchy (this
# machine has no v2; runc also writes to the hybrid `unified` one), or the single v2 one.
cgroup_dirs() {
	if [[ -f /sys/fs/cgroup/cgroup.controllers ]]; then
		echo /sys/fs/cgroup
	else
		local d
		for d in /sys/fs/cgroup/*/; do
			d="${d%/}"
			mountpoint -q "$d" && echo "$d"
		done
	fi
}

check_node_prerequisites() {
	[[ -n "$NODE_IP" ]] || die "no IPv4 address for the node (the kubelet refuses loopback); set STRATA_NODE_IP"
	command -v runc >/dev/null || die "runc is not installed (apt-get install runc, or run scripts/setup.sh)"
	[[ -x "$CNI_BIN_DIR/bridge" && -x "$CNI_BIN_DIR/host-local" && -x "$CNI_BIN_DIR/loopback" ]] ||
		die "CNI plugins missing in $CNI_BIN_DIR (apt-get install containernetworking-plugins, or set STRATA_CNI_BIN_DIR)"
	grep -qw overlay /proc/filesystems || modprobe overlay 2>/dev/null ||
		die "the kernel has no overlay file system (containerd's overlayfs snapshotter needs it)"
	local p
	for p in "$KUBELET_PORT" "$KUBELET_HEALTHZ_PORT"; do
		port_free "$p" || die "127.0.0.1:$p is already in use (a kubelet of another cluster?); set STRATA_KUBELET_PORT / STRATA_KUBELET_HEALTHZ_PORT"
	done
	[[ ! -S "$CONTAINERD_SOCK" ]] || ! "$BIN_DIR/ctr" --address "$CONTAINERD_SOCK" version >/dev/null 2>&1 ||
		die "a containerd not started by this script answers on $CONTAINERD_SOCK; stop it first"
}

write_containerd_config() {
	# Version 4 is what containerd 2.4 writes with `containerd config default`. Everything
	# host-wide moves under the state dir: root, state, sockets, netns mounts; NRI and the
	# host's /etc/containerd/conf.d are off.
	cat >"$CONTAINERD_DIR/config.toml" <<TOML
version = 4
root = '$CONTAINERD_DIR/root'
state = '$CONTAINERD_DIR/state'
imports = []

[plugins.'io.containerd.server.v1.grpc']
  address = '$CONTAINERD_SOCK'
[plugins.'io.containerd.server.v1.ttrpc']
  address = '$CONTAINERD_SOCK.ttrpc'
[plugins.'io.containerd.nri.v1.nri']
  disable = true

[plugins.'io.containerd.cri.v1.images']
  snapshotter = 'overlayfs'
  # Images come from \`ctr images import\` (scripts/image.sh); nothing can be pulled here.
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = '$PAUSE_IMAGE'

[plugins.'io.containerd.cri.v1.runtime']
  # The sandbox lacks CAP_SYS_RESOURCE, so no process may lower its oom_score_adj; without
  # this runc fails with "failed to update /proc/self/oom_score_adj: Permission denied".
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = 'runc'
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = 'io.containerd.runc.v2'
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = '$(command -v runc)'
        SystemdCgroup = false
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ['$CNI_BIN_DIR']
    conf_dir = '$NODE_DIR/cni/net.d'
TOML
}

write_cni_config() {
	local net="${POD_CIDR%/*}"
	mkdir -p "$NODE_DIR/cni/net.d" "$NODE_DIR/cni/ipam"
	cat >"$NODE_DIR/cni/net.d/10-strata.conflist" <<JSON
{
  "cniVersion": "1.0.0",
  "name": "$NODE_INSTANCE",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$NODE_INSTANCE",
      "isGateway": true,
      "ipMasq": false,
      "ipam": {
        "type": "host-local",
        "dataDir": "$NODE_DIR/cni/ipam",
        "ranges": [[{"subnet": "$POD_CIDR", "gateway": "${net%.*}.$((${net##*.} + 1))"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    }
  ]
}
JSON
}

write_kubelet_config() {
	local d
	mkdir -p "$KUBELET_DIR" "$NODE_DIR/pod-logs"
	write_kubeconfig "$NODE_DIR/kubelet.kubeconfig" kubelet-client
	cat >"$NODE_DIR/kubelet.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# A test bed, not advice: this machine has cgroup v1 only, which kubelets after 1.35 refuse
# unless told otherwise, and swap may be on.
failCgroupV1: false
failSwapOn: false
cgroupDriver: cgroupfs
cgroupRoot: /$NODE_INSTANCE
containerRuntimeEndpoint: unix://$CONTAINERD_SOCK
address: $NODE_IP
port: $KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $KUBELET_HEALTHZ_PORT
tlsCertFile: $PKI_DIR/kubelet-serving.crt
tlsPrivateKeyFile: $PKI_DIR/kubelet-serving.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI_DIR/ca.crt}
authorization: {mode: Webhook}
podLogsDir: $NODE_DIR/pod-logs
clusterDomain: cluster.local
# Images are imported, never pulled: garbage-collecting one would lose it. The disk is shared
# with everything else on the machine, so only a nearly full one counts as pressure.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: 100Mi
  nodefs.available: 1%
  imagefs.available: 1%
  nodefs.inodesFree: 1%
YAML
	for d in $(cgroup_dirs); do mkdir -p "$d/$NODE_INSTANCE"; done
}

# Bidirectional mount propagation needs the host path on a shared mount. A systemd host's / is
# shared; this sandbox's is private, so each of NODE_SHARED_DIRS becomes a shared bind mount of
# itself (the kubelet does the same to its own dir). `down` leaves them: harmless, and another
# cluster on the machine may use them.
make_shared_dirs() {
	local d
	for d in $NODE_SHARED_DIRS; do
		mkdir -p "$d"
		[[ "$(findmnt -no PROPAGATION --target "$d")" == shared ]] && continue
		mountpoint -q "$d" || mount --bind "$d" "$d"
		mount --make-rshared "$d"
		log "made $d a shared mount (for Bidirectional mount propagation)"
	done
}

# No kube-proxy runs, so nothing routes Service IPs. Pods reach the API server through the
# `kubernetes` Service (KUBERNETES_SERVICE_HOST/PORT in every container); for hostNetwork pods
# one DNAT rule on locally generated packets stands in for kube-proxy: <service IP>:443 to the
# apiserver on loopback. (Pods on the bridge network have no way to the API server.)
service_rule() { # -A|-C|-D
	iptables -w -t nat "$1" OUTPUT -d "$(service_ip)/32" -p tcp --dport 443 \
		-m comment --comment "strata-local kubernetes Service ($NODE_INSTANCE)" \
		-j DNAT --to-destination "127.0.0.1:$API_PORT"
}

# Images the node cannot pull: built once into the cache (pause, busybox) and imported. The
# Strata image is imported when scripts/image.sh strata has made it; STRATA_NODE_IMAGES adds
# more tars (space-separated).
import_images() {
	local image tar
	mkdir -p "$IMAGE_DIR"
	for image in pause busybox; do
		tar="$IMAGE_DIR/$image.tar"
		[[ -f "$tar" ]] || "$REPO_ROOT/scripts/image.sh" "$image" "$tar"
	done
	local tars=("$IMAGE_DIR/pause.tar" "$IMAGE_DIR/busybox.tar")
	tar="${CARGO_TARGET_DIR:-$REPO_ROOT/target}/images/strata.tar"
	if [[ -f "$tar" ]]; then
		tars+=("$tar")
	else
		log "no Strata image at $tar (scripts/image.sh strata makes it; then cluster.sh import $tar)"
	fi
	# shellcheck disable=SC2206 # a space-separated list by design
	tars+=(${STRATA_NODE_IMAGES:-})
	for tar in "${tars[@]}"; do
		CTR="$BIN_DIR/ctr" "$REPO_ROOT/scripts/image.sh" import "$tar" "$CONTAINERD_SOCK"
	done
}

wait_node_ready() {
	local deadline=$((SECONDS + READY_TIMEOUT)) ready=""
	while ((SECONDS < deadline)); do
		running_pid kubelet >/dev/null || die "the kubelet exited during start-up; last log lines:
$(tail -n 20 "$STATE_DIR/logs/kubelet.log" 2>/dev/null)"
		ready="$(kubectl_admin get node "$NODE_NAME" \
			-o jsonpath='{.status.conditions[?(@.type=="Ready")].status} {.status.conditions[?(@.type=="Ready")].message}' 2>&1)" &&
			[[ "$ready" == True* ]] && return 0
		sleep 1
	done
	die "node $NODE_NAME not Ready after ${READY_TIMEOUT}s (last: ${ready:0:300}); see $STATE_DIR/logs/kubelet.log and containerd.log"
}

node_up() {
	if node_running; then
		log "node $NODE_NAME already running"
		return 0
	fi
	local c
	for c in "${NODE_COMPONENTS[@]}"; do
		running_pid "$c" >/dev/null && {
			log "node only partly running; restarting it"
			node_down
			break
		}
	done
	check_node_prerequisites
	local start=$SECONDS
	trap 'log "node start failed; stopping it"; node_down' EXIT
	cleanup_node_state
	mkdir -p "$CONTAINERD_DIR"
	write_containerd_config
	write_cni_config
	write_kubelet_config
	make_shared_dirs
	service_rule -C 2>/dev/null || service_rule -A || die "iptables could not add the kubernetes Service rule (need iptables and CAP_NET_ADMIN)"
	# containerd finds containerd-shim-runc-v2 on its PATH.
	PATH="$BIN_DIR:$PATH" start_component containerd --config "$CONTAINERD_DIR/config.toml"
	local deadline=$((SECONDS + READY_TIMEOUT))
	until "$BIN_DIR/ctr" --address "$CONTAINERD_SOCK" version >/dev/null 2>&1; do
		running_pid containerd >/dev/null || die "containerd exited during start-up; last log lines:
$(tail -n 20 "$STATE_DIR/logs/containerd.log" 2>/dev/null)"
		((SECONDS < deadline)) || die "containerd did not answer on $CONTAINERD_SOCK within ${READY_TIMEOUT}s"
		sleep 0.2
	done
	import_images
	start_component kubelet --config "$NODE_DIR/kubelet.yaml" --kubeconfig "$NODE_DIR/kubelet.kubeconfig" \
		--root-dir "$KUBELET_DIR" --hostname-override "$NODE_NAME" --node-ip "$NODE_IP"
	wait_node_ready
	trap - EXIT
	log "node $NODE_NAME Ready in $((SECONDS - start))s (kubelet dir $KUBELET_DIR)"
}

# Mount points at or under a directory, deepest first.
mounts_under() {
	awk -v d="$1" '{ m = $5; gsub(/\\040/, " ", m); if (m == d || index(m, d "/") == 1) print m }' \
		/proc/self/mountinfo | sort -r
}

# Stops containers, then containerd and the kubelet, unmounts what they left (volumes, rootfs,
# netns, the kubelet's rshared bind of its own dir) and removes the node's host-wide names.
node_down() {
	local pid id m d
	if pid="$(running_pid kubelet)"; then stop_pid kubelet "$pid"; fi
	if running_pid containerd >/dev/null; then
		# Without the kubelet nothing stops the pods: kill their tasks while containerd still
		# runs, so no container outlives the node. (No CRI teardown: the bridge goes below.)
		for id in $("$BIN_DIR/ctr" --address "$CONTAINERD_SOCK" -n k8s.io tasks ls -q 2>/dev/null); do
			"$BIN_DIR/ctr" --address "$CONTAINERD_SOCK" -n k8s.io tasks kill -s SIGKILL "$id" >/dev/null 2>&1 || true
		done
		for id in $("$BIN_DIR/ctr" --address "$CONTAINERD_SOCK" -n k8s.io tasks ls -q 2>/dev/null); do
			for _ in $(seq 1 25); do
				"$BIN_DIR/ctr" --address "$CONTAINERD_SOCK" -n k8s.io tasks delete "$id" >/dev/null 2>&1 && break
				sleep 0.2
			done
		done
		stop_pid containerd "$(running_pid containerd)"
	fi
	cleanup_node_state
}

# What a node leaves on the host once its processes are gone.
cleanup_node_state() {
	local m d
	if [[ -d "$NODE_DIR" ]]; then
		while read -r m; do
			[[ -n "$m" ]] && { umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; }
		done < <(mounts_under "$NODE_DIR")
		m="$(mounts_under "$NODE_DIR" | head -1)"
		[[ -z "$m" ]] || die "$m is still mounted; unmount it by hand before removing $NODE_DIR"
	fi
	if ip link show "$NODE_INSTANCE" >/dev/null 2>&1; then ip link delete "$NODE_INSTANCE" || true; fi
	if command -v iptables >/dev/null; then
		while service_rule -C 2>/dev/null; do service_rule -D; done
	fi
	for d in $(cgroup_dirs); do
		[[ -d "$d/$NODE_INSTANCE" ]] || continue
		# Children first; a cgroup still holding a process stays (and is reported).
		find "$d/$NODE_INSTANCE" -depth -type d -exec rmdir {} + 2>/dev/null ||
			log "could not remove every cgroup under $d/$NODE_INSTANCE (a process left in one?)"
	done
	rm -rf "$NODE_DIR"
}

print_env() {
	printf 'export KUBECONFIG=%q\n' "$KUBECONFIG_PATH"
	# shellcheck disable=SC2016 # $PATH is meant to expand in the caller's shell, not here.
	printf 'export PATH=%q:"$PATH"\n' "$BIN_DIR"
}

all_built() {
	built etcd "$ETCD_VERSION" && built kube-apiserver "$K8S_VERSION" &&
		built kube-controller-manager "$K8S_VERSION" && built kube-scheduler "$K8S_VERSION" &&
		built kubectl "$K8S_VERSION" && built helm "$HELM_VERSION" &&
		built csi-sanity "$CSI_TEST_VERSION" || return 1
	((WITH_NODE)) || return 0
	built kubelet "$K8S_VERSION" && built containerd "$CONTAINERD_VERSION" &&
		built containerd-shim-runc-v2 "$CONTAINERD_VERSION" && built ctr "$CONTAINERD_VERSION"
}

cmd_up() {
	need openssl curl ss setsid flock base64
	((WITH_NODE)) && need ip iptables mountpoint findmnt jq gzip tar
	mkdir -p "$STATE_DIR"
	# One `up` at a time: tests in several processes may all try to start the shared cluster.
	exec 9>"$STATE_DIR/.lock"
	flock 9
	if ! all_built; then
		log "binaries missing or from other versions in $BIN_DIR; building first"
		cmd_build
	fi
	control_plane_up
	((WITH_NODE)) && node_up
	print_env
}

control_plane_up() {
	if all_running && apiserver_ready; then
		log "control plane already running (state $STATE_DIR)"
		return 0
	fi
	if any_running; then
		log "control plane only partly running; restarting it"
		stop_all
	fi
	# A new control plane has a new CA and an empty etcd: a node of the old one cannot stay.
	node_down
	local p
	for p in "$API_PORT" "$ETCD_CLIENT_PORT" "$ETCD_PEER_PORT" "$KCM_PORT" "$SCHED_PORT"; do
		port_free "$p" || die "127.0.0.1:$p is already in use by another process; free it or set STRATA_*_PORT"
	done
	local start=$SECONDS
	# A failed start leaves nothing running (logs and PKI stay for diagnosis).
	trap 'log "start failed; stopping what was started"; stop_all' EXIT
	# Fresh state each start: a leftover etcd member from another PKI would not accept us.
	rm -rf "$PKI_DIR" "$STATE_DIR/etcd" "$STATE_DIR/run" "$STATE_DIR/kcm" "$STATE_DIR/scheduler" "$STATE_DIR/logs"
	mkdir -p "$STATE_DIR/logs" "$STATE_DIR/kcm" "$STATE_DIR/scheduler"
	gen_pki
	write_kubeconfig "$STATE_DIR/controller-manager.kubeconfig" controller-manager
	write_kubeconfig "$STATE_DIR/scheduler.kubeconfig" scheduler
	write_kubeconfig "$KUBECONFIG_PATH" admin

	# --unsafe-no-fsync: a throw-away test cluster on a shared disk; durability is not wanted here.
	start_component etcd --name strata --data-dir "$STATE_DIR/etcd" \
		--listen-client-urls "https://127.0.0.1:$ETCD_CLIENT_PORT" \
		--advertise-client-urls "https://127.0.0.1:$ETCD_CLIENT_PORT" \
		--listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
		--initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
		--initial-cluster "strata=http://127.0.0.1:$ETCD_PEER_PORT" \
		--cert-file "$PKI_DIR/etcd-server.crt" --key-file "$PKI_DIR/etcd-server.key" \
		--trusted-ca-file "$PKI_DIR/ca.crt" --client-cert-auth \
		--listen-metrics-urls "" --unsafe-no-fsync --log-level warn
	wait_https etcd "https://127.0.0.1:$ETCD_CLIENT_PORT/readyz" \
		--cert "$PKI_DIR/apiserver-etcd-client.crt" --key "$PKI_DIR/apiserver-etcd-client.key"

	start_component kube-apiserver \
		--bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$API_PORT" \
		--etcd-servers="https://127.0.0.1:$ETCD_CLIENT_PORT" --etcd-cafile="$PKI_DIR/ca.crt" \
		--etcd-certfile="$PKI_DIR/apiserver-etcd-client.crt" --etcd-keyfile="$PKI_DIR/apiserver-etcd-client.key" \
		--client-ca-file="$PKI_DIR/ca.crt" \
		--tls-cert-file="$PKI_DIR/apiserver.crt" --tls-private-key-file="$PKI_DIR/apiserver.key" \
		--authorization-mode=Node,RBAC \
		--enable-admission-plugins=NodeRestriction \
		--service-account-issuer=https://kubernetes.default.svc.cluster.local \
		--service-account-key-file="$PKI_DIR/sa.pub" --service-account-signing-key-file="$PKI_DIR/sa.key" \
		--service-cluster-ip-range="$SERVICE_CIDR" --allow-privileged=true --profiling=false \
		--kubelet-client-certificate="$PKI_DIR/apiserver-kubelet-client.crt" \
		--kubelet-client-key="$PKI_DIR/apiserver-kubelet-client.key" \
		--kubelet-certificate-authority="$PKI_DIR/ca.crt" --kubelet-preferred-address-types=InternalIP \
		`# loopback cannot be a Service endpoint, so the kubernetes Service gets none` \
		--endpoint-reconciler-type=none \
		--cert-dir="$STATE_DIR/apiserver"
	wait_https kube-apiserver "https://127.0.0.1:$API_PORT/readyz" \
		--cert "$PKI_DIR/admin.crt" --key "$PKI_DIR/admin.key"

	start_component kube-controller-manager \
		--kubeconfig="$STATE_DIR/controller-manager.kubeconfig" \
		--authentication-kubeconfig="$STATE_DIR/controller-manager.kubeconfig" \
		--authorization-kubeconfig="$STATE_DIR/controller-manager.kubeconfig" \
		--bind-address=127.0.0.1 --secure-port="$KCM_PORT" --cert-dir="$STATE_DIR/kcm" \
		--cluster-signing-cert-file="$PKI_DIR/ca.crt" --cluster-signing-key-file="$PKI_DIR/ca.key" \
		--service-account-private-key-file="$PKI_DIR/sa.key" --root-ca-file="$PKI_DIR/ca.crt" \
		--use-service-account-credentials=true --service-cluster-ip-range="$SERVICE_CIDR" \
		--leader-elect=false --profiling=false
	start_component kube-scheduler \
		--kubeconfig="$STATE_DIR/scheduler.kubeconfig" \
		--authentication-kubeconfig="$STATE_DIR/scheduler.kubeconfig" \
		--authorization-kubeconfig="$STATE_DIR/scheduler.kubeconfig" \
		--bind-address=127.0.0.1 --secure-port="$SCHED_PORT" --cert-dir="$STATE_DIR/scheduler" \
		--leader-elect=false --profiling=false
	# Their serving certs are self-signed (in --cert-dir), hence -k for these two health checks.
	wait_https kube-controller-manager "https://127.0.0.1:$KCM_PORT/healthz" -k
	wait_https kube-scheduler "https://127.0.0.1:$SCHED_PORT/healthz" -k
	trap - EXIT
	log "control plane ready in $((SECONDS - start))s (kube-apiserver https://127.0.0.1:$API_PORT)"
}

cmd_down() {
	[[ -d "$STATE_DIR" ]] || {
		log "no cluster state at $STATE_DIR"
		return 0
	}
	exec 9>"$STATE_DIR/.lock"
	flock 9
	# The node first: it stops its pods and unmounts their volumes, and fails (keeping the
	# state) if something under the kubelet dir cannot be unmounted.
	node_down
	stop_all
	rm -rf "$STATE_DIR"
	log "removed $STATE_DIR"
}

cmd_paths() {
	printf '%s\n' "KUBECONFIG=$KUBECONFIG_PATH" "BIN_DIR=$BIN_DIR" "STATE_DIR=$STATE_DIR" \
		"K8S_VERSION=$K8S_VERSION" "ETCD_VERSION=$ETCD_VERSION" "HELM_VERSION=$HELM_VERSION" \
		"CSI_TEST_VERSION=$CSI_TEST_VERSION" "API_SERVER=https://127.0.0.1:$API_PORT" \
		"CONTAINERD_VERSION=$CONTAINERD_VERSION" "NODE_NAME=$NODE_NAME" "KUBELET_DIR=$KUBELET_DIR" \
		"CONTAINERD_ADDRESS=$CONTAINERD_SOCK" "PAUSE_IMAGE=$PAUSE_IMAGE"
}

cmd_status() {
	local c pid rc=0
	for c in "${COMPONENTS[@]}"; do
		if pid="$(running_pid "$c")"; then
			printf '%-24s running (pid %s)\n' "$c" "$pid"
		else
			printf '%-24s stopped\n' "$c"
			rc=1
		fi
	done
	if apiserver_ready; then
		printf '%-24s ok (https://127.0.0.1:%s)\n' readyz "$API_PORT"
	else
		printf '%-24s not ready\n' readyz
		rc=1
	fi
	if ((WITH_NODE)); then
		for c in "${NODE_COMPONENTS[@]}"; do
			if pid="$(running_pid "$c")"; then
				printf '%-24s running (pid %s)\n' "$c" "$pid"
			else
				printf '%-24s stopped\n' "$c"
				rc=1
			fi
		done
		local ready
		ready="$(kubectl_admin get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null || true)"
		printf '%-24s %s\n' "node $NODE_NAME" "${ready:+Ready=}${ready:-not registered}"
		[[ "$ready" == True ]] || rc=1
	fi
	printf '%-24s %s\n' kubeconfig "$KUBECONFIG_PATH" binaries "$BIN_DIR"
	return $rc
}

# import TAR: load an image (scripts/image.sh output) into the node's containerd.
cmd_import() {
	[[ $# -ge 1 ]] || die "usage: $0 import TAR..."
	running_pid containerd >/dev/null || die "the node's containerd is not running (cluster.sh up)"
	local tar
	for tar in "$@"; do CTR="$BIN_DIR/ctr" "$REPO_ROOT/scripts/image.sh" import "$tar" "$CONTAINERD_SOCK"; done
}

case "${1:-}" in
build) cmd_build ;;
up)
	[[ "${2:-}" == --no-node ]] && WITH_NODE=0
	cmd_up
	;;
import) cmd_import "${@:2}" ;;
down) cmd_down ;;
env) print_env ;;
status) cmd_status ;;
paths) cmd_paths ;;
*) die "usage: $0 build|up [--no-node]|down|import TAR...|env|status|paths" ;;
esac
