"""Pipeline stages: each has one ``process(packet)`` and ``reset()``, no threads and no I/O."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from engines.centerface import CenterFace

from .attributes import AttributeFusion, Estimator, FaceInput, TrackAttributes, tracks_to_describe
from .config import AttributesConfig, DetectConfig, ObscureConfig, TrackConfig
from .frames import Detections, FramePacket
from .obscure import Obscurer
from .privacy import StreamPrivacy
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


class AttributeStage:
    """Stage I and II per track: estimates attributes of live tracks (all due faces of
    the frame in one batch), fuses them, and when a track freezes runs PPAS for it."""

    name = "attributes"
    parallel = False

    def __init__(self, estimator: Estimator, config: AttributesConfig, privacy: StreamPrivacy) -> None:
        self.estimator = estimator
        self.config = config
        self.privacy = privacy
        self.fusion = AttributeFusion(
            config.hysteresis, config.freeze_confidence, config.min_estimates, config.max_estimates
        )
        self.states: dict[int, TrackAttributes] = {}

    def process(self, packet: FramePacket) -> FramePacket:
        due = tracks_to_describe(packet, self.config.every, self.states)
        if due and packet.detections is not None:
            faces = [
                FaceInput(packet.image, packet.detections.xyxy[d], packet.detections.landmarks[d])
                for _, d in due
            ]
            estimate = self.estimator.estimate(faces)
            for i, (track_id, _) in enumerate(due):
                state = self.states.setdefault(track_id, TrackAttributes(track_id))
                froze = self.fusion.update(
                    state, estimate.probability[i], float(estimate.quality[i]), estimate.descriptor[i]
                )
                if froze:
                    self.privacy.select(track_id, state.probability)
        packet.attributes = {
            int(t): self.states[int(t)] for t in packet.tracks.track_id if int(t) in self.states
        }
        return packet

    def finish(self) -> None:
        """At the end of a run: tracks that never froze are frozen on what they have."""
        for state in self.states.values():
            if not state.frozen and state.estimates:
                state.frozen = True
                self.privacy.select(state.track_id, state.probability)

    def reset(self) -> None:
        self.states.clear()
        self.privacy.reset()
