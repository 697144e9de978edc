"""Leak rate: the fraction of reference faces that an anonymized run left readable.

The reference (no ground truth ships with real media) is the union of two
independent detectors on every frame of the input, faces at least
``min_height`` px tall: CenterFace at full resolution, and once more
upscaled on small frames; and face-api's SSD MobileNet v1 (another
architecture, other training data) on overlapping tiles at the same upscale.
The upscale is 2x, or less where that would make the frame larger than
1920 x 1080 px (``REFERENCE_PIXELS``): small faces in small frames are found,
at a bounded cost per frame. Boxes that overlap (IoU 0.4, or 70% of the
smaller inside the other) are merged, the earlier detector's box kept. A face
only the SSD finds counts where CenterFace scores it at least 0.3 (under its
0.5): on crowd footage most of the SSD's own finds are legs, shirts and
patterns (see ``ReferenceDetector``).

A reference face leaks in one of two ways:

- uncovered: less than ``min_cover`` of the inner ellipse (``DETAIL_RADIUS``
  of the one inscribed in its box, where eyes, nose and mouth are; the rim is
  hair, ears and background, and the two detectors' boxes of one face differ
  there) lies inside the union of the regions the run obscured in that frame
  (tracks, coasting ones too, and untracked detections, each with the run's
  shape, ellipse or box); a frame masked whole covers all its faces. A face
  at least half covered whose output keeps under ``max_detail`` of its
  detail over the whole inner ellipse is hidden (counted apart as partly
  covered): on MOT20-08 these are faces blurred whole whose SSD box reaches
  past the blur by a pixel or two.
- sharp: covered, yet the output still carries the face's detail:
  ``retained_detail`` of the output against the input is at least
  ``max_detail``. A face inside the region of a track a surrogate replaced
  (synth) counts as covered and is not checked: the surrogate is a face.

Retained detail: the face box of the input and of the output, grey,
resampled to 32 x 32; detail is what a Gaussian blur of sigma 32/12 removes
(about three cycles per face and finer, the band that carries eyes, mouth
and glasses); the measure is the share of the input's detail energy that the
output reproduces, ``<D_out, D_in> / <D_in, D_in>`` over the inscribed
ellipse (radius 0.8), and there only over the pixels the run obscured, the
blur taken over those alone, so that a mask's edge or the box corners it
leaves are no detail: 1 for an untouched face, 0 for a mask. On 52 faces of
9-20 px from MOT20-08 blurred with the sigma that left mouths and glasses
readable (an eighth of the dilated box, no floor), half reach 0.15, as the
ones with features still visible do; the default blur (5 px floor) leaves at
most 0.05 on those and 0.12 on 60 faces of 30-140 px. Faces whose input has
almost no detail (RMS under 2 grey levels: dark, flat) are not judged.
Pixelation keeps block means, and a block edge that falls on a hairline
counts: about one in six faces pixelated in 3 x 3 blocks still reaches 0.15.

Over 400 lines: the reference, the coverage and detail measures and the run
probe are one measurement, documented above as a whole.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

from engines import zoo
from engines.base import BackendOptions, create_backend
from engines.centerface import CenterFace
from engines.faceapi import FaceApiDetector
from stream.config import Config, SourceConfig
from stream.errors import ConfigError
from stream.frames import FramePacket
from stream.io.sources import open_source
from stream.run.job import RegionLog, load_detector, run_job

_GRID = 24
REFERENCE_PIXELS = 1920 * 1080
MOST_UPSCALE = 2.0
DETAIL_SIZE = 32
DETAIL_SIGMA = DETAIL_SIZE / 12
DETAIL_RADIUS = 0.8
MIN_DETAIL_RMS = 2.0
MAX_DETAIL = 0.15
PARTLY = 0.5
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def upscale_for(width: int, height: int) -> float:
    """The reference's upscale for a frame: up to 2x, within ``REFERENCE_PIXELS``, at least 1."""
    return float(min(MOST_UPSCALE, max(1.0, np.sqrt(REFERENCE_PIXELS / max(1, width * height)))))


