"""The track stage: detections into live and coasting tracks, a full pass after a cut."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from stream.algorithms.tracker import FaceTracker, dilate
from stream.config import TrackConfig
from stream.frames import FramePacket
from stream.stages.detect import SCENE_CUT, DetectStage


class TrackStage:
    """Turns detections into tracks (live and coasting) with dilated boxes.

    Between full-resolution detections the tracker carries small faces; at
    a scene cut there is nothing to carry, so a frame that only had the
    cheaper pass is detected again at full resolution here, before it is
    tracked, or a small face that a cut brings in would go out unobscured.
    """

    name = "track"
    parallel = False

    def __init__(self, config: TrackConfig, detect: DetectStage | None = None) -> None:
        self.tracker = FaceTracker(config)
        self.detect = detect
        self.previous: NDArray[np.float32] | None = None
        self.cuts_redetected = 0

    def process(self, packet: FramePacket) -> FramePacket:
        thumb, self.previous = self.previous, packet.thumbnail
        # The first frame seen counts as a cut too: a live input may have
        # dropped frame 0, and the tracker has nothing yet to carry.
        packet.cut = (
            thumb is None
            or packet.thumbnail is None
            or float(np.abs(packet.thumbnail - thumb).mean()) > SCENE_CUT
        )
        if self.detect is not None and not packet.full_detection and packet.cut:
            packet = self.detect.detect(packet, full=True)
            self.cuts_redetected += 1
        packet.tracks = self.tracker.update(packet.detections, precise=packet.full_detection)
        packet.untracked = self._untracked(packet)
        return packet

    def _untracked(self, packet: FramePacket) -> NDArray[np.float32]:
        """Dilated boxes of the detections no track took (scores between the detection
        and the track-start thresholds): hidden in this frame, since a face the detector
        saw is a face, whether or not it is sure enough to follow."""
        detections = packet.detections
        if detections is None or not len(detections):
            return np.zeros((0, 4), np.float32)
        free = np.ones(len(detections), bool)
        free[packet.tracks.detection[packet.tracks.detection >= 0]] = False
        cfg = self.tracker.config
        return dilate(detections.xyxy[free], cfg.margin, cfg.min_margin_px)

    def reset(self) -> None:
        self.tracker.reset()
        self.previous = None
