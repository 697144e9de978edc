"""Pipeline stages: each has one ``process(packet)`` and ``reset()``, no threads and no I/O."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from engines.centerface import CenterFace
from engines.crops import crop_from_box
from engines.facemodels import FaceMesh

from .attributes import AttributeFusion, Estimator, FaceInput, TrackAttributes, tracks_to_describe
from .config import AttributesConfig, DetectConfig, ObscureConfig, SynthConfig, TrackConfig
from .facewarp import Rendered
from .frames import Detections, FramePacket
from .obscure import Obscurer
from .privacy import StreamPrivacy
from .synthesis import Gallery, GalleryEntry, choose_entry, replace_face, soften_surround
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
        boxes = packet.tracks.xyxy
        if packet.replaced:
            keep = np.array([int(t) not in packet.replaced for t in packet.tracks.track_id], bool)
            boxes = boxes[keep]
        self.obscurer.apply(packet.image, boxes)
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


@dataclass
class SynthCounts:
    """Faces replaced by a surrogate, and those that fell back to obscuring, by reason."""

    replaced: int = 0
    fallback: dict[str, int] = field(default_factory=dict)

    def fell_back(self, reason: str) -> None:
        self.fallback[reason] = self.fallback.get(reason, 0) + 1


class SynthStage:
    """Stage III: replaces each described track's face with its k-Same surrogate.

    A track's surrogate is chosen once, when PPAS has selected its attributes,
    and kept for the track's life. Faces without one, too small, too turned
    or not covered well enough are left to the obscuring stage (the fallback),
    and counted.
    """

    name = "synth"
    parallel = False

    def __init__(self, gallery: Gallery | None, mesh: FaceMesh, config: SynthConfig,
                 attributes: AttributeStage) -> None:  # fmt: skip
        self.gallery = gallery
        self.mesh = mesh
        self.config = config
        self.attributes = attributes
        self.surrogates: dict[int, int | None] = {}
        self.counts = SynthCounts()

    def _surrogate(self, track_id: int) -> int | None:
        if track_id in self.surrogates:
            return self.surrogates[track_id]
        record = self.attributes.privacy.tracks.get(track_id)
        if record is None or self.gallery is None:
            return None  # not chosen yet: ask again on a later frame
        state = self.attributes.states[track_id]
        descriptor = state.descriptor_sum / max(float(np.linalg.norm(state.descriptor_sum)), 1e-9)
        choice = choose_entry(self.gallery, record.released, descriptor.astype(np.float32))
        self.surrogates[track_id] = choice
        return choice

    def process(self, packet: FramePacket) -> FramePacket:
        detections = packet.detections
        if detections is None or self.gallery is None:
            for _ in packet.tracks.track_id:
                self.counts.fell_back("no gallery" if self.gallery is None else "coasting")
            return packet
        todo: list[tuple[int, int, GalleryEntry, int]] = []
        tracks = packet.tracks
        for row, (tid, det) in enumerate(
            zip(tracks.track_id.tolist(), tracks.detection.tolist(), strict=True)
        ):
            if det < 0:
                self.counts.fell_back("coasting")
                continue
            choice = self._surrogate(tid)
            height = float(detections.xyxy[det, 3] - detections.xyxy[det, 1])
            if choice is None:
                self.counts.fell_back("no surrogate" if tid in self.surrogates else "not described yet")
            elif height < self.config.min_face:
                self.counts.fell_back("too small")
            else:
                todo.append((tid, det, self.gallery.entries[choice], row))
        if not todo:
            return packet
        crops = [crop_from_box(packet.image, detections.xyxy[d], detections.landmarks[d], FaceMesh.size)
                 for _, d, _, _ in todo]  # fmt: skip
        mesh = self.mesh.predict(crops)
        for i, (tid, det, entry, row) in enumerate(todo):
            if mesh.confidence[i] < 0.5:
                self.counts.fell_back("mesh not found")
                continue
            drawn = replace_face(packet.image, mesh.points[i], entry)
            if drawn is None or covered_share(drawn, detections.xyxy[det]) < self.config.min_cover:
                self.counts.fell_back("not covered")
                continue
            soften_surround(packet.image, tracks.xyxy[row], drawn, self.config.surround_blur)
            packet.replaced.add(tid)
            self.counts.replaced += 1
        return packet

    def reset(self) -> None:
        self.surrogates.clear()
        self.counts = SynthCounts()


def covered_share(drawn: Rendered, box: NDArray[np.float32]) -> float:
    """The share of the ellipse inscribed in ``box`` that the surrogate covers."""
    h, w = drawn.coverage.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    xx += drawn.x1
    yy += drawn.y1
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    rx, ry = max(float(box[2] - box[0]) / 2, 1.0), max(float(box[3] - box[1]) / 2, 1.0)
    inside = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1
    area = np.pi * rx * ry
    return float((inside & drawn.coverage).sum() / area) if area > 0 else 0.0