def _overlapping(kept: NDArray[np.float32], box: NDArray[np.float32], iou: float, inside: float) -> bool:
    """Whether ``box`` overlaps any of ``kept`` ``(M, 4)`` by ``iou``, or by ``inside`` of the
    smaller box's area."""
    if len(kept) == 0:
        return False
    w = np.clip(np.minimum(kept[:, 2], box[2]) - np.maximum(kept[:, 0], box[0]), 0, None)
    h = np.clip(np.minimum(kept[:, 3], box[3]) - np.maximum(kept[:, 1], box[1]), 0, None)
    inter = w * h
    area_k = (kept[:, 2] - kept[:, 0]) * (kept[:, 3] - kept[:, 1])
    area = (box[2] - box[0]) * (box[3] - box[1])
    overlap = inter / np.maximum(area_k + area - inter, 1e-6)
    share = inter / np.maximum(np.minimum(area_k, area), 1e-6)
    return bool((overlap >= iou).any() or (share >= inside).any())


def _merge(
    groups: Sequence[NDArray[np.float32]], iou: float, inside: float
) -> list[tuple[int, NDArray[np.float32]]]:
    kept: list[tuple[int, NDArray[np.float32]]] = []
    for g, boxes in enumerate(groups):
        for box in boxes:
            if not _overlapping(
                np.asarray([k for _, k in kept], np.float32).reshape(-1, 4), box, iou, inside
            ):
                kept.append((g, box))
    return kept


def merge_faces(
    groups: Sequence[NDArray[np.float32]], iou: float = 0.4, inside: float = 0.7
) -> NDArray[np.float32]:
    """The union of ``(N, 4)`` box groups, earlier groups first: a box is dropped when it
    overlaps a kept one by ``iou`` or has ``inside`` of its (or the kept one's) area in it."""
    return np.asarray([box for _, box in _merge(groups, iou, inside)], np.float32).reshape(-1, 4)


_SOURCES = ("centerface", "centerface_upscaled", "second")


class ReferenceDetector:
    """CenterFace at full resolution (and upscaled on small frames) united with face-api's
    SSD MobileNet v1 on tiles at the same upscale.

    A face only the SSD finds counts where CenterFace sees it too, if weakly (a score of
    at least ``confirm``, under ``threshold``): on crowd footage (MOT20-08) most of the
    SSD's own finds are legs, shirts and patterns, which would count as leaks. ``second``
    None leaves CenterFace alone (tests). ``found`` counts the faces by the detector that
    contributed each, and the SSD finds left out for want of CenterFace's support.
    """

    def __init__(
        self,
        centerface: CenterFace,
        second: FaceApiDetector | None,
        threshold: float = 0.5,
        second_threshold: float = 0.5,
        min_height: float = 12.0,
        confirm: float = 0.3,
    ) -> None:
        for name, value in (("threshold", threshold), ("second_threshold", second_threshold)):
            if not 0.0 < value < 1.0:
                raise ConfigError(f"{name}: expected a score between 0 and 1, got {value}")
        if not 0.0 < confirm <= threshold:
            raise ConfigError(f"confirm: expected a score in (0, threshold = {threshold}], got {confirm}")
        self.centerface = centerface
        self.second = second
        self.threshold = threshold
        self.second_threshold = second_threshold
        self.min_height = min_height
        self.confirm = confirm
        self.found = dict.fromkeys((*_SOURCES, "second_unconfirmed"), 0)
        self.found_known = True  # False for a cached reference that did not record them

    def describe(self, width: int, height: int) -> dict[str, Any]:
        """The detectors and scales the reference runs on a frame of this size, and the faces
        found so far by source, for reports."""
        scale = upscale_for(width, height)
        return {
            "centerface_scales": [1.0, round(scale, 3)] if scale > 1.0 else [1.0],
            "centerface_threshold": self.threshold,
            "second": None if self.second is None else "faceapi-ssd",
            "second_scale": round(scale, 3),
            "second_threshold": self.second_threshold,
            "confirm_threshold": self.confirm,
            "min_height": self.min_height,
            "faces_by_source": dict(self.found) if self.found_known else None,
        }

    def detect(self, image: NDArray[np.uint8]) -> NDArray[np.float32]:
        """Boxes ``(N, 4)`` xyxy of the faces in ``image`` ``(H, W, 3)`` uint8 RGB."""
        height, width = image.shape[:2]
        scale = upscale_for(width, height)
        scales = [1.0, scale] if scale > 1.0 else [1.0]
        passes = [self.centerface.detect([image], s, self.confirm, 0.3)[0] for s in scales]
        groups = [p.boxes[p.scores >= self.threshold] for p in passes]
        if len(groups) == 1:  # no upscaled pass: keep the source numbering
            groups.append(groups[0][:0])
        if self.second is not None:
            weak = np.concatenate([p.boxes for p in passes])
            ssd = self.second.detect(image, scale, self.second_threshold).boxes
            supported = np.array([_overlapping(weak, box, 0.4, 0.7) for box in ssd], bool)
            tall = (ssd[:, 3] - ssd[:, 1]) >= self.min_height
            self.found["second_unconfirmed"] += int((~supported & tall).sum())
            groups.append(ssd[supported])
        kept = [(g, box) for g, box in _merge(groups, 0.4, 0.7) if box[3] - box[1] >= self.min_height]
        for g, _ in kept:
            self.found[_SOURCES[g]] += 1
        return np.asarray([box for _, box in kept], np.float32).reshape(-1, 4)


