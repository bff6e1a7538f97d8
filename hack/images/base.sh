#!/usr/bin/env bash
# The images' base, debian:bookworm-slim, when it cannot be pulled: made here the way Debian's official
# image is made (debuerreotype), from Debian's own packages. Built once, reused while the image exists.
#   1. already present locally: nothing to do;
#   2. `docker pull debian:bookworm-slim` works (a normal machine): use the real one;
#   3. else `debootstrap --variant=minbase bookworm`, slimmed with the official image's dpkg/apt
#      configuration, piped into `docker import` and tagged debian:bookworm-slim.
# DEBIAN_MIRROR overrides the mirror (default: deb.debian.org, the official image's). See docs/images.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
IMAGE=debian:bookworm-slim
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SECURITY_MIRROR="${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}"

if docker image inspect "$IMAGE" >/dev/null 2>&1; then exit 0; fi
echo "==> $IMAGE: trying docker pull"
if timeout 60 docker pull -q "$IMAGE" >/dev/null 2>&1; then exit 0; fi

SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo -n"
command -v debootstrap >/dev/null 2>&1 || {
  echo "hack/images/base.sh: $IMAGE cannot be pulled and debootstrap is missing (apt-get install debootstrap)" >&2
  exit 1
}
echo "==> $IMAGE cannot be pulled: making it with debootstrap --variant=minbase bookworm ($MIRROR)"
work="$(mktemp -d)"
trap '$SUDO rm -rf "$work"' EXIT
root="$work/rootfs"
$SUDO debootstrap --variant=minbase --merged-usr bookworm "$root" "$MIRROR" >"$work/debootstrap.log" 2>&1 || {
  tail -20 "$work/debootstrap.log" >&2; exit 1
}

# The official image's minimizing configuration (debuerreotype-minimizing-config) and slim variant
# (debuerreotype-slimify): no init scripts, no apt caches or translations, no docs/man/locales.
$SUDO tee "$root/usr/sbin/policy-rc.d" >/dev/null <<'CFG'
#!/bin/sh
exit 101
CFG
$SUDO chmod 755 "$root/usr/sbin/policy-rc.d"
$SUDO tee "$root/etc/apt/apt.conf.d/docker-clean" >/dev/null <<'CFG'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
CFG
echo 'Acquire::Languages "none";' | $SUDO tee "$root/etc/apt/apt.conf.d/docker-no-languages" >/dev/null
echo 'Acquire::GzipIndexes "true";' | $SUDO tee "$root/etc/apt/apt.conf.d/docker-gzip-indexes" >/dev/null
echo 'Apt::AutoRemove::SuggestsImportant "false";' | $SUDO tee "$root/etc/apt/apt.conf.d/docker-autoremove-suggests" >/dev/null
$SUDO tee "$root/etc/dpkg/dpkg.cfg.d/docker" >/dev/null <<'CFG'
# This is the "slim" variant of the Debian base image.
# Many files which are normally unnecessary in containers are excluded,
# and this configuration file keeps them that way.
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/lintian/overrides/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/man/*
CFG
$SUDO find "$root/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
$SUDO find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete
$SUDO rm -rf "$root"/usr/share/{groff,info,linda,lintian/overrides,locale,man}/*
# The official image's sources (deb822), with security updates; then no lists, caches or logs.
$SUDO rm -f "$root/etc/apt/sources.list"
$SUDO tee "$root/etc/apt/sources.list.d/debian.sources" >/dev/null <<CFG
Types: deb
URIs: $MIRROR
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $SECURITY_MIRROR
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
CFG
$SUDO rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/var/cache/ldconfig/aux-cache \
  "$root"/var/log/apt/* "$root"/var/log/*.log "$root"/dev/* "$root"/proc/* "$root"/sys/* "$root"/run/* "$root"/tmp/*
$SUDO truncate -s 0 "$root/etc/machine-id" 2>/dev/null || true
$SUDO tar --numeric-owner -C "$root" -c . \
  | docker import --change 'CMD ["bash"]' --change 'LABEL dev.tide.base="debootstrap --variant=minbase bookworm (hack/images/base.sh)"' \
      - "$IMAGE" >/dev/null
echo "==> $IMAGE made locally: $(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.1f MB", $1/1e6}')"
