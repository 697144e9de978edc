"""Pipeline stages: each has one ``process(packet)`` and ``reset()``, no threads and no I/O."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from engines.centerface import CenterFace

from .config import DetectConfig, ObscureConfig, TrackConfig
from .frames import Detections, FramePacket
from .obscure import Obscurer
from .tracker import FaceTracker


class Stage(Protocol):
    """``parallel`` stages keep no state between frames, so the runner may run
    them on several frames at once; the others see frames in input order."""

    name: str
    parallel: bool

    def process(self, packet: FramePacket) -> FramePacket: ...

    def reset(self) -> None: ...


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

    def process(self, packet: FramePacket) -> FramePacket:
        """Full-resolution detection every ``detect.every`` frames; in between a
        cheaper pass at ``inter_scale`` of it, which catches new large faces
        and scene cuts while the tracker carries the small ones."""
        height, width = packet.image.shape[:2]
        cfg = self.config
        scale = detection_scale(width, height, cfg)
        packet.full_detection = packet.index % cfg.every == 0
        if not packet.full_detection:
            if cfg.inter_scale == 0:
                packet.detections = None
                return packet
            scale *= cfg.inter_scale
        (faces,) = self.detector.detect([packet.image], scale, cfg.threshold, cfg.nms_iou)
        detections = Detections(faces.boxes, faces.scores, faces.landmarks)
        if not packet.full_detection:
            # Below the model's reliable size a face's box is too rough to follow.
            heights = (detections.xyxy[:, 3] - detections.xyxy[:, 1]) * scale
            detections = detections[heights >= cfg.model_min_face]
        packet.detections = detections
        return packet

    def reset(self) -> None:
        return None


class TrackStage:
    """Turns detections into tracks (live and coasting) with dilated boxes."""

    name = "track"
    parallel = False

    def __init__(self, config: TrackConfig) -> None:
        self.tracker = FaceTracker(config)

    def process(self, packet: FramePacket) -> FramePacket:
        packet.tracks = self.tracker.update(packet.detections, precise=packet.full_detection)
        return packet

    def reset(self) -> None:
        self.tracker.reset()


class ObscureStage:
    """Obscures every live and coasting track; the last stage, it marks the frame anonymized."""

    name = "obscure"
    parallel = False

    def __init__(self, config: ObscureConfig) -> None:
        self.obscurer = Obscurer(config)

    def process(self, packet: FramePacket) -> FramePacket:
        if not packet.image.flags.writeable:
            packet.image = np.array(packet.image)
        self.obscurer.apply(packet.image, packet.tracks.xyxy)
        packet.anonymized = True
        return packet

    def reset(self) -> None:
        return None
