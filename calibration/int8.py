"""TensorRT INT8 calibration table for the CenterFace detector, from frames of any video.

ONNX Runtime's calibrator runs the FP32 model over sampled frames
(pre-processed exactly as the detect stage does) and records each tensor's
range; the table is written in the format ONNX Runtime's TensorRT provider
reads (``calibration.flatbuffers``, with ``calibration.json`` for people and
a ``manifest.json`` naming the model, frames and method).

    python -m calibration.int8 VIDEO -o DIR [--frames 64] [--min-face 16] [--method minmax]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from calibration.command import command
from engines import zoo
from engines.centerface import INPUT, preprocess
from stream.config import DetectConfig, SourceConfig
from stream.frames import FramePacket
from stream.io.sources import open_source
from stream.stages import detection_scale


def sample_frames(video: str, count: int) -> list[np.ndarray]:
    """Up to ``count`` frames spread over the video (every k-th, k from the frame count)."""
    source = open_source(video, SourceConfig(live=False))
    try:
        total = source.info.frames or count
        step = max(1, total // count)
        frames = []
        for item in source.packets():
            if isinstance(item, FramePacket) and item.index % step == 0:
                frames.append(item.image)
                if len(frames) >= count:
                    break
    finally:
        source.close()
    return frames


def write_table(
    video: str, out_dir: Path, frames: int = 64, min_face: int = 16, method: str = "minmax"
) -> Path:
    """Calibrate CenterFace on ``frames`` frames of ``video``; returns the flatbuffers table path."""
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, create_calibrator
    from onnxruntime.quantization import write_calibration_table as write

    images = sample_frames(video, frames)
    if not images:
        raise ValueError(f"{video}: no frames to calibrate on")
    scale = detection_scale(images[0].shape[1], images[0].shape[0], DetectConfig(min_face=min_face))

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches: Iterator[dict[str, Any]] = iter({INPUT: preprocess([im], scale)} for im in images)

        def get_next(self) -> dict[str, Any] | None:
            return next(self._batches, None)

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy}
    model = zoo.ensure("centerface")
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        calibrator = create_calibrator(model, augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                                       calibrate_method=methods[method])  # fmt: skip
        calibrator.collect_data(Reader())
        write(calibrator.compute_data(), dir=str(out_dir))
    manifest = {
        "model": "centerface",
        "onnx_sha256": zoo.sha256_file(model),
        "video": str(video),
        "frames": len(images),
        "detection_scale": scale,
        "method": method,
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return out_dir / "calibration.flatbuffers"


@command
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m calibration.int8", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("video")
    p.add_argument("-o", "--out", type=Path, required=True, help="folder for the table")
    p.add_argument("--frames", type=int, default=64)
    p.add_argument("--min-face", type=int, default=16)
    p.add_argument("--method", choices=["minmax", "entropy"], default="minmax")
    args = p.parse_args(argv)
    table = write_table(args.video, args.out, args.frames, args.min_face, args.method)
    print(f"wrote {table}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
