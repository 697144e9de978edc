"""Following a face with the mesh model from frame to frame.

The next crop is placed on the last mesh found (moved with the track), so a face
is replaced on frames without a fresh detection; a face being followed is kept
down to a lower confidence than one found anew, so a track does not flicker
between its surrogate and the fallback; the mesh drawn is steadied by a
one-euro filter while the raw one is followed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import cv2
import numpy as np
from numpy.typing import NDArray

from engines.crops import Crop, crop_from_box, eye_angle, face_crop
from engines.facemodels import FaceMesh
from stream.algorithms.facewarp import canonical, read_only
from stream.algorithms.synthesis import LEFT_EYE, RIGHT_EYE

FOLLOW_FRAMES = 2  # a mesh older than this is not followed
FIND_CONFIDENCE, KEEP_CONFIDENCE = 0.25, 0.2  # the mesh model's face flag; the coverage check decides


@lru_cache(maxsize=1)
def _canonical_five() -> NDArray[np.float32]:
    """The canonical layout's points behind CenterFace's five landmarks: eye centres (means
    of the eyelid contours), nose tip, mouth corners, each pair left to right."""
    points = canonical().points
    eyes = sorted((points[list(e)].mean(axis=0) for e in (LEFT_EYE, RIGHT_EYE)), key=lambda p: float(p[0]))
    mouth = sorted((points[61], points[291]), key=lambda p: float(p[0]))
    return read_only(np.array([*eyes, points[1], *mouth], np.float32))


def mesh_from_landmarks(
    landmarks: NDArray[np.float32], box: NDArray[np.float32]
) -> NDArray[np.float32] | None:
    """A mesh ``(468, 3)`` for a face the mesh model cannot fit (small, dark, strongly turned):
    the mean face layout placed on its five landmarks (eyes, nose, mouth corners) by a
    similarity, then stretched (up to 1.5 times) to the detected ``box`` (xyxy) so it covers
    the face the detector found. It carries none of the person's shape or expression; None
    when the landmarks do not fix a similarity."""
    five = np.asarray(landmarks, np.float32).reshape(5, 2)
    eyes = five[np.argsort(five[:2, 0])]
    mouth = five[3:][np.argsort(five[3:, 0])]
    target = np.array([*eyes, five[2], *mouth], np.float32)
    transform, _ = cv2.estimateAffinePartial2D(_canonical_five(), target)
    if transform is None:
        return None
    points = canonical().points @ transform[:, :2].T + transform[:, 2]
    lo, hi = points.min(axis=0), points.max(axis=0)
    stretch = np.clip((box[2:] - box[:2]) / np.maximum(hi - lo, 1e-3), 1.0, 1.5)
    middle = (lo + hi) / 2
    points = (points - middle) * stretch + middle + ((box[:2] + box[2:]) / 2 - middle) * (stretch > 1.0)
    return np.concatenate([points, np.zeros((len(points), 1), np.float32)], axis=1).astype(np.float32)


def centre(box: NDArray[np.float32]) -> NDArray[np.float32]:
    return np.asarray((box[:2] + box[2:]) / 2, np.float32)


def crop_from_mesh(image: NDArray[np.uint8], points: NDArray[np.float32], shift: NDArray[np.float32]) -> Crop:
    """The mesh model's crop around last frame's mesh moved by ``shift`` (MediaPipe's
    landmark ROI: the points' square box enlarged 1.5 times, eyes level)."""
    lo, hi = points[:, :2].min(axis=0), points[:, :2].max(axis=0)
    middle = (lo + hi) / 2 + shift
    eyes = sorted([points[33, :2].tolist(), points[263, :2].tolist()])
    angle = eye_angle(np.array(eyes[0]), np.array(eyes[1]))
    return face_crop(
        image, (float(middle[0]), float(middle[1])), 1.5 * float((hi - lo).max()), FaceMesh.size, angle
    )


class MeshSmoother:
    """A one-euro filter (Casiez et al. 2012) over one track's mesh points: a still face is
    smoothed hard (the mesh model's jitter would make the surrogate's texture swim), a moving
    one followed at once (speed raises the cut-off). Speeds are in face heights per frame,
    so any face size is treated alike; a frame or more unseen starts afresh."""

    def __init__(self, min_cutoff: float = 0.05, beta: float = 20.0, d_cutoff: float = 1.0) -> None:
        self.min_cutoff, self.beta, self.d_cutoff = min_cutoff, beta, d_cutoff
        self.state: tuple[int, NDArray[np.float32], NDArray[np.float32]] | None = None

    @staticmethod
    def _alpha(cutoff: NDArray[np.float32] | float) -> NDArray[np.float32]:
        tau = 1.0 / (2 * np.pi * np.asarray(cutoff, np.float32))
        return np.asarray(1.0 / (1.0 + tau), np.float32)  # one frame per step

    def __call__(self, index: int, points: NDArray[np.float32]) -> NDArray[np.float32]:
        held = self.state
        if held is None or index - held[0] != 1:
            self.state = (index, points, np.zeros_like(points))
            return points
        _, last, last_speed = held
        height = max(float(np.ptp(points[:, 1])), 1.0)
        a_d = self._alpha(self.d_cutoff)
        speed = a_d * (points - last) + (1 - a_d) * last_speed
        # One cut-off per point, from its own speed (a blink moves the eyelids only).
        cutoff = self.min_cutoff + self.beta * np.linalg.norm(speed[:, :2], axis=1, keepdims=True) / height
        a = self._alpha(cutoff)
        smoothed = (a * points + (1 - a) * last).astype(np.float32)
        self.state = (index, smoothed, speed.astype(np.float32))
        return smoothed


@dataclass(frozen=True)
class MeshSeen:
    index: int
    points: NDArray[np.float32]
    centre: NDArray[np.float32]  # the track box's centre then


@dataclass
class FollowedMesh:
    """One track's mesh across frames: the last one found, and the filter steadying it."""

    seen: MeshSeen | None = None
    smoother: MeshSmoother = field(default_factory=MeshSmoother)

    def crop(self, image: NDArray[np.uint8], index: int, box: NDArray[np.float32],
             found: tuple[NDArray[np.float32], NDArray[np.float32]] | None) -> Crop | None:  # fmt: skip
        """Where to run the mesh model this frame: on the recent mesh moved with the track's
        ``box``, else on the detection ``found`` (its box and landmarks); None: neither."""
        seen = self.seen
        if seen is not None and index - seen.index <= FOLLOW_FRAMES:
            return crop_from_mesh(image, seen.points, centre(box) - seen.centre)
        if found is not None:
            return crop_from_box(image, found[0], found[1], FaceMesh.size)
        return None

    def update(self, index: int, points: NDArray[np.float32], confidence: float,
               box: NDArray[np.float32]) -> NDArray[np.float32] | None:  # fmt: skip
        """Take this frame's mesh (found for the track's ``box``): the steadied points to draw,
        or None when the mesh model saw no face (the track is then found anew)."""
        if confidence < (KEEP_CONFIDENCE if self.seen is not None else FIND_CONFIDENCE):
            self.seen = None
            return None
        self.seen = MeshSeen(index, points, centre(box))
        return self.smoother(index, points)