def load_second(backend: str = "cpu", threads: int = 0) -> FaceApiDetector:
    """face-api's SSD MobileNet v1 from the zoo (fetched and converted on first use)."""
    return FaceApiDetector(
        create_backend(backend, zoo.ensure("faceapi-ssd"), options=BackendOptions(threads=threads))
    )


@dataclass
class ReferenceFrame:
    """The reference faces of one frame: ``boxes`` ``(N, 4)`` xyxy and ``crops``
    ``(N, 32, 32)`` float16, each face of the input as ``face_crop`` makes it."""

    boxes: NDArray[np.float32]
    crops: NDArray[np.float16]


def _window(box: NDArray[np.float32], width: int, height: int) -> tuple[int, int, int, int] | None:
    """The integer pixels ``(x1, y1, x2, y2)`` of ``box`` inside the image, None if none."""
    x1, y1 = max(0, int(np.floor(box[0]))), max(0, int(np.floor(box[1])))
    x2, y2 = min(width, int(np.ceil(box[2]))), min(height, int(np.ceil(box[3])))
    return (x1, y1, x2, y2) if x2 > x1 and y2 > y1 else None


def face_crop(image: NDArray[np.uint8], box: NDArray[np.float32]) -> NDArray[np.float32]:
    """The face in ``box`` of ``image`` ``(H, W, 3)`` uint8 RGB, grey (0-255), resampled
    to ``(32, 32)`` float32; zeros where the box lies outside the image."""
    window = _window(box, image.shape[1], image.shape[0])
    if window is None:
        return np.zeros((DETAIL_SIZE, DETAIL_SIZE), np.float32)
    x1, y1, x2, y2 = window
    grey = image[y1:y2, x1:x2].astype(np.float32) @ _LUMA
    shrink = (y2 - y1) > DETAIL_SIZE
    interpolation = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    return cv2.resize(grey, (DETAIL_SIZE, DETAIL_SIZE), interpolation=interpolation)  # type: ignore[return-value]


