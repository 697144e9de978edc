"""The perturb stage: Stage IV on replaced faces."""

from __future__ import annotations

from stream.algorithms.perturbation import Offset, Perturbation, add_to_face, noise_pattern, track_generator
from stream.config import PerturbConfig
from stream.frames import FramePacket


class PerturbStage:
    """Stage IV: adds the universal perturbation, or per-track Gaussian noise, to every face a
    surrogate replaced, warped along the mesh it was drawn on."""

    name = "perturb"
    parallel = False

    def __init__(self, config: PerturbConfig, perturbation: Perturbation | None) -> None:
        self.config = config
        self.universal = perturbation.offset(config.epsilon) if perturbation else None
        self.noise: dict[int, Offset] = {}
        self.perturbed = 0

    def _pattern(self, track_id: int) -> Offset:
        if self.universal is not None:
            return self.universal
        if track_id not in self.noise:
            rng = track_generator(self.config.seed, track_id)
            self.noise[track_id] = Offset.of(noise_pattern(self.config.sigma, rng))
        return self.noise[track_id]

    def process(self, packet: FramePacket) -> FramePacket:
        if self.noise:  # a pattern is 196 KB: drop those of ended tracks
            alive = set(packet.tracks.track_id.tolist())
            for track_id in [t for t in self.noise if t not in alive]:
                del self.noise[track_id]
        for track_id in sorted(packet.replaced):
            if add_to_face(packet.image, packet.drawn[track_id], self._pattern(track_id)):
                self.perturbed += 1
        return packet

    def reset(self) -> None:
        self.noise.clear()
        self.perturbed = 0
