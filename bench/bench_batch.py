#!/usr/bin/env python3
"""Archive redaction throughput: 1 vs 2 workers, on the local pool and on Ray.

    .venv/bin/python bench/bench_batch.py [--workers 1 2] [--ray] [--mode blur]

The batch is four clips of ../shared/media (the LivePortrait talking heads
d0, d11, d12 and the hamilton clip: 761 frames). Prints frames per second
over the whole batch (start-up of the pool or cluster included) and the
ratio to one worker, then the scheduling overhead per task: the mean round
trip of 50 empty tasks through the same scheduler.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
MEDIA = ROOT.parent / "shared" / "media"
CLIPS = [
    MEDIA / "LivePortrait" / "assets" / "examples" / "driving" / f"{n}.mp4" for n in ("d0", "d11", "d12")
]
CLIPS.append(MEDIA / "face_recognition" / "examples" / "short_hamilton_clip.mp4")


def nothing() -> None:
    return None


def overhead_pool(workers: int, n: int = 50) -> float:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        pool.submit(nothing).result()  # workers up
        started = time.perf_counter()
        for _ in range(n):
            pool.submit(nothing).result()
        return (time.perf_counter() - started) / n


def overhead_ray(n: int = 50) -> float:
    import ray

    task = ray.remote(num_cpus=1)(nothing)
    ray.get(task.remote())
    started = time.perf_counter()
    for _ in range(n):
        ray.get(task.remote())
    return (time.perf_counter() - started) / n


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--ray", action="store_true", help="also on a local Ray instance")
    p.add_argument("--mode", default="blur")
    args = p.parse_args()

    from stream.config import build_config
    from stream.run.batch import run_batch

    config = build_config(None, {"obscure": {"mode": args.mode}, "runner": {"workers": 1}})
    frames = 761
    print(f"{os.cpu_count()} cores; {len(CLIPS)} clips, {frames} frames; {args.mode} mode")
    print(f"{'scheduler':>9} {'workers':>7} {'seconds':>8} {'frames/s':>9} {'vs 1':>6} {'overhead/task':>14}")
    for scheduler in ["pool", *(["ray"] if args.ray else [])]:
        baseline = None
        for workers in args.workers:
            if scheduler == "ray":
                import ray

                os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
                ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
            with tempfile.TemporaryDirectory() as tmp:
                started = time.monotonic()
                result = run_batch(
                    [str(c) for c in CLIPS], Path(tmp), config, workers, use_ray=scheduler == "ray"
                )
                seconds = time.monotonic() - started
            if result.done != len(CLIPS):
                raise SystemExit(f"batch failed: {result}")
            fps = frames / seconds
            baseline = baseline or fps
            overhead = overhead_ray() if scheduler == "ray" else overhead_pool(workers)
            if scheduler == "ray":
                ray.shutdown()
            print(f"{scheduler:>9} {workers:>7} {seconds:>8.1f} {fps:>9.1f} {fps / baseline:>5.2f}x "
                  f"{1000 * overhead:>11.2f} ms", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