def covered_grid(
    box: NDArray[np.float32], regions: NDArray[np.float32], shape: str, width: int, height: int
) -> NDArray[np.bool_]:
    """``(32, 32)``: which pixels of ``face_crop``'s grid lie inside the union of ``regions``."""
    window = _window(box, width, height)
    if window is None:
        return np.zeros((DETAIL_SIZE, DETAIL_SIZE), bool)
    x1, y1, x2, y2 = window
    u = (np.arange(DETAIL_SIZE) + 0.5) / DETAIL_SIZE
    gx, gy = np.meshgrid(x1 + u * (x2 - x1), y1 + u * (y2 - y1))
    points = np.stack([gx.ravel(), gy.ravel()], axis=1)
    return _inside(points, regions, shape).reshape(DETAIL_SIZE, DETAIL_SIZE)


def _detail(crop: NDArray[np.floating], where: NDArray[np.float32]) -> NDArray[np.float32]:
    """What a Gaussian blur removes from ``crop``, the blur taken over ``where`` only
    (normalized convolution), so that pixels outside it (and a mask's edge) add nothing."""
    x = crop.astype(np.float32) * where
    blur = lambda a: cv2.GaussianBlur(a, (0, 0), DETAIL_SIGMA, borderType=cv2.BORDER_REFLECT)  # noqa: E731
    low = blur(x) / np.maximum(blur(where), 1e-6)
    return (x - low * where).astype(np.float32)


def _ellipse_weights() -> NDArray[np.float32]:
    u = (np.arange(DETAIL_SIZE) + 0.5) / DETAIL_SIZE * 2 - 1
    gx, gy = np.meshgrid(u, u)
    return (gx**2 + gy**2 <= DETAIL_RADIUS**2).astype(np.float32)


_WEIGHTS = _ellipse_weights()


def retained_detail(
    before: NDArray[np.floating], after: NDArray[np.floating], where: NDArray[np.bool_] | None = None
) -> float:
    """Share of the face detail of ``before`` that ``after`` reproduces (both ``face_crop``s
    of the same box), over the inner ellipse and, if given, only ``where`` (the pixels the
    run obscured: the rest is the coverage check's): 1 for the same face, about 0 once
    blurred, pixelated coarsely or masked; NaN where ``before`` has too little detail there."""
    inside = np.ones_like(_WEIGHTS) if where is None else where.astype(np.float32)
    weights = _WEIGHTS * inside
    area = float(weights.sum())
    d_in, d_out = _detail(before, inside), _detail(after, inside)
    energy = float((d_in * d_in * weights).sum())
    if area < 0.25 * float(_WEIGHTS.sum()) or energy / area < MIN_DETAIL_RMS**2:
        return float("nan")
    return float((d_in * d_out * weights).sum()) / energy


def reference_frames(input_spec: str, reference: ReferenceDetector, every: int = 1) -> list[ReferenceFrame]:
    """Per frame of ``input_spec``, its reference faces and their input crops (2 KB a face);
    ``every``: only one frame in ``every`` is looked at, the others hold no faces."""
    source = open_source(input_spec, SourceConfig(live=False))
    frames: list[ReferenceFrame] = []
    empty = ReferenceFrame(np.zeros((0, 4), np.float32), np.zeros((0, DETAIL_SIZE, DETAIL_SIZE), np.float16))
    try:
        for item in source.packets():
            if isinstance(item, FramePacket) and len(frames) % every:
                frames.append(empty)
            elif isinstance(item, FramePacket):
                boxes = reference.detect(item.image)
                crops = (
                    np.stack([face_crop(item.image, b) for b in boxes])
                    if len(boxes)
                    else np.zeros((0, DETAIL_SIZE, DETAIL_SIZE), np.float32)
                )
                frames.append(ReferenceFrame(boxes, crops.astype(np.float16)))
    finally:
        source.close()
    return frames


