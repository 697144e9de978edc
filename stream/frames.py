"""The types that travel through the pipeline.

Coordinates are pixels of the frame as decoded and rotated upright, x to the
right and y down, boxes as ``(x1, y1, x2, y2)`` with float32 values.
Images are ``uint8`` arrays of shape ``(H, W, 3)`` in RGB order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np
from numpy.typing import NDArray


def _check_rows(name: str, value: NDArray[Any], n: int, tail: tuple[int, ...]) -> None:
    if value.shape != (n, *tail):
        raise ValueError(f"{name}: expected shape {(n, *tail)}, got {value.shape}")


@dataclass(frozen=True)
class Detections:
    """Faces found in one frame, as struct-of-arrays (``N`` may be 0).

    xyxy: ``(N, 4)`` float32 boxes. confidence: ``(N,)`` float32 in [0, 1].
    landmarks: ``(N, 5, 2)`` float32 (right eye, left eye, nose, mouth
    corners, as the detector orders them), x then y.
    """

    xyxy: NDArray[np.float32]
    confidence: NDArray[np.float32]
    landmarks: NDArray[np.float32]

    def __post_init__(self) -> None:
        n = len(self.xyxy)
        _check_rows("xyxy", self.xyxy, n, (4,))
        _check_rows("confidence", self.confidence, n, ())
        _check_rows("landmarks", self.landmarks, n, (5, 2))

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), np.zeros((0, 5, 2), np.float32))

    def __len__(self) -> int:
        return len(self.xyxy)

    def __getitem__(self, index: NDArray[Any] | slice) -> Detections:
        return Detections(self.xyxy[index], self.confidence[index], self.landmarks[index])


@dataclass(frozen=True)
class Tracks:
    """Tracked faces to obscure in one frame (``N`` may be 0).

    xyxy: ``(N, 4)`` float32 boxes, already dilated by the track margin.
    track_id: ``(N,)`` int64, stable for a face across frames.
    coasting: ``(N,)`` bool, True where the box is predicted, not detected.
    detection: ``(N,)`` int64, the index in the frame's ``Detections`` that
    the track matched this frame, -1 when coasting.
    """

    xyxy: NDArray[np.float32]
    track_id: NDArray[np.int64]
    coasting: NDArray[np.bool_]
    detection: NDArray[np.int64]

    def __post_init__(self) -> None:
        n = len(self.xyxy)
        _check_rows("xyxy", self.xyxy, n, (4,))
        _check_rows("track_id", self.track_id, n, ())
        _check_rows("coasting", self.coasting, n, ())
        _check_rows("detection", self.detection, n, ())

    @classmethod
    def empty(cls) -> Tracks:
        return cls(
            np.zeros((0, 4), np.float32),
            np.zeros((0,), np.int64),
            np.zeros((0,), bool),
            np.zeros((0,), np.int64),
        )

    def __len__(self) -> int:
        return len(self.xyxy)


@dataclass
class FramePacket:
    """One video frame and what the stages learned about it.

    image: ``(H, W, 3)`` uint8 RGB, upright. ``pts`` is in ``time_base``
    units of the input stream (stream time, not wall-clock time); ``duration``
    likewise, or None when unknown. ``capture_time`` is ``time.monotonic()``
    when the frame was read, for latency figures. ``detections`` is None on
    a frame where the detector did not run; ``full_detection`` is False
    where it ran at reduced resolution (see ``DetectConfig.every``);
    ``thumbnail`` is a tiny grey copy of the frame that tells scene cuts.
    ``processed`` is the frame's place among the frames taken for processing
    (after any live drop), which schedules full-resolution detection.
    ``untracked`` holds ``(M, 4)`` dilated boxes of detections that matched
    no track and started none (scores under the track-start threshold): they
    are obscured in this frame all the same.
    ``attributes`` maps track id to its ``TrackAttributes`` (Stage I), when enabled;
    ``replaced`` holds the tracks whose face a surrogate replaced (Stage III),
    which the obscuring stage then leaves alone; ``drawn`` how each was drawn
    (``facewarp.Rendered``: Stage IV draws its perturbation through the same map);
    ``fallback`` why a track's face was left to the obscuring stage instead (the
    reason's name), for the review page. ``cut``: the frame opens a new scene.
    ``device_image``: on the GPU frame path (``detect.device_frames``), the
    same frame as a torch ``(H, W, 3)`` uint8 tensor on the detector's device,
    from the detect stage until the obscure stage brings it back into ``image``.
    ``anonymized`` turns True only when the last stage has obscured every
    face, or the fail policy masked the whole frame; sinks refuse anything
    else, so a raw frame cannot be written.
    """

    index: int
    image: NDArray[np.uint8]
    pts: int
    time_base: Fraction
    duration: int | None = None
    capture_time: float = 0.0
    detections: Detections | None = field(default_factory=Detections.empty)
    full_detection: bool = True
    thumbnail: NDArray[np.float32] | None = None
    processed: int = 0
    tracks: Tracks = field(default_factory=Tracks.empty)
    untracked: NDArray[np.float32] = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    attributes: dict[int, Any] = field(default_factory=dict)
    replaced: set[int] = field(default_factory=set)
    drawn: dict[int, Any] = field(default_factory=dict)
    fallback: dict[int, str] = field(default_factory=dict)
    cut: bool = False
    device_image: Any = None
    anonymized: bool = False
    masked_whole: bool = False
    failure: str | None = None

    @property
    def time(self) -> float:
        """Stream time in seconds."""
        return float(self.pts * self.time_base)


@dataclass(frozen=True)
class PassthroughPacket:
    """A compressed packet of a non-video stream (audio), copied to the output as is.

    ``packet`` is a PyAV ``av.Packet``; ``stream_index`` the index of its
    input stream.
    """

    packet: Any
    stream_index: int
