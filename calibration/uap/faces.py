"""Faces, and the stream's drawing made differentiable: the pattern sampled onto each face's
mesh with the per-triangle map ``from_canonical`` draws with, and the faceres crop from that."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
from numpy.typing import NDArray

from calibration.uap.settings import FACERES_SIZE
from engines.crops import crop_from_box
from engines.evaluation import frame_sized, main_face
from stream.algorithms.facewarp import SIZE, canonical_map

if TYPE_CHECKING:
    import torch

    Logits = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Face:
    """One photo's largest face, cut to its surroundings: ``image`` ``(H, W, 3)`` uint8 RGB; the
    detector's ``box`` ``(4,)`` xyxy and ``landmarks`` ``(5, 2)``, and the mesh ``points``
    ``(468, 3)``, all in ``image`` pixels."""

    identity: str
    image: NDArray[np.uint8]
    box: NDArray[np.float32]
    landmarks: NDArray[np.float32]
    points: NDArray[np.float32]


def find_face(image: NDArray[np.uint8], identity: str, detector: Any, mesh: Any) -> Face | None:
    """The photo's largest face with its mesh; None without a face or a confident mesh."""
    found = main_face(detector, frame_sized(image))
    if found is None:
        return None
    padded, faces = found
    box, landmarks = faces.boxes[0], faces.landmarks[0]
    result = mesh.predict([crop_from_box(padded, box, landmarks, mesh.size)])
    if result.confidence[0] < 0.5:
        return None
    # Wide enough for the faceres crop (1.5 x the box, turned by the eye line) around the face.
    side = 1.2 * float(max(box[2] - box[0], box[3] - box[1]))
    cx, cy = (box[:2] + box[2:]) / 2
    h, w = padded.shape[:2]
    x1, y1 = max(0, int(cx - side)), max(0, int(cy - side))
    x2, y2 = min(w, int(cx + side) + 1), min(h, int(cy + side) + 1)
    shift = np.array([x1, y1], np.float32)
    points = result.points[0].copy()
    points[:, :2] -= shift
    return Face(identity, padded[y1:y2, x1:x2].copy(), box - np.tile(shift, 2), landmarks - shift, points)


@dataclass(frozen=True)
class FacePath:
    """The path of a canonical pattern to one face's faceres input, as torch tensors: ``clean``
    ``(224, 224, 3)`` crop (RGB 0-255); ``window`` ``(1, 3, h, w)`` the mesh's window;
    ``to_canonical`` ``(1, h, w, 2)`` and ``to_window`` ``(1, 224, 224, 2)`` grid_sample grids
    (align_corners); ``covered`` ``(1, 1, h, w)`` the pixels the mesh covers."""

    clean: torch.Tensor
    window: torch.Tensor
    to_canonical: torch.Tensor
    to_window: torch.Tensor
    covered: torch.Tensor


def _normalized(coords: NDArray[np.floating], width: int, height: int) -> NDArray[np.float32]:
    """Pixel coordinates ``(..., 2)`` as grid_sample's [-1, 1] (align_corners=True)."""
    scale = np.array([2 / max(width - 1, 1), 2 / max(height - 1, 1)], np.float32)
    return np.asarray(coords * scale - 1, np.float32)


def face_path(face: Face, size: int = FACERES_SIZE) -> FacePath:
    """Precompute one face's path (see ``FacePath``)."""
    import torch

    crop = crop_from_box(face.image, face.box, face.landmarks, size)
    mapped = canonical_map(face.points, (face.image.shape[0], face.image.shape[1]))
    if mapped is None:
        raise ValueError(f"the mesh of a face of {face.identity} lies outside its image")
    coords, covered, x1, y1 = mapped
    h, w = covered.shape
    grid = np.stack(np.meshgrid(np.arange(size), np.arange(size)), axis=-1).reshape(-1, 2).astype(np.float64)
    inverse = cv2.invertAffineTransform(crop.to_crop)
    in_image = grid @ inverse[:, :2].T + inverse[:, 2] - np.array([x1, y1])
    window = face.image[y1 : y1 + h, x1 : x1 + w].astype(np.float32)
    return FacePath(
        clean=torch.from_numpy(crop.image.astype(np.float32)),
        window=torch.from_numpy(window).permute(2, 0, 1)[None].contiguous(),
        to_canonical=torch.from_numpy(_normalized(coords, SIZE, SIZE))[None],
        to_window=torch.from_numpy(_normalized(in_image.reshape(size, size, 2), w, h))[None],
        covered=torch.from_numpy(covered.astype(np.float32))[None, None],
    )


def perturbed_crops(paths: Sequence[FacePath], v: torch.Tensor) -> torch.Tensor:
    """``(N, 224, 224, 3)`` faceres inputs (RGB 0-255) of the faces with the canonical pattern
    ``v`` ``(SIZE, SIZE, 3)`` drawn on, added and clipped as the stream does."""
    import torch
    import torch.nn.functional as F

    texture = v.permute(2, 0, 1)[None]
    crops = []
    for p in paths:
        drawn = F.grid_sample(texture, p.to_canonical, align_corners=True) * p.covered
        change = torch.clamp(p.window + drawn, 0, 255) - p.window
        moved = F.grid_sample(change, p.to_window, align_corners=True)
        crops.append(p.clean + moved[0].permute(1, 2, 0))
    return torch.stack(crops)


class FaceProblem:
    """Faces seen through a target (``(B, 224, 224, 3)`` RGB 0-255 -> ``(B, C)`` logits)."""

    def __init__(self, paths: Sequence[FacePath], target: Logits) -> None:
        self.paths = list(paths)
        self.target = target

    def __len__(self) -> int:
        return len(self.paths)

    def logits(self, indices: Sequence[int], v: torch.Tensor) -> torch.Tensor:
        return self.target(perturbed_crops([self.paths[i] for i in indices], v))