def cached_reference(input_spec: str, reference: ReferenceDetector, every: int = 1) -> list[ReferenceFrame]:
    """``reference_frames`` of a local file, kept under the model cache: keyed by the file's
    bytes, the reference's settings and its models' digests, so a changed clip, threshold or
    model is looked at afresh. Other inputs (streams) are not cached."""
    import hashlib
    import json
    from pathlib import Path

    path = Path(input_spec)
    if not path.is_file():
        return reference_frames(input_spec, reference, every)
    settings = {k: v for k, v in reference.describe(0, 0).items() if k != "faces_by_source"}
    settings.pop("centerface_scales", None)
    settings.pop("second_scale", None)
    key = hashlib.sha256(path.read_bytes())
    models = [zoo.spec(n).onnx_sha256 for n in ("centerface", "faceapi-ssd")]
    key.update(json.dumps([settings, every, REFERENCE_PIXELS, MOST_UPSCALE, models], sort_keys=True).encode())
    target = zoo.cache_dir() / "leak-reference" / f"{path.stem}-{key.hexdigest()[:16]}.npz"
    if target.exists():
        with np.load(target) as data:
            counts, boxes, crops = data["counts"], data["boxes"], data["crops"]
            # How many faces each detector contributed, for the report (older caches lack it).
            if "found" in data:
                reference.found.update(json.loads(str(data["found"])))
            reference.found_known = "found" in data
        edges = np.concatenate([[0], np.cumsum(counts)])
        return [ReferenceFrame(boxes[a:b], crops[a:b]) for a, b in itertools.pairwise(edges)]
    frames = reference_frames(input_spec, reference, every)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".part.npz")
    counts = np.array([len(f.boxes) for f in frames], np.int64)
    boxes = np.concatenate([f.boxes for f in frames]).reshape(-1, 4)
    crops = np.concatenate([f.crops for f in frames]).reshape(-1, DETAIL_SIZE, DETAIL_SIZE)
    np.savez(partial, counts=counts, boxes=boxes, crops=crops, found=np.array(json.dumps(reference.found)))
    partial.replace(target)
    return frames


def reference_faces(
    input_spec: str,
    detector: CenterFace,
    threshold: float,
    min_height: float,
    second: FaceApiDetector | None = None,
) -> list[NDArray[np.float32]]:
    """Per frame, ``(N, 4)`` boxes of the reference faces at least ``min_height`` px tall.

    ``second``: the reference's second detector; by default face-api's SSD on the CPU.
    """
    reference = ReferenceDetector(detector, second or load_second(), threshold, min_height=min_height)
    return [frame.boxes for frame in reference_frames(input_spec, reference)]


class LeakProbe(RegionLog):
    """A RegionLog that also measures, on each output frame, the retained detail of every
    reference face of that frame (the input crops come from ``reference``) over the part
    of it the run obscured (regions of ``shape``), and over the whole face (for faces only
    partly covered). Keeps two floats per face, no frames."""

    def __init__(self, reference: Sequence[ReferenceFrame], shape: str) -> None:
        super().__init__()
        self.reference = reference
        self.shape = shape
        self.detail: dict[int, NDArray[np.float32]] = {}
        self.detail_whole: dict[int, NDArray[np.float32]] = {}  # over the whole inner ellipse

    def __call__(self, packet: FramePacket) -> None:
        super().__call__(packet)
        if packet.index >= len(self.reference):
            return
        frame = self.reference[packet.index]
        height, width = packet.image.shape[:2]
        regions = np.concatenate([packet.tracks.xyxy, packet.untracked]).astype(np.float32)
        obscured, whole = [], []
        for crop, box in zip(frame.crops, frame.boxes, strict=True):
            out = face_crop(packet.image, box)
            obscured.append(retained_detail(crop, out, covered_grid(box, regions, self.shape, width, height)))
            whole.append(retained_detail(crop, out))
        self.detail[packet.index] = np.array(obscured, np.float32)
        self.detail_whole[packet.index] = np.array(whole, np.float32)


