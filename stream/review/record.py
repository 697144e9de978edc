"""What a review page is made of, gathered frame by frame as the output is written.

Each output frame leaves one small record (the regions file's line: boxes, tracks,
states, scores, timing) and, at sampled moments, thumbnails cut from the **output**
image: a filmstrip of every track's anonymized face, frames spread over the run for
the timeline, and the frames a reviewer should check, ranked. The original is never
seen here; ``--review-originals`` cuts its thumbnails from the input afterwards
(``page.py``). Memory stays bounded whatever the length: the filmstrips and the
timeline frames thin themselves out (every other one dropped, the stride doubled),
and only the highest ranked frames to check keep their thumbnails.
"""

from __future__ import annotations

import heapq
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import cv2
import numpy as np
from numpy.typing import NDArray

from stream.config import ReviewConfig
from stream.frames import FramePacket


class Counters(Protocol):
    """What a record reads of the run's counters (``RunStats``) and the source's."""

    started: float
    frames_dropped: int


class SourceCounters(Protocol):
    corrupt_packets: int
    reconnects: int


def frame_record(
    packet: FramePacket, stats: Counters | None = None, source: SourceCounters | None = None
) -> dict[str, Any]:
    """One output frame as a JSON-ready dict (the regions file's line)."""
    tracks, detections = packet.tracks, packet.detections
    now = time.monotonic()
    scores = [
        round(float(detections.confidence[d]), 3)
        if detections is not None and 0 <= d < len(detections)
        else None
        for d in tracks.detection.tolist()
    ]
    return {
        "index": packet.index,
        "pts": packet.pts,
        "time": round(packet.time, 3),
        "masked_whole": packet.masked_whole,
        "boxes": np.round(tracks.xyxy, 1).tolist(),
        "untracked": np.round(packet.untracked, 1).tolist(),  # obscured, but no track
        "track_ids": tracks.track_id.tolist(),
        "coasting": tracks.coasting.tolist(),
        "scores": scores,  # the detection's confidence, null where the track coasted
        "replaced": sorted(packet.replaced),
        "fallback": {str(t): reason for t, reason in sorted(packet.fallback.items())},
        "cut": packet.cut,
        "latency_ms": round(1000 * (now - packet.capture_time), 1) if packet.capture_time else None,
        "wall_s": round(now - stats.started, 3) if stats is not None else None,
        "dropped": stats.frames_dropped if stats is not None else 0,
        "corrupt": source.corrupt_packets if source is not None else 0,
        "reconnects": source.reconnects if source is not None else 0,
    }


def jpeg(image: NDArray[np.uint8], quality: int = 80) -> bytes:
    """An RGB image as JPEG bytes."""
    ok, data = cv2.imencode(
        ".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality]
    )
    if not ok:
        raise ValueError(f"JPEG encoding failed for an image of shape {image.shape}")
    return bytes(data)


