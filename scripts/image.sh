#!/usr/bin/env bash
# Container images built without a registry or a container engine: each is an OCI image
# layout (oci-layout, index.json, blobs) written as a tar that `ctr images import`,
# `podman load`, `skopeo copy oci-archive:...` and `docker load` (25+) all read.
#
#   scripts/image.sh strata [OUT]    strata-operator, strata-agent, strata-csi, strata-holder from
#                                    `cargo build --release`, the shared libraries they link
#                                    and the CA bundle (the same files as ./Containerfile)
#   scripts/image.sh pause [OUT]     the pod sandbox image of the local test node (a static
#                                    C program, scripts/image/pause.c)
#   scripts/image.sh busybox [OUT]   a shell and coreutils for test pods (Debian's static
#                                    busybox with a link per applet)
#   scripts/image.sh name IMAGE      print the reference IMAGE is tagged with
#   scripts/image.sh files IMAGE     print the files IMAGE holds, one path a line, sorted
#   scripts/image.sh import TAR [ADDRESS]
#                                    load TAR into containerd's k8s.io namespace (the one the
#                                    kubelet uses); ADDRESS: containerd's socket
#
# OUT defaults to target/images/IMAGE.tar. Environment:
#   STRATA_IMAGE_NAME     reference of the Strata image (default: the chart's default,
#                         ghcr.io/strata/strata:<appVersion>, so the chart needs no override)
#   STRATA_IMAGE_BIN_DIR  where the three binaries are (default: target/release, built first
#                         with `cargo build --release`; set it to skip that build)
#   STRATA_PAUSE_NAME     reference of the pause image (default: strata.local/pause:3.10)
#   STRATA_BUSYBOX_NAME   reference of the busybox image (default: strata.local/busybox:1.35)
#   CTR                   the ctr binary for `import` (default: ctr on PATH, else the one
#                         e2e/cluster/cluster.sh builds)
#
# Layers are reproducible: sorted entries, owner 0:0, mtime 0, gzip without a name or
# time, so the same inputs give the same digests.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[image] %s\n' "$*" >&2; }
die() {
	printf '[image] error: %s\n' "$*" >&2
	exit 1
}
need() {
	local tool
	for tool in "$@"; do
		command -v "$tool" >/dev/null || die "$tool is required but not installed (scripts/setup.sh installs it)"
	done
}

APP_VERSION="$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' charts/strata/Chart.yaml)"
STRATA_NAME="${STRATA_IMAGE_NAME:-ghcr.io/strata/strata:$APP_VERSION}"
PAUSE_NAME="${STRATA_PAUSE_NAME:-strata.local/pause:3.10}"
BUSYBOX_NAME="${STRATA_BUSYBOX_NAME:-strata.local/busybox:1.35}"
STRATA_BINARIES=(strata-operator strata-agent strata-csi strata-holder)
# The applets test pods use; `busybox --list` has the rest (run them as `busybox NAME`).
BUSYBOX_APPLETS=(sh cat ls echo find sha256sum md5sum sort xargs wc head tail touch mkdir rm
	sleep mount grep test true false env id stat)

image_name() {
	case "$1" in
	strata) echo "$STRATA_NAME" ;;
	pause) echo "$PAUSE_NAME" ;;
	busybox) echo "$BUSYBOX_NAME" ;;
	*) die "unknown image '$1' (strata, pause or busybox)" ;;
	esac
}

# ---- root file systems -----------------------------------------------------------------------

# copy_file SRC ROOTFS DEST: SRC (symlinks followed) as a regular file at DEST in ROOTFS.
copy_file() {
	install -D -m "$(stat -Lc %a "$1")" "$(readlink -f "$1")" "$2$3"
}

# The shared libraries of a dynamic executable, at the paths its loader looks them up
# (the paths ldd prints, including the interpreter itself).
shared_libs() {
	ldd "$1" | awk '
		/=> not found/ { print "missing " $1; next }
		$2 == "=>" && $3 ~ /^\// { print $3; next }
		$1 ~ /^\// { print $1 }'
}

