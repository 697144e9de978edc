"""Checks of the face models on labelled photos: identity ROC AUC, gender, landmark placement.

Used by the tests (which assert the thresholds) and by ``bench/face_models.py``
(which prints the figures). Photos and identities come from
``../shared/media/MANIFEST.csv``; nothing here is copied into the project.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from numpy.typing import NDArray

from .centerface import CenterFace, FaceArrays
from .crops import crop_from_box
from .facemodels import FaceMesh, FaceRes

# Identities whose gender the sources' names give (TV characters, public figures).
GENDER_LABELS = {
    "amy": "female", "bernadette": "female", "penny": "female",
    "howard": "male", "leonard": "male", "raj": "male", "sheldon": "male", "stuart": "male",
}  # fmt: skip


@dataclass(frozen=True)
class LabelledPhoto:
    path: Path
    identity: str


def labelled_photos(media: Path) -> list[LabelledPhoto]:
    """Single-person photos with an identity: deepface's clusters and face-api.js's people."""
    photos = []
    with open(media / "MANIFEST.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            path, identity = row["path"], row["identity"]
            if path.startswith("deepface/tests/unit/dataset/img"):
                match = re.match(r"deepface_([A-Z])\b", identity)
                if match and "other" not in identity:
                    photos.append(LabelledPhoto(media / path, f"deepface_{match.group(1)}"))
            elif path.startswith("face-api.js/examples/images/") and path.count("/") == 4:
                photos.append(LabelledPhoto(media / path, path.split("/")[3]))
    return photos


def read_rgb(path: Path) -> NDArray[np.uint8]:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise OSError(f"cannot read {path}")
    return np.asarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), np.uint8)


PHOTO_SIDE = 640  # photos are shrunk so their faces are no larger than a video frame's


def frame_sized(image: NDArray[np.uint8], side: int = PHOTO_SIDE) -> NDArray[np.uint8]:
    """``image`` shrunk (area interpolation) so its longer side is at most ``side``."""
    scale = side / max(image.shape[:2])
    if scale >= 1:
        return image
    return np.asarray(cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA), np.uint8)


def main_face(detector: CenterFace, image: NDArray[np.uint8]) -> tuple[NDArray[np.uint8], FaceArrays] | None:
    """The largest face of a photo; the photo is padded first, as close crops fill the frame."""
    pad = max(image.shape[:2]) // 2
    padded = np.asarray(
        cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=(0, 0, 0)), np.uint8
    )
    scale = min(1.0, 1280 / max(padded.shape[:2]))
    (faces,) = detector.detect([padded], scale, 0.5)
    if len(faces.boxes) == 0:
        return None
    areas = (faces.boxes[:, 2] - faces.boxes[:, 0]) * (faces.boxes[:, 3] - faces.boxes[:, 1])
    i = int(np.argmax(areas))
    return padded, FaceArrays(faces.boxes[i : i + 1], faces.scores[i : i + 1], faces.landmarks[i : i + 1])


def photo_faces(
    detector: CenterFace, photos: Sequence[LabelledPhoto]
) -> Iterator[tuple[LabelledPhoto, NDArray[np.uint8], FaceArrays]]:
    """Each photo with its (padded) image and its largest face; photos without a face are left out."""
    for photo in photos:
        found = main_face(detector, read_rgb(photo.path))
        if found is not None:
            yield photo, found[0], found[1]


def roc_auc(scores: NDArray[np.float64], positive: NDArray[np.bool_]) -> float:
    """Area under the ROC curve (Mann-Whitney U, ties counted half)."""
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    i = 0
    while i < len(scores):
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


@dataclass(frozen=True)
class FaceResFigures:
    identities: int
    photos: int
    auc: float
    same_mean: float
    different_mean: float
    gender: dict[str, tuple[str, float]]  # identity -> (predicted by majority, mean P(male))


def evaluate_faceres(
    detector: CenterFace, faceres: FaceRes, photos: Sequence[LabelledPhoto]
) -> FaceResFigures:
    descriptors, identities, male = [], [], []
    for photo, padded, face in photo_faces(detector, photos):
        crop = crop_from_box(padded, face.boxes[0], face.landmarks[0], faceres.size)
        result = faceres.predict([crop])
        descriptors.append(result.descriptor[0])
        identities.append(photo.identity)
        male.append(float(result.male[0]))
    d = np.array(descriptors)
    similarity = d @ d.T
    upper = np.triu_indices(len(d), k=1)
    ids = np.array(identities)
    same = ids[upper[0]] == ids[upper[1]]
    scores = similarity[upper]
    gender = {}
    for identity in GENDER_LABELS:
        probs = [m for m, i in zip(male, identities, strict=True) if i == identity]
        if probs:
            gender[identity] = (
                "male" if np.mean(np.array(probs) > 0.5) > 0.5 else "female",
                float(np.mean(probs)),
            )
    return FaceResFigures(
        identities=len(set(identities)),
        photos=len(identities),
        auc=roc_auc(scores.astype(np.float64), same),
        same_mean=float(scores[same].mean()),
        different_mean=float(scores[~same].mean()),
        gender=gender,
    )


def landmark_errors(
    detector: CenterFace, mesh: FaceMesh, photos: Sequence[LabelledPhoto]
) -> NDArray[np.float64]:
    """Per photo: mean distance from CenterFace's five landmarks to the matching mesh
    points, as a fraction of the face size (box height)."""
    errors = []
    for _, padded, face in photo_faces(detector, photos):
        crop = crop_from_box(padded, face.boxes[0], face.landmarks[0], mesh.size)
        points = mesh.predict([crop]).five_points()[0]
        reference = face.landmarks[0]
        # Pair each reference point with the mesh point of its kind, sides by x order.
        pairs = []
        for ref_idx, mesh_idx in (((0, 1), (0, 1)), ((3, 4), (3, 4))):
            ref = sorted(reference[list(ref_idx)].tolist())
            got = sorted(points[list(mesh_idx)].tolist())
            pairs += list(zip(ref, got, strict=True))
        pairs.append((reference[2].tolist(), points[2].tolist()))
        size = float(face.boxes[0, 3] - face.boxes[0, 1])
        errors.append(np.mean([np.hypot(a[0] - b[0], a[1] - b[1]) for a, b in pairs]) / size)
    return np.array(errors)
