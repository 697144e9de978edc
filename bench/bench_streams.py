#!/usr/bin/env python3
"""How many cameras one machine holds: the largest N simulated cameras with at most 1%
of frames dropped and p95 latency under 200 ms, in one process against worker processes.

    .venv/bin/python bench/bench_streams.py [--modes blur synth] [--clips 360p 1080p]
        [--layouts one processes] [--seconds 15] [--max 16] [--backend cpu]

A camera is a clip read at its own pace and looped (hamilton, 640x360 at 29.97 fps;
the facenet street clip, 1920x1080 at 25 fps), each written to its own H.264 file.
For each mode, clip and layout, N grows from 1 until a run fails the targets (or
reaches --max; with --all every N up to --max runs, so the rows past the first
failure show how far each layout falls short); every run is printed with the
per-stream frames per second, the share dropped, p95 latency, and the machine's
CPU (from /proc/stat) and GPU (nvidia-smi, where there is one) utilisation over
the run. All in one run, so the one-process line is the baseline of the processes
line.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
MEDIA = ROOT.parent / "shared" / "media"
CLIPS = {
    "360p": MEDIA / "face_recognition" / "examples" / "short_hamilton_clip.mp4",
    "1080p": MEDIA / "facenet-pytorch" / "examples" / "video.mp4",
}
MAX_DROP, MAX_P95_MS = 0.01, 200.0


def _cpu_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all cores so far."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


class GpuSampler:
    """Mean GPU utilisation over a run, sampled each second from nvidia-smi (None without one)."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(1.0):
            try:
                out = subprocess.run(
                    ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                    capture_output=True,
                    text=True,
                    timeout=5,
                ).stdout
                self.samples.append(float(out.split()[0]))
            except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
                return

    def mean(self) -> float | None:
        self._stop.set()
        self._thread.join(6)
        return statistics.mean(self.samples) if self.samples else None


def trial(
    n: int,
    mode: str,
    clip: Path,
    layout: str,
    seconds: float,
    backend: str,
    folder: Path,
    overrides: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    from stream.config import build_config
    from stream.run.multi import StreamSpec, run_streams
    from stream.run.processes import auto_processes, run_in_processes

    rate = 30
    tree: dict[str, dict[str, Any]] = {
        "source": {"realtime": True, "loop": True},
        "obscure": {"mode": mode},
        "detect": {"backend": backend},
        "runner": {"max_frames": round(seconds * rate)},
    }
    for section, values in (overrides or {}).items():
        tree.setdefault(section, {}).update(values)
    config = build_config(None, tree)
    specs = [StreamSpec(f"s{i}", str(clip), str(folder / f"{layout}_{n}_{i}.mp4")) for i in range(n)]
    busy0, total0 = _cpu_ticks()
    gpu = GpuSampler()
    processes = auto_processes(n) if layout == "processes" else 1
    if processes > 1:
        reports = run_in_processes(specs, config, processes)
        summaries = [(r.summary, r.error) for r in reports]
    else:
        outcomes = run_streams(specs, config)
        summaries = [
            (o.result.summary() if o.result else None, str(o.error) if o.error else None) for o in outcomes
        ]
    busy1, total1 = _cpu_ticks()
    failed = [str(e) for s, e in summaries if e is not None or s is None]
    rows = [s for s, _ in summaries if s is not None]
    drop = max((s["frames_dropped"] / max(1, s["frames_in"]) for s in rows), default=1.0)
    p95 = max(((s["latency_ms"] or {}).get("p95") or 1e9 for s in rows), default=1e9)
    return {
        "n": n,
        "processes": processes,
        "fps": statistics.mean(s["fps"] for s in rows) if rows else 0.0,
        "drop": drop,
        "p95": p95,
        "cpu": 100 * (busy1 - busy0) / max(1, total1 - total0),
        "gpu": gpu.mean(),
        "held": not failed and drop <= MAX_DROP and p95 < MAX_P95_MS,
        "failed": failed,
    }


def grow(run: Callable[[int], bool], most: int, every: bool) -> int:
    """The largest N held, trying 1, 2, ... up to ``most``; past the first failure only if ``every``."""
    held = 0
    for n in range(1, most + 1):
        if run(n) and held == n - 1:
            held = n
        elif not every:
            break
    return held


def search(run: Callable[[int], bool], most: int) -> int:
    """The largest N held, by doubling N until a run fails (or ``most``), then bisecting."""
    held, n = 0, 1
    while n <= most and run(n):
        held, n = n, 2 * n
    failed = min(n, most + 1)
    while failed - held > 1:
        middle = (held + failed) // 2
        if run(middle):
            held = middle
        else:
            failed = middle
    return held


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--modes", nargs="+", default=["blur", "synth"])
    p.add_argument("--clips", nargs="+", default=["360p", "1080p"], choices=sorted(CLIPS))
    p.add_argument("--layouts", nargs="+", default=["one", "processes"], choices=["one", "processes"])
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument("--max", type=int, default=16, help="largest N tried")
    p.add_argument("--backend", default="cpu")
    p.add_argument(
        "--all", action="store_true", help="run every N up to --max, not only until one fails the targets"
    )
    p.add_argument(
        "--search",
        action="store_true",
        help="N doubles until a run fails the targets, then bisects (log2(max) runs, for large --max)",
    )
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="a setting")
    args = p.parse_args()
    from stream.config import parse_option

    overrides: dict[str, dict[str, Any]] = {}
    for section, name, value in map(parse_option, args.set):
        overrides.setdefault(section, {})[name] = value
    print(
        f"{os.cpu_count()} cores; {args.backend}; {args.seconds:g} s per run; held: drops <= 1%, p95 < 200 ms"
    )
    print(
        f"{'mode':>5} {'clip':>5} {'layout':>9} {'N':>3} {'procs':>5} {'fps/str':>7} {'drop':>6} {'p95 ms':>7} "
        f"{'CPU':>5} {'GPU':>5}  held"
    )
    results: dict[tuple[str, str, str], int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in args.modes:
            for clip in args.clips:
                for layout in args.layouts:

                    def run(n: int, mode: str = mode, clip: str = clip, layout: str = layout) -> bool:
                        row = trial(
                            n, mode, CLIPS[clip], layout, args.seconds, args.backend, Path(tmp), overrides
                        )
                        gpu = f"{row['gpu']:.0f}%" if row["gpu"] is not None else "-"
                        print(
                            f"{mode:>5} {clip:>5} {layout:>9} {n:>3} {row['processes']:>5} {row['fps']:>7.1f} "
                            f"{100 * row['drop']:>5.1f}% {row['p95']:>7.0f} {row['cpu']:>4.0f}% {gpu:>5}  "
                            f"{'yes' if row['held'] else 'no'}{' ' + row['failed'][0] if row['failed'] else ''}",
                            flush=True,
                        )
                        for path in Path(tmp).glob("*.mp4"):
                            path.unlink()
                        return bool(row["held"])

                    results[(mode, clip, layout)] = (
                        search(run, args.max) if args.search else grow(run, args.max, args.all)
                    )
        print("largest N held:")
        for (mode, clip, layout), held in results.items():
            print(f"  {mode} {clip} {layout}: {held}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
