"""Obscuring faces in place: blur, pixelate or solid mask, box- or ellipse-shaped.

Strength scales with the face: blur sigma and pixel block size are fractions
of the region width, so a face is equally unreadable at every size.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
from numpy.typing import NDArray

from .config import ObscureConfig


def region_mask(width: int, height: int, shape: str) -> NDArray[np.bool_]:
    """``(height, width)`` bool mask of the region inside its box: all of it, or the inscribed ellipse."""
    if shape == "box":
        return np.ones((height, width), bool)
    yy, xx = np.ogrid[:height, :width]
    cy, cx = (height - 1) / 2, (width - 1) / 2
    ry, rx = max(height / 2, 0.5), max(width / 2, 0.5)
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def clip_box(box: NDArray[np.float32], width: int, height: int) -> tuple[int, int, int, int] | None:
    """Integer ``(x1, y1, x2, y2)`` covering ``box``, clipped to the frame; None if empty."""
    x1 = max(0, math.floor(float(box[0])))
    y1 = max(0, math.floor(float(box[1])))
    x2 = min(width, math.ceil(float(box[2])))
    y2 = min(height, math.ceil(float(box[3])))
    if x2 <= x1 or y2 <= y1:
        return None
    return x1, y1, x2, y2


def _blurred(roi: NDArray[np.uint8], sigma: float) -> NDArray[np.uint8]:
    # A large Gaussian is cheap at low resolution: shrink so sigma is ~2 px there.
    h, w = roi.shape[:2]
    factor = max(1.0, sigma / 2.0)
    sw, sh = max(1, round(w / factor)), max(1, round(h / factor))
    small = cv2.resize(roi, (sw, sh), interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (0, 0), sigmaX=max(sigma / factor, 0.5), borderType=cv2.BORDER_REFLECT)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def _pixelated(roi: NDArray[np.uint8], block: float) -> NDArray[np.uint8]:
    h, w = roi.shape[:2]
    sw, sh = max(1, math.ceil(w / block)), max(1, math.ceil(h / block))
    small = cv2.resize(roi, (sw, sh), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST)


class Obscurer:
    """Applies one obscuring mode to regions of a frame."""

    def __init__(self, config: ObscureConfig) -> None:
        self.config = config
        self._colour = np.array(config.colour, np.uint8)

    def apply(self, image: NDArray[np.uint8], boxes: NDArray[np.float32]) -> None:
        """Obscure each of ``boxes`` ``(N, 4)`` xyxy in ``image`` ``(H, W, 3)`` uint8 RGB, in place."""
        height, width = image.shape[:2]
        cfg = self.config
        for box in boxes:
            clipped = clip_box(box, width, height)
            if clipped is None:
                continue
            # The shape is laid over the whole (unclipped) box so a face at the
            # edge keeps the same ellipse; only the visible part is written.
            bx1, by1 = math.floor(float(box[0])), math.floor(float(box[1]))
            bw = max(1, math.ceil(float(box[2])) - bx1)
            bh = max(1, math.ceil(float(box[3])) - by1)
            x1, y1, x2, y2 = clipped
            mask = region_mask(bw, bh, cfg.shape)[y1 - by1 : y2 - by1, x1 - bx1 : x2 - bx1]
            roi = image[y1:y2, x1:x2]
            if cfg.mode == "mask":
                roi[mask] = self._colour
                continue
            if cfg.mode == "blur":
                replaced = _blurred(roi, cfg.strength * bw)
            else:
                replaced = _pixelated(roi, max(2.0, cfg.strength * bw))
            roi[mask] = replaced[mask]

    def mask_whole(self, image: NDArray[np.uint8]) -> None:
        """Cover the whole frame with the mask colour, in place."""
        image[:] = self._colour
