#!/usr/bin/env python3
"""Per-model inference latency at batch 1 and 8, on the backends asked for.

    .venv/bin/python bench/models_latency.py [--backends cpu] [--repeat 20] [--json FILE]

Inputs are random tensors of each model's input shape (CenterFace at 736x1280,
one frame per batch item). Prints the median milliseconds per call and per
item, and the batch-8 speed-up per item over batch 1 measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engines import zoo  # noqa: E402
from engines.base import BackendOptions, create_backend  # noqa: E402


def measure(backend_name: str, model: str, batch: int, repeat: int, threads: int) -> float:
    backend = create_backend(backend_name, zoo.ensure(model), options=BackendOptions(threads=threads))
    (spec,) = backend.input_spec()
    shape = [batch if i == 0 else (d or (736 if i == 2 else 1280)) for i, d in enumerate(spec.shape)]
    x = np.random.default_rng(0).random(shape).astype(np.float32)
    for _ in range(3):
        backend.infer(x)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        backend.infer(x)
        times.append(time.perf_counter() - start)
    backend.close()
    return statistics.median(times) * 1000


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backends", nargs="+", default=["cpu"])
    p.add_argument("--models", nargs="+", default=list(zoo.REGISTRY))
    p.add_argument("--repeat", type=int, default=20)
    p.add_argument("--threads", type=int, default=0, help="CPU threads per call (0: all cores)")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    rows = []
    print(f"{'backend':12s} {'model':24s} {'b1 ms':>8s} {'b8 ms':>8s} {'b8 ms/item':>11s} {'speed-up':>9s}")
    for backend in args.backends:
        for model in args.models:
            one = measure(backend, model, 1, args.repeat, args.threads)
            eight = measure(backend, model, 8, max(3, args.repeat // 4), args.threads)
            rows.append({"backend": backend, "model": model, "batch1_ms": one, "batch8_ms": eight})
            print(f"{backend:12s} {model:24s} {one:8.2f} {eight:8.2f} {eight / 8:11.2f} {8 * one / eight:8.2f}x",
                  flush=True)  # fmt: skip
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
