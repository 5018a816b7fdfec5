#!/usr/bin/env bash
# Build kvmbox's guest kernel (an uncompressed ELF vmlinux with a PVH entry).
#
#   K=$(kernel-config/build.sh | tail -1)     # build if needed, print the path
#   kernel-config/build.sh --print-path       # print the cached path or exit 1
#   kernel-config/build.sh --update-config    # build, then refresh microvm.config
#
# Source: Debian's linux-source-6.1 (installed with apt-get when missing), or
# the kernel tree in $KVMBOX_KERNEL_SRC (copied, never modified).  Steps:
# make tinyconfig, merge microvm.fragment.config, make olddefconfig, check
# that every fragment value survived, apply patches/*.patch (to the copy),
# make -j$(nproc) vmlinux.
#
# Cache: ${KVMBOX_CACHE:-/var/cache/kvmbox}/kernel/<hash>/vmlinux, where
# <hash> covers this script, the fragment, the patches, the source version
# and the compiler version.  A cached kernel is returned without building.
# The build runs in a work directory next to the cache and is moved into
# place with one rename, so a cache entry is always complete.
#
# stdout: exactly one line, the absolute path of vmlinux.  Everything else
# (progress, errors) goes to stderr.  Env: KVMBOX_KERNEL_SRC, KVMBOX_CACHE,
# KVMBOX_KERNEL_JOBS (default: nproc), KVMBOX_KERNEL_VERBOSE=1 (full make
# output on stderr).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SELF="$HERE/$(basename "${BASH_SOURCE[0]}")"
FRAGMENT="$HERE/microvm.fragment.config"
FULL_CONFIG="$HERE/microvm.config"
DEBIAN_PACKAGE=linux-source-6.1
DEBIAN_TARBALL=/usr/src/linux-source-6.1.tar.xz
CACHE_ROOT="${KVMBOX_CACHE:-/var/cache/kvmbox}/kernel"
JOBS="${KVMBOX_KERNEL_JOBS:-$(nproc)}"

log() { printf 'kernel-config/build.sh: %s\n' "$*" >&2; }
die() {
	log "error: $*"
	exit 1
}

usage() {
	sed -n '2,23s/^# \{0,1\}//p' "$SELF" >&2
}

MODE=build
UPDATE_CONFIG=0
for arg in "$@"; do
	case "$arg" in
	--print-path) MODE=print ;;
	--update-config) UPDATE_CONFIG=1 ;;
	-h | --help)
		usage
		exit 0
		;;
	*) die "unknown argument '$arg' (try --help)" ;;
	esac
done

[ -f "$FRAGMENT" ] || die "missing $FRAGMENT"
shopt -s nullglob
PATCHES=("$HERE"/patches/*.patch)
shopt -u nullglob

# --- source identity ---------------------------------------------------------

# Prints a string that changes whenever the kernel source changes; empty if
# the source is not available (Debian package not installed).
source_id() {
	if [ -n "${KVMBOX_KERNEL_SRC:-}" ]; then
		local src version
		src=$(cd "$KVMBOX_KERNEL_SRC" 2>/dev/null && pwd) ||
			die "KVMBOX_KERNEL_SRC=$KVMBOX_KERNEL_SRC is not a directory"
		[ -f "$src/Makefile" ] && [ -f "$src/arch/x86/Kconfig" ] ||
			die "KVMBOX_KERNEL_SRC=$src is not a Linux source tree (no Makefile or arch/x86/Kconfig)"
		version=$(sed -n 's/^\(VERSION\|PATCHLEVEL\|SUBLEVEL\|EXTRAVERSION\) *= *//p' "$src/Makefile" | tr '\n' '.')
		if git -C "$src" rev-parse --git-dir >/dev/null 2>&1; then
			# Committed state plus uncommitted changes.
			printf 'tree:%s:%s:%s:%s' "$src" "$version" \
				"$(git -C "$src" rev-parse HEAD)" \
				"$(git -C "$src" diff HEAD | sha256sum | cut -c1-16)"
		else
			# Not a git tree: identified by path, version and the
			# newest modification time of its Kconfig/Makefile/C/header files.
			printf 'tree:%s:%s:%s' "$src" "$version" \
				"$(find "$src" -name .git -prune -o -type f \( -name '*.[chS]' -o -name 'Kconfig*' -o -name Makefile \) -printf '%T@\n' | sort -n | tail -1)"
		fi
	else
		local v
		v=$(dpkg-query -W -f='${Status}|${Version}' "$DEBIAN_PACKAGE" 2>/dev/null) || true
		case "$v" in
		"install ok installed|"*)
			[ ! -f "$DEBIAN_TARBALL" ] || printf 'debian:%s:%s' "$DEBIAN_PACKAGE" "${v#*|}"
			;;
		esac
	fi
}

