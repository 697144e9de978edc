#!/usr/bin/env bash
# Every GPU check in one go, for a machine with a CUDA device:
#   bash bench/gpu_check.sh OUTDIR
# Sets up (if needed), runs the tests marked gpu and the GPU latency
# benchmark, and writes logs and figures to OUTDIR.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: bench/gpu_check.sh OUTDIR}
mkdir -p "$out"
py=$(command -v "${PYTHON:-.venv/bin/python}" || true)
[ -n "$py" ] || { ./setup.sh > "$out/setup.log" 2>&1 || { echo "set-up failed, see $out/setup.log"; exit 1; }; }
nvidia-smi > "$out/nvidia-smi.txt" 2>&1 || true
"$py" -c "from engines.base import available_backends as a; print(a())" > "$out/backends.txt" 2>&1
status=0
"$py" -m pytest -q -m gpu tests/test_backends.py -rs --junitxml="$out/gpu-tests.xml" > "$out/gpu-tests.log" 2>&1 || status=1
backends=$("$py" -c "from engines.base import available_backends as a; print(' '.join(b for b in a() if b != 'cpu'))")
"$py" bench/models_latency.py --backends cpu $backends --json "$out/latency.json" > "$out/latency.txt" 2>&1 || status=1
tail -n 3 "$out/gpu-tests.log"; cat "$out/latency.txt"
exit $status
