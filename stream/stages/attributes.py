"""The attribute stage: Stage I and II per track, and PPAS once a track freezes."""

from __future__ import annotations

import collections
import itertools

import numpy as np
from numpy.typing import NDArray

from stream.algorithms.attributes import (
    N_ATTR,
    AttributeFusion,
    Estimator,
    FaceInput,
    TrackAttributes,
    tracks_to_describe,
)
from stream.algorithms.privacy import StreamPrivacy
from stream.algorithms.synthesis import unit
from stream.config import AttributesConfig
from stream.frames import FramePacket
from stream.stages import base


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
        self.states: dict[int, TrackAttributes] = {}  # live tracks
        self.ended: dict[int, TrackAttributes] = {}  # ended tracks, slimmed to what the report needs
        self._with_descriptor: collections.deque[int] = collections.deque()

    def process(self, packet: FramePacket) -> FramePacket:
        self._retire(set(packet.tracks.track_id.tolist()))
        due = tracks_to_describe(
            packet, self.config.every, self.states, self.config.min_face, self.config.refine_per_frame
        )
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
                if froze or (self.config.release == "first" and state.estimates):
                    self.privacy.select(track_id, state.probability)  # once per track
        if self.config.release == "first":
            self._release_small(packet)
        packet.attributes = {
            int(t): self.states[int(t)] for t in packet.tracks.track_id if int(t) in self.states
        }
        return packet

    def _release_small(self, packet: FramePacket) -> None:
        """Tracks whose detected face is too small to describe are released as unestimated
        (PPAS gives them the global distribution's majority, then randomized response), so
        they get a surrogate too."""
        detections = packet.detections
        if detections is None:
            return
        heights = detections.xyxy[:, 3] - detections.xyxy[:, 1]
        for tid, det in zip(packet.tracks.track_id.tolist(), packet.tracks.detection.tolist(), strict=True):
            small = det >= 0 and heights[det] < self.config.min_face
            if small and tid not in self.states and tid not in self.privacy.tracks:
                self.privacy.select(tid, np.full(N_ATTR, np.nan, np.float32))

    KEEP_DESCRIPTORS = 128  # ended tracks whose identity descriptor is kept (synthesis reads them)

    def _retire(self, alive: set[int]) -> None:
        """Tracks that ended (their ids never return) are frozen on what they have. The
        last ``KEEP_DESCRIPTORS`` keep their 8 KB identity descriptor (synthesis still
        averages the textures of people who left, and must know who they were); older
        ones keep only their fused probabilities, for the report."""
        for track_id in [t for t in self.states if t not in alive]:
            state = self.states.pop(track_id)
            self._freeze(state)
            self.ended[track_id] = state
            self._with_descriptor.append(track_id)
        # Past ``KEEP_ENDED`` the oldest ended tracks leave the report's listings (counted).
        for track_id in list(itertools.islice(self.ended, max(0, len(self.ended) - base.KEEP_ENDED))):
            del self.ended[track_id]
            self.privacy.forget(track_id)
        while self._with_descriptor and (
            len(self._with_descriptor) > self.KEEP_DESCRIPTORS or self._with_descriptor[0] not in self.ended
        ):
            slimmed = self.ended.get(self._with_descriptor.popleft())
            if slimmed is not None:
                slimmed.descriptor_sum = np.zeros(0)

    def _freeze(self, state: TrackAttributes) -> None:
        if not state.frozen and state.estimates:
            state.frozen = True
            self.privacy.select(state.track_id, state.probability)

    def with_descriptors(self) -> dict[int, TrackAttributes]:
        """Live tracks and the recently ended ones that still hold their descriptor."""
        return {t: self.ended[t] for t in self._with_descriptor} | self.states

    # What the synth stage reads: what PPAS released, and who the people are.

    def released(self, track_id: int) -> NDArray[np.bool_] | None:
        """The attributes PPAS released for the track; None until it is described."""
        record = self.privacy.tracks.get(track_id)
        return None if record is None else record.released

    def identity(self, track_id: int) -> NDArray[np.float32] | None:
        """The live track's unit identity descriptor (its estimates fused); None: none yet."""
        state = self.states.get(track_id)
        return unit(state.descriptor_sum) if state is not None and state.estimates else None

    def identities(self) -> dict[int, tuple[NDArray[np.float32], NDArray[np.float32]]]:
        """Per track still holding its descriptor (``with_descriptors``): its fused attribute
        probabilities and unit identity descriptor."""
        return {
            t: (s.probability, unit(s.descriptor_sum))
            for t, s in self.with_descriptors().items()
            if s.estimates
        }

    def read_identity(
        self, image: NDArray[np.uint8], box: NDArray[np.float32], landmarks: NDArray[np.float32]
    ) -> NDArray[np.float32]:
        """The unit identity descriptor of the face found at ``box`` and ``landmarks``."""
        return unit(self.estimator.estimate([FaceInput(image, box, landmarks)]).descriptor[0])

    def all_tracks(self) -> dict[int, TrackAttributes]:
        """Every track described in the run, ended and live."""
        return self.ended | self.states

    def finish(self) -> None:
        """At the end of a run: tracks that never froze are frozen on what they have."""
        for state in self.states.values():
            self._freeze(state)

    def reset(self) -> None:
        self.states.clear()
        self.ended.clear()
        self._with_descriptor.clear()
        self.privacy.reset()
