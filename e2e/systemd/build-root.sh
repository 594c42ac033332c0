#!/usr/bin/env bash
# Builds the Debian bookworm root that tests/deploy_systemd.rs boots with systemd-nspawn
# to install the .deb of scripts/deb under a real systemd: mmdebstrap's minbase, plus
# systemd as init and every package the .deb Depends on (so `dpkg -i` needs no
# download), from the mirror apt uses on this machine. Cached outside the clone as one
# tarball, keyed by a hash of this script (the suite, the packages, the hooks):
#   ${WHARF_E2E_CACHE:-/var/cache/wharf-e2e}/debian-bookworm-systemd-<hash>.tar
# A second run returns at once. Prints the tarball's path.
#
#   e2e/systemd/build-root.sh           build it unless cached (downloads from the mirror)
#   e2e/systemd/build-root.sh --cached  print the path only if it is built; never downloads
#                                       (the test's way to find it)
#
# Needs root (the root's files are owned by root and its device nodes are made with
# mknod) and mmdebstrap (scripts/setup test installs it).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${WHARF_E2E_CACHE:-/var/cache/wharf-e2e}
suite=bookworm

# What the .deb needs (its Depends: libc6, libgcc-s1 and apt come with minbase), what
# boots it (systemd, systemd-sysv for /sbin/init, dbus for systemctl's bus) and what
# the test uses inside (procps: pgrep).
packages=(systemd systemd-sysv dbus libseccomp2 iptables procps ca-certificates)

hash=$(sha256sum "$here/build-root.sh" | cut -c1-16)
tarball="$cache/debian-$suite-systemd-$hash.tar"

case "${1:-}" in
  --cached)
    if [ ! -f "$tarball" ]; then
      echo "e2e/systemd/build-root.sh: $tarball is not built: run e2e/systemd/build-root.sh as root (scripts/test runs it; it needs mmdebstrap and the Debian mirror)" >&2
      exit 1
    fi
    echo "$tarball"
    exit 0
    ;;
  "") ;;
  *) echo "usage: $0 [--cached]" >&2; exit 2 ;;
esac

if [ -f "$tarball" ]; then
  echo "$tarball"
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "e2e/systemd/build-root.sh: run as root (mmdebstrap --mode=root)" >&2
  exit 1
fi
if ! command -v mmdebstrap >/dev/null; then
  echo "e2e/systemd/build-root.sh: mmdebstrap is missing: install the Debian package mmdebstrap (scripts/setup test installs it)" >&2
  exit 1
fi

# The mirror apt uses here: this machine's deb822 sources when they are bookworm's
# (deb.debian.org, -updates and -security), else Debian's default mirror.
mirrors=()
host_sources=/etc/apt/sources.list.d/debian.sources
if [ -f "$host_sources" ] && grep -Eq "^Suites:.*\b$suite\b" "$host_sources"; then
  mirrors+=("$host_sources")
else
  mirrors+=("deb http://deb.debian.org/debian $suite main"
    "deb http://deb.debian.org/debian $suite-updates main"
    "deb http://deb.debian.org/debian-security $suite-security main")
fi

mkdir -p "$cache"
exec 9>"$cache/.debian-$suite-systemd.lock"
flock 9
if [ -f "$tarball" ]; then # built by a run we waited for
  echo "$tarball"
  exit 0
fi
start=$(date +%s)
partial="$tarball.partial"
rm -f "$partial"
include=$(IFS=,; echo "${packages[*]}")
# The hooks: no getty on the container's console (nspawn's console is not a terminal
# anyone types into); an empty machine-id, which systemd fills in at boot (nspawn
# passes the container's UUID); no policy-rc.d is left (mmdebstrap removes its own),
# so the .deb's postinst really starts wharfd. ($1, the root, is mmdebstrap's.)
# shellcheck disable=SC2016
mmdebstrap --mode=root --format=tar --variant=minbase --include="$include" \
  --customize-hook='systemctl --root="$1" mask console-getty.service getty@.service container-getty@.service' \
  --customize-hook=': >"$1/etc/machine-id"' \
  --customize-hook='echo wharf-deb >"$1/etc/hostname"' \
  --customize-hook='rm -f "$1"/var/cache/apt/archives/*.deb "$1"/var/lib/apt/lists/*_Packages' \
  "$suite" "$partial" "${mirrors[@]}" >&2
mv "$partial" "$tarball"
# Older roots of this script are no longer used.
for old in "$cache"/debian-"$suite"-systemd-*.tar; do
  [ "$old" = "$tarball" ] || rm -f "$old"
done
echo "e2e/systemd/build-root.sh: built $tarball ($(du -h "$tarball" | cut -f1)) in $(($(date +%s) - start)) s" >&2
echo "$tarball"
