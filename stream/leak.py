"""Leak rate: the fraction of reference faces that an anonymized run left uncovered.

The reference is CenterFace run at full resolution on every frame of the
input (no ground truth ships with real media). A reference face counts as
covered when at least ``min_cover`` of the ellipse inscribed in its box lies
inside the union of the regions the run obscured in that frame (each region
with the run's shape, ellipse or box), or when the frame was masked whole.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from engines.centerface import CenterFace

from .config import Config, SourceConfig
from .frames import FramePacket
from .job import RegionLog, load_detector, run_job
from .sources import open_source

_GRID = 24


def reference_faces(
    input_spec: str, detector: CenterFace, threshold: float, min_height: float
) -> list[NDArray[np.float32]]:
    """Per frame, ``(N, 4)`` boxes of faces at least ``min_height`` px tall at full resolution."""
    source = open_source(input_spec, SourceConfig(live=False))
    boxes = []
    try:
        for item in source.packets():
            if isinstance(item, FramePacket):
                (faces,) = detector.detect([item.image], 1.0, threshold, 0.3)
                tall = (faces.boxes[:, 3] - faces.boxes[:, 1]) >= min_height
                boxes.append(faces.boxes[tall])
    finally:
        source.close()
    return boxes


def _ellipse_points(box: NDArray[np.float32]) -> NDArray[np.float64]:
    """Grid points ``(K, 2)`` inside the ellipse inscribed in ``box``."""
    u = (np.arange(_GRID) + 0.5) / _GRID * 2 - 1
    gx, gy = np.meshgrid(u, u)
    inside = gx**2 + gy**2 <= 1
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    rx, ry = (box[2] - box[0]) / 2, (box[3] - box[1]) / 2
    return np.stack([cx + gx[inside] * rx, cy + gy[inside] * ry], axis=1)


def covered_fraction(face: NDArray[np.float32], regions: NDArray[np.float32], shape: str) -> float:
    """Fraction of the face's inscribed ellipse inside the union of ``regions`` ``(M, 4)``."""
    points = _ellipse_points(face)
    if len(regions) == 0:
        return 0.0
    x, y = points[:, 0:1], points[:, 1:2]
    r = regions[None, :, :]
    if shape == "box":
        inside = (x >= r[..., 0]) & (x <= r[..., 2]) & (y >= r[..., 1]) & (y <= r[..., 3])
    else:
        cx, cy = (r[..., 0] + r[..., 2]) / 2, (r[..., 1] + r[..., 3]) / 2
        rx = np.maximum((r[..., 2] - r[..., 0]) / 2, 1e-6)
        ry = np.maximum((r[..., 3] - r[..., 1]) / 2, 1e-6)
        inside = ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1
    return float(inside.any(axis=1).mean())


def leak_counts(
    reference: Sequence[NDArray[np.float32]], frames: Sequence[dict[str, Any]], shape: str, min_cover: float
) -> tuple[int, int, list[tuple[int, list[float]]]]:
    """(reference faces, leaked faces, [(frame index, box) of each leak])."""
    by_index = {f["index"]: f for f in frames}
    total = leaked = 0
    leaks: list[tuple[int, list[float]]] = []
    for index, faces in enumerate(reference):
        record = by_index.get(index)
        for face in faces:
            total += 1
            if record is not None and record["masked_whole"]:
                continue
            # Tracked regions and the detections obscured without a track.
            boxes = (record["boxes"] + record.get("untracked", [])) if record else []
            regions = np.asarray(boxes, np.float32).reshape(-1, 4)
            if covered_fraction(face, regions, shape) < min_cover:
                leaked += 1
                leaks.append((index, [round(float(v), 1) for v in face]))
    return total, leaked, leaks


def measure_leak(
    input_spec: str,
    modes: Sequence[str],
    config_for_mode: Callable[[str], Config],
    min_height: float = 12.0,
    ref_threshold: float = 0.5,
    min_cover: float = 0.95,
) -> list[dict[str, Any]]:
    """Run the pipeline in each mode on ``input_spec`` and report its leak rate."""
    first = config_for_mode(modes[0])
    detector = load_detector(first)
    reference = reference_faces(input_spec, detector, ref_threshold, min_height)
    results = []
    for mode in modes:
        config = config_for_mode(mode)
        log = RegionLog()
        job = run_job(input_spec, "null", config, detector=detector, regions=log)
        total, leaked, leaks = leak_counts(reference, log.frames, config.obscure.shape, min_cover)
        results.append(
            {
                "input": input_spec,
                "mode": mode,
                "frames": job.stats.frames_out,
                "reference_frames": len(reference),
                "reference_faces": total,
                "leaked": leaked,
                "leak_rate": leaked / total if total else 0.0,
                "fps": job.stats.fps,
                "min_height": min_height,
                "ref_threshold": ref_threshold,
                "min_cover": min_cover,
                "leaks": leaks[:50],
            }
        )
    return results