stage_strata() {
	local root="$1" bin_dir b lib
	if [[ -n "${STRATA_IMAGE_BIN_DIR:-}" ]]; then
		bin_dir="$STRATA_IMAGE_BIN_DIR"
	else
		need cargo
		log "cargo build --release (${STRATA_BINARIES[*]})"
		cargo build --release --locked -p strata-operator -p strata-agent -p strata-csi -p strata-holder >&2
		bin_dir="${CARGO_TARGET_DIR:-target}/release"
	fi
	for b in "${STRATA_BINARIES[@]}"; do
		[[ -x "$bin_dir/$b" ]] || die "$bin_dir/$b is missing: run cargo build --release -p $b or set STRATA_IMAGE_BIN_DIR"
		copy_file "$bin_dir/$b" "$root" "/usr/local/bin/$b"
		while read -r lib; do
			[[ "$lib" == missing* ]] && die "$b needs ${lib#missing } which is not installed"
			[[ -f "$root$lib" ]] || copy_file "$lib" "$root" "$lib"
		done < <(shared_libs "$bin_dir/$b")
	done
	# Sources over https verify against the system roots (rustls-native-certs reads this file).
	[[ -f /etc/ssl/certs/ca-certificates.crt ]] ||
		die "/etc/ssl/certs/ca-certificates.crt is missing: apt-get install ca-certificates"
	copy_file /etc/ssl/certs/ca-certificates.crt "$root" /etc/ssl/certs/ca-certificates.crt
}

stage_pause() {
	local root="$1"
	need gcc
	mkdir -p "$root/bin"
	gcc -static -Os -s -o "$root/bin/pause" scripts/image/pause.c ||
		die "gcc -static failed: the static C library is in Debian's libc6-dev"
}

stage_busybox() {
	local root="$1" busybox a
	need file
	busybox="$(command -v busybox || true)"
	if [[ -z "$busybox" ]] || ! file -L "$busybox" | grep -q 'statically linked'; then
		die "no static busybox on PATH: apt-get install busybox-static"
	fi
	copy_file "$busybox" "$root" /bin/busybox
	for a in "${BUSYBOX_APPLETS[@]}"; do ln -s busybox "$root/bin/$a"; done
}

# image_config IMAGE: the OCI config's `config` object (what the runtime starts with).
image_config() {
	case "$1" in
	strata) jq -nc '{Env: ["PATH=/usr/local/bin"]}' ;;
	pause) jq -nc '{Entrypoint: ["/bin/pause"]}' ;;
	busybox) jq -nc '{Env: ["PATH=/bin"], Cmd: ["sh"]}' ;;
	esac
}

stage() { # IMAGE ROOTFS
	case "$1" in
	strata) stage_strata "$2" ;;
	pause) stage_pause "$2" ;;
	busybox) stage_busybox "$2" ;;
	*) die "unknown image '$1' (strata, pause or busybox)" ;;
	esac
}

# ---- OCI layout --------------------------------------------------------------------------------

sha256() { sha256sum "$1" | cut -d' ' -f1; }
size() { stat -c %s "$1"; }

# blob FILE LAYOUT: move FILE into LAYOUT's blob store, print its digest.
blob() {
	local digest
	digest="$(sha256 "$1")"
	mkdir -p "$2/blobs/sha256"
	mv "$1" "$2/blobs/sha256/$digest"
	echo "$digest"
}