def _ellipse_points(box: NDArray[np.float32], radius: float = 1.0) -> NDArray[np.float64]:
    """Grid points ``(K, 2)`` inside the ellipse inscribed in ``box``, scaled by ``radius``."""
    u = (np.arange(_GRID) + 0.5) / _GRID * 2 - 1
    gx, gy = np.meshgrid(u, u)
    inside = gx**2 + gy**2 <= 1
    gx, gy = gx * radius, gy * radius
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    rx, ry = (box[2] - box[0]) / 2, (box[3] - box[1]) / 2
    return np.stack([cx + gx[inside] * rx, cy + gy[inside] * ry], axis=1)


def _inside(points: NDArray[np.floating], regions: NDArray[np.float32], shape: str) -> NDArray[np.bool_]:
    """``(K,)``: which of ``points`` ``(K, 2)`` lie inside the union of ``regions`` ``(M, 4)``."""
    if len(regions) == 0:
        return np.zeros(len(points), bool)
    x, y = points[:, 0:1], points[:, 1:2]
    r = regions[None, :, :]
    if shape == "box":
        inside = (x >= r[..., 0]) & (x <= r[..., 2]) & (y >= r[..., 1]) & (y <= r[..., 3])
    else:
        cx, cy = (r[..., 0] + r[..., 2]) / 2, (r[..., 1] + r[..., 3]) / 2
        rx = np.maximum((r[..., 2] - r[..., 0]) / 2, 1e-6)
        ry = np.maximum((r[..., 3] - r[..., 1]) / 2, 1e-6)
        inside = ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1
    return np.asarray(inside.any(axis=1))


def covered_fraction(
    face: NDArray[np.float32], regions: NDArray[np.float32], shape: str, radius: float = DETAIL_RADIUS
) -> float:
    """Fraction of the face's inner ellipse (``radius`` of the inscribed one) inside the union
    of ``regions`` ``(M, 4)``."""
    return float(_inside(_ellipse_points(face, radius), regions, shape).mean())


def _regions(record: dict[str, Any] | None) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """The regions a frame's record says were covered, and those of them a surrogate replaced."""
    if record is None:
        return np.zeros((0, 4), np.float32), np.zeros((0, 4), np.float32)
    tracks = np.asarray(record["boxes"], np.float32).reshape(-1, 4)
    untracked = np.asarray(record.get("untracked", []), np.float32).reshape(-1, 4)
    replaced_ids = set(record.get("replaced", []))
    ids = record.get("track_ids", [])
    replaced = (
        tracks[[int(t) in replaced_ids for t in ids]]
        if replaced_ids and len(ids) == len(tracks)
        else tracks[:0]
    )
    return np.concatenate([tracks, untracked]), replaced


@dataclass
class LeakCounts:
    """Reference faces, those left uncovered and those covered but still sharp, with where
    each leak is: ``(frame index, box)`` and ``(frame index, box, retained detail)``."""

    total: int = 0
    uncovered: int = 0
    sharp: int = 0
    partly: int = 0  # partly covered, no detail left: not a leak
    uncovered_at: list[tuple[int, list[float]]] = field(default_factory=list)
    sharp_at: list[tuple[int, list[float], float]] = field(default_factory=list)


def count_leaks(
    reference: Sequence[NDArray[np.float32]],
    frames: Sequence[dict[str, Any]],
    shape: str,
    min_cover: float,
    detail: dict[int, NDArray[np.float32]] | None = None,
    max_detail: float = MAX_DETAIL,
    detail_whole: dict[int, NDArray[np.float32]] | None = None,
) -> LeakCounts:
    """Classify every reference face (per frame ``(N, 4)``) against the run's region records
    (``RegionLog.frames``); ``detail``: per frame index, each face's ``retained_detail``
    (None: sharpness not judged)."""
    by_index = {f["index"]: f for f in frames}
    counts = LeakCounts()
    for index, faces in enumerate(reference):
        record = by_index.get(index)
        regions, replaced = _regions(record)
        values = detail.get(index) if detail is not None else None
        whole = detail_whole.get(index) if detail_whole is not None else None
        for k, face in enumerate(faces):
            counts.total += 1
            if record is not None and record["masked_whole"]:
                continue
            box = [round(float(v), 1) for v in face]
            covered = covered_fraction(face, regions, shape)
            if covered < min_cover:
                # Mostly covered and what shows carries no detail (the rim of a box that
                # another detector drew wider): hidden, and counted as such.
                if covered >= PARTLY and whole is not None and whole[k] < max_detail:
                    counts.partly += 1
                    continue
                counts.uncovered += 1
                counts.uncovered_at.append((index, box))
                continue
            if values is None or covered_fraction(face, replaced, shape) >= min_cover:
                continue
            if values[k] >= max_detail:  # NaN (nothing to judge) compares False
                counts.sharp += 1
                counts.sharp_at.append((index, box, round(float(values[k]), 3)))
    return counts


