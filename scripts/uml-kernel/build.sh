#!/usr/bin/env bash
# Builds (or finds in the cache) the kTLS lane's User-Mode Linux kernels from Debian's linux-source packages.
#
#   scripts/uml-kernel/build.sh SERIES...           SERIES: 6.1 or 6.12; prints one kernel path per SERIES, in order
#   scripts/uml-kernel/build.sh --where SERIES...   prints where each kernel is (or would be) cached; builds nothing
#
# Each kernel is Debian's linux-source-SERIES (the newest version apt knows), patched with xstate-SERIES.patch (UML
# otherwise panics on hosts with a large XSAVE area, AVX-512/AMX: see README.md here) and configured as
# `make ARCH=um defconfig` plus ktls.config, everything built in. Builds are cached outside the work tree, in
# $IRONSOCKET_UML_CACHE (default ${XDG_CACHE_HOME:-~/.cache}/ironsocket/uml-kernels), under a key made of the
# source package's version and a hash of the patch, the config fragment and RECIPE: a warm machine builds nothing,
# and a change to any of them (or a new Debian source version) builds anew. Series build one after the other
# (a cold build of both takes about 9 minutes on 2 CPUs); one lock per series keeps concurrent callers from
# building the same kernel twice. Progress goes to stderr; on a failed build, the end of the build log.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${IRONSOCKET_UML_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ironsocket/uml-kernels}
# Bump when a change to the steps below changes what they produce (the cache key includes it).
RECIPE=1
say() { printf 'uml-kernel: %s\n' "$*" >&2; }
die() { say "FAIL: $*"; exit 1; }

