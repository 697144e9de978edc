"""Pre- and post-processing of the zoo's face models, shared by every backend.

Each class wraps a ``Backend`` serving one converted model and takes a batch
of face crops (``engines.crops.Crop``), running them through the model in one
call. Input contracts follow the models' origin (the @vladmandic/human
pipeline they ship with); each is stated in ``engines.zoo.REGISTRY``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
from numpy.typing import NDArray

from .base import Backend
from .crops import Crop


def _run(backend: Backend, batch: NDArray[np.float32]) -> dict[str, NDArray[np.float32]]:
    names = [spec.name for spec in backend.output_spec()]
    return dict(zip(names, backend.infer(batch), strict=True))


def _stack(crops: Sequence[Crop], size: int) -> NDArray[np.float32]:
    images = [c.image if c.image.shape[0] == size else cv2.resize(c.image, (size, size)) for c in crops]
    return np.stack(images).astype(np.float32)


# --- face mesh ----------------------------------------------------------------------

# Mesh indices of the points matching the detectors' five landmarks.
MESH_EYE_CORNERS = ((33, 133), (362, 263))
MESH_NOSE_TIP = 1
MESH_MOUTH_CORNERS = (61, 291)


@dataclass(frozen=True)
class MeshResult:
    """``points``: ``(B, 468, 3)`` float32, x and y in image pixels, z in the same scale
    (relative depth); ``confidence``: ``(B,)`` face probability."""

    points: NDArray[np.float32]
    confidence: NDArray[np.float32]

    def five_points(self) -> NDArray[np.float32]:
        """``(B, 5, 2)``: eye centres, nose tip, mouth corners (mesh order, not sorted by side)."""
        p = self.points[..., :2]
        eyes = [p[:, list(pair)].mean(axis=1) for pair in MESH_EYE_CORNERS]
        mouth = [p[:, i] for i in MESH_MOUTH_CORNERS]
        return np.stack([*eyes, p[:, MESH_NOSE_TIP], *mouth], axis=1)


class FaceMesh:
    """MediaPipe FaceMesh: 468 3-D landmarks from a 192x192 face crop (RGB 0-1)."""

    size = 192

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    def predict(self, crops: Sequence[Crop]) -> MeshResult:
        if not crops:
            return MeshResult(np.zeros((0, 468, 3), np.float32), np.zeros(0, np.float32))
        out = _run(self.backend, _stack(crops, self.size) / 255.0)
        raw = out["output_mesh"].reshape(-1, 468, 3)
        points = np.empty_like(raw)
        for i, crop in enumerate(crops):
            points[i, :, :2] = crop.to_image(raw[i, :, :2])
            scale = 1.0 / np.sqrt(abs(np.linalg.det(crop.to_crop[:, :2])))
            points[i, :, 2] = raw[i, :, 2] * scale
        return MeshResult(points, out["output_faceflag"].reshape(-1).astype(np.float32))


# --- identity, gender, age ------------------------------------------------------------


@dataclass(frozen=True)
class FaceResResult:
    """``descriptor``: ``(B, 1024)`` L2-normalised identity descriptor; ``male``: ``(B,)``
    P(male); ``age``: ``(B,)`` years (expectation over the 100 one-year bins)."""

    descriptor: NDArray[np.float32]
    male: NDArray[np.float32]
    age: NDArray[np.float32]


class FaceRes:
    """HSE FaceRes: identity descriptor, gender and age from a 224x224 face crop (RGB 0-255)."""

    size = 224

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    def predict(self, crops: Sequence[Crop]) -> FaceResResult:
        if not crops:
            return FaceResResult(
                np.zeros((0, 1024), np.float32), np.zeros(0, np.float32), np.zeros(0, np.float32)
            )
        out = _run(self.backend, _stack(crops, self.size))
        descriptor = out["global_pooling/Mean"]
        descriptor = descriptor / np.maximum(np.linalg.norm(descriptor, axis=1, keepdims=True), 1e-12)
        ages = out["age_pred/Softmax"] @ np.arange(100, dtype=np.float32)
        return FaceResResult(
            descriptor.astype(np.float32), out["gender_pred/Sigmoid"].reshape(-1), ages.astype(np.float32)
        )


# --- GEAR: age, gender, race ------------------------------------------------------------

GEAR_AGE_BINS = np.array([15, 23, 28, 35.5, 45.5, 55.5, 65], np.float32)  # bin centres, years
GEAR_RACES = ("white", "black", "asian", "indian", "other")


@dataclass(frozen=True)
class GearResult:
    """``male``: ``(B,)`` P(male); ``age``: ``(B,)`` expected years over the seven bins;
    ``age_bins``: ``(B, 7)``; ``race``: ``(B, 5)`` probabilities in ``GEAR_RACES`` order."""

    male: NDArray[np.float32]
    age: NDArray[np.float32]
    age_bins: NDArray[np.float32]
    race: NDArray[np.float32]


class Gear:
    """GEAR: age, gender and race from a 198x198 crop (RGB 0-1) of the face's central 80%."""

    size = 198

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    def predict(self, crops: Sequence[Crop]) -> GearResult:
        if not crops:
            empty = np.zeros(0, np.float32)
            return GearResult(empty, empty, np.zeros((0, 7), np.float32), np.zeros((0, 5), np.float32))
        # The model was trained on the box's top 90% and central 80% (x 0.1-0.9).
        n = crops[0].image.shape[0]
        trimmed = [c.image[0 : int(0.9 * n), int(0.1 * n) : int(0.9 * n)] for c in crops]
        batch = np.stack([cv2.resize(t, (self.size, self.size)) for t in trimmed]).astype(np.float32) / 255.0
        out = _run(self.backend, batch)
        bins = out["age_output"]
        return GearResult(out["gender_output"][:, 0], bins @ GEAR_AGE_BINS, bins, out["race_output"])


