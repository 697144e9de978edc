"""The obscure stage, the last: every face not replaced is hidden; the frame is marked anonymized."""

from __future__ import annotations

from typing import Any

import numpy as np

from stream.algorithms.obscure import Obscurer, clip_box
from stream.config import ObscureConfig
from stream.frames import FramePacket


class ObscureStage:
    """Obscures every live and coasting track; the last stage, it marks the frame anonymized.

    On the GPU frame path (``packet.device_image``) the regions are obscured on the device
    (``DeviceObscurer``) after the windows the synth and perturb stages drew into ``image``
    are copied in, and the frame comes back to ``image`` in one download.
    """

    name = "obscure"
    parallel = False

    def __init__(self, config: ObscureConfig) -> None:
        self.obscurer = Obscurer(config)
        self._device_obscurer: Any = None

    def process(self, packet: FramePacket) -> FramePacket:
        boxes = packet.tracks.xyxy
        if packet.replaced:
            keep = np.array([int(t) not in packet.replaced for t in packet.tracks.track_id], bool)
            boxes = boxes[keep]
        boxes = np.concatenate([boxes, packet.untracked])
        if packet.device_image is not None:
            self._on_device(packet, boxes)
        else:
            if not packet.image.flags.writeable:
                packet.image = np.array(packet.image)
            self.obscurer.apply(packet.image, boxes)
        packet.anonymized = True
        return packet

    def _on_device(self, packet: FramePacket, boxes: np.ndarray) -> None:
        if self._device_obscurer is None:
            from stream.algorithms.obscure_device import DeviceObscurer

            self._device_obscurer = DeviceObscurer(self.obscurer.config)
        frame = packet.device_image
        for window in drawn_windows(packet):
            x1, y1, x2, y2 = window
            frame[y1:y2, x1:x2].copy_(_tensor(packet.image[y1:y2, x1:x2], frame.device))
        self._device_obscurer.apply(frame, boxes)
        packet.image = frame.cpu().numpy()
        packet.device_image = None  # the device memory goes back with the packet's last use

    def reset(self) -> None:
        return None


def drawn_windows(packet: FramePacket) -> list[tuple[int, int, int, int]]:
    """The windows ``(x1, y1, x2, y2)`` of ``packet.image`` that the stages before this one
    changed: per replaced track, the surrogate's window (the perturbation is drawn through the
    same map) and the track's box (its head is softened around the face)."""
    height, width = packet.image.shape[:2]
    rows = {int(t): i for i, t in enumerate(packet.tracks.track_id)}
    windows = []
    for tid in sorted(packet.replaced):
        drawn = packet.drawn.get(tid)
        if drawn is None or tid not in rows:  # not known where it drew: the whole frame comes in
            return [(0, 0, width, height)]
        h, w = drawn.coverage.shape
        x1, y1, x2, y2 = drawn.x1, drawn.y1, drawn.x1 + w, drawn.y1 + h
        box = clip_box(packet.tracks.xyxy[rows[tid]], width, height)
        if box is not None:
            x1, y1, x2, y2 = min(x1, box[0]), min(y1, box[1]), max(x2, box[2]), max(y2, box[3])
        windows.append((max(0, x1), max(0, y1), min(width, x2), min(height, y2)))
    return windows


def _tensor(pixels: np.ndarray, device: Any) -> Any:
    import torch

    return torch.from_numpy(np.ascontiguousarray(pixels)).to(device)
