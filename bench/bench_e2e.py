#!/usr/bin/env python3
"""End-to-end throughput and leak rate per mode, against deface 1.5.0 in the same run.

    .venv/bin/python bench/bench_e2e.py [--clips PATH ...] [--repeat 3] [--modes blur ...]

Both tools run as whole commands (start-up, decoding, detection, obscuring,
encoding) on the same clips (MOT20-08's street crowd and the hamilton clip by
default), one after the other, so the ratio holds on the machine at hand.
deface is installed only in its own environment, bench/.venv-deface, made on
first use. Throughput = input frames / wall time (median of the repeats).
Leak rate, for both tools alike = reference faces (stream/measure/leak.py: CenterFace
at full resolution and upscaled, united with face-api's SSD, every frame,
height >= 12 px) left uncovered or covered but still sharp. deface's regions
come from its own detector and box scaling at its defaults
(bench/deface_regions.py); its sharpness is read from its output file.
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
from stream.measure.leak import (  # noqa: E402
    ReferenceDetector,
    cached_reference,
    count_leaks,
    covered_grid,
    face_crop,
    load_second,
    measure_leak,
    retained_detail,
)
from stream.run.job import load_detector  # noqa: E402

MEDIA = ROOT.parent / "shared" / "media"
DEFAULT_CLIPS = [
    MEDIA / "dlib" / "dlib" / "test" / "ffmpeg_data" / "MOT20-08-raw_shorter.remux.mp4",
    MEDIA / "face_recognition" / "examples" / "short_hamilton_clip.mp4",
]
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


def deface_leak(clip: Path, output: Path, regions: list[dict], reference: list) -> tuple[float, int]:
    """deface's leak rate on ``clip`` (its regions, ellipses; sharpness read from ``output``)."""
    import av
    import numpy as np

    detail: dict[int, np.ndarray] = {}
    whole: dict[int, np.ndarray] = {}
    with av.open(str(output)) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index >= len(reference) or index >= len(regions):
                break
            image = np.asarray(frame.to_ndarray(format="rgb24"), np.uint8)
            height, width = image.shape[:2]
            boxes = np.asarray(regions[index]["boxes"], np.float32).reshape(-1, 4)
            ref = reference[index]
            crops = [face_crop(image, box) for box in ref.boxes]
            detail[index] = np.array([retained_detail(c, o, covered_grid(b, boxes, "ellipse", width, height))
                                      for c, o, b in zip(ref.crops, crops, ref.boxes, strict=True)], np.float32)  # fmt: skip
            whole[index] = np.array(
                [retained_detail(c, o) for c, o in zip(ref.crops, crops, strict=True)], np.float32
            )
    counts = count_leaks([f.boxes for f in reference], regions, "ellipse", 0.95, detail, detail_whole=whole)
    return (counts.uncovered + counts.sharp) / max(1, counts.total), counts.total


def bench_clip(clip: Path, args: argparse.Namespace, deface: Path) -> list[dict]:
    frames = count_frames(clip)
    print(f"clip {clip.name}: {frames} frames; {os.cpu_count()} cores", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        walls: dict[str, list[float]] = {m: [] for m in [*args.modes, "deface"]}
        for _ in range(args.repeat):  # interleaved, so drift in machine load hits all alike
            for mode in args.modes:
                walls[mode].append(timed([sys.executable, str(ROOT / "run_stream.py"), str(clip),
                                          "-o", f"{tmp}/{mode}.mp4", "-q", "--mode", mode]))  # fmt: skip
            walls["deface"].append(timed([str(deface), str(clip), "-o", f"{tmp}/deface.mp4"]))
        regions = subprocess.run([str(DEFACE_VENV / "bin" / "python"), str(ROOT / "bench" / "deface_regions.py"),
                                  str(clip)], capture_output=True, text=True, check=True)  # fmt: skip
        deface_frames = [json.loads(line) for line in regions.stdout.splitlines() if line.startswith("{")]
        config = build_config()
        reference = cached_reference(str(clip), ReferenceDetector(load_detector(config), load_second()))
        deface_rate, total = deface_leak(clip, Path(tmp) / "deface.mp4", deface_frames, reference)
    ours = {r["mode"]: r for r in measure_leak(str(clip), args.modes, cache=True,
                                               config_for_mode=lambda m: build_config(None, {"obscure": {"mode": m}}))}  # fmt: skip
    deface_fps = frames / statistics.median(walls["deface"])
    rows = []
    print(f"\n{'tool':22s} {'fps':>7s} {'x deface':>9s} {'leak':>8s}  (wall s, median of {args.repeat})")
    for mode in args.modes:
        fps = frames / statistics.median(walls[mode])
        leak = ours[mode]["leak_rate"]
        rows.append({"clip": clip.name, "tool": f"anonymousnet {mode}", "fps": fps, "ratio": fps / deface_fps,
                     "leak_rate": leak, "walls": walls[mode]})  # fmt: skip
        print(f"{'anonymousnet ' + mode:22s} {fps:7.1f} {fps / deface_fps:9.2f} {100 * leak:7.2f}%")
    rows.append({"clip": clip.name, "tool": "deface 1.5.0 blur", "fps": deface_fps, "ratio": 1.0,
                 "leak_rate": deface_rate, "walls": walls["deface"]})  # fmt: skip
    print(f"{'deface 1.5.0 blur':22s} {deface_fps:7.1f} {1.0:9.2f} {100 * deface_rate:7.2f}%")
    print(f"reference faces: {total}\n", flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clips", type=Path, nargs="+", default=DEFAULT_CLIPS)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--modes", nargs="+", default=["blur", "pixelate", "mask"])
    p.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "e2e.json")
    args = p.parse_args()

    deface = ensure_deface()
    rows = [row for clip in args.clips for row in bench_clip(clip, args, deface)]
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"cores": os.cpu_count(), "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