# Hash of everything the build depends on.
build_hash() {
	local id=$1
	{
		printf 'source %s\n' "$id"
		printf 'compiler %s\n' "$(gcc -dumpfullversion 2>/dev/null || echo none) $(ld --version 2>/dev/null | head -1)"
		printf 'build.sh\n'
		cat "$SELF"
		printf 'fragment\n'
		cat "$FRAGMENT"
		local p
		for p in "${PATCHES[@]}"; do
			printf 'patch %s\n' "$(basename "$p")"
			cat "$p"
		done
	} | sha256sum | cut -c1-16
}

# --- fast paths ----------------------------------------------------------------

SOURCE_ID=$(source_id)
if [ "$MODE" = print ]; then
	[ -n "$SOURCE_ID" ] || exit 1
	out="$CACHE_ROOT/$(build_hash "$SOURCE_ID")/vmlinux"
	[ -f "$out" ] || exit 1
	printf '%s\n' "$out"
	exit 0
fi

# --- prerequisites ---------------------------------------------------------------

apt_install() {
	[ "$(id -u)" = 0 ] || die "need root to apt-get install $* (or install them yourself)"
	log "installing $* with apt-get"
	if ! DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@" >&2; then
		DEBIAN_FRONTEND=noninteractive apt-get update >&2 || true
		DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@" >&2 ||
			die "apt-get install $* failed"
	fi
}

ensure_build_deps() {
	local missing=0 c
	for c in make gcc ld bc bison flex cpio xz perl patch flock; do
		command -v "$c" >/dev/null 2>&1 || missing=1
	done
	[ -f /usr/include/libelf.h ] || missing=1
	[ -f /usr/include/openssl/ssl.h ] || missing=1
	if [ "$missing" = 1 ]; then
		apt_install bc bison flex libelf-dev libssl-dev cpio xz-utils build-essential patch util-linux perl
	fi
}

ensure_build_deps
if [ -z "$SOURCE_ID" ]; then
	[ -z "${KVMBOX_KERNEL_SRC:-}" ] || die "cannot identify $KVMBOX_KERNEL_SRC"
	apt_install "$DEBIAN_PACKAGE"
	SOURCE_ID=$(source_id)
	[ -n "$SOURCE_ID" ] || die "$DEBIAN_PACKAGE installed but $DEBIAN_TARBALL is missing"
fi

HASH=$(build_hash "$SOURCE_ID")
DEST="$CACHE_ROOT/$HASH"
if [ -f "$DEST/vmlinux" ] && [ "$UPDATE_CONFIG" = 0 ]; then
	log "cached: $DEST/vmlinux"
	printf '%s\n' "$DEST/vmlinux"
	exit 0
fi

mkdir -p "$CACHE_ROOT" || die "cannot create $CACHE_ROOT (set KVMBOX_CACHE)"
# One build per hash at a time; a concurrent caller waits, then finds it cached.
exec 9>"$CACHE_ROOT/.lock-$HASH"
if ! flock -n 9; then
	log "another build of $HASH is running; waiting for it"
	flock 9
fi

update_repo_config() {
	[ "$UPDATE_CONFIG" = 1 ] || return 0
	cp "$1" "$FULL_CONFIG"
	log "updated $FULL_CONFIG"
}

if [ -f "$DEST/vmlinux" ]; then
	update_repo_config "$DEST/config"
	log "cached: $DEST/vmlinux"
	printf '%s\n' "$DEST/vmlinux"
	exit 0
fi

# --- build -------------------------------------------------------------------------

WORK=$(mktemp -d "$CACHE_ROOT/.work-$HASH.XXXXXX")
TICKER=
cleanup() {
	[ -z "$TICKER" ] || kill "$TICKER" 2>/dev/null || true
	rm -rf "$WORK"
}
trap cleanup EXIT
SRC="$WORK/src"
LOG="$WORK/build.log"
START=$(date +%s)
elapsed() { echo "$(($(date +%s) - START))s"; }

log "building kernel $HASH ($SOURCE_ID) in $WORK"
mkdir "$SRC"
if [ -n "${KVMBOX_KERNEL_SRC:-}" ]; then
	log "copying $KVMBOX_KERNEL_SRC"
	tar -C "$KVMBOX_KERNEL_SRC" --exclude=.git -cf - . | tar -C "$SRC" -xf - ||
		die "copying $KVMBOX_KERNEL_SRC failed"
	make -C "$SRC" -s mrproper >&2 || die "make mrproper failed in the copy of $KVMBOX_KERNEL_SRC"
else
	log "extracting $DEBIAN_TARBALL"
	tar -C "$SRC" --strip-components=1 -xf "$DEBIAN_TARBALL" || die "extracting $DEBIAN_TARBALL failed"
fi

for p in "${PATCHES[@]}"; do
	name=$(basename "$p")
	if patch -d "$SRC" -p1 --force --fuzz=0 --dry-run -s -R <"$p" >/dev/null 2>&1; then
		log "patch $name: already in the source, skipped"
		continue
	fi
	patch -d "$SRC" -p1 --force --fuzz=0 --no-backup-if-mismatch -s <"$p" >&2 ||
		die "patch $name does not apply to $SOURCE_ID"
	log "patch $name: applied"
