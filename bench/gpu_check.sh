#!/usr/bin/env bash
# Every GPU check in one go, for a machine with a CUDA device:
#   bash bench/gpu_check.sh OUTDIR
# Sets up (if needed), then runs the parts named in PARTS (default: all, in this order):
#   tests    the tests marked gpu: torch-cuda and CUDA graphs (concurrent calls included), the
#            GPU frame path against the CPU path, and hardware decoding
#   latency  the GPU latency benchmark of every model
#   live     bench_live on torch-cuda, 1, 4 and 8 streams of the 360p clip
#   streams  the stream count (issue 19): 1080p30 cameras held in blur and synth modes over
#            processes on torch-cuda, N searched up to STREAMS_MAX (doubling, then bisecting)
# Logs and figures go to OUTDIR. Split over two calls where one is time-limited:
#   PARTS="tests latency live" bash bench/gpu_check.sh out; PARTS=streams bash bench/gpu_check.sh out
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: bench/gpu_check.sh OUTDIR}
parts=" ${PARTS:-tests latency live streams} "
mkdir -p "$out"
py=$(command -v "${PYTHON:-.venv/bin/python}" || true)
[ -n "$py" ] || { ./setup.sh > "$out/setup.log" 2>&1 || { echo "set-up failed, see $out/setup.log"; exit 1; }; py=.venv/bin/python; }
nvidia-smi > "$out/nvidia-smi.txt" 2>&1 || true
"$py" -c "from engines.base import available_backends as a; print(a())" > "$out/backends.txt" 2>&1
status=0
has_av() { "$py" -c "import av" 2>/dev/null; }
clip=${LIVE_CLIP:-../shared/media/face_recognition/examples/short_hamilton_clip.mp4}
if [[ $parts == *" tests "* ]]; then
  tests=(tests/test_backends.py)
  has_av && [ -f "$clip" ] && tests+=(tests/test_device_frames.py)
  "$py" -m pytest -q -m gpu "${tests[@]}" -rs ${GPU_TESTS:+-k "$GPU_TESTS"} --junitxml="$out/gpu-tests.xml" \
    > "$out/gpu-tests.log" 2>&1 || status=1
  if has_av; then
    "$py" -m pytest -q tests/test_io.py -k hardware -o log_cli=true --log-cli-level=INFO \
      > "$out/hw-decode.log" 2>&1 || status=1
  fi
fi
if [[ $parts == *" latency "* ]]; then
  backends=$("$py" -c "from engines.base import available_backends as a; print(' '.join(b for b in a() if b not in ('cpu', 'torch-cpu')))")
  "$py" bench/models_latency.py --backends cpu $backends ${LATENCY_MODELS:+--models $LATENCY_MODELS} \
    --json "$out/latency.json" > "$out/latency.txt" 2>&1 || status=1
fi
if [[ $parts == *" live "* ]] && [ -f "$clip" ] && has_av; then
  "$py" bench/bench_live.py --backend torch-cuda --clip "$clip" --streams 1 4 8 > "$out/live.txt" 2>&1 || status=1
fi
if [[ $parts == *" streams "* ]] && [ -f "$clip" ] && has_av; then
  "$py" bench/bench_streams.py --backend torch-cuda --clips 1080p --modes blur synth --layouts processes \
    --search --max "${STREAMS_MAX:-32}" --seconds "${STREAMS_SECONDS:-8}" > "$out/streams.txt" 2>&1 || status=1
fi
for f in gpu-tests.log hw-decode.log; do [ -f "$out/$f" ] && tail -n 3 "$out/$f"; done
cat "$out/latency.txt" "$out/live.txt" "$out/streams.txt" 2>/dev/null
exit $status
