#!/usr/bin/env python3
"""What the review page costs: the same run with and without --review, and the page
of a 10-minute clip.

    .venv/bin/python bench/bench_review.py [--clip PATH] [--mode blur] [--minutes 10]

1. The clip is anonymized twice in one process, without and then with a review page
   (models loaded once, before either): frames per second of each, their ratio, the
   time the run spent gathering the page's pictures and the time to write the page.
2. A 10-minute clip at the clip's rate: the first run's output frames and records,
   repeated with their frame numbers moved on until there are as many as 10 minutes
   hold, go through a fresh recorder and into a page: the time of each part and the
   page's size.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DEFAULT_CLIP = ROOT.parent / "shared" / "media" / "face_recognition" / "examples" / "short_hamilton_clip.mp4"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clip", type=Path, default=DEFAULT_CLIP)
    p.add_argument("--mode", default="blur", choices=["blur", "pixelate", "mask", "synth"])
    p.add_argument("--minutes", type=float, default=10.0)
    args = p.parse_args()

    from stream.config import SourceConfig, build_config
    from stream.io.sources import open_source
    from stream.review.page import write_page
    from stream.review.record import ReviewRecorder
    from stream.run.job import RegionLog, Review, load_detector, run_job

    config = build_config(None, {"obscure": {"mode": args.mode}})
    detector = load_detector(config)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        run_job(
            str(args.clip), str(folder / "warm.mp4"), config, detector=detector
        )  # first runs of the models
        plain = run_job(str(args.clip), str(folder / "plain.mp4"), config, detector=detector)
        regions = RegionLog()
        review = Review.for_config(folder / "review", config)
        reviewed = run_job(
            str(args.clip),
            str(folder / "reviewed.mp4"),
            config,
            detector=detector,
            regions=regions,
            review=review,
        )
        page = reviewed.review or {}
        print(f"clip {args.clip.name}, {args.mode} mode, {plain.stats.frames_out} frames")
        print(f"  without a review page: {plain.stats.fps:6.1f} frames/s")
        print(
            f"  with a review page:    {reviewed.stats.fps:6.1f} frames/s  "
            f"(ratio {reviewed.stats.fps / plain.stats.fps:.2f})"
        )
        print(
            f"  pictures gathered in {page.get('recorder_seconds')} s of the {reviewed.stats.elapsed_s:.1f} s "
            f"run; page written in {page.get('seconds')} s"
        )

        source = open_source(str(folder / "reviewed.mp4"), SourceConfig(realtime=False))
        frames = [packet.image for packet in source.packets() if hasattr(packet, "image")]
        source.close()
        rate = float(source.info.rate or 25)
        total = int(args.minutes * 60 * rate)
        recorder = ReviewRecorder(config.review, config.detect.min_face)
        start = time.perf_counter()
        for n in range(total):
            lap, position = divmod(n, len(regions.frames))
            record = dict(regions.frames[position])
            record["index"] = n
            record["time"] = round(n / rate, 3)
            record["wall_s"] = round(n / rate, 3)
            ids = [t + 100_000 * lap for t in record["track_ids"]]
            record["track_ids"], record["replaced"] = ids, [t + 100_000 * lap for t in record["replaced"]]
            record["fallback"] = {str(int(t) + 100_000 * lap): r for t, r in record["fallback"].items()}
            recorder.add(record, frames[position % len(frames)])
        gathered = time.perf_counter() - start
        document = {"summary": reviewed.summary(), "config": {"obscure": {"mode": args.mode}}}
        long_page = write_page(folder / "long", document, recorder)
        print(f"a {args.minutes:g}-minute clip ({total} frames, {len(recorder.strips)} tracks):")
        print(f"  pictures gathered in {gathered:.1f} s ({1000 * gathered / total:.2f} ms a frame)")
        print(f"  page written in {long_page.seconds:.1f} s, {long_page.size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
