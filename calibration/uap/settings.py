"""The fit's settings and the constants every part shares."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from stream.algorithms.perturbation import (
    NORMS,
)
from stream.errors import ConfigError

MEDIA_DEFAULT = Path(__file__).resolve().parents[3] / "shared" / "media"
DESCRIPTOR = "global_pooling/Mean"
GENDER = "gender_pred/Sigmoid"
TARGETS = ("identity", "attributes")
METHODS = ("deepfool", "sgd")
FACERES_SIZE = 224
LOGIT_SCALE = 10.0  # cosine logits; DeepFool's decisions do not depend on the scale
FALSE_ACCEPTS = 0.01
CHUNK = 16  # faces per no-grad forward pass


@dataclass(frozen=True)
class Settings:
    """UAP settings; ``xi`` in pixel levels (0-255) of the canonical frame. ``candidates``,
    ``overshoot`` and ``max_iter`` are DeepFool's; ``batch`` (faces per step), ``step`` (the
    step length as a fraction of ``xi``) and ``clip`` (logit units past the boundary at which
    a face stops counting) are the SGD method's, whose passes are epochs."""

    norm: str = "inf"
    xi: float = 10.0
    delta: float = 0.2
    max_passes: int = 3
    candidates: int = 10
    overshoot: float = 0.02
    max_iter: int = 50
    method: str = "deepfool"
    batch: int = 8
    step: float = 0.1
    clip: float = 0.5

    def __post_init__(self) -> None:
        checks = (
            ("norm", self.norm in NORMS, f"one of {NORMS}"),
            ("xi", self.xi > 0, "> 0"),
            ("delta", 0 <= self.delta < 1, "in [0, 1)"),
            ("max_passes", self.max_passes >= 1, ">= 1"),
            ("candidates", self.candidates >= 2, ">= 2"),
            ("overshoot", self.overshoot >= 0, ">= 0"),
            ("max_iter", self.max_iter >= 1, ">= 1"),
            ("method", self.method in METHODS, f"one of {METHODS}"),
            ("batch", self.batch >= 1, ">= 1"),
            ("step", 0 < self.step <= 1, "in (0, 1] (a fraction of xi)"),
            ("clip", self.clip >= 0, ">= 0"),
        )
        for name, ok, expected in checks:
            if not ok:
                raise ConfigError(f"uap {name}: expected {expected}, got {getattr(self, name)!r}")
