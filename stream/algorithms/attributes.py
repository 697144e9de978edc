"""Stage I: per-face attribute estimation over CelebA's 40 attributes, and per-track fusion.

An estimator reports, for each face, a probability per attribute it can
estimate and NaN for the ones it cannot. Built-in estimators and their methods:

- Male: the faceres gender output, P(male).
- Young: faceres's expected age a; P = sigmoid((30 - a) / 4) (CelebA's "Young" ~ under 30).
- Smiling: the emotion net's probability of "happy".
- Mouth_Slightly_Open: the inner-lip gap (mesh points 13-14) over the face height
  (10-152); P = sigmoid((gap - 0.025) / 0.008).
- Narrow_Eyes: the eye aspect ratio (lid gap over eye width, both eyes);
  P = sigmoid((0.20 - ratio) / 0.03).
- Black/Blond/Brown/Gray_Hair and Bald: the colour of a band above the
  forehead (above mesh point 10, as wide as the brows): skin-coloured and
  bright means bald; otherwise the band's median colour in HSV is scored
  against four hair colour prototypes (dark / yellow-bright / brown /
  unsaturated-light).
- Eyeglasses and the other attributes: not estimated (no reliable cue in the
  shipped models); the trainable random-forest estimator
  (``calibration/attribute_forest.py``) covers them when a model is given.

Fusion averages a track's estimates weighted by face quality (size, mesh
confidence, frontalness), decides each attribute with hysteresis, and
freezes the track's attributes once confident: they never flip afterwards.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np
from numpy.typing import NDArray

from engines.crops import Crop, crop_from_box, face_crop
from engines.facemodels import EMOTIONS, Emotion, FaceMesh, FaceRes
from stream.algorithms.privacy import ATTRIBUTES, INDEX
from stream.errors import ModelError

N_ATTR = len(ATTRIBUTES)


def _sigmoid(x: NDArray[np.floating] | float) -> NDArray[np.float32]:
    return np.asarray(1 / (1 + np.exp(-np.clip(x, -50, 50))), np.float32)


@dataclass(frozen=True)
class FaceInput:
    """One face to describe: the frame (RGB uint8), its detector box (xyxy) and five landmarks."""

    image: NDArray[np.uint8]
    box: NDArray[np.float32]
    landmarks: NDArray[np.float32]


@dataclass(frozen=True)
class AttributeEstimate:
    """``probability``: ``(N, 40)`` float32, NaN where not estimated; ``quality``: ``(N,)`` in [0, 1];
    ``descriptor``: ``(N, 1024)`` identity descriptors (kept in memory, never reported)."""

    probability: NDArray[np.float32]
    quality: NDArray[np.float32]
    descriptor: NDArray[np.float32]


class Estimator(Protocol):
    name: str

    def estimate(self, faces: Sequence[FaceInput]) -> AttributeEstimate: ...


# Mesh indices used by the geometric attributes.
_UPPER_LIP, _LOWER_LIP, _FOREHEAD, _CHIN = 13, 14, 10, 152
_EYES = (((159, 145), (33, 133)), ((386, 374), (362, 263)))  # (upper, lower lid), (corners)
_BROWS = (70, 300)


class BuiltinEstimator:
    """The zoo models' attributes (see the module docstring for each method).

    All faces of a call go through each model in one batch.
    """

    name = "builtin"

    def __init__(self, mesh: FaceMesh, faceres: FaceRes, emotion: Emotion) -> None:
        self.mesh = mesh
        self.faceres = faceres
        self.emotion = emotion

    def estimate(self, faces: Sequence[FaceInput]) -> AttributeEstimate:
        n = len(faces)
        probability = np.full((n, N_ATTR), np.nan, np.float32)
        if n == 0:
            return AttributeEstimate(probability, np.zeros(0, np.float32), np.zeros((0, 1024), np.float32))
        mesh = self.mesh.predict([crop_from_box(f.image, f.box, f.landmarks, FaceMesh.size) for f in faces])
        # Second crops from the mesh itself: tighter and levelled by the mesh's own eyes.
        mesh_crops = [
            self._crop_from_mesh(f.image, mesh.points[i, :, :2], FaceRes.size) for i, f in enumerate(faces)
        ]
        res = self.faceres.predict(mesh_crops)
        emotions = self.emotion.predict(
            [self._crop_from_mesh(f.image, mesh.points[i, :, :2], Emotion.size) for i, f in enumerate(faces)]
        )
        probability[:, INDEX["Male"]] = res.male
        probability[:, INDEX["Young"]] = _sigmoid((30.0 - res.age) / 4.0)
        probability[:, INDEX["Smiling"]] = emotions[:, EMOTIONS.index("happy")]
        pts = mesh.points[..., :2]
        height = np.linalg.norm(pts[:, _CHIN] - pts[:, _FOREHEAD], axis=1) + 1e-6
        gap = np.linalg.norm(pts[:, _LOWER_LIP] - pts[:, _UPPER_LIP], axis=1) / height
        probability[:, INDEX["Mouth_Slightly_Open"]] = _sigmoid((gap - 0.025) / 0.008)
        ratios = []
        for (upper, lower), (inner, outer) in _EYES:
            lid = np.linalg.norm(pts[:, upper] - pts[:, lower], axis=1)
            width = np.linalg.norm(pts[:, inner] - pts[:, outer], axis=1) + 1e-6
            ratios.append(lid / width)
        probability[:, INDEX["Narrow_Eyes"]] = _sigmoid((0.20 - np.mean(ratios, axis=0)) / 0.03)
        for i, face in enumerate(faces):
            hair = hair_probabilities(face.image, pts[i])
            for name, value in hair.items():
                probability[i, INDEX[name]] = value
        return AttributeEstimate(probability, quality(faces, mesh.points, mesh.confidence), res.descriptor)

    @staticmethod
    def _crop_from_mesh(image: NDArray[np.uint8], points: NDArray[np.float32], size: int) -> Crop:
        left = points[list(_EYES[0][1])].mean(axis=0)
        right = points[list(_EYES[1][1])].mean(axis=0)
        if left[0] > right[0]:
            left, right = right, left
        angle = math.degrees(math.atan2(float(right[1] - left[1]), float(right[0] - left[0])))
        x1, y1 = points.min(axis=0)
        x2, y2 = points.max(axis=0)
        side = max(x2 - x1, y2 - y1) * 1.5
        return face_crop(image, ((x1 + x2) / 2, (y1 + y2) / 2), float(side), size, angle)


def quality(
    faces: Sequence[FaceInput], points: NDArray[np.float32], confidence: NDArray[np.float32]
) -> NDArray[np.float32]:
    """Per face in [0, 1]: size (full weight from 96 px), mesh confidence, frontalness
    (the nose tip's offset from the eyes' midpoint, relative to the eye distance)."""
    out = np.zeros(len(faces), np.float32)
    for i, face in enumerate(faces):
        height = float(face.box[3] - face.box[1])
        size = min(1.0, height / 96.0)
        p = points[i, :, :2]
        left, right = p[list(_EYES[0][1])].mean(axis=0), p[list(_EYES[1][1])].mean(axis=0)
        eye_distance = float(np.linalg.norm(right - left)) + 1e-6
        yaw = abs(float(np.dot(p[1] - (left + right) / 2, (right - left) / eye_distance))) / eye_distance
        frontal = max(0.0, 1.0 - 2.0 * yaw)
        out[i] = size * float(confidence[i]) * frontal
    return out


# HSV prototypes of hair colour (OpenCV ranges: H 0-180, S and V 0-255).
_HAIR = {
    "Black_Hair": (np.array([15.0, 60.0, 35.0]), np.array([40.0, 80.0, 30.0])),
    "Brown_Hair": (np.array([12.0, 120.0, 90.0]), np.array([10.0, 60.0, 40.0])),
    "Blond_Hair": (np.array([22.0, 110.0, 180.0]), np.array([10.0, 60.0, 45.0])),
    "Gray_Hair": (np.array([20.0, 20.0, 150.0]), np.array([60.0, 20.0, 50.0])),
}


def hair_probabilities(image: NDArray[np.uint8], points: NDArray[np.float32]) -> dict[str, float]:
    """Hair colour and baldness from the band above the forehead (see the module docstring)."""
    top = points[_FOREHEAD]
    face_height = float(np.linalg.norm(points[_CHIN] - points[_FOREHEAD]))
    x1, x2 = sorted((float(points[_BROWS[0], 0]), float(points[_BROWS[1], 0])))
    y2 = float(top[1]) - 0.05 * face_height
    y1 = y2 - 0.30 * face_height
    h, w = image.shape[:2]
    xa, xb, ya, yb = max(0, int(x1)), min(w, int(x2)), max(0, int(y1)), min(h, int(y2))
    if xb - xa < 4 or yb - ya < 4:
        return {}
    band = cv2.cvtColor(image[ya:yb, xa:xb], cv2.COLOR_RGB2HSV).reshape(-1, 3).astype(np.float32)
    median = np.median(band, axis=0)
    # Skin: the face's own colour (cheek band below the eyes), compared in HSV.
    cheeks = points[[50, 280]].mean(axis=0)
    cx, cy = int(cheeks[0]), int(cheeks[1])
    r = max(2, int(0.05 * face_height))
    skin_patch = image[max(0, cy - r) : cy + r, max(0, cx - r) : cx + r]
    result: dict[str, float] = {}
    if skin_patch.size:
        skin = np.median(
            cv2.cvtColor(skin_patch, cv2.COLOR_RGB2HSV).reshape(-1, 3).astype(np.float32), axis=0
        )
        distance = np.abs(band - skin) / np.array([15.0, 60.0, 60.0])
        skin_fraction = float((distance.max(axis=1) < 1.0).mean())
        result["Bald"] = float(_sigmoid((skin_fraction - 0.6) / 0.1))
    scores = {}
    for name, (centre, spread) in _HAIR.items():
        d = (median - centre) / spread
        d[0] = min(abs(d[0]), abs((median[0] + 180 - centre[0]) / spread[0]))  # hue wraps
        scores[name] = -0.5 * float(np.sum(d**2))
    top_score = max(scores.values())
    weights = {k: math.exp(v - top_score) for k, v in scores.items()}
    total = sum(weights.values())
    not_bald = 1.0 - result.get("Bald", 0.0)
    for name, weight in weights.items():
        result[name] = not_bald * weight / total
    return result


# Types a forest file may hold: sklearn's forest and tree, numpy, builtins.
# The exact types a file of random forests holds beyond those skops trusts by
# itself (builtins, numpy arrays and scalars, sklearn's estimators). Nothing
# else: skops calls whatever a file names, so a crafted file trusted by prefix
# ("numpy.") could call numpy.savetxt and write where it likes.
_TRUSTED_TYPES = frozenset({"sklearn.tree._tree.Tree"})


def load_forests(path: Path) -> dict[str, Any]:
    """The forests of a skops file, refusing a file that names any type beyond a forest's."""
    import skops.io as sio

    if not path.exists():
        raise ModelError(f"attribute model {path}: not found")
    untrusted = sio.get_untrusted_types(file=path)
    unexpected = [t for t in untrusted if t not in _TRUSTED_TYPES]
    if unexpected:
        raise ModelError(
            f"attribute model {path}: holds unexpected types {unexpected[:3]}; refusing to load it"
        )
    content = sio.load(path, trusted=untrusted)
    from sklearn.ensemble import RandomForestClassifier

    if not all(isinstance(f, RandomForestClassifier) for f in content.get("forests", [])):
        raise ModelError(f"attribute model {path}: holds more than random forests; refusing it")
    names = content["attributes"]
    unknown = [n for n in names if n not in ATTRIBUTES]
    if unknown:
        raise ModelError(f"attribute model {path}: unknown attribute {unknown[0]!r}")
    return dict(zip(names, content["forests"], strict=True))