where=0
[[ ${1:-} == --where ]] && { where=1; shift; }
(($#)) || die "usage: $0 [--where] SERIES... (6.1 or 6.12)"
for s in "$@"; do
  [[ -f $here/xstate-$s.patch ]] || die "no patch for Linux $s here (xstate-$s.patch); known: $(cd "$here" && ls xstate-*.patch | sed 's/xstate-\(.*\)\.patch/\1/' | tr '\n' ' ')"
done
mkdir -p "$cache"

# apt's idea of the newest linux-source-SERIES; refreshes the package lists once if apt knows none.
source_version() {
  local v
  v=$(apt-cache show --no-all-versions "linux-source-$1" 2>/dev/null | sed -n 's/^Version: //p' | head -1)
  if [[ -z $v && $(id -u) == 0 ]]; then
    apt-get update -qq >&2 || true
    v=$(apt-cache show --no-all-versions "linux-source-$1" 2>/dev/null | sed -n 's/^Version: //p' | head -1)
  fi
  [[ -n $v ]] || die "apt knows no package linux-source-$1 (Debian 12 has linux-source-6.1, and linux-source-6.12 in bookworm-security)"
  printf '%s\n' "$v"
}

# The cache key's hash: everything that decides what is built, apart from the source version.
inputs_hash() { { echo "recipe $RECIPE"; cat "$here/xstate-$1.patch" "$here/ktls.config"; } | sha256sum | cut -c1-16; }

# The fragment's settings: CONFIG_X=... lines and "# CONFIG_X is not set" lines (other comments are prose).
settings() { grep -E '^(CONFIG_[A-Z0-9_]+=.*|# CONFIG_[A-Z0-9_]+ is not set)$' "$here/ktls.config"; }

need_tools() {
  local missing=()
  for t in make gcc flex bison bc xz patch strip; do command -v "$t" >/dev/null || missing+=("$t"); done
  [[ -e /usr/include/libelf.h ]] || missing+=(libelf-dev)
  ((${#missing[@]} == 0)) && return 0
  [[ $(id -u) == 0 ]] || die "missing build tools: ${missing[*]} (apt-get install build-essential flex bison bc libelf-dev xz-utils)"
  say "installing build tools (missing: ${missing[*]})"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends build-essential flex bison bc libelf-dev xz-utils </dev/null >&2 ||
    { apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends build-essential flex bison bc libelf-dev xz-utils </dev/null >&2; }
}

# build SERIES VERSION OUTDIR: download, unpack, patch, configure, build, check and install the kernel at OUTDIR/linux.
build() {
  local series=$1 version=$2 out=$3 started=$SECONDS w src
  w=$(mktemp -d "$(scratch_dir)/uml-kbuild-$series.XXXXXX")
  # shellcheck disable=SC2064 # expanded now: $w is local
  trap "rm -rf '$w'" EXIT
  say "$series: building Linux $version for ARCH=um (cold cache; a few minutes)"
  (cd "$w" && apt-get download -o APT::Sandbox::User=root "linux-source-$series=$version" >/dev/null) ||
    die "$series: could not download linux-source-$series=$version"
  dpkg-deb --fsys-tarfile "$w"/linux-source-"$series"_*.deb | tar x -C "$w" --wildcards "*/linux-source-$series.tar.xz"
  tar xf "$w/usr/src/linux-source-$series.tar.xz" -C "$w"
  rm -f "$w"/*.deb "$w/usr/src/linux-source-$series.tar.xz"
  src=$w/linux-source-$series
  patch -d "$src" -p1 --fuzz=0 --no-backup-if-mismatch <"$here/xstate-$series.patch" >"$w/patch.log" ||
    { cat "$w/patch.log" >&2; die "$series: xstate-$series.patch does not apply to linux-source-$series $version"; }
  make -C "$src" ARCH=um defconfig >"$w/config.log" 2>&1 || { tail -20 "$w/config.log" >&2; die "$series: make defconfig failed"; }
  settings >>"$src/.config"
  make -C "$src" ARCH=um olddefconfig >>"$w/config.log" 2>&1 || { tail -20 "$w/config.log" >&2; die "$series: make olddefconfig failed"; }
  local line lost=()
  while IFS= read -r line; do grep -qxF -- "$line" "$src/.config" || lost+=("$line"); done < <(settings)
  ((${#lost[@]} == 0)) || die "$series: olddefconfig did not keep: ${lost[*]} (renamed, or a dependency is missing)"
  if ! make -C "$src" ARCH=um -j"$(nproc)" linux >"$w/build.log" 2>&1; then
    tail -40 "$w/build.log" >&2
    die "$series: the kernel build failed (the end of its log is above)"
  fi
  local staged=$out.part.$$
  rm -rf "$staged" && mkdir -p "$staged"
  strip -o "$staged/linux" "$src/linux"
  local reported
  reported=$("$staged/linux" --version 2>/dev/null | tr -d '\r' | tail -1) || true
  [[ -n $reported ]] || die "$series: the built kernel does not answer --version"
  {
    echo "series=$series"
    echo "source=linux-source-$series $version"
    echo "kernel=$reported"
    echo "inputs=$(inputs_hash "$series")"
    echo "compiler=$(gcc --version | head -1)"
    echo "built=$(date -u +%FT%TZ) in $((SECONDS - started)) s on $(nproc) CPUs"
  } >"$staged/build-info"
  cp "$src/.config" "$staged/config"
  rm -rf "$out" && mv "$staged" "$out"
  say "$series: built Linux $reported in $((SECONDS - started)) s: $out/linux"
  # Older builds of this series (another source version or other inputs) are not used again.
  local old
  for old in "$cache/linux-$series-"*; do [[ $old == "$out" || $old == *.part.* || ! -d $old ]] || rm -rf "$old"; done
}

# Where to unpack and build: memory (/dev/shm) when it has room for a tree and its objects (about 3 GiB), else disk.
scratch_dir() {
  local free
  free=$(df -Pk /dev/shm 2>/dev/null | awk 'NR == 2 { print $4 }')
  if [[ -n $free && $free -gt $((4 * 1024 * 1024)) && -w /dev/shm ]]; then echo /dev/shm; else echo "${TMPDIR:-/var/tmp}"; fi
}

# ensure SERIES VERSION: prints the cached kernel's path, building it first (under the series' lock) if it is not there.
ensure() {
  local series=$1 version=$2 out
  out=$cache/linux-$series-$version-$(inputs_hash "$series")
  if [[ ! -x $out/linux ]]; then
    exec 9>"$cache/.lock-$series"
    flock 9
    [[ -x $out/linux ]] || build "$series" "$version" "$out"
    exec 9>&-
  fi
  printf '%s\n' "$out/linux"
}

if ((where)); then
  for s in "$@"; do printf '%s\n' "$cache/linux-$s-$(source_version "$s")-$(inputs_hash "$s")/linux"; done
  exit 0
fi

# A series whose build is cached keeps it; one that is not is built from the newest source the registry has, so
# the package lists are refreshed once first (stale ones may name a version the registry has dropped).
versions=()
cold=()
for s in "$@"; do
  v=$(source_version "$s")
  versions+=("$v")
  [[ -x $cache/linux-$s-$v-$(inputs_hash "$s")/linux ]] || cold+=("$s")
done
if ((${#cold[@]})); then
  need_tools
  if [[ $(id -u) == 0 ]] && apt-get update -qq >&2; then
    for i in "${!versions[@]}"; do
      s=${@:i+1:1}
      if [[ " ${cold[*]} " == *" $s "* ]]; then versions[i]=$(source_version "$s"); fi
    done
  fi
fi

# One series after another, each using every CPU: measured on 2 CPUs, two builds side by side took 660 s and one
# after the other 550 s.
paths=()
for i in "${!versions[@]}"; do
  paths+=("$(ensure "${@:i+1:1}" "${versions[i]}")") || die "could not provide the Linux ${*:i+1:1} kernel"
done
printf '%s\n' "${paths[@]}"
