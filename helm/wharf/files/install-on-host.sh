#!/bin/sh
# The wharf chart's installer (the DaemonSet's container): puts wharf's binaries, its
# systemd unit and /etc/wharf/wharf.toml on the node through host mounts, then has
# the node's systemd enable wharfd and start it, or restart it when something changed
# (the unit's KillMode=process keeps the node's containers running). Then it waits,
# ready, until the pod is replaced (a new image or config rolls the DaemonSet).
# Paths come from the environment (the DaemonSet sets them), so it runs anywhere.
set -eu
: "${SOURCE_BIN_DIR:=/usr/bin}"                         # the image's binaries
: "${SOURCE_UNIT:=/usr/lib/systemd/system/wharfd.service}" # the image's unit
: "${CONFIG:=/etc/wharf-chart/wharf.toml}"               # the ConfigMap's file
: "${HOST_BIN_DIR:=/usr/bin}"                           # on the node, for ExecStart
: "${HOST_BIN_MOUNT:=/host/bin}"                        # ... mounted here
: "${HOST_UNIT_DIR:=/host/etc/systemd/system}"          # the node's /etc/systemd/system
: "${HOST_CONFIG_DIR:=/host/etc/wharf}"                 # the node's /etc/wharf
: "${HOST_RUN_SYSTEMD:=/host/run/systemd}"              # the node's /run/systemd
: "${HOST_SYSTEMCTL:=nsenter --target 1 --mount -- systemctl}" # the node's systemctl
: "${READY_FILE:=/tmp/wharf-installed}"                 # the readiness probe's
: "${ONESHOT:=}"                                        # set: exit once installed

log() { echo "wharf-installer: $*"; }
fail() {
  echo "wharf-installer: $*" >&2
  exit 1
}

[ -d "$HOST_RUN_SYSTEMD/system" ] ||
  fail "systemd does not run on this node ($HOST_RUN_SYSTEMD/system is missing): the chart installs wharfd as a systemd service; install wharf otherwise (deploy/README.md)"
for program in wharfd wharf wharf-monitor wharf-monitor-watch; do
  [ -x "$SOURCE_BIN_DIR/$program" ] ||
    fail "the image has no $SOURCE_BIN_DIR/$program (the chart's image.binDir)"
done
[ -f "$SOURCE_UNIT" ] || fail "the image has no $SOURCE_UNIT (the chart's image.unitFile)"
[ -f "$CONFIG" ] || fail "$CONFIG is missing (the chart's ConfigMap)"
case "$HOST_BIN_DIR" in
  /*) ;;
  *) fail "hostBinDir $HOST_BIN_DIR is not an absolute path" ;;
esac
# The configuration is checked by the wharfd about to be installed, before anything
# on the node changes.
if ! "$SOURCE_BIN_DIR/wharfd" --config "$CONFIG" --print-config >/dev/null; then
  fail "wharfd refuses the chart's wharf.toml (above): fix the values config, registryMirrors or metrics.address"
fi
log "$("$SOURCE_BIN_DIR/wharfd" --version)"

changed=
# put SOURCE TARGET MODE NAME: replaces TARGET with SOURCE when they differ, through
# a rename (a running binary is never written to).
put() {
  if [ -f "$2" ] && cmp -s "$1" "$2"; then
    return 0
  fi
  cp "$1" "$2.wharf-new"
  chmod "$3" "$2.wharf-new"
  mv -f "$2.wharf-new" "$2"
  log "installed $4"
  changed=yes
}
for program in wharfd wharf wharf-monitor wharf-monitor-watch; do
  put "$SOURCE_BIN_DIR/$program" "$HOST_BIN_MOUNT/$program" 755 "$HOST_BIN_DIR/$program"
done
unit=$(mktemp)
trap 'rm -f "$unit"' EXIT
sed "s|^ExecStart=/usr/bin/wharfd|ExecStart=$HOST_BIN_DIR/wharfd|" "$SOURCE_UNIT" >"$unit"
put "$unit" "$HOST_UNIT_DIR/wharfd.service" 644 /etc/systemd/system/wharfd.service
put "$CONFIG" "$HOST_CONFIG_DIR/wharf.toml" 644 /etc/wharf/wharf.toml

# shellcheck disable=SC2086 # HOST_SYSTEMCTL is a command line
{
  $HOST_SYSTEMCTL daemon-reload
  $HOST_SYSTEMCTL enable wharfd.service
  if $HOST_SYSTEMCTL is-active --quiet wharfd.service; then
    if [ -n "$changed" ]; then
      $HOST_SYSTEMCTL restart wharfd.service
      log "wharfd restarted (its containers keep running)"
    else
      log "wharf is installed and running; nothing changed"
    fi
  else
    # Type=notify: returns once wharfd serves.
    $HOST_SYSTEMCTL start wharfd.service
    log "wharfd started"
  fi
}
touch "$READY_FILE"
[ -z "$ONESHOT" ] || exit 0
trap 'exit 0' TERM INT
while :; do
  sleep 3600 &
  wait $! || true
done