class ForestEstimator:
    """The paper's estimator: random forests over the faceres descriptor, one per attribute
    (trained by ``calibration/attribute_forest.py``, loaded with skops)."""

    name = "forest"

    def __init__(self, model: Path, base: BuiltinEstimator) -> None:
        self.forests = load_forests(model)
        self.base = base

    def estimate(self, faces: Sequence[FaceInput]) -> AttributeEstimate:
        base = self.base.estimate(faces)
        probability = base.probability.copy()
        for name, forest in self.forests.items():
            if len(faces):
                probability[:, INDEX[name]] = forest.predict_proba(base.descriptor)[:, 1]
        return AttributeEstimate(probability, base.quality, base.descriptor)


# --- per-track fusion ------------------------------------------------------------------------


@dataclass
class TrackAttributes:
    """One track's fused attributes.

    ``probability`` is the quality-weighted mean of its estimates; ``decided``
    the current binary values (changed only past the hysteresis band);
    ``frozen`` once confident: from then on nothing changes.
    """

    track_id: int
    weight: NDArray[np.float64] = field(default_factory=lambda: np.zeros(N_ATTR))
    weighted_sum: NDArray[np.float64] = field(default_factory=lambda: np.zeros(N_ATTR))
    decided: NDArray[np.bool_] = field(default_factory=lambda: np.zeros(N_ATTR, bool))
    estimates: int = 0
    frozen: bool = False
    descriptor_sum: NDArray[np.float64] = field(default_factory=lambda: np.zeros(1024))

    @property
    def probability(self) -> NDArray[np.float32]:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.weight > 0, self.weighted_sum / self.weight, np.nan).astype(np.float32)

    @property
    def known(self) -> NDArray[np.bool_]:
        return np.asarray(self.weight > 0)

    def confidence(self) -> NDArray[np.float32]:
        """Per attribute, 2 |p - 0.5| (0: undecided, 1: certain); NaN where not estimated."""
        return np.asarray(2 * np.abs(self.probability - 0.5), np.float32)


