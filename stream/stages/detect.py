"""The detect stage: CenterFace at the resolution ``detect.min_face`` asks for."""

from __future__ import annotations

import warnings
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

from engines.centerface import CenterFace
from stream.config import DetectConfig
from stream.errors import ConfigError
from stream.frames import Detections, FramePacket


def detection_scale(width: int, height: int, config: DetectConfig) -> float:
    """Resize factor for detection: the smallest wanted face reaches the model's reliable size."""
    scale = config.model_min_face / config.min_face
    if config.max_side:
        scale = min(scale, config.max_side / max(width, height))
    return scale


class DetectStage:
    """Finds faces with CenterFace at the resolution that ``detect.min_face`` asks for."""

    name = "detect"
    parallel = True

    def __init__(self, detector: CenterFace, config: DetectConfig) -> None:
        self.detector = detector
        self.config = config
        self.device = frames_device(detector, config)

    def process(self, packet: FramePacket) -> FramePacket:
        """Full-resolution detection every ``detect.every`` frames; in between a
        cheaper pass at ``inter_scale`` of it, which catches new large faces
        while the tracker carries the small ones (a scene cut gets a full pass
        from the tracking stage, which sees frames in order)."""
        packet.thumbnail = thumbnail(packet.image)
        if self.device is not None:
            packet.device_image = upload(packet.image, self.device)
        # By frames processed, not the source's index: a live input that drops every
        # other frame would otherwise never get a full pass, and small faces no track.
        return self.detect(packet, full=packet.processed % self.config.every == 0)

    def detect(self, packet: FramePacket, full: bool) -> FramePacket:
        height, width = packet.image.shape[:2]
        cfg = self.config
        scale = detection_scale(width, height, cfg)
        packet.full_detection = full
        if not packet.full_detection:
            if cfg.inter_scale == 0:
                packet.detections = None
                return packet
            scale *= cfg.inter_scale
        image = packet.image if packet.device_image is None else packet.device_image
        (faces,) = self.detector.detect([image], scale, cfg.threshold, cfg.nms_iou)
        detections = Detections(faces.boxes, faces.scores, faces.landmarks)
        if not packet.full_detection:
            # Below the model's reliable size a face's box is too rough to follow.
            heights = (detections.xyxy[:, 3] - detections.xyxy[:, 1]) * scale
            detections = detections[heights >= cfg.model_min_face]
        packet.detections = detections
        return packet

    def reset(self) -> None:
        return None


def frames_device(detector: CenterFace, config: DetectConfig) -> Any:
    """The torch device frames are kept on (``detect.device_frames``), or None for numpy frames."""
    device = getattr(detector.backend, "device", None)
    if config.device_frames == "on" and device is None:
        raise ConfigError(
            f"detect.device_frames: 'on' needs a torch backend (torch-cuda, torch-cpu), "
            f"not {detector.backend.name}; use 'auto' or 'off'"
        )
    on_gpu = getattr(device, "type", "") == "cuda"
    if config.device_frames == "on" or (config.device_frames == "auto" and on_gpu):
        return device
    return None


def upload(image: NDArray[np.uint8], device: Any) -> Any:
    """``image`` as a torch tensor on ``device``: the frame's one upload."""
    import torch

    with warnings.catch_warnings():  # a read-only decoded frame: only read from, never written
        warnings.simplefilter("ignore", UserWarning)
        frame = torch.from_numpy(image)
    return frame.to(device, copy=True)  # a copy on the CPU too: the obscure stage writes into it


# Mean grey-level change between consecutive thumbnails above which a frame
# counts as a scene cut (on the hamilton clip: its cuts 25 to 29, camera and
# crowd motion at most 12.3, median 2.6).
SCENE_CUT = 16.0


def thumbnail(image: NDArray[np.uint8]) -> NDArray[np.float32]:
    """A 32x18 grey copy of ``image``: enough to tell a scene cut, cheap at any size."""
    step = max(1, min(image.shape[:2]) // 72)
    small = image[::step, ::step].mean(axis=2, dtype=np.float32)
    return np.asarray(cv2.resize(small, (32, 18), interpolation=cv2.INTER_AREA), np.float32)
