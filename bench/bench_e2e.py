#!/usr/bin/env python3
"""End-to-end throughput and leak rate per mode, against deface 1.5.0 in the same run.

    .venv/bin/python bench/bench_e2e.py [--clip PATH] [--repeat 3]

Both tools run as whole commands (start-up, decoding, detection, obscuring,
encoding) on the same clip, one after the other, so the ratio holds on the
machine at hand. deface is installed only in its own environment,
bench/.venv-deface, made on first use. Throughput = input frames / wall time
(median of the repeats). Leak rate = reference faces (CenterFace at full
resolution, every frame, height >= 12 px, score >= 0.5) not covered by what
the tool obscured (see stream/leak.py); deface's regions come from its own
detector and box scaling at its defaults (bench/deface_regions.py).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from stream.config import build_config  # noqa: E402
from stream.job import load_detector  # noqa: E402
from stream.leak import leak_counts, measure_leak, reference_faces  # noqa: E402

DEFAULT_CLIP = ROOT.parent / "shared" / "media" / "face_recognition" / "examples" / "short_hamilton_clip.mp4"
DEFACE_VENV = ROOT / "bench" / ".venv-deface"
DEFACE_PINS = ["deface==1.5.0", "onnxruntime>=1.18,<2"]


def ensure_deface() -> Path:
    exe = DEFACE_VENV / "bin" / "deface"
    if not exe.exists():
        print("setting up deface 1.5.0 in bench/.venv-deface ...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(DEFACE_VENV)], check=True)
        subprocess.run([str(DEFACE_VENV / "bin" / "pip"), "install", "-q", *DEFACE_PINS], check=True)
    return exe


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"benchmark command failed: {' '.join(cmd)}\n{result.stderr[-2000:]}")
    return elapsed


def count_frames(clip: Path) -> int:
    import av

    with av.open(str(clip)) as container:
        return sum(1 for _ in container.decode(video=0))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clip", type=Path, default=DEFAULT_CLIP)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--modes", nargs="+", default=["blur", "pixelate", "mask"])
    p.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "e2e.json")
    args = p.parse_args()

    deface = ensure_deface()
    frames = count_frames(args.clip)
    print(f"clip {args.clip.name}: {frames} frames; {os.cpu_count()} cores", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        walls: dict[str, list[float]] = {m: [] for m in [*args.modes, "deface"]}
        for _ in range(args.repeat):  # interleaved, so drift in machine load hits all alike
            for mode in args.modes:
                walls[mode].append(timed([sys.executable, str(ROOT / "run_stream.py"), str(args.clip),
                                          "-o", f"{tmp}/{mode}.mp4", "-q", "--mode", mode]))  # fmt: skip
            walls["deface"].append(timed([str(deface), str(args.clip), "-o", f"{tmp}/deface.mp4"]))
        regions = subprocess.run([str(DEFACE_VENV / "bin" / "python"), str(ROOT / "bench" / "deface_regions.py"),
                                  str(args.clip)], capture_output=True, text=True, check=True)  # fmt: skip
        deface_frames = [json.loads(line) for line in regions.stdout.splitlines() if line.startswith("{")]

    config = build_config()
    detector = load_detector(config)
    ours = {r["mode"]: r for r in measure_leak(str(args.clip), args.modes,
                                               lambda m: build_config(None, {"obscure": {"mode": m}}))}  # fmt: skip
    reference = reference_faces(str(args.clip), detector, 0.5, 12.0)
    total, leaked, _ = leak_counts(reference, deface_frames, "ellipse", 0.95)

    deface_fps = frames / statistics.median(walls["deface"])
    rows = []
    print(f"\n{'tool':22s} {'fps':>7s} {'x deface':>9s} {'leak':>8s}  (wall s, median of {args.repeat})")
    for mode in args.modes:
        fps = frames / statistics.median(walls[mode])
        leak = ours[mode]["leak_rate"]
        rows.append({"tool": f"anonymousnet {mode}", "fps": fps, "ratio": fps / deface_fps, "leak_rate": leak,
                     "walls": walls[mode]})  # fmt: skip
        print(f"{'anonymousnet ' + mode:22s} {fps:7.1f} {fps / deface_fps:9.2f} {100 * leak:7.2f}%")
    deface_leak = leaked / total if total else 0.0
    rows.append({"tool": "deface 1.5.0 blur", "fps": deface_fps, "ratio": 1.0, "leak_rate": deface_leak,
                 "walls": walls["deface"], "frames_with_regions": len(deface_frames)})  # fmt: skip
    print(f"{'deface 1.5.0 blur':22s} {deface_fps:7.1f} {1.0:9.2f} {100 * deface_leak:7.2f}%")
    print(f"reference faces: {total}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"clip": str(args.clip), "frames": frames, "cores": os.cpu_count(),
                                     "rows": rows}, indent=2) + "\n")  # fmt: skip


if __name__ == "__main__":
    main()
