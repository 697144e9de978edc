#!/usr/bin/env python3
"""Synth-mode throughput on the hamilton clip, with blur in the same run as the baseline.

    .venv/bin/python bench/bench_synth.py [--clip PATH] [--gallery G.npz|builtin] [--repeat 2] [--perturbation P.npz]

Without --gallery, a k=4 gallery is first built from the multi-photo identities
of ../shared/media (python -m calibration.gallery) in a temporary folder.
Prints frames per second of whole commands (start-up included, median of
the repeats) and the faces replaced vs fallen back, from the run report.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MEDIA = ROOT.parent / "shared" / "media"
DEFAULT_CLIP = MEDIA / "face_recognition" / "examples" / "short_hamilton_clip.mp4"


def build_gallery(folder: Path) -> Path:
    sys.path.insert(0, str(ROOT))
    from calibration.synth_report import identities

    people = folder / "people"
    people.mkdir()
    for name, photos in identities(MEDIA).items():
        if len(photos) >= 2:
            (people / name).mkdir()
            for i, photo in enumerate(photos):
                (people / name / f"{i:03d}{photo.suffix}").symlink_to(photo)
    gallery = folder / "gallery.npz"
    subprocess.run([sys.executable, "-m", "calibration.gallery", str(people), "-o", str(gallery), "--k", "4"],
                   cwd=ROOT, check=True)  # fmt: skip
    return gallery


def run(clip: Path, out: Path, mode: str, gallery: Path, perturbation: Path | None) -> tuple[float, dict]:
    report = out.with_suffix(".json")
    cmd = [sys.executable, str(ROOT / "run_stream.py"), str(clip), "-o", str(out), "-q", "--mode",
           mode.split("+")[0], "--report", str(report)]  # fmt: skip
    if mode.startswith("synth"):
        cmd += ["--gallery", str(gallery)]
    if mode == "synth+uap":
        cmd += ["--perturb", "uap", "--perturbation", str(perturbation)]
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - start, json.loads(report.read_text())["summary"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clip", type=Path, default=DEFAULT_CLIP)
    p.add_argument("--gallery", type=Path)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--perturbation", type=Path, help="also time synth with this Stage IV perturbation")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        gallery = args.gallery or build_gallery(Path(tmp))
        walls: dict[str, list[float]] = {"blur": [], "synth": []}
        if args.perturbation:
            walls["synth+uap"] = []
        summary = {}
        for _ in range(args.repeat):
            for mode in walls:
                wall, summary[mode] = run(
                    args.clip, Path(tmp) / f"{mode}.mp4", mode, gallery, args.perturbation
                )
                walls[mode].append(wall)
    frames = summary["blur"]["frames_out"]
    for mode, values in walls.items():
        fps = frames / statistics.median(values)
        print(f"{mode:6s} {fps:6.1f} frames/s ({frames} frames, median of {args.repeat})")
    synthesis = summary["synth"]["synthesis"]
    print(f"synth / blur speed: {statistics.median(walls['blur']) / statistics.median(walls['synth']):.2f}")
    if "synth+uap" in walls:
        cost = statistics.median(walls["synth+uap"]) / statistics.median(walls["synth"]) - 1
        print(f"Stage IV (uap) costs {100 * cost:+.1f}% of the synth run's time")
    print(f"faces replaced {synthesis['replaced']}, fell back {synthesis['fallback']}")


if __name__ == "__main__":
    main()
