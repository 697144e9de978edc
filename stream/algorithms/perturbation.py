"""Stage IV at run time: a fitted universal perturbation, or seeded Gaussian noise, added to faces.

A pattern lives in the canonical face frame of ``facewarp`` (``SIZE`` x ``SIZE``,
RGB, 0-255 pixel units, zero outside the face mask) and is drawn onto each
face's own mesh with ``from_canonical``, so it follows pose and expression.
``from_canonical`` draws uint8 textures, so a signed pattern travels offset by
128 levels (whole levels, as the frame itself).

Perturbation files are made by ``python -m calibration.uap fit``: an ``.npz``
holding the pattern and a JSON manifest (target model and its pinned sha256,
norm and radius, how it was fitted), checked on load.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from engines import zoo
from stream.algorithms.facewarp import CANONICAL_FILE, SIZE, Rendered, canonical, from_canonical
from stream.errors import ModelError
from stream.io.files import check_npz

FORMAT = 1
NORMS = ("inf", "2")
OFFSET = 128  # a signed level d travels as the uint8 value OFFSET + d
MAX_LEVEL = 127  # the largest change one pattern value can make
REFIT = "make a new one with `python -m calibration.uap fit -o FILE`"


def pattern_norm(pattern: NDArray[np.float32], norm: str) -> float:
    """The l_inf or l_2 norm of a pattern (all its values, in pixel levels)."""
    if norm == "inf":
        return float(np.max(np.abs(pattern), initial=0.0))
    return float(np.sqrt(np.sum(pattern.astype(np.float64) ** 2)))


def build_manifest(
    pattern: NDArray[np.float32], model: str, output: str, norm: str, xi: float, **details: Any
) -> dict[str, Any]:
    """The manifest of a pattern fitted against ``output`` of zoo ``model`` within the l_``norm``
    ball of radius ``xi``; ``details`` (fit settings, data, results) are recorded as given."""
    return {
        "format": FORMAT,
        "size": SIZE,
        "canonical_sha256": zoo.sha256_file(CANONICAL_FILE),
        "target": {"model": model, "sha256": zoo.spec(model).onnx_sha256, "output": output},
        "norm": norm,
        "xi": float(xi),
        "perturbation_sha256": _digest(pattern),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "numpy": np.__version__,
        **details,
    }


def _digest(pattern: NDArray[np.float32]) -> str:
    return hashlib.sha256(np.ascontiguousarray(pattern, np.float32).tobytes()).hexdigest()


def _verify(pattern: NDArray[Any], manifest: dict[str, Any], where: str) -> None:
    """Raise ModelError naming ``where`` unless pattern and manifest are a valid pair for this build."""

    def fail(problem: str) -> ModelError:
        return ModelError(f"{where}: {problem}; {REFIT}")

    if manifest.get("format") != FORMAT:
        raise fail(f"format {manifest.get('format')!r}, expected {FORMAT}")
    if pattern.shape != (SIZE, SIZE, 3) or pattern.dtype != np.float32:
        raise fail(f"expected a ({SIZE}, {SIZE}, 3) float32 pattern, got {pattern.shape} {pattern.dtype}")
    if not np.isfinite(pattern).all():
        raise fail("the pattern holds NaN or infinite values")
    if manifest.get("canonical_sha256") != zoo.sha256_file(CANONICAL_FILE):
        raise fail(f"made for another canonical face layout than {CANONICAL_FILE.name}")
    norm, xi = manifest.get("norm"), manifest.get("xi")
    if norm not in NORMS or not isinstance(xi, int | float) or not xi > 0:
        raise fail(f"norm {norm!r} and radius {xi!r}: expected norm in {NORMS} and a radius > 0")
    size = pattern_norm(pattern, norm)
    if size > xi * (1 + 1e-5):
        raise fail(f"the pattern's l_{norm} norm {size:.4g} exceeds the stated bound {xi:.4g}")
    if np.abs(pattern[~canonical().mask]).max(initial=0.0) > 0:
        raise fail("the pattern is not zero outside the canonical face mask")
    if manifest.get("perturbation_sha256") != _digest(pattern):
        raise fail("the pattern does not match the sha256 its manifest records")
    target = manifest.get("target") or {}
    model = target.get("model")
    if model not in zoo.REGISTRY:
        raise fail(f"unknown target model {model!r} (known: {', '.join(zoo.REGISTRY)})")
    pinned = zoo.spec(model).onnx_sha256
    if target.get("sha256") != pinned:
        raise fail(
            f"fitted against {model} with sha256 {str(target.get('sha256'))[:12]}..., but this build "
            f"pins {pinned[:12]}...; the perturbation does not fit the installed model"
        )


@dataclass(frozen=True, eq=False)  # no element-wise == on the pattern
class Perturbation:
    """A fitted universal perturbation: ``pattern`` ``(SIZE, SIZE, 3)`` float32 RGB in 0-255 pixel
    units of the canonical frame (zero outside the face mask); ``manifest`` says how it was made."""

    pattern: NDArray[np.float32]
    manifest: dict[str, Any]

    @property
    def norm(self) -> str:
        return str(self.manifest["norm"])

    @property
    def xi(self) -> float:
        return float(self.manifest["xi"])

    def save(self, path: Path) -> None:
        """Write the ``.npz`` file (exactly at ``path``); an invalid pair is refused."""
        _verify(self.pattern, self.manifest, str(path))
        with open(path, "wb") as fh:
            np.savez_compressed(fh, perturbation=self.pattern, manifest=np.array(json.dumps(self.manifest)))

    @classmethod
    def load(cls, path: Path) -> Perturbation:
        """Read and verify a perturbation file; ModelError says what is wrong with it."""
        try:
            check_npz(path)
            with np.load(path, allow_pickle=False) as data:
                pattern = np.asarray(data["perturbation"])
                manifest = json.loads(str(data["manifest"]))
        except (OSError, ValueError, KeyError) as exc:
            raise ModelError(f"{path}: not a readable perturbation file ({exc}); {REFIT}") from None
        if not isinstance(manifest, dict):
            raise ModelError(f"{path}: the manifest is not a JSON object; {REFIT}")
        _verify(pattern, manifest, str(path))
        return cls(pattern, manifest)

    def offset(self, epsilon: float = 1.0) -> Offset:
        """``epsilon`` times the pattern (1: as fitted), ready to draw; ValueError when that
        would change a pixel by more than ``MAX_LEVEL``."""
        peak = pattern_norm(self.pattern, "inf")
        if not 0 <= epsilon * peak <= MAX_LEVEL:
            raise ValueError(f"epsilon must be in [0, {MAX_LEVEL / max(peak, 1e-9):.3g}], got {epsilon}")
        return Offset.of(self.pattern * np.float32(epsilon))

    def apply(self, frame: NDArray[np.uint8], points: NDArray[np.float32], epsilon: float = 1.0) -> bool:
        """Add ``epsilon`` times the pattern to the face whose mesh is ``points`` ``(468, 3)`` in
        ``frame`` (RGB uint8, changed in place). See ``offset`` and ``add_to_face``."""
        return add_to_face(frame, points, self.offset(epsilon))


@dataclass(frozen=True, eq=False)
class Offset:
    """A pattern ready to draw: ``texture`` ``(SIZE, SIZE, 3)`` uint8, each signed level ``d`` as
    ``OFFSET + d``, and ``bound``, the most any pixel may change."""

    texture: NDArray[np.uint8]
    bound: int

    @classmethod
    def of(cls, pattern: NDArray[np.float32]) -> Offset:
        bound = min(MAX_LEVEL, math.floor(pattern_norm(pattern, "inf") + 1e-6))
        return cls(np.clip(np.rint(pattern) + OFFSET, 0, 255).astype(np.uint8), bound)


def add_to_face(
    frame: NDArray[np.uint8], points: NDArray[np.float32] | Rendered, pattern: NDArray[np.float32] | Offset
) -> bool:
    """Draw ``pattern`` (canonical frame, signed levels, or already an ``Offset``) onto the face
    whose mesh is ``points`` ``(468, 3)`` (frame pixels), or through the map of a face already
    drawn (``Rendered``, as the synth stage leaves it), and add it to ``frame`` (``(H, W, 3)``
    RGB uint8) in place.

    Only pixels the mesh covers change, by at most ``floor(max |pattern|)`` levels
    (and never more than 127), clipped to 0-255. False when the mesh lies outside the frame.
    """
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) uint8 frame, got {frame.shape} {frame.dtype}")
    offset = pattern if isinstance(pattern, Offset) else Offset.of(pattern)
    if isinstance(points, Rendered):
        rendered = Rendered(points.draw(offset.texture), points.coverage, points.x1, points.y1, points.coords)
    else:
        drawn = from_canonical(offset.texture, points, (frame.shape[0], frame.shape[1]))
        if drawn is None:
            return False
        rendered = drawn
    h, w = rendered.coverage.shape
    window = frame[rendered.y1 : rendered.y1 + h, rendered.x1 : rendered.x1 + w]
    # Whole-window arithmetic: cheaper than gathering the covered pixels.
    total = np.where(rendered.coverage[..., None], rendered.pixels.astype(np.int16) - OFFSET, np.int16(0))
    np.clip(total, -offset.bound, offset.bound, out=total)
    total += window
    window[...] = np.clip(total, 0, 255, out=total)
    return True


def noise_pattern(sigma: float, rng: np.random.Generator) -> NDArray[np.float32]:
    """Gaussian noise ``(SIZE, SIZE, 3)`` float32 of ``sigma`` levels on the canonical face mask
    (zero elsewhere), drawn from ``rng``."""
    if not sigma >= 0:
        raise ValueError(f"sigma must be >= 0, got {sigma}")
    values = rng.standard_normal((SIZE, SIZE, 3), dtype=np.float32) * np.float32(sigma)
    return np.asarray(values * canonical().mask[..., None], np.float32)


def track_generator(seed: int, track_id: int) -> np.random.Generator:
    """The generator of one track's noise: the same ``seed`` and ``track_id`` (both >= 0) always
    give the same pattern, other tracks other patterns."""
    return np.random.default_rng([seed, track_id])


def noise(
    frame: NDArray[np.uint8], points: NDArray[np.float32], sigma: float, rng: np.random.Generator
) -> bool:
    """Add Gaussian noise of ``sigma`` levels, drawn in the canonical frame from ``rng``, to the
    face whose mesh is ``points`` (see ``add_to_face``). With a fresh ``track_generator`` per
    frame a track keeps one noise pattern, which moves with its face."""
    return add_to_face(frame, points, noise_pattern(sigma, rng))