def cut_box(
    image: NDArray[np.uint8], box: list[float], height: int, context: float = 1.0
) -> NDArray[np.uint8]:
    """The region ``box`` (x1, y1, x2, y2) grown ``context`` times about its centre,
    clipped to the image, scaled to ``height`` px tall (a 2x2 grey patch if empty)."""
    h, w = image.shape[:2]
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    hw, hh = (box[2] - box[0]) * context / 2, (box[3] - box[1]) * context / 2
    x1, y1 = max(0, int(cx - hw)), max(0, int(cy - hh))
    x2, y2 = min(w, int(np.ceil(cx + hw))), min(h, int(np.ceil(cy + hh)))
    if x2 - x1 < 2 or y2 - y1 < 2:
        return np.full((2, 2, 3), 128, np.uint8)
    step = max(1, (y2 - y1) // (2 * height))  # most of a large shrink by striding, the rest smoothed
    crop = image[y1:y2:step, x1:x2:step]
    width = max(2, round(crop.shape[1] * height / crop.shape[0]))
    return np.ascontiguousarray(cv2.resize(crop, (width, height), interpolation=cv2.INTER_LINEAR))


# The colour of each kind of region on a marked thumbnail (RGB) and on the page.
COLOURS = {
    "replaced": (46, 160, 67),
    "obscured": (52, 120, 246),
    "coasting": (240, 160, 30),
    "fallback": (220, 50, 47),
    "check": (255, 0, 200),
}


def marked(image: NDArray[np.uint8], width: int, regions: list[tuple[list[float], str]]) -> NDArray[np.uint8]:
    """The frame scaled to ``width`` px wide with each region's box drawn in its colour."""
    scale = width / image.shape[1]
    step = max(1, image.shape[1] // (2 * width))
    small = cv2.resize(
        image[::step, ::step], (width, max(2, round(image.shape[0] * scale))), interpolation=cv2.INTER_LINEAR
    )
    for box, kind in regions:
        x1, y1, x2, y2 = (round(v * scale) for v in box)
        cv2.rectangle(small, (x1 - 1, y1 - 1), (x2 + 1, y2 + 1), COLOURS[kind], 2 if kind == "check" else 1)
    return np.asarray(small, np.uint8)


def track_state(record: dict[str, Any], row: int) -> str:
    """What happened to the ``row``-th track of a frame: replaced (by its surrogate),
    fallback (left to blur in synth mode), coasting (no detection), obscured."""
    tid = record["track_ids"][row]
    if tid in record["replaced"]:
        return "replaced"
    if str(tid) in record.get("fallback", {}):
        return "fallback"
    if record["coasting"][row]:
        return "coasting"
    return "obscured"


@dataclass
class Check:
    """One frame to check: why (each reason a kind and the region it concerns), its rank,
    and its thumbnails (the marked output frame, a zoom on each region)."""

    priority: float
    index: int
    time: float
    reasons: list[dict[str, Any]]
    frame: bytes = b""
    zooms: list[bytes] = field(default_factory=list)

    def __lt__(self, other: Check) -> bool:  # the heap keeps the highest ranked
        return (self.priority, -self.index) < (other.priority, -other.index)


@dataclass
class Filmstrip:
    """Sampled thumbnails of one track's face: (frame index, state, JPEG), thinned out by
    dropping every other one and doubling the stride when full."""

    first: int
    stride: int = 4  # frames between shots (doubled when full)
    shots: list[tuple[int, str, bytes, list[float]]] = field(default_factory=list)


# How high each kind of frame to check ranks (higher: shown first).
PRIORITY = {
    "masked whole": 100.0,
    "fallback": 60.0,
    "scene cut": 50.0,
    "coasting": 40.0,
    "low confidence": 30.0,
    "near minimum size": 20.0,
}
# Fallbacks a reviewer must look at first: the surrogate failed on a face it had.
SERIOUS = {"recognisable", "not covered", "mesh not found"}


class ReviewRecorder:
    """The runner's frame callback that gathers a review page's records and thumbnails.

    ``min_face``: the detector's smallest face (px tall), for the faces near it.
    ``stats``/``source``: the run's and the source's counters, set by the job
    (``attach``), for dropped frames, damage and reconnects over time.
    """

    TIMELINE_FRAMES = 120  # frames spread over the run, for the timeline's viewer
    FRAME_WIDTH = 480  # px, the marked thumbnails of frames
    TIMELINE_WIDTH = 320
    FACE_HEIGHT = 72  # px, filmstrip shots
    ZOOM_HEIGHT = 96

    def __init__(self, config: ReviewConfig, min_face: float) -> None:
        self.config = config
        self.min_face = min_face
        self.records: list[dict[str, Any]] = []
        self.strips: dict[int, Filmstrip] = {}
        self.checks: list[Check] = []  # a min-heap of the highest ranked
        self.check_counts: dict[str, int] = {}
        self.frames: list[tuple[int, bytes]] = []  # (record position, marked JPEG) for the timeline
        self._frame_every = 0.25  # s of stream time between timeline frames (doubled when full)
        self._last: dict[int, tuple[bool, str | None]] = {}  # track -> (coasting, fallback) last frame
        self._small: set[int] = set()
        self._low: dict[int, int] = {}  # track -> frame of its last low-confidence check
        self.stats: Counters | None = None
        self.source: SourceCounters | None = None
        self.seconds = 0.0  # spent here, to report beside the page's own time

    def attach(self, stats: Counters, source: SourceCounters | None) -> None:
        self.stats, self.source = stats, source

    def __call__(self, packet: FramePacket) -> None:
        self.add(frame_record(packet, self.stats, self.source), packet.image)

    def add(self, record: dict[str, Any], image: NDArray[np.uint8]) -> None:
        """One output frame (``image``: what was written) and its record."""
        start = time.perf_counter()
        self.records.append(record)
        position = len(self.records) - 1
        regions = [(box, track_state(record, row)) for row, box in enumerate(record["boxes"])]
        regions += [(box, "obscured") for box in record["untracked"]]
        if not self.frames or record["time"] >= self.records[self.frames[-1][0]]["time"] + self._frame_every:
            self.frames.append((position, jpeg(marked(image, self.TIMELINE_WIDTH, regions), 70)))
            if len(self.frames) >= 2 * self.TIMELINE_FRAMES:
                self.frames, self._frame_every = self.frames[::2], self._frame_every * 2
        self._film(record, image, regions)
        reasons = self._reasons(record)
        if reasons:
            self._check(record, image, regions, reasons)
        self.seconds += time.perf_counter() - start

    def _film(self, record: dict[str, Any], image: NDArray[np.uint8], regions: list[Any]) -> None:
        index = record["index"]
        for tid, (box, state) in zip(record["track_ids"], regions, strict=False):
            strip = self.strips.setdefault(tid, Filmstrip(index))
            if (index - strip.first) % strip.stride or (strip.shots and index == strip.shots[-1][0]):
                continue
            shot = jpeg(cut_box(image, box, self.FACE_HEIGHT), 75)
            strip.shots.append((index, state, shot, box))
            if len(strip.shots) >= 2 * self.config.filmstrip:
                strip.shots, strip.stride = strip.shots[::2], strip.stride * 2

    def _reasons(self, record: dict[str, Any]) -> list[dict[str, Any]]:
        """Why this frame is worth a look: each reason's kind, track, region and words."""
        index = record["index"]
        reasons: list[dict[str, Any]] = []

        def add(
            kind: str, box: list[float] | None, track: int | None, text: str, weight: float = 0.0
        ) -> None:
            self.check_counts[kind] = self.check_counts.get(kind, 0) + 1
            reasons.append({"kind": kind, "box": box, "track": track, "text": text, "weight": weight})

        if record["masked_whole"]:
            add("masked whole", None, None, "the whole frame was masked (a stage failed)")
        if record.get("cut"):
            add(
                "scene cut",
                None,
                None,
                "the first frame of the video"
                if not self.records[:-1]
                else "the first frame after a scene cut",
            )
        fallback = record.get("fallback", {})
        scores = record.get("scores") or [None] * len(record["track_ids"])
        rows = zip(record["track_ids"], record["boxes"], record["coasting"], scores, strict=True)
        for tid, box, coasting, score in rows:
            reason = fallback.get(str(tid))
            last = self._last.get(tid)
            if reason is not None and (last is None or last[1] != reason):
                add(
                    "fallback", box, tid, f"track {tid} blurred: {reason}", 10.0 if reason in SERIOUS else 0.0
                )
            if coasting and (last is None or not last[0]):
                add("coasting", box, tid, f"track {tid} coasts: no detection, its box predicted")
            low = score is not None and score < self.config.low_confidence
            if low and index - self._low.get(tid, -(10**9)) >= 25:  # at most one a second or so
                self._low[tid] = index
                add(
                    "low confidence",
                    box,
                    tid,
                    f"track {tid} detected at confidence {score:.2f}",
                    10.0 * (1 - score / max(self.config.low_confidence, 1e-6)),
                )
            height = box[3] - box[1]
            if tid not in self._small and height < self.config.near_min_face * self.min_face:
                self._small.add(tid)
                add("near minimum size", box, tid, f"track {tid} is {height:.0f} px tall")
            self._last[tid] = (bool(coasting), reason)
        for box in record["untracked"]:
            if record["index"] - self._low.get(-1, -(10**9)) >= 25:
                self._low[-1] = record["index"]
                add("low confidence", box, None, "a detection too unsure to start a track (obscured)", 5.0)
        gone = set(self._last) - set(record["track_ids"])
        for tid in gone:
            del self._last[tid]
            self._ended(tid, index)
        return reasons

    SHORT = 25  # frames: a track that ended younger keeps one shot (crowds start thousands)

    def _ended(self, track_id: int, index: int) -> None:
        strip = self.strips.get(track_id)
        if strip is not None and index - strip.first < self.SHORT and len(strip.shots) > 1:
            strip.shots = [strip.shots[len(strip.shots) // 2]]

    def _check(
        self,
        record: dict[str, Any],
        image: NDArray[np.uint8],
        regions: list[Any],
        reasons: list[dict[str, Any]],
    ) -> None:
        priority = max(PRIORITY[r["kind"]] + r["weight"] for r in reasons) + 0.5 * (len(reasons) - 1)
        check = Check(priority, record["index"], record["time"], reasons)
        if len(self.checks) >= self.config.checks and not self.checks[0] < check:
            return  # outranked: counted, no thumbnail
        marks = regions + [(r["box"], "check") for r in reasons if r["box"] is not None]
        check.frame = jpeg(marked(image, self.FRAME_WIDTH, marks), 65)
        check.zooms = [
            jpeg(cut_box(image, r["box"], self.ZOOM_HEIGHT, 2.0), 70) for r in reasons if r["box"] is not None
        ][:4]
        if len(self.checks) >= self.config.checks:
            heapq.heapreplace(self.checks, check)
        else:
            heapq.heappush(self.checks, check)

    def ranked(self) -> list[Check]:
        """The frames to check with thumbnails, the highest ranked first."""
        return sorted(list(self.checks), reverse=True)  # a copy first: the writer may be adding