done

kmake() { make -C "$SRC" ARCH=x86_64 KBUILD_BUILD_USER=kvmbox KBUILD_BUILD_HOST=kvmbox "$@"; }

log "configuring: tinyconfig + $(basename "$FRAGMENT") + olddefconfig"
{
	kmake tinyconfig &&
		(cd "$SRC" && scripts/kconfig/merge_config.sh -m .config "$FRAGMENT") &&
		kmake olddefconfig
} >"$LOG" 2>&1 || {
	tail -30 "$LOG" >&2
	die "kernel configuration failed"
}

# Every fragment value must be in the final .config: Kconfig silently drops
# values whose dependencies are not met, and symbols that do not exist.
check_config() {
	local config=$1 bad=0 line sym val
	find "$SRC" -name 'Kconfig*' -type f -exec cat {} + |
		sed -n 's/^[[:space:]]*\(menu\)\{0,1\}config[[:space:]]\{1,\}\([A-Za-z0-9_]*\).*/CONFIG_\2/p' |
		sort -u >"$WORK/symbols"
	while IFS= read -r line; do
		case "$line" in CONFIG_*=*) ;; *) continue ;; esac
		sym=${line%%=*}
		val=${line#*=}
		if ! grep -qxF "$sym" "$WORK/symbols"; then
			log "config: $sym does not exist in this kernel"
			bad=1
		elif [ "$val" = n ]; then
			if grep -q "^$sym=" "$config"; then
				log "config: $sym wanted n, got $(grep "^$sym=" "$config")"
				bad=1
			fi
		elif ! grep -qxF "$sym=$val" "$config"; then
			log "config: $sym wanted $val, got $(grep -E "^(# )?$sym[= ]" "$config" || echo 'nothing (dependencies not met)')"
			bad=1
		fi
	done <"$FRAGMENT"
	return "$bad"
}
check_config "$SRC/.config" || die "$(basename "$FRAGMENT") values were dropped by Kconfig (see above)"
log "config: all $(grep -c '^CONFIG_' "$FRAGMENT") fragment values are set"
if [ -f "$FULL_CONFIG" ] && ! diff -q -I '^#' -I '^CONFIG_\(CC\|GCC\|LD\|AS\|CLANG\|RUSTC\|PAHOLE\)_VERSION' -I '^CONFIG_CC_VERSION_TEXT' \
	"$FULL_CONFIG" "$SRC/.config" >/dev/null; then
	log "warning: the generated .config differs from kernel-config/microvm.config (run with --update-config to refresh it)"
fi

log "make -j$JOBS vmlinux (full log: $LOG while it runs)"
if [ "${KVMBOX_KERNEL_VERBOSE:-0}" = 1 ]; then
	kmake -j"$JOBS" vmlinux 2>&1 | tee -a "$LOG" >&2 || {
		die "make vmlinux failed after $(elapsed)"
	}
else
	(
		while sleep 30 </dev/null >/dev/null 2>&1; do
			log "still building: $(grep -c '^ *CC ' "$LOG" || true) files compiled, $(elapsed)"
		done
	) >/dev/null &
	TICKER=$!
	if ! kmake -j"$JOBS" vmlinux >>"$LOG" 2>&1; then
		kill "$TICKER" 2>/dev/null || true
		TICKER=
		grep -E 'error|Error' "$LOG" | head -20 >&2 || true
		tail -20 "$LOG" >&2
		cp "$LOG" "$CACHE_ROOT/last-failed-build.log" 2>/dev/null || true
		die "make vmlinux failed after $(elapsed) (log: $CACHE_ROOT/last-failed-build.log)"
	fi
	kill "$TICKER" 2>/dev/null || true
	TICKER=
fi
[ -f "$SRC/vmlinux" ] || die "make succeeded but $SRC/vmlinux is missing"

OUT="$WORK/out"
mkdir "$OUT"
cp "$SRC/vmlinux" "$OUT/vmlinux"
cp "$SRC/.config" "$OUT/config"
cp "$LOG" "$OUT/build.log"
{
	echo "hash=$HASH"
	echo "source=$SOURCE_ID"
	echo "kernelrelease=$(kmake -s kernelrelease 2>/dev/null)"
	echo "compiler=$(gcc -dumpfullversion)"
	echo "patches=$(for p in "${PATCHES[@]}"; do basename "$p"; done | tr '\n' ' ')"
	echo "built=$(date -u +%Y-%m-%dT%H:%M:%SZ) in $(elapsed) with -j$JOBS"
} >"$OUT/info"
mv -T "$OUT" "$DEST" || [ -f "$DEST/vmlinux" ] || die "cannot move the build to $DEST"
update_repo_config "$DEST/config"
log "built $DEST/vmlinux ($(stat -c %s "$DEST/vmlinux") bytes) in $(elapsed)"
printf '%s\n' "$DEST/vmlinux"
