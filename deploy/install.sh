#!/usr/bin/env bash
# Installs wharf on this node (or into a directory tree): the binaries into /usr/bin,
# the systemd unit, /etc/wharf/wharf.toml and /etc/crictl.yaml (each only when
# absent: a file already there is never touched), and /usr/lib/wharf/uninstall.sh.
# Then, where systemd runs and the target is this machine's own root, it enables and
# starts wharfd, or restarts it when a binary or the unit changed. Run it again after
# a new build: it changes only what differs, and a second run changes nothing.
#
#   deploy/install.sh [--root DIR] [--binaries DIR] [--no-start]
#
#   --root DIR      install under DIR instead of / (also DESTDIR=DIR); nothing is
#                   started
#   --binaries DIR  where wharfd, wharf, wharf-monitor and wharf-monitor-watch are
#                   (default: target/release of this repository: cargo build --release)
#   --no-start      install only; do not touch systemd
#
# What it installed is listed in /usr/lib/wharf/install-manifest, which
# deploy/uninstall.sh (also installed as /usr/lib/wharf/uninstall.sh) reads.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=${DESTDIR:-}
binaries=
start=yes

usage() {
  echo "usage:" >&2
  sed -n '9,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}/  /' >&2
  exit 2
}
fail() {
  echo "install.sh: $*" >&2
  exit 1
}

while [ $# -gt 0 ]; do
  case "$1" in
    --root) [ $# -ge 2 ] || usage; root=$2; shift 2 ;;
    --root=*) root=${1#--root=}; shift ;;
    --binaries) [ $# -ge 2 ] || usage; binaries=$2; shift 2 ;;
    --binaries=*) binaries=${1#--binaries=}; shift ;;
    --no-start) start=no; shift ;;
    -h | --help) usage ;;
    *) echo "install.sh: unknown argument $1" >&2; usage ;;
  esac
done
root=${root%/}
if [ -n "$root" ]; then
  [ -d "$root" ] || fail "--root $root is not a directory"
  root=$(cd "$root" && pwd)
  [ "$root" != / ] || root=
fi
if [ -z "$binaries" ]; then
  binaries=$here/../target/release
fi
for binary in wharfd wharf wharf-monitor wharf-monitor-watch; do
  [ -x "$binaries/$binary" ] ||
    fail "$binaries/$binary is missing: build the binaries with \`cargo build --release\`, or name their directory with --binaries DIR"
done
for file in systemd/wharfd.service wharf.toml crictl.yaml uninstall.sh; do
  [ -f "$here/$file" ] || fail "$here/$file is missing: run the install.sh of a whole deploy/ directory"
done
if [ -z "$root" ] && [ "$(id -u)" -ne 0 ]; then
  fail "installing into / needs root: run it as root (or with --root DIR)"
fi

manifest_path=/usr/lib/wharf/install-manifest
manifest=$root$manifest_path
# The manifest: "dir PATH" for each directory this installer made, "file SHA256 PATH"
# for each file it wrote (paths as on the installed system). A previous run's entries
# are kept: what it made is still this installer's to remove.
declare -A dirs=() files=()
if [ -f "$manifest" ]; then
  while read -r kind a b; do
    case "$kind" in
      dir) dirs[$a]=1 ;;
      file) files[$b]=$a ;;
    esac
  done <"$manifest"
fi

changed=()
sha() { sha256sum "$1" | cut -d' ' -f1; }

# Makes directory $1 (an installed path) and the missing ones above it, recording
# each one made.
make_dir() {
  local path=$1 missing=()
  while [ ! -d "$root$path" ]; do
    missing=("$path" "${missing[@]}")
    path=$(dirname "$path")
  done
  for path in "${missing[@]}"; do
    mkdir -m 0755 "$root$path"
    dirs[$path]=1
  done
}

# Installs $1 as $2 (an installed path) with mode $3, replacing it only if it differs
# (through a rename: a running binary is never written to).
put() {
  local source=$1 path=$2 mode=$3 target=$root$2
  make_dir "$(dirname "$path")"
  if [ -f "$target" ] && cmp -s "$source" "$target" &&
    [ "$(stat -c %a "$target")" = "$mode" ]; then
    files[$path]=$(sha "$target")
    return
  fi
  cp "$source" "$target.wharf-new"
  chmod "$mode" "$target.wharf-new"
  mv -f "$target.wharf-new" "$target"
  files[$path]=$(sha "$target")
  changed+=("$path")
  echo "installed $path"
}

# Installs $1 as $2 only if nothing is there.
put_if_absent() {
  local source=$1 path=$2 mode=$3
  if [ -e "$root$path" ] || [ -L "$root$path" ]; then
    if [ -z "${files[$path]:-}" ]; then
      echo "kept $path (already there, not installed by this installer)"
    fi
    return
  fi
  put "$source" "$path" "$mode"
}

for binary in wharfd wharf wharf-monitor wharf-monitor-watch; do
  put "$binaries/$binary" "/usr/bin/$binary" 755
done
put "$here/systemd/wharfd.service" /etc/systemd/system/wharfd.service 644
put "$here/uninstall.sh" /usr/lib/wharf/uninstall.sh 755
put_if_absent "$here/wharf.toml" /etc/wharf/wharf.toml 644
put_if_absent "$here/crictl.yaml" /etc/crictl.yaml 644

# The manifest, sorted: the same installation gives the same file.
make_dir "$(dirname "$manifest_path")"
{
  for path in "${!dirs[@]}"; do echo "dir $path"; done
  for path in "${!files[@]}"; do echo "file ${files[$path]} $path"; done
} | LC_ALL=C sort >"$manifest.wharf-new"
mv -f "$manifest.wharf-new" "$manifest"

if [ ${#changed[@]} -eq 0 ]; then
  echo "wharf is installed${root:+ in $root}; nothing changed"
fi
if [ -n "$root" ] || [ "$start" = no ]; then
  exit 0
fi
if [ ! -d /run/systemd/system ]; then
  cat <<EOF
systemd is not running on this machine: start wharfd yourself, as root, e.g.
  /usr/bin/wharfd >>/var/log/wharfd.log 2>&1 &
(or from your init system; /etc/wharf/wharf.toml is its configuration)
EOF
  exit 0
fi
systemctl daemon-reload
systemctl enable wharfd.service
if systemctl is-active --quiet wharfd.service; then
  if [ ${#changed[@]} -gt 0 ]; then
    # KillMode=process: containers and their monitors keep running.
    systemctl restart wharfd.service
    echo "wharfd restarted"
  fi
else
  systemctl start wharfd.service
  echo "wharfd started"
fi
