"""Face crops shared by the face models: square, upright (rotated by the eye line), resized.

A crop is described by the 2x3 affine map from image pixels to crop pixels,
so results computed on the crop map back to the image exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from numpy.typing import NDArray


@dataclass(frozen=True)
class Crop:
    """``image``: ``(size, size, 3)`` uint8 RGB; ``to_crop``: ``(2, 3)`` float64 image -> crop."""

    image: NDArray[np.uint8]
    to_crop: NDArray[np.float64]

    def to_image(self, points: NDArray[np.floating]) -> NDArray[np.float32]:
        """Map ``(..., 2)`` crop points back to image pixels."""
        inverse = cv2.invertAffineTransform(self.to_crop)
        flat = points.reshape(-1, 2).astype(np.float64)
        mapped = flat @ inverse[:, :2].T + inverse[:, 2]
        return mapped.reshape(points.shape).astype(np.float32)


def eye_angle(left_eye: NDArray[np.floating], right_eye: NDArray[np.floating]) -> float:
    """Angle in degrees of the line between the eyes (image-left eye first), 0 when level."""
    dx, dy = (right_eye - left_eye).astype(float)
    return float(np.degrees(np.arctan2(dy, dx)))


def face_crop(
    image: NDArray[np.uint8],
    centre: tuple[float, float],
    side: float,
    size: int,
    angle_deg: float = 0.0,
) -> Crop:
    """A ``size`` x ``size`` crop of the square of ``side`` pixels around ``centre``,
    turned by ``angle_deg`` so the eye line is level; outside the image is black."""
    scale = size / max(side, 1.0)
    matrix = cv2.getRotationMatrix2D((float(centre[0]), float(centre[1])), angle_deg, scale)
    matrix[:, 2] += np.array([size / 2 - centre[0], size / 2 - centre[1]])
    pixels = cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0))
    return Crop(np.asarray(pixels, np.uint8), np.asarray(matrix, np.float64))


def crop_from_box(
    image: NDArray[np.uint8],
    box: NDArray[np.floating],
    landmarks: NDArray[np.floating] | None,
    size: int,
    enlarge: float = 1.5,
) -> Crop:
    """The upright square crop around a detector box (xyxy), enlarged by ``enlarge``.

    ``landmarks``: the detector's five points (two eyes first) to level the eyes, or None.
    """
    x1, y1, x2, y2 = (float(v) for v in box)
    centre = ((x1 + x2) / 2, (y1 + y2) / 2)
    side = max(x2 - x1, y2 - y1) * enlarge
    angle = 0.0
    if landmarks is not None:
        eyes = sorted(landmarks[:2].tolist())
        angle = eye_angle(np.array(eyes[0]), np.array(eyes[1]))
    return face_crop(image, centre, side, size, angle)
