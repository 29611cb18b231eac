#!/usr/bin/env bash
# The Containerfile and scripts/image.sh must build the same Strata image: this compares the
# files the Containerfile's final stage copies with the files the script puts in its layer.
#
#   scripts/image/files_agree.sh
#
# STRATA_IMAGE_BIN_DIR: the binaries whose shared libraries are listed (default: the debug build,
# target/debug, which links the same libraries as the release one and is what `make test` has).
set -euo pipefail
cd "$(dirname "$0")/../.."

export STRATA_IMAGE_BIN_DIR="${STRATA_IMAGE_BIN_DIR:-${CARGO_TARGET_DIR:-target}/debug}"

# COPY lines of the last stage, continuations joined: each source lands at DEST/basename when
# DEST ends in /, else at DEST.
containerfile_files() {
	sed -e ':a' -e '/\\$/N; s/\\\n//; ta' Containerfile | awk '
		/^FROM[ \t]/ { n = 0; delete files; next }
		/^COPY[ \t]/ {
			k = 0
			for (i = 2; i <= NF; i++) if ($i !~ /^--/) args[++k] = $i
			dest = args[k]
			for (i = 1; i < k; i++) {
				if (dest ~ /\/$/) { s = args[i]; sub(/.*\//, "", s); files[++n] = dest s }
				else files[++n] = dest
			}
		}
		END { for (i = 1; i <= n; i++) print files[i] }' | LC_ALL=C sort
}

script=$(scripts/image.sh files strata)
file=$(containerfile_files)
if [[ "$script" != "$file" ]]; then
	echo "files_agree: the Containerfile and scripts/image.sh build different images:" >&2
	diff <(echo "$file") <(echo "$script") | sed -n 's/^</  only in Containerfile:/p; s/^>/  only in scripts\/image.sh:/p' >&2
	echo "files_agree: update the Containerfile's COPY lines (or the script) so both list the same files" >&2
	exit 1
fi
echo "files_agree: Containerfile and scripts/image.sh both hold $(wc -l <<<"$script") files"