# --- emotion ----------------------------------------------------------------------------

EMOTIONS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")


class Emotion:
    """Seven emotions from a 64x64 grey face crop scaled to [-1, 1]."""

    size = 64

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    def predict(self, crops: Sequence[Crop]) -> NDArray[np.float32]:
        """``(B, 7)`` probabilities in ``EMOTIONS`` order."""
        if not crops:
            return np.zeros((0, 7), np.float32)
        rgb = _stack(crops, self.size) / 255.0
        grey = rgb @ np.array([0.2989, 0.5870, 0.1140], np.float32)
        return _run(self.backend, (grey[..., None] - 0.5) * 2.0)["Identity"]


# --- MediaPipe full-range face detector ---------------------------------------------------------


@dataclass(frozen=True)
class BlazeFaces:
    """``boxes`` ``(N, 4)`` xyxy and ``keypoints`` ``(N, 6, 2)`` in image pixels; ``scores`` ``(N,)``."""

    boxes: NDArray[np.float32]
    scores: NDArray[np.float32]
    keypoints: NDArray[np.float32]


class BlazeFaceFull:
    """MediaPipe's full-range face detector: 192x192 input in [-1, 1], 2304 anchors on a 48x48 grid.

    Each anchor row holds a logit, the box centre offset and size, and six
    key points, in pixels of the 192 input relative to the anchor centre.
    The image is padded to a square (faces filling the frame are missed
    otherwise) before resizing.
    """

    size = 192
    grid = 48

    def __init__(self, backend: Backend, pad: float = 0.0) -> None:
        self.backend = backend
        self.pad = pad
        cells = (np.arange(self.grid, dtype=np.float32) + 0.5) / self.grid * self.size
        gx, gy = np.meshgrid(cells, cells)
        self._anchors = np.stack([gx.ravel(), gy.ravel()], axis=1)

    def detect(self, image: NDArray[np.uint8], threshold: float = 0.5, nms_iou: float = 0.3) -> BlazeFaces:
        from .centerface import nms

        h, w = image.shape[:2]
        side = int(max(h, w) * (1 + self.pad))
        left, top = (side - w) // 2, (side - h) // 2
        square = np.zeros((side, side, 3), np.uint8)
        square[top : top + h, left : left + w] = image
        resized = cv2.resize(square, (self.size, self.size), interpolation=cv2.INTER_AREA).astype(np.float32)
        out = _run(self.backend, (resized[None] / 127.5 - 1.0))["Identity"][0]
        scores = 1 / (1 + np.exp(-np.clip(out[:, 0], -80, 80)))
        keep = scores >= threshold
        raw, anchors, scores = out[keep], self._anchors[keep], scores[keep].astype(np.float32)
        centre = anchors + raw[:, 1:3]
        half = raw[:, 3:5] / 2
        boxes = np.concatenate([centre - half, centre + half], axis=1)
        keypoints = anchors[:, None, :] + raw[:, 5:17].reshape(-1, 6, 2)
        to_image = side / self.size
        offset = np.array([left, top], np.float32)
        boxes = (boxes * to_image - np.tile(offset, 2)).astype(np.float32)
        keypoints = (keypoints * to_image - offset).astype(np.float32)
        order = nms(boxes, scores, nms_iou)
        return BlazeFaces(boxes[order], scores[order], keypoints[order])
