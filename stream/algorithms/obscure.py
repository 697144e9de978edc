"""Obscuring faces in place: blur, pixelate or solid mask, box- or ellipse-shaped.

Strength scales with the face: blur sigma and pixel block size are fractions
of the region width, so a face is equally unreadable at every size, with a
floor in pixels (``min_px``) so that small faces are not merely softened.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import cast

import cv2
import numpy as np
from numpy.typing import NDArray

from stream.config import ObscureConfig

_SHIFT = 4  # sub-pixel bits for cv2 drawing


def region_mask(
    box: NDArray[np.float32], clipped: tuple[int, int, int, int], shape: str
) -> NDArray[np.uint8]:
    """uint8 mask (255 inside) of ``box``'s region over the ``clipped`` integer window.

    The shape is laid over the whole (unclipped) box, so a face at the frame
    edge keeps its ellipse; only the window is returned.
    """
    x1, y1, x2, y2 = clipped
    mask = np.zeros((y2 - y1, x2 - x1), np.uint8)
    _draw(mask, box, x1, y1, shape)
    return mask


def _draw(mask: NDArray[np.uint8], box: NDArray[np.float32], x0: int, y0: int, shape: str) -> None:
    """Draw ``box``'s region (255) into ``mask``, its clipped window, whose pixel (0, 0) is
    frame pixel (x0, y0)."""
    if shape == "box":
        mask[:] = 255  # the mask is the box's own window
        return
    one = 1 << _SHIFT
    centre = (round(((box[0] + box[2]) / 2 - x0) * one), round(((box[1] + box[3]) / 2 - y0) * one))
    axes = (max(1, round((box[2] - box[0]) / 2 * one)), max(1, round((box[3] - box[1]) / 2 * one)))
    cv2.ellipse(mask, centre, axes, 0, 0, 360, 255, thickness=-1, lineType=cv2.LINE_8, shift=_SHIFT)


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
    return cast(NDArray[np.uint8], cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR))


# Block edges softened by a blur of this fraction of the block: a hard edge that falls on
# a hairline or a jaw repeats it (on hamilton, a third of the faces pixelated in blocks
# of a quarter of their width kept detail the leak measure sees; with soft edges 3%).
BLOCK_EDGE = 0.4
MANY = 8  # from this many regions in a frame, blur does them together (``_all_at_once``)
STEP = 1.5  # ... with their blur sigmas rounded up to powers of this (at most 50% stronger)


def _pixelated(roi: NDArray[np.uint8], block: float) -> NDArray[np.uint8]:
    h, w = roi.shape[:2]
    sw, sh = max(1, math.ceil(w / block)), max(1, math.ceil(h / block))
    small = cv2.resize(roi, (sw, sh), interpolation=cv2.INTER_AREA)
    # Softened at 8 px a block (cheap at any face size), then brought to size.
    step = min(8.0, block)
    blocks = cv2.resize(small, (round(sw * step), round(sh * step)), interpolation=cv2.INTER_NEAREST)
    soft = cv2.GaussianBlur(blocks, (0, 0), max(0.5, BLOCK_EDGE * step), borderType=cv2.BORDER_REFLECT)
    return cast(NDArray[np.uint8], cv2.resize(soft, (w, h), interpolation=cv2.INTER_LINEAR))


Window = tuple[int, int, int, int]


def strength_groups(
    boxes: NDArray[np.float32], width: int, height: int, config: ObscureConfig, strength: float
) -> list[tuple[float, list[tuple[NDArray[np.float32], Window]], Window]]:
    """Blur regions grouped by strength for ``_all_at_once`` (here and on the device): per
    sigma (rounded up to a power of ``STEP``), its regions with their clipped windows, and
    the window they span together."""
    boxes = np.asarray(boxes, np.float32)
    amounts = np.maximum(config.min_px, strength * (boxes[:, 2] - boxes[:, 0]))
    steps = np.ceil(np.log(np.maximum(amounts, 1e-3)) / np.log(STEP)).astype(int)
    result = []
    for step in np.unique(steps):
        group = [(b, c) for b in boxes[steps == step] if (c := clip_box(b, width, height)) is not None]
        if not group:
            continue
        windows = np.array([c for _, c in group])
        ux1, uy1 = (int(v) for v in windows[:, :2].min(axis=0))
        ux2, uy2 = (int(v) for v in windows[:, 2:].max(axis=0))
        result.append((float(STEP**step), group, (ux1, uy1, ux2, uy2)))
    return result


class Obscurer:
    """Applies one obscuring mode to regions of a frame."""

    def __init__(self, config: ObscureConfig) -> None:
        self.config = config
        self.strength = config.strength_of(config.mode)
        self._colour = np.array(config.colour, np.uint8)
        # The fill is chosen once here, not compared per face per frame ("synth" faces that
        # reach an Obscurer were not replaced: the stage is built with the fallback mode).
        fills: dict[str, Callable[[NDArray[np.uint8], float], NDArray[np.uint8]]] = {
            "mask": self._masked,
            "blur": self._blur,
            "pixelate": self._pixelate,
        }
        self._fill = fills.get(config.mode, self._pixelate)
        self._together = config.mode == "blur"

    def apply(self, image: NDArray[np.uint8], boxes: NDArray[np.float32]) -> None:
        """Obscure each of ``boxes`` ``(N, 4)`` xyxy in ``image`` ``(H, W, 3)`` uint8 RGB, in place."""
        height, width = image.shape[:2]
        cfg = self.config
        # Pixel blocks stay aligned to each face: lined up per strength instead, one small
        # face in 400 of MOT20-08 kept a detail the leak measure sees.
        if self._together and len(boxes) >= MANY:
            self._all_at_once(image, np.asarray(boxes, np.float32))
            return
        for box in boxes:
            clipped = clip_box(box, width, height)
            if clipped is None:
                continue
            x1, y1, x2, y2 = clipped
            roi = image[y1:y2, x1:x2]
            cv2.copyTo(self._fill(roi, float(box[2] - box[0])), region_mask(box, clipped, cfg.shape), roi)

    def _masked(self, roi: NDArray[np.uint8], width: float) -> NDArray[np.uint8]:
        replaced = np.empty_like(roi)
        replaced[:] = self._colour
        return replaced

    def _blur(self, roi: NDArray[np.uint8], width: float) -> NDArray[np.uint8]:
        return _blurred(roi, max(self.config.min_px, self.strength * width))

    def _pixelate(self, roi: NDArray[np.uint8], width: float) -> NDArray[np.uint8]:
        return _pixelated(roi, max(2.0, self.config.min_px, self.strength * width))

    def _all_at_once(self, image: NDArray[np.uint8], boxes: NDArray[np.float32]) -> None:
        """Many regions (a crowd holds hundreds): one blur per strength over the area its
        regions span, copied through one mask, not one per region. Strengths are rounded up
        to powers of ``STEP``; every region is blurred from the input."""
        height, width = image.shape[:2]
        source = image.copy()
        for sigma, group, (ux1, uy1, ux2, uy2) in strength_groups(
            boxes, width, height, self.config, self.strength
        ):
            mask = np.zeros((uy2 - uy1, ux2 - ux1), np.uint8)
            for box, (x1, y1, x2, y2) in group:  # each drawn within its own window, as one alone is
                _draw(mask[y1 - uy1 : y2 - uy1, x1 - ux1 : x2 - ux1], box, x1, y1, self.config.shape)
            filled = _blurred(source[uy1:uy2, ux1:ux2], sigma)
            cv2.copyTo(filled, mask, image[uy1:uy2, ux1:ux2])

    def mask_whole(self, image: NDArray[np.uint8]) -> None:
        """Cover the whole frame with the mask colour, in place."""
        image[:] = self._colour