class AttributeFusion:
    """Updates tracks' attributes from estimates, with hysteresis and freezing."""

    def __init__(
        self, hysteresis: float, freeze_confidence: float, min_estimates: int, max_estimates: int
    ) -> None:
        self.hysteresis = hysteresis
        self.freeze_confidence = freeze_confidence
        self.min_estimates = min_estimates
        self.max_estimates = max_estimates

    def update(self, track: TrackAttributes, probability: NDArray[np.float32], quality: float,
               descriptor: NDArray[np.float32]) -> bool:  # fmt: skip
        """Add one estimate; returns True when this update froze the track."""
        if track.frozen or quality <= 0:
            return False
        known = ~np.isnan(probability)
        track.weight[known] += quality
        track.weighted_sum[known] += quality * probability[known]
        track.descriptor_sum += quality * descriptor
        track.estimates += 1
        p = track.probability
        if track.estimates == 1:
            track.decided = np.nan_to_num(p, nan=0.0) > 0.5
        else:
            track.decided = np.where(p > 0.5 + self.hysteresis, True, track.decided)
            track.decided = np.where(p < 0.5 - self.hysteresis, False, track.decided)
        confident = np.nanmin(track.confidence()[track.known]) if track.known.any() else 0.0
        ready = track.estimates >= self.min_estimates and confident >= self.freeze_confidence
        if ready or track.estimates >= self.max_estimates:
            track.frozen = True
        return track.frozen


def tracks_to_describe(
    packet: Any, every: int, states: dict[int, TrackAttributes], min_face: float = 0.0,
    refine: int | None = None,
) -> list[tuple[int, int]]:  # fmt: skip
    """(track id, detection index) of the live tracks due an estimate on this frame, whose
    detected face is at least ``min_face`` px tall: a track not described yet on its first
    such frame, the others every ``every`` frames, at most ``refine`` of those (the least
    described first; None: all), so a crowd's refinements never stall a frame."""
    new, again = [], []
    heights = packet.detections.xyxy[:, 3] - packet.detections.xyxy[:, 1] if packet.detections else None
    for tid, det, coasting in zip(packet.tracks.track_id, packet.tracks.detection, packet.tracks.coasting,
                                  strict=True):  # fmt: skip
        state = states.get(int(tid))
        if coasting or det < 0 or (state is not None and state.frozen):
            continue
        if heights is not None and heights[det] < min_face:
            continue
        # A new track at once (its surrogate is chosen from it); later ones spread over frames.
        if state is None:
            new.append((int(tid), int(det)))
        elif packet.index % every == int(tid) % every:
            again.append((state.estimates, int(tid), int(det)))
    again.sort()
    return new + [(tid, det) for _, tid, det in again[:refine]]