# oci_layout IMAGE ROOTFS OUT: one-layer image of ROOTFS named image_name IMAGE, as a tar.
oci_layout() {
	local image="$1" root="$2" out="$3" work layout name diff_id layer layer_size config config_size manifest manifest_size
	name="$(image_name "$image")"
	work="$(mktemp -d "${TMPDIR:-/tmp}/strata-image.XXXXXX")"
	layout="$work/layout"
	mkdir -p "$layout"
	# Entries without a ./ prefix, in a stable order, with nothing of this machine in them.
	(cd "$root" && find . -mindepth 1 -printf '%P\n' | LC_ALL=C sort) >"$work/entries"
	tar -C "$root" --no-recursion --owner=0 --group=0 --numeric-owner --mtime=@0 --format=gnu \
		-cf "$work/layer.tar" -T "$work/entries"
	diff_id="$(sha256 "$work/layer.tar")"
	gzip -n -6 "$work/layer.tar"
	layer_size="$(size "$work/layer.tar.gz")"
	layer="$(blob "$work/layer.tar.gz" "$layout")"

	jq -nc --arg diff "sha256:$diff_id" --argjson cfg "$(image_config "$image")" '{
		architecture: "amd64", os: "linux", created: "1970-01-01T00:00:00Z", config: $cfg,
		rootfs: {type: "layers", diff_ids: [$diff]},
		history: [{created: "1970-01-01T00:00:00Z", created_by: "scripts/image.sh"}]}' >"$work/config.json"
	config_size="$(size "$work/config.json")"
	config="$(blob "$work/config.json" "$layout")"

	jq -nc --arg config "sha256:$config" --argjson config_size "$config_size" \
		--arg layer "sha256:$layer" --argjson layer_size "$layer_size" '{
		schemaVersion: 2, mediaType: "application/vnd.oci.image.manifest.v1+json",
		config: {mediaType: "application/vnd.oci.image.config.v1+json", digest: $config, size: $config_size},
		layers: [{mediaType: "application/vnd.oci.image.layer.v1.tar+gzip", digest: $layer, size: $layer_size}]}' \
		>"$work/manifest.json"
	manifest_size="$(size "$work/manifest.json")"
	manifest="$(blob "$work/manifest.json" "$layout")"

	# io.containerd.image.name is the full reference `ctr images import` tags the image with;
	# org.opencontainers.image.ref.name is the tag other tools read.
	jq -nc --arg manifest "sha256:$manifest" --argjson size "$manifest_size" --arg name "$name" \
		--arg tag "${name##*:}" '{
		schemaVersion: 2, mediaType: "application/vnd.oci.image.index.v1+json",
		manifests: [{mediaType: "application/vnd.oci.image.manifest.v1+json", digest: $manifest,
			size: $size, platform: {architecture: "amd64", os: "linux"},
			annotations: {"io.containerd.image.name": $name, "org.opencontainers.image.ref.name": $tag}}]}' \
		>"$layout/index.json"
	echo '{"imageLayoutVersion":"1.0.0"}' >"$layout/oci-layout"
	mkdir -p "$(dirname "$out")"
	tar -C "$layout" --owner=0 --group=0 --numeric-owner --mtime=@0 --sort=name \
		-cf "$out.tmp" oci-layout index.json blobs
	mv "$out.tmp" "$out"
	rm -rf "$work"
	log "$name -> $out ($(du -h "$out" | cut -f1), manifest sha256:$manifest)"
}

cmd_build() { # IMAGE [OUT]
	local image="$1" out="${2:-${CARGO_TARGET_DIR:-target}/images/$1.tar}" root
	need tar gzip jq sha256sum
	image_name "$image" >/dev/null
	root="$(mktemp -d "${TMPDIR:-/tmp}/strata-rootfs.XXXXXX")"
	stage "$image" "$root"
	oci_layout "$image" "$root" "$out"
	rm -rf "$root"
}

cmd_files() { # IMAGE
	local root
	root="$(mktemp -d "${TMPDIR:-/tmp}/strata-rootfs.XXXXXX")"
	stage "$1" "$root" >&2
	(cd "$root" && find . -mindepth 1 ! -type d -printf '/%P\n' | LC_ALL=C sort)
	rm -rf "$root"
}

cmd_import() { # TAR [ADDRESS]
	local tar="$1" address="${2:-/run/containerd/containerd.sock}" ctr="${CTR:-}"
	[[ -f "$tar" ]] || die "$tar does not exist (build it with scripts/image.sh strata|pause|busybox)"
	if [[ -z "$ctr" ]]; then
		ctr="$(command -v ctr || true)"
		local built
		for built in "${STRATA_CACHE:-$HOME/.cache/strata}"/k8s/*/bin/ctr; do
			[[ -z "$ctr" && -x "$built" ]] && ctr="$built"
		done
	fi
	[[ -x "$ctr" ]] || die "ctr not found: build it with e2e/cluster/cluster.sh build or set CTR"
	# k8s.io is the namespace the kubelet's CRI calls look in.
	local out
	out="$("$ctr" --address "$address" -n k8s.io images import "$tar" 2>&1)" ||
		die "ctr could not import $tar into containerd at $address:
$out"
	log "imported $tar into containerd ($address, namespace k8s.io)"
}

case "${1:-}" in
strata | pause | busybox) cmd_build "$@" ;;
name) image_name "${2:?usage: $0 name IMAGE}" ;;
files) cmd_files "${2:?usage: $0 files IMAGE}" ;;
import) cmd_import "${2:?usage: $0 import TAR [ADDRESS]}" "${@:3}" ;;
*) die "usage: $0 strata|pause|busybox [OUT] | name IMAGE | files IMAGE | import TAR [ADDRESS]" ;;
esac
