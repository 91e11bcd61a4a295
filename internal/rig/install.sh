#!/usr/bin/env bash
# Installs the real servers the tests talk to, only where missing:
#   Chromium (headless)    from Debian: the dashboard's browser test
#   MinIO  (S3)            built from the Go module proxy
#   Consul (-dev agent)    built through internal/rig/consul (its own module)
#   OpenStack Swift, memcached, graphite-web, carbon   from Debian's packages
#   debhelper, lintian, debootstrap                      for the .deb tests
# Binaries land in $DROPSHIP_RIG_DIR/bin (default ~/.cache/dropship-rig/bin),
# outside the repository. Prints what it did and how long it took.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)   # internal/rig
rig=${DROPSHIP_RIG_DIR:-$HOME/.cache/dropship-rig}
mkdir -p "$rig/bin"
export GOTOOLCHAIN=local
start=$SECONDS

MINIO_VERSION=${MINIO_VERSION:-v0.0.0-20260212201848-7aac2a2c5b7c}

log() { printf 'rig: %s\n' "$*" >&2; }

apt_pkgs=(swift swift-proxy swift-account swift-container swift-object memcached
  graphite-web graphite-carbon chromium debhelper dh-golang lintian debootstrap fakeroot zstd xz-utils bzip2 curl time systemd
  minisign nginx-light prometheus)
# The four installs are independent: apt and debootstrap wait on the
# network, the two Go builds on the CPU. Run them side by side, each to a
# log of its own, and fail if any failed (its log is printed).
pids=() names=()
step() { # step NAME FUNCTION
  local name=$1; shift
  ( "$@" ) >"$rig/$name.log" 2>&1 &
  pids+=($!) names+=("$name")
}

install_apt() {
  missing=()
  for p in "${apt_pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -gt 0 ] || return 0
  log "apt-get install ${missing[*]}"
  local t=$SECONDS
  # Keep the stock daemons from starting where systemd runs: tests start their own.
  local policy=/usr/sbin/policy-rc.d created_policy=
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"; chmod +x "$policy"; created_policy=1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  [ -z "$created_policy" ] || rm -f "$policy"
  log "apt packages installed in $((SECONDS - t))s"
}

build_minio() {
  [ ! -x "$rig/bin/minio" ] || return 0
  log "building minio $MINIO_VERSION (a few minutes)"
  local t=$SECONDS
  GOBIN="$rig/bin" go install -trimpath -ldflags '-s -w' "github.com/minio/minio@$MINIO_VERSION"
  log "minio built in $((SECONDS - t))s"
}

build_consul() {
  [ ! -x "$rig/bin/consul" ] || return 0
  log "building consul through internal/rig/consul (a few minutes)"
  local t=$SECONDS
  (cd "$here/consul" && go build -trimpath -ldflags '-s -w' -o "$rig/bin/consul.tmp" github.com/hashicorp/consul)
  mv "$rig/bin/consul.tmp" "$rig/bin/consul"
  log "consul built in $((SECONDS - t))s"
}

# A minimal Debian root for the package tests (install, upgrade, purge run
# the real maintainer scripts in a chroot). Kept as a tarball. debootstrap
# itself comes with the apt packages: wait for them first.
debian_root() {
  [ ! -s "$rig/debian-root.tar" ] || return 0
  while ! command -v debootstrap >/dev/null; do
    [ -e "$rig/apt.done" ] && { log "debootstrap is not installed: the apt step failed"; return 1; }
    sleep 1
  done
  log "debootstrap a minimal Debian root (a few minutes)"
  local t=$SECONDS
  suite=$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")
  # The machine's own Debian mirror, as apt knows it: deb822 sources
  # first, then the one-line format. No address of our own.
  mirror=$(sed -n 's/^URIs: *\([^ ]*\).*/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | grep -v security | head -1 || true)
  if [ -z "$mirror" ]; then
    mirror=$(sed -n 's/^deb  *\(\[[^]]*\] *\)\{0,1\}\([^ ]*\) .*/\2/p' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | grep -v security | head -1 || true)
  fi
  if [ -z "$mirror" ]; then
    log "no Debian mirror found in /etc/apt/sources.list{,.d}: the package tests need one for debootstrap"
    return 1
  fi
  tmp=$(mktemp -d)
  debootstrap --variant=minbase "$suite" "$tmp/root" "$mirror" >"$rig/debootstrap.log" 2>&1
  tar -C "$tmp/root" -cf "$rig/debian-root.tar.tmp" .
  mv "$rig/debian-root.tar.tmp" "$rig/debian-root.tar"
  rm -rf "$tmp"
  log "debian root ready in $((SECONDS - t))s"
}

# debian_root waits for this mark, set however the apt step ends.
apt_step() { trap 'touch "$rig/apt.done"' EXIT; install_apt; }
rm -f "$rig/apt.done"
step apt apt_step
step minio build_minio
step consul build_consul
step debian-root debian_root

failed=0
for i in "${!pids[@]}"; do
  if ! wait "${pids[$i]}"; then
    failed=1
    log "${names[$i]} failed; its log ($rig/${names[$i]}.log):"
    tail -n 40 "$rig/${names[$i]}.log" >&2
  else
    grep '^rig: ' "$rig/${names[$i]}.log" >&2 || true
  fi
done
[ "$failed" = 0 ] || exit 1

log "rig ready in $((SECONDS - start))s: $rig/bin"
