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
"$py" -m pytest -q -m gpu tests/test_backends.py -rs ${GPU_TESTS:+-k "$GPU_TESTS"} --junitxml="$out/gpu-tests.xml" > "$out/gpu-tests.log" 2>&1 || status=1
backends=$("$py" -c "from engines.base import available_backends as a; print(' '.join(b for b in a() if b != 'cpu'))")
"$py" bench/models_latency.py --backends cpu $backends ${LATENCY_MODELS:+--models $LATENCY_MODELS} --json "$out/latency.json" > "$out/latency.txt" 2>&1 || status=1
# Live streams on the GPU (needs PyAV and the hamilton clip; LIVE_CLIP overrides its path).
clip=${LIVE_CLIP:-../shared/media/face_recognition/examples/short_hamilton_clip.mp4}
if [ -f "$clip" ] && "$py" -c "import av" 2>/dev/null; then
  "$py" bench/bench_live.py --backend torch-cuda --clip "$clip" --streams 1 4 8 > "$out/live.txt" 2>&1 || status=1
fi
# The stream count (issue 19): 1080p cameras held in blur and synth modes, one process and over processes.
if [ -f "$clip" ] && "$py" -c "import av" 2>/dev/null; then
  "$py" bench/bench_streams.py --backend torch-cuda --clips 1080p --modes blur synth --max ${STREAMS_MAX:-24} \
    --seconds ${STREAMS_SECONDS:-10} > "$out/streams.txt" 2>&1 || status=1
fi
tail -n 3 "$out/gpu-tests.log"; cat "$out/latency.txt"; cat "$out/live.txt" 2>/dev/null; cat "$out/streams.txt" 2>/dev/null
exit $status
