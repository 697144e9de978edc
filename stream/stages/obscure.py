"""The obscure stage, the last: every face not replaced is hidden; the frame is marked anonymized."""

from __future__ import annotations

import numpy as np

from stream.algorithms.obscure import Obscurer
from stream.config import ObscureConfig
from stream.frames import FramePacket


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
        self.obscurer.apply(packet.image, np.concatenate([boxes, packet.untracked]))
        packet.anonymized = True
        return packet

    def reset(self) -> None:
        return None
