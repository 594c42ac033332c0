#!/usr/bin/env bash
# Creates the virtualenv with docker-py (pinned in requirements.txt) that
# tests/docker_py.rs runs: target/docker-py-venv. Recreated when requirements.txt
# changes; needs python3 with venv and the PyPI index.
set -euo pipefail
cd "$(dirname "$0")/../.."
venv=target/docker-py-venv
stamp="$venv/requirements.txt"
if [ -x "$venv/bin/python" ] && cmp -s tests/docker-py/requirements.txt "$stamp"; then
  exit 0
fi
python=$(command -v python3 || true)
if [ -z "$python" ]; then
  echo "tests/docker-py/setup.sh: python3 is missing: install the Debian packages python3 and python3-venv" >&2
  exit 1
fi
rm -rf "$venv"
"$python" -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check -r tests/docker-py/requirements.txt
cp tests/docker-py/requirements.txt "$stamp"
echo "docker-py: $("$venv/bin/python" -c 'import docker; print(docker.__version__)') in $venv"
