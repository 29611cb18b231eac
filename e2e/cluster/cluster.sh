#!/usr/bin/env bash
# Local Kubernetes control plane (etcd + kube-apiserver + kube-controller-manager + kube-scheduler)
# built from upstream Go modules and run on 127.0.0.1. No kubelet: pods stay Pending by design.
#
#   cluster.sh build   compile pinned binaries into $STRATA_CACHE/k8s/<version>/bin (reused when present)
#   cluster.sh up      generate PKI + kubeconfig, start the control plane, wait for /readyz
#   cluster.sh down    stop exactly the processes `up` started (pid files) and remove their state
#   cluster.sh env     print export lines (KUBECONFIG, PATH)
#   cluster.sh status  show which components run and whether /readyz is ok
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
	local b missing=0
	for b in "${CONTAINERD_COMMANDS[@]}"; do built "$b" "$CONTAINERD_VERSION" || missing=1; done
	((missing)) || return 0
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
	# The first IP of the service range is the in-cluster address of the `kubernetes` Service.
	local net="${SERVICE_CIDR%/*}"
	local first_ip="${net%.*}.$((${net##*.} + 1))"
	sign_cert apiserver "/CN=kube-apiserver" \
		"extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,IP:$first_ip,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
	sign_cert etcd-server "/CN=etcd" "extendedKeyUsage=serverAuth,clientAuth
subjectAltName=IP:127.0.0.1,DNS:localhost"
	sign_cert apiserver-etcd-client "/CN=kube-apiserver-etcd-client" "extendedKeyUsage=clientAuth"
	sign_cert admin "/O=system:masters/CN=strata-admin" "extendedKeyUsage=clientAuth"
	sign_cert controller-manager "/CN=system:kube-controller-manager" "extendedKeyUsage=clientAuth"
	sign_cert scheduler "/CN=system:kube-scheduler" "extendedKeyUsage=clientAuth"
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

stop_all() {
	local c pid i
	for ((i = ${#COMPONENTS[@]} - 1; i >= 0; i--)); do
		c="${COMPONENTS[i]}"
		pid="$(running_pid "$c")" || continue
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
	done
}

print_env() {
	printf 'export KUBECONFIG=%q\n' "$KUBECONFIG_PATH"
	# shellcheck disable=SC2016 # $PATH is meant to expand in the caller's shell, not here.
	printf 'export PATH=%q:"$PATH"\n' "$BIN_DIR"
}

cmd_up() {
	need openssl curl ss setsid flock base64
	mkdir -p "$STATE_DIR"
	# One `up` at a time: tests in several processes may all try to start the shared cluster.
	exec 9>"$STATE_DIR/.lock"
	flock 9
	if all_running && apiserver_ready; then
		log "control plane already running (state $STATE_DIR)"
		print_env
		return 0
	fi
	if any_running; then
		log "control plane only partly running; restarting it"
		stop_all
	fi
	if ! built etcd "$ETCD_VERSION" || ! built kube-apiserver "$K8S_VERSION" ||
		! built kube-controller-manager "$K8S_VERSION" || ! built kube-scheduler "$K8S_VERSION" ||
		! built kubectl "$K8S_VERSION" || ! built helm "$HELM_VERSION" ||
		! built csi-sanity "$CSI_TEST_VERSION"; then
		log "binaries missing or from other versions in $BIN_DIR; building first"
		cmd_build
	fi
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
	print_env
}

cmd_down() {
	[[ -d "$STATE_DIR" ]] || {
		log "no cluster state at $STATE_DIR"
		return 0
	}
	exec 9>"$STATE_DIR/.lock"
	flock 9
	stop_all
	rm -rf "$STATE_DIR"
	log "removed $STATE_DIR"
}

cmd_paths() {
	printf '%s\n' "KUBECONFIG=$KUBECONFIG_PATH" "BIN_DIR=$BIN_DIR" "STATE_DIR=$STATE_DIR" \
		"K8S_VERSION=$K8S_VERSION" "ETCD_VERSION=$ETCD_VERSION" "HELM_VERSION=$HELM_VERSION" \
		"CSI_TEST_VERSION=$CSI_TEST_VERSION" "API_SERVER=https://127.0.0.1:$API_PORT"
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
	printf '%-24s %s\n' kubeconfig "$KUBECONFIG_PATH" binaries "$BIN_DIR"
	return $rc
}

case "${1:-}" in
build) cmd_build ;;
up) cmd_up ;;
down) cmd_down ;;
env) print_env ;;
status) cmd_status ;;
paths) cmd_paths ;;
*) die "usage: $0 build|up|down|env|status|paths" ;;
esac
