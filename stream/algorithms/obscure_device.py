"""Obscuring on the inference device: the ``Obscurer``'s modes as torch operations on a frame
kept there (``(H, W, 3)`` uint8 RGB tensor), for the GPU frame path (``detect.device_frames``).

The same regions, strengths and shapes as ``stream.algorithms.obscure``: a region is shrunk
(area), blurred (separable Gaussian) or cut into blocks, brought back to size (bilinear) and
copied in through its box or ellipse. Results match the OpenCV path within a grey level on
average (borders reflect without repeating the edge pixel; the ellipse is the analytic one,
grown by the half pixel OpenCV's filled polygon adds); tests/test_device_frames.py holds
them to it. torch is imported when one is made.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import NDArray

from stream.algorithms.obscure import BLOCK_EDGE, MANY, clip_box, strength_groups
from stream.config import ObscureConfig


class DeviceObscurer:
    """``Obscurer.apply`` for a frame tensor on any torch device."""

    def __init__(self, config: ObscureConfig) -> None:
        import torch
        import torch.nn.functional as F

        self._torch, self._F = torch, F
        self.config = config
        self.strength = config.strength_of(config.mode)
        self._colour = torch.tensor(config.colour, dtype=torch.uint8)
        self._kernels: dict[tuple[float, Any], Any] = {}

    def apply(self, image: Any, boxes: NDArray[np.float32]) -> None:
        """Obscure each of ``boxes`` ``(N, 4)`` xyxy in ``image`` ``(H, W, 3)`` uint8, in place."""
        height, width = image.shape[:2]
        boxes = np.asarray(boxes, np.float32)
        if self.config.mode == "blur" and len(boxes) >= MANY:
            self._all_at_once(image, boxes)
            return
        for box in boxes:
            clipped = clip_box(box, width, height)
            if clipped is None:
                continue
            x1, y1, x2, y2 = clipped
            roi = image[y1:y2, x1:x2]
            filled = self._fill(roi, float(box[2] - box[0]))
            mask = self._mask(box, clipped, image.device)
            roi.copy_(self._torch.where(mask[..., None], filled, roi))

    def _fill(self, roi: Any, width: float) -> Any:
        cfg = self.config
        if cfg.mode == "mask":
            return self._colour.to(roi.device).expand(roi.shape)
        if cfg.mode == "blur":
            return self._blurred(roi, max(cfg.min_px, self.strength * width))
        return self._pixelated(roi, max(2.0, cfg.min_px, self.strength * width))

    def _mask(self, box: NDArray[np.float32], clipped: tuple[int, int, int, int], device: Any) -> Any:
        """Bool ``(h, w)`` of ``box``'s region over its clipped window (see ``region_mask``)."""
        torch = self._torch
        x1, y1, x2, y2 = clipped
        if self.config.shape == "box":
            return torch.ones((y2 - y1, x2 - x1), dtype=torch.bool, device=device)
        cx, cy = (float(box[0]) + float(box[2])) / 2, (float(box[1]) + float(box[3])) / 2
        # Pixel centres at integer coordinates, as OpenCV draws the CPU path's ellipse; its
        # filled polygon takes in the outline, about half a pixel more each way (with it, the
        # two masks differ on 0.4% of a region's pixels, against 2% without).
        ax, ay = (float(box[2]) - float(box[0])) / 2 + 0.5, (float(box[3]) - float(box[1])) / 2 + 0.5
        ys = (torch.arange(y1, y2, dtype=torch.float32, device=device) - cy) / ay
        xs = (torch.arange(x1, x2, dtype=torch.float32, device=device) - cx) / ax
        return ys[:, None] ** 2 + xs[None, :] ** 2 <= 1.0

    def _blurred(self, roi: Any, sigma: float) -> Any:
        # As the CPU path: a large Gaussian is cheap at low resolution, ~2 px there.
        h, w = roi.shape[:2]
        factor = max(1.0, sigma / 2.0)
        sw, sh = max(1, round(w / factor)), max(1, round(h / factor))
        x = roi.permute(2, 0, 1)[None].float()
        small = self._F.interpolate(x, size=(sh, sw), mode="area")
        small = self._gaussian(small, max(sigma / factor, 0.5))
        return self._to_image(self._F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False))

    def _pixelated(self, roi: Any, block: float) -> Any:
        F = self._F
        h, w = roi.shape[:2]
        sw, sh = max(1, math.ceil(w / block)), max(1, math.ceil(h / block))
        x = roi.permute(2, 0, 1)[None].float()
        small = F.interpolate(x, size=(sh, sw), mode="area")
        step = min(8.0, block)
        blocks = F.interpolate(small, size=(round(sh * step), round(sw * step)), mode="nearest")
        soft = self._gaussian(blocks, max(0.5, BLOCK_EDGE * step))
        return self._to_image(F.interpolate(soft, size=(h, w), mode="bilinear", align_corners=False))

    def _gaussian(self, x: Any, sigma: float) -> Any:
        """Separable Gaussian of ``x`` ``(1, C, h, w)``, OpenCV's kernel size for 8-bit images."""
        torch, F = self._torch, self._F
        key = (round(sigma, 4), x.device)
        kernel = self._kernels.get(key)
        if kernel is None:
            size = round(sigma * 6 + 1) | 1
            t = torch.arange(size, dtype=torch.float32, device=x.device) - size // 2
            kernel = torch.exp(-(t**2) / (2 * sigma * sigma))
            kernel = kernel / kernel.sum()
            self._kernels[key] = kernel
        channels, radius = x.shape[1], kernel.numel() // 2
        along_width = kernel.reshape(1, 1, 1, -1).expand(channels, 1, 1, -1)
        along_height = kernel.reshape(1, 1, -1, 1).expand(channels, 1, -1, 1)
        mode = "reflect" if x.shape[3] > radius else "replicate"
        x = F.conv2d(F.pad(x, [radius, radius, 0, 0], mode=mode), along_width, groups=channels)
        mode = "reflect" if x.shape[2] > radius else "replicate"
        return F.conv2d(F.pad(x, [0, 0, radius, radius], mode=mode), along_height, groups=channels)

    def _to_image(self, x: Any) -> Any:
        return x[0].permute(1, 2, 0).round().clamp(0, 255).to(self._torch.uint8)

    def _all_at_once(self, image: Any, boxes: NDArray[np.float32]) -> None:
        """As ``Obscurer._all_at_once``: one blur per strength over the area its regions span."""
        torch = self._torch
        height, width = image.shape[:2]
        source = image.clone()
        for sigma, group, (ux1, uy1, ux2, uy2) in strength_groups(
            boxes, width, height, self.config, self.strength
        ):
            mask = torch.zeros((uy2 - uy1, ux2 - ux1), dtype=torch.bool, device=image.device)
            for box, window in group:
                x1, y1, x2, y2 = window
                mask[y1 - uy1 : y2 - uy1, x1 - ux1 : x2 - ux1] |= self._mask(box, window, image.device)
            filled = self._blurred(source[uy1:uy2, ux1:ux2], sigma)
            region = image[uy1:uy2, ux1:ux2]
            region.copy_(torch.where(mask[..., None], filled, region))