def leak_counts(
    reference: Sequence[NDArray[np.float32]], frames: Sequence[dict[str, Any]], shape: str, min_cover: float
) -> tuple[int, int, list[tuple[int, list[float]]]]:
    """(reference faces, uncovered faces, [(frame index, box) of each]); sharpness not judged."""
    counts = count_leaks(reference, frames, shape, min_cover)
    return counts.total, counts.uncovered, counts.uncovered_at


def measure_leak(
    input_spec: str,
    modes: Sequence[str],
    config_for_mode: Callable[[str], Config],
    min_height: float = 12.0,
    ref_threshold: float = 0.5,
    min_cover: float = 0.95,
    second_threshold: float = 0.5,
    max_detail: float = MAX_DETAIL,
    second: FaceApiDetector | None = None,
    confirm: float = 0.3,
    every: int = 1,
    cache: bool = False,
) -> list[dict[str, Any]]:
    """Run the pipeline in each mode on ``input_spec`` and report its leak rate: faces
    uncovered or covered but sharp, over the reference faces (see the module docstring).

    ``second``: the reference's second detector; by default face-api's SSD on the first
    mode's backend. ``every``: the reference looks at one frame in ``every`` (the run sees
    them all). ``cache``: keep the reference of a file for the next measurement
    (``cached_reference``).
    """
    first = config_for_mode(modes[0])
    detector = load_detector(first)
    second = second or load_second(first.detect.backend, first.detect.threads)
    reference_detector = ReferenceDetector(
        detector, second, ref_threshold, second_threshold, min_height, confirm
    )
    reference = (cached_reference if cache else reference_frames)(input_spec, reference_detector, every)
    boxes = [frame.boxes for frame in reference]
    results = []
    for mode in modes:
        config = config_for_mode(mode)
        probe = LeakProbe(reference, config.obscure.shape)
        job = run_job(input_spec, "null", config, detector=detector, regions=probe)
        counts = count_leaks(boxes, probe.frames, config.obscure.shape, min_cover, probe.detail, max_detail,
                             probe.detail_whole)  # fmt: skip
        total = counts.total
        width, height = int(job.info.get("width", 0)), int(job.info.get("height", 0))
        results.append(
            {
                "input": input_spec,
                "mode": mode,
                "frames": job.stats.frames_out,
                "reference_frames": len(reference),
                "reference_faces": total,
                "leaked": counts.uncovered,
                "leaked_sharp": counts.sharp,
                "partly_covered_hidden": counts.partly,
                "leak_rate": (counts.uncovered + counts.sharp) / total if total else 0.0,
                "uncovered_rate": counts.uncovered / total if total else 0.0,
                "sharp_rate": counts.sharp / total if total else 0.0,
                "fps": job.stats.fps,
                "min_height": min_height,
                "ref_threshold": ref_threshold,
                "min_cover": min_cover,
                "max_detail": max_detail,
                "reference": reference_detector.describe(width, height),
                "leaks": counts.uncovered_at[:50],
                "sharp_leaks": counts.sharp_at[:50],
            }
        )
    return results
