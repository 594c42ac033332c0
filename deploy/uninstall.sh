#!/usr/bin/env bash
# Removes what deploy/install.sh installed (listed in /usr/lib/wharf/install-manifest):
# stops and disables wharfd where systemd runs, removes the binaries, the unit, and the
# config files it installed (unless they were edited since: those are kept, and named),
# and the directories it made once empty. wharfd's data (/var/lib/wharf: images,
# volumes, the metadata database) stays, unless --purge.
#
#   deploy/uninstall.sh [--root DIR] [--purge]      (also /usr/lib/wharf/uninstall.sh)
#
#   --root DIR  uninstall from DIR instead of / (also DESTDIR=DIR); systemd is not touched
#   --purge     also remove /etc/wharf/wharf.toml (edited, or kept from an earlier
#               uninstall), the crictl.yaml it installed, edited or not, and wharfd's
#               data and state (/var/lib/wharf and /run/wharf, or the root and state
#               the config names); refused while anything is mounted there (running
#               containers: remove them first)
#
# Containers keep running when wharfd stops (their monitors hold them): remove them
# before uninstalling if they should go (`wharf rm -f $(wharf ps -aq)`, `crictl rmp -fa`).
set -euo pipefail

root=${DESTDIR:-}
purge=no

usage() {
  echo "usage:" >&2
  sed -n '8,14p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}/  /' >&2
  exit 2
}
fail() {
  echo "uninstall.sh: $*" >&2
  exit 1
}

while [ $# -gt 0 ]; do
  case "$1" in
    --root) [ $# -ge 2 ] || usage; root=$2; shift 2 ;;
    --root=*) root=${1#--root=}; shift ;;
    --purge) purge=yes; shift ;;
    -h | --help) usage ;;
    *) echo "uninstall.sh: unknown argument $1" >&2; usage ;;
  esac
done
root=${root%/}
if [ -n "$root" ]; then
  [ -d "$root" ] || fail "--root $root is not a directory"
  root=$(cd "$root" && pwd)
  [ "$root" != / ] || root=
fi
if [ -z "$root" ] && [ "$(id -u)" -ne 0 ]; then
  fail "uninstalling from / needs root: run it as root (or with --root DIR)"
fi

manifest_path=/usr/lib/wharf/install-manifest
manifest=$root$manifest_path
[ -f "$manifest" ] ||
  fail "$manifest is missing: wharf was not installed here by deploy/install.sh (the .deb is removed with \`apt remove wharf\` or \`apt purge wharf\`)"
dirs=()
declare -A files=()
while read -r kind a b; do
  case "$kind" in
    dir) dirs+=("$a") ;;
    file) files[$b]=$a ;;
    *) fail "$manifest: unexpected line: $kind $a $b" ;;
  esac
done <"$manifest"

# The data and state directories: the defaults, or those the config names.
data_dirs=("$root/var/lib/wharf" "$root/run/wharf")
if [ -z "$root" ] && [ -x /usr/bin/wharfd ]; then
  config_args=()
  [ -f /etc/wharf/wharf.toml ] && config_args=(--config /etc/wharf/wharf.toml)
  if effective=$(/usr/bin/wharfd "${config_args[@]}" --print-config 2>/dev/null); then
    for key in root state; do
      dir=$(sed -n "s/^$key = \"\\(.*\\)\"\$/\\1/p" <<<"$effective")
      if [ -n "$dir" ] && [ "$dir" != /var/lib/wharf ] && [ "$dir" != /run/wharf ]; then
        data_dirs+=("$dir")
      fi
    done
  fi
fi

if [ "$purge" = yes ]; then
  # rm -rf must never reach into a container's root filesystem, a volume or a bind
  # mount (which may be any host directory): refuse while anything is mounted there.
  mounted=$(awk '{print $5}' /proc/self/mountinfo | while read -r point; do
    point=$(printf '%b' "$point")
    for dir in "${data_dirs[@]}"; do
      case "$point/" in "$dir"/*) echo "  $point" ;; esac
    done
  done)
  if [ -n "$mounted" ]; then
    fail "--purge refused: mounts lie under wharfd's data (running containers, volumes?):
$mounted
remove the containers and pods first (wharf rm -f \$(wharf ps -aq); crictl rmp -fa), or unmount them"
  fi
fi

# Stop wharfd (systemd), or make sure it is not running from these binaries.
if [ -z "$root" ]; then
  if [ -d /run/systemd/system ] && [ -n "${files[/etc/systemd/system/wharfd.service]:-}" ]; then
    systemctl disable --now wharfd.service || true
  fi
  for exe in /proc/[0-9]*/exe; do
    target=$(readlink "$exe" 2>/dev/null) || continue
    case "$target" in
      /usr/bin/wharfd | "/usr/bin/wharfd (deleted)")
        pid=${exe#/proc/}
        fail "wharfd (pid ${pid%/exe}) is still running: stop it first (kill -TERM ${pid%/exe})"
        ;;
    esac
  done
fi

config_files=(/etc/wharf/wharf.toml /etc/crictl.yaml)
is_config() {
  local config
  for config in "${config_files[@]}"; do
    [ "$1" = "$config" ] && return 0
  done
  return 1
}

# wharf's own config file goes with --purge even when an earlier uninstall kept it
# (edited) and so no longer lists it.
if [ "$purge" = yes ] && [ -z "${files[/etc/wharf/wharf.toml]:-}" ]; then
  files[/etc/wharf/wharf.toml]=unknown
fi
for path in $(printf '%s\n' "${!files[@]}" | LC_ALL=C sort); do
  target=$root$path
  if [ ! -e "$target" ] && [ ! -L "$target" ]; then
    continue
  fi
  if is_config "$path" && [ "$purge" = no ] &&
    [ "$(sha256sum "$target" | cut -d' ' -f1)" != "${files[$path]}" ]; then
    echo "kept $path: edited since it was installed (--purge removes it)"
    continue
  fi
  rm -f "$target"
  echo "removed $path"
done
rm -f "$manifest"

if [ "$purge" = yes ]; then
  for dir in "${data_dirs[@]}"; do
    if [ -e "$dir" ]; then
      rm -rf --one-file-system "$dir"
      echo "removed $dir"
    fi
  done
fi

# The directories it made, deepest first, if nothing else is in them; with --purge,
# wharf's own /etc/wharf too.
if [ "$purge" = yes ] && [ -d "$root/etc/wharf" ]; then
  dirs+=(/etc/wharf)
fi
for dir in $(printf '%s\n' "${dirs[@]}" | awk '{print length, $0}' | sort -rn | cut -d' ' -f2-); do
  if [ -d "$root$dir" ]; then
    rmdir "$root$dir" 2>/dev/null || echo "kept $dir: not empty"
  fi
done

if [ -z "$root" ] && [ -d /run/systemd/system ]; then
  systemctl daemon-reload
fi
if [ "$purge" = no ] && [ -d "${data_dirs[0]}" ]; then
  echo "kept ${data_dirs[0]} (wharfd's images, volumes and metadata; --purge removes it)"
fi
echo "wharf is uninstalled${root:+ from $root}"
