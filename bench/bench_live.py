#!/usr/bin/env python3
"""Live operation: 1 and then N simultaneous 640x360 30 fps sources in one process.

    .venv/bin/python bench/bench_live.py [--streams 1 4] [--seconds 20] [--mode blur] [--clip PATH]

Each source is the hamilton clip (640x360, 29.97 fps, faces and audio) read
at its own pace and looped, as a camera delivers it; each output an H.264
file. All runs are in this one script, one after the other, so the first
(one stream) is the baseline of the others. Prints, per run: frames per
second sustained per stream, the share of frames dropped to keep latency
bounded, and capture-to-write latency p50/p95 (ms), and the per-stream
rate as a ratio of the one-stream run's, and the mean number of frames in
each call of the shared detector (detection batched across streams).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DEFAULT_CLIP = ROOT.parent / "shared" / "media" / "face_recognition" / "examples" / "short_hamilton_clip.mp4"


def run(
    n: int, seconds: float, mode: str, clip: Path, folder: Path, workers: int, backend: str
) -> tuple[list[dict[str, float]], float]:
    """Per-stream figures, and the mean number of frames per detector call."""
    from stream.config import build_config
    from stream.run.multi import StreamSpec, run_streams, shared_detector

    frames = round(seconds * 30)
    config = build_config(
        None,
        {
            "source": {"realtime": True, "loop": True},
            "obscure": {"mode": mode},
            "detect": {"backend": backend},
            "runner": {"max_frames": frames, "workers": workers},
        },
    )
    specs = [StreamSpec(f"s{i}", str(clip), str(folder / f"s{n}_{i}.mp4")) for i in range(n)]
    rows = []
    detector = shared_detector(config, n)
    outcomes = run_streams(specs, config, detector=detector)
    detector.close()
    for outcome in outcomes:
        if outcome.error is not None or outcome.result is None:
            raise SystemExit(f"stream {outcome.spec.name} failed: {outcome.error}")
        s = outcome.result.stats
        rows.append(
            {
                "fps": s.frames_out / s.elapsed_s,
                "drop": s.frames_dropped / max(1, s.frames_in),
                "p50": s.latency_ms(0.5) or 0.0,
                "p95": s.latency_ms(0.95) or 0.0,
            }
        )
    return rows, detector.calls / max(1, detector.batches)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--streams", type=int, nargs="+", default=[1, 4])
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--mode", default="blur")
    p.add_argument("--clip", type=Path, default=DEFAULT_CLIP)
    p.add_argument("--workers", type=int, default=0, help="detection workers per stream (0: one per core)")
    p.add_argument("--backend", default="cpu", help="inference backend (cpu, torch-cuda, ...)")
    args = p.parse_args()
    print(
        f"{os.cpu_count()} cores; {args.backend}; {args.mode} mode; {args.seconds:g} s of 30 fps input per stream"
    )
    print(
        f"{'streams':>7} {'fps/stream':>10} {'min fps':>8} {'dropped':>8} {'p50 ms':>7} {'p95 ms':>7} {'vs 1':>6}"
    )
    baseline = None
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.streams:
            rows, batch = run(n, args.seconds, args.mode, args.clip, Path(tmp), args.workers, args.backend)
            fps = statistics.mean(r["fps"] for r in rows)
            baseline = baseline or fps
            print(
                f"{n:>7} {fps:>10.1f} {min(r['fps'] for r in rows):>8.1f} "
                f"{100 * statistics.mean(r['drop'] for r in rows):>7.1f}% "
                f"{statistics.median(r['p50'] for r in rows):>7.0f} {max(r['p95'] for r in rows):>7.0f} "
                f"{fps / baseline:>5.2f}x {batch:>6.2f}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
