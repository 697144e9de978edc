"""Stage III, k-Same-Select on the dense face mesh: surrogate faces averaged over k identities.

A gallery entry is the canonical-frame texture averaged over k distinct
identities (``calibration/gallery.py`` builds gallery files; a built
gallery never holds one person's texture) with the members' mean
attributes. A track gets, once, the entry that best matches the attributes
PPAS selected for it, never one containing the track's own identity; each
frame the entry is warped onto the track's own mesh (pose and expression
follow the person), relit to the frame (a smooth quadratic lighting surface
per Lab channel is swapped for the target's), and feathered in.

Over 400 lines: the gallery, the texture pool, relighting and drawing share the
canonical face frame; to split along those with issue 17's work.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
from numpy.typing import NDArray

from stream.algorithms.facewarp import (
    SIZE,
    Rendered,
    canonical,
    from_canonical,
    placed_whole,
    read_only,
    to_canonical,
)
from stream.algorithms.privacy import INDEX
from stream.io.files import check_npz

if TYPE_CHECKING:
    from engines.base import Backend

# Attributes that decide the look of a surrogate, most important first (weights).
MATCH_WEIGHTS = {"Male": 4.0, "Young": 2.0, "Black_Hair": 1.0, "Blond_Hair": 1.0, "Brown_Hair": 1.0,
                 "Gray_Hair": 1.0, "Bald": 1.0, "Pale_Skin": 1.0}  # fmt: skip
OWN_IDENTITY_COSINE = 0.55  # faceres on the media photos: 95% of one person's photo pairs score above


BUILTIN_RECIPE = 1  # raise when how the built-in gallery is made changes, so caches are rebuilt


def builtin_path(k: int = 4) -> Path:
    """Where ``run_stream.py models --fetch`` (calibration.gallery) puts the built-in gallery."""
    from engines.zoo import cache_dir

    return cache_dir() / "galleries" / f"builtin-k{k}-r{BUILTIN_RECIPE}.npz"


@dataclass(frozen=True)
class GalleryEntry:
    """``texture`` ``(SIZE, SIZE, 3)`` uint8 RGB canonical frame; ``mask`` where it is valid;
    ``attributes`` ``(40,)`` members' mean probabilities (NaN: unknown); ``members`` the
    identity descriptors ``(k, 1024)``, kept to exclude a person from their own surrogate
    and, as other people, to judge whether a drawn face still singles a person out."""

    texture: NDArray[np.uint8]
    mask: NDArray[np.bool_]
    attributes: NDArray[np.float32]
    members: NDArray[np.float32]

    @property
    def k(self) -> int:
        return len(self.members)


@dataclass(frozen=True)
class Gallery:
    entries: list[GalleryEntry]
    k: int
    source: str

    def save(self, path: Path) -> None:
        np.savez_compressed(
            path,
            textures=np.array([e.texture for e in self.entries]),
            masks=np.array([e.mask for e in self.entries]),
            attributes=np.array([e.attributes for e in self.entries]),
            members=np.concatenate([e.members for e in self.entries]).astype(np.float16),
            member_counts=np.array([e.k for e in self.entries]),
            manifest=np.array(
                json.dumps({"k": self.k, "source": self.source, "size": SIZE, "entries": len(self.entries)})
            ),
        )

    @classmethod
    def load(cls, path: Path) -> Gallery:
        check_npz(path)
        with np.load(path, allow_pickle=False) as data:
            manifest = json.loads(str(data["manifest"]))
            if manifest["size"] != SIZE:
                raise ValueError(
                    f"{path}: gallery made for a {manifest['size']} px canonical frame, not {SIZE}"
                )
            bounds = np.cumsum(np.concatenate([[0], data["member_counts"]]))
            members = data["members"].astype(np.float32)
            entries = [
                GalleryEntry(t, m, a.astype(np.float32), members[bounds[i] : bounds[i + 1]])
                for i, (t, m, a) in enumerate(
                    zip(data["textures"], data["masks"], data["attributes"], strict=True)
                )
            ]
        if any(e.k < manifest["k"] for e in entries):
            raise ValueError(f"{path}: an entry averages fewer than k={manifest['k']} identities")
        return cls(entries, manifest["k"], manifest["source"])


def average_textures(
    textures: list[NDArray[np.uint8]], masks: list[NDArray[np.bool_]], min_share: float = 0.5
) -> tuple[NDArray[np.uint8], NDArray[np.bool_]]:
    """The per-pixel mean of textures, each evenly lit first, where each is valid. Pixels
    that fewer than ``min_share`` of them cover are not anyone's: they are filled in from
    their surroundings (inpainted); the mask is the whole canonical face."""
    even = [even_lighting(t, m) for t, m in zip(textures, masks, strict=True)]
    stack = np.array([t for t, _ in even], np.float32)
    weights = np.array([m for _, m in even], np.float32)[..., None]
    count = weights.sum(axis=0)
    mean = (stack * weights).sum(axis=0) / np.maximum(count, 1)
    valid = count[..., 0] >= max(1.0, min_share * len(textures))
    face = canonical().mask
    texture = np.clip(mean, 0, 255).astype(np.uint8)
    if (face & ~valid).any():  # outside the face counts as a hole too, so it lends no colour
        texture = cv2.inpaint(texture, (~valid).astype(np.uint8), 5, cv2.INPAINT_TELEA)
    return np.asarray(texture, np.uint8), np.asarray(face.copy())


@lru_cache(maxsize=1)
def _rim() -> NDArray[np.bool_]:
    """The outer band of the canonical face (forehead, temples, cheeks' edges, jaw), where
    hair and shadows fall over a face; nothing of eyes, brows or mouth lies in it."""
    mask = canonical().mask.astype(np.uint8)
    inner = cv2.erode(mask, np.ones((31, 31), np.uint8))
    return read_only(np.asarray((mask > 0) & (inner == 0)))


def even_lighting(
    texture: NDArray[np.uint8], mask: NDArray[np.bool_]
) -> tuple[NDArray[np.uint8], NDArray[np.bool_]]:
    """A canonical texture with its smooth lighting replaced by its mean tone, so side light
    does not streak an average, and its mask without the rim pixels far darker than the skin
    (hair or shadow over the face)."""
    lab = cv2.cvtColor(texture, cv2.COLOR_RGB2LAB).astype(np.float32)
    light = lighting(lab, mask)
    if light is None:
        return texture, mask
    light_surface = surface(light)
    flat = lab - light_surface + light_surface[mask].mean(axis=0)
    rim = _rim() & mask
    if rim.any():
        dark = rim & (flat[..., 0] < np.median(flat[rim, 0]) - 25)
        mask = mask & ~dark
    out = cv2.cvtColor(np.clip(flat, 0, 255).astype(np.uint8), cv2.COLOR_LAB2RGB)
    return np.asarray(out, np.uint8), mask


def match_score(attributes: NDArray[np.float32], selected: NDArray[np.bool_]) -> float:
    """How well members' mean ``attributes`` fit the ``selected`` ones (higher is better);
    -inf when the gender differs, as a surrogate of the other gender never looks natural."""
    male = attributes[INDEX["Male"]]
    if not np.isnan(male) and (male > 0.5) != bool(selected[INDEX["Male"]]):
        return -np.inf
    score = 0.0
    for name, weight in MATCH_WEIGHTS.items():
        p = attributes[INDEX[name]]
        if not np.isnan(p):
            score += weight * (1.0 - abs(float(selected[INDEX[name]]) - float(p)))
    return score


def unit(rows: NDArray[np.floating]) -> NDArray[np.float32]:
    return np.asarray(rows / np.maximum(np.linalg.norm(rows, axis=-1, keepdims=True), 1e-9), np.float32)


def contains(members: NDArray[np.float32], descriptor: NDArray[np.float32] | None) -> bool:
    """Whether one of ``members`` (descriptors) is the person with ``descriptor``."""
    if descriptor is None or not len(members):
        return False
    return bool((unit(members) @ unit(descriptor)).max() > OWN_IDENTITY_COSINE)


def rank_entries(
    gallery: Gallery, selected: NDArray[np.bool_], descriptor: NDArray[np.float32] | None
) -> list[int]:
    """Indices of the entries that may stand in for a person, best match to the selected
    attributes first: not those containing the person's own identity, nor of the other gender."""
    scored = []
    for i, entry in enumerate(gallery.entries):
        score = match_score(entry.attributes, selected)
        if score > -np.inf and not contains(entry.members, descriptor):
            scored.append((-score, i))
    return [i for _, i in sorted(scored)]


@dataclass
class _Texture:
    total: NDArray[np.float32]
    count: NDArray[np.float32]
    frames: int = 0


class TexturePool:
    """Canonical textures of the stream's own tracks, averaged over their good frames, so
    surrogates can be built from the other people of the same stream (k-Same-Select).

    Single textures stay in memory; what leaves the pool is always the average
    of at least k distinct identities (descriptors farther apart than
    ``OWN_IDENTITY_COSINE``), never including the track asked for.
    """

    def __init__(self, k: int, frames: int = 8, min_frames: int = 3, capacity: int = 64) -> None:
        self.k = k
        self.frames = frames
        self.min_frames = min_frames
        self.capacity = capacity  # people held (about 1 MB each); the oldest go first
        self.textures: dict[int, _Texture] = {}
        self.together: dict[int, set[int]] = {}

    def seen_together(self, track_ids: list[int]) -> None:
        """Tracks live in the same frame are different people, whatever their descriptors say."""
        for t in track_ids:
            self.together.setdefault(t, set()).update(track_ids)

    def forget(self, alive: set[int]) -> None:
        """Who was seen with whom matters only for live tracks and held textures."""
        for track_id in [t for t in self.together if t not in alive and t not in self.textures]:
            del self.together[track_id]

    def same_person(
        self, a: int, b: int, described: dict[int, tuple[NDArray[np.float32], NDArray[np.float32]]]
    ) -> bool:
        if b in self.together.get(a, ()):
            return False
        return float(described[a][1] @ described[b][1]) > OWN_IDENTITY_COSINE

    def wants(self, track_id: int) -> bool:
        held = self.textures.get(track_id)
        return held is None or held.frames < self.frames

    def add(self, track_id: int, texture: NDArray[np.uint8], mask: NDArray[np.bool_]) -> None:
        held = self.textures.get(track_id)
        if held is None:
            while len(self.textures) >= self.capacity:
                oldest = next(iter(self.textures))
                del self.textures[oldest]
                self.together.pop(oldest, None)
            held = self.textures[track_id] = _Texture(
                np.zeros((SIZE, SIZE, 3), np.float32), np.zeros((SIZE, SIZE), np.float32)
            )
        held.total += texture * mask[..., None]
        held.count += mask
        held.frames += 1

    def entry(
        self, track_id: int, selected: NDArray[np.bool_],
        described: dict[int, tuple[NDArray[np.float32], NDArray[np.float32]]],
    ) -> tuple[GalleryEntry, float] | None:  # fmt: skip
        """The average of the k pooled identities that best match ``selected``, other than
        ``track_id``'s person, and its match score; None with fewer than k such identities.

        described: ``track -> (attribute probabilities (40,), descriptor (1024,))``.
        """
        ranked = []
        for other, held in self.textures.items():
            if other == track_id or other not in described or held.frames < self.min_frames:
                continue
            if track_id in described and self.same_person(track_id, other, described):
                continue
            ranked.append((match_score(described[other][0], selected), other))
        ranked.sort(reverse=True)
        chosen: list[int] = []
        for score, other in ranked:
            if score == -np.inf:
                break
            if not any(self.same_person(other, c, described) for c in chosen):
                chosen.append(other)
            if len(chosen) == self.k:
                break
        if len(chosen) < self.k:
            return None
        textures, masks = [], []
        for other in chosen:
            held = self.textures[other]
            textures.append(
                np.clip(held.total / np.maximum(held.count, 1)[..., None], 0, 255).astype(np.uint8)
            )
            masks.append(held.count >= 0.5 * held.frames)
        texture, mask = average_textures(textures, masks)
        attributes = np.mean([described[c][0] for c in chosen], axis=0).astype(np.float32)
        members = np.array([described[c][1] for c in chosen], np.float32)
        return GalleryEntry(texture, mask, attributes, members), match_score(attributes, selected)

    def reset(self) -> None:
        self.textures.clear()
        self.together.clear()


# Lighting: a quadratic surface per Lab channel, fitted on a sparse grid of the canonical frame.
_STEP = 4


def _basis(u: NDArray[np.float32], v: NDArray[np.float32]) -> NDArray[np.float32]:
    return np.stack([np.ones_like(u), u, v, u * u, u * v, v * v], axis=-1)


def lighting(lab: NDArray[np.float32], mask: NDArray[np.bool_]) -> NDArray[np.float32] | None:
    """Least-squares quadratic coefficients ``(6, 3)`` of each Lab channel over the pixels of
    ``mask`` (a canonical texture, full or sampled every ``_STEP`` pixels); None when too few."""
    ys, xs = np.nonzero(mask)
    if len(ys) < 50:
        return None
    step = SIZE / mask.shape[0]
    coeffs, *_ = np.linalg.lstsq(
        _basis((xs * step / SIZE - 0.5).astype(np.float32), (ys * step / SIZE - 0.5).astype(np.float32)),
        lab[ys, xs], rcond=None,
    )  # fmt: skip
    return np.asarray(coeffs, np.float32)


@lru_cache(maxsize=1)
def _full_basis() -> NDArray[np.float32]:
    gv, gu = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) / SIZE - 0.5
    return read_only(_basis(gu, gv))


def surface(coeffs: NDArray[np.float32]) -> NDArray[np.float32]:
    """The ``(SIZE, SIZE, 3)`` Lab surface of ``coeffs``."""
    return np.asarray(_full_basis() @ coeffs, np.float32)


def sample_lab(
    frame: NDArray[np.uint8], points: NDArray[np.float32]
) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
    """The face's canonical texture sampled every ``_STEP`` pixels, in Lab, and where it is valid."""
    texture, mask = to_canonical(frame, points, step=_STEP)
    return cv2.cvtColor(texture, cv2.COLOR_RGB2LAB).astype(np.float32), mask


@dataclass(frozen=True)
class Strength:
    """How far a drawn surrogate departs from the person beyond its texture: ``reshape``
    (geometry toward the mean face), ``keep_tone`` (share of their own skin tone) and
    ``surround_blur`` (the head around the face), as in ``SynthConfig``."""

    reshape: float
    keep_tone: float
    surround_blur: float


def strengths(reshape: float, keep_tone: float, surround_blur: float) -> list[Strength]:
    """The configured strength, then stronger ones tried when a surrogate still looks like
    the person: the geometry moved twice as far as to the mean face (as far past it, away
    from theirs), then less and none of their skin tone (a seam towards the hairline is
    better than a blurred face); never weaker than configured, and never a blurred head
    (the surroundings stay as configured)."""
    ladder = [Strength(reshape, keep_tone, surround_blur)]
    for shape, tone in ((2.0, keep_tone), (2.0, min(keep_tone, 0.5)), (2.0, 0.0), (2.6, 0.0)):
        stronger = Strength(max(reshape, shape), tone, surround_blur)
        if stronger not in ladder:
            ladder.append(stronger)
    return ladder


@lru_cache(maxsize=1)
def _mouth_opening() -> NDArray[np.uint8]:
    """The canonical layout's mouth opening (inside the inner lips, a little grown), 255 there."""
    points = canonical().points
    mask = np.zeros((SIZE, SIZE), np.uint8)
    cv2.fillPoly(mask, [np.round(points[list(INNER_LIPS)] * 16).astype(np.int32)], 255, cv2.LINE_8, shift=4)
    return read_only(np.asarray(cv2.dilate(mask, np.ones((5, 5), np.uint8)), np.uint8))


def closed_mouth(texture: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """A canonical texture with its mouth opening filled from the lips around it: the members'
    teeth and mouth interiors, squeezed onto a closed mouth or stretched over an open one,
    would draw dark spikes along the lip line (an open mouth shows the person's own)."""
    return np.asarray(cv2.inpaint(texture, _mouth_opening(), 4, cv2.INPAINT_TELEA), np.uint8)


NEUTRAL_RATE = 0.05  # per frame: a person's usual face layout follows over about 20 frames


@dataclass
class Surrogate:
    """A track's chosen surrogate, ready to draw: its Lab detail (texture minus its own
    lighting), the strength it is drawn with, and the track's smoothed lighting, so the tone
    follows the scene without flicker."""

    entry: GalleryEntry
    detail: NDArray[np.float32]
    tone: NDArray[np.float32]
    strength: Strength
    light: NDArray[np.float32] | None = None
    neutral: NDArray[np.float32] | None = None  # the person's usual aligned layout (``reshape``)

    @classmethod
    def of(cls, entry: GalleryEntry, strength: Strength) -> Surrogate:
        lab = cv2.cvtColor(closed_mouth(entry.texture), cv2.COLOR_RGB2LAB).astype(np.float32)
        own = lighting(lab, entry.mask)
        if own is None:
            own = np.zeros((6, 3), np.float32)
            own[0] = lab[entry.mask].mean(axis=0)
        return cls(entry, lab - surface(own), own[0], strength)

    def relit(self, target_lab: NDArray[np.float32], target_mask: NDArray[np.bool_],
              smoothing: float = 0.5) -> NDArray[np.uint8]:  # fmt: skip
        """The surrogate texture (RGB) under the target's lighting, smoothed over frames,
        keeping ``strength.keep_tone`` of the target's own mean skin tone (the rest is the
        surrogate's), a cue to identity as well as to a seamless fit."""
        keep_tone = self.strength.keep_tone
        common = target_mask & self.entry.mask[::_STEP, ::_STEP]
        light = lighting(target_lab, common)
        if light is not None:
            self.light = light if self.light is None else smoothing * self.light + (1 - smoothing) * light
        if self.light is None:
            return self.entry.texture
        light = self.light.copy()
        light[0] = keep_tone * light[0] + (1 - keep_tone) * self.tone
        lab = np.clip(self.detail + surface(light), 0, 255).astype(np.uint8)
        return np.asarray(cv2.cvtColor(lab, cv2.COLOR_LAB2RGB), np.uint8)


# Where CelebA's aligned crops (178x178 centre of 178x218, resized to 128) put the eye and
# mouth centres: StarGAN only works on faces framed as it was trained.
CELEBA_128 = np.array([[49.6, 65.4], [77.7, 65.4], [63.6, 94.9]], np.float32)


def _centres(points: NDArray[np.float32]) -> NDArray[np.float32]:
    return np.array([points[list(LEFT_EYE)].mean(axis=0), points[list(RIGHT_EYE)].mean(axis=0),
                     points[list(INNER_LIPS)].mean(axis=0)], np.float32)  # fmt: skip


class AttributeStyler:
    """StarGAN on a surrogate (identity removed first by k-Same, attributes directed second):
    the canonical texture is framed as CelebA, translated to the five attributes PPAS
    selected, and put back feathered inside the face. Runs once per track.

    ``backend`` serves the generator's ONNX export (inputs ``image`` ``(B, 3, 128, 128)``
    in [-1, 1] and ``condition`` ``(B, 5)``; output ``output`` likewise)."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.to_crop = cv2.estimateAffinePartial2D(_centres(canonical().points), CELEBA_128)[0]
        self.from_crop = cv2.invertAffineTransform(self.to_crop)

    def style(self, entry: GalleryEntry, selected: NDArray[np.bool_]) -> GalleryEntry:
        from engines.stargan import IMAGE_SIZE, STARGAN_ATTRIBUTES

        crop = cv2.warpAffine(entry.texture, self.to_crop, (IMAGE_SIZE, IMAGE_SIZE), flags=cv2.INTER_AREA,
                              borderMode=cv2.BORDER_REFLECT)  # fmt: skip
        image = (crop.astype(np.float32) / 127.5 - 1.0).transpose(2, 0, 1)[None]
        condition = np.array([[float(selected[INDEX[a]]) for a in STARGAN_ATTRIBUTES]], np.float32)
        (out,) = self.backend.infer(image, condition)
        styled = ((np.clip(out[0].transpose(1, 2, 0), -1, 1) + 1) * 127.5).astype(np.uint8)
        back = cv2.warpAffine(styled, self.from_crop, (SIZE, SIZE), flags=cv2.INTER_CUBIC)
        inside = cv2.warpAffine(np.ones((IMAGE_SIZE, IMAGE_SIZE), np.uint8), self.from_crop, (SIZE, SIZE)) > 0
        alpha = feathered_alpha(entry.mask & inside, SIZE)[..., None]
        texture = np.clip(alpha * back + (1 - alpha) * entry.texture, 0, 255).astype(np.uint8)
        return GalleryEntry(texture, entry.mask, entry.attributes, entry.members)


def feathered_alpha(coverage: NDArray[np.bool_], face_width: float) -> NDArray[np.float32]:
    """A soft mask inside the covered face: eroded by 3% and blurred by 3% of the face width."""
    radius = max(1, int(0.03 * face_width))
    mask = cv2.erode(coverage.astype(np.uint8) * 255, np.ones((2 * radius + 1, 2 * radius + 1), np.uint8))
    alpha = cv2.GaussianBlur(mask.astype(np.float32) / 255.0, (0, 0), sigmaX=max(1.0, 0.03 * face_width))
    return np.asarray(alpha * coverage, np.float32)


# Mesh contours (MediaPipe numbering): the openings whose inside the average cannot show.
LEFT_EYE = (33, 7, 163, 144, 145, 153, 154, 155, 133, 173, 157, 158, 159, 160, 161, 246)
RIGHT_EYE = (263, 249, 390, 373, 374, 380, 381, 382, 362, 398, 384, 385, 386, 387, 388, 466)
INNER_LIPS = (78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308, 415, 310, 311, 312, 13, 82, 81, 80, 191)


def _polygon(
    shape: tuple[int, int], points: NDArray[np.float32], contour: tuple[int, ...]
) -> NDArray[np.float32]:
    mask = np.zeros(shape, np.uint8)
    cv2.fillPoly(mask, [np.round(points[list(contour), :2] * 16).astype(np.int32)], 255, cv2.LINE_AA, shift=4)
    return mask.astype(np.float32) / 255.0


def mouth_open(points: NDArray[np.float32]) -> float:
    """How far open the mouth of mesh ``points`` is: 0 closed, 1 wide open (the inner lips'
    gap from 5% to 15% of the mouth's width)."""
    gap = float(np.linalg.norm(points[14, :2] - points[13, :2]))
    width = float(np.linalg.norm(points[291, :2] - points[61, :2])) + 1e-6
    return float(np.clip((gap / width - 0.05) / 0.10, 0.0, 1.0))


def openings(
    roi: NDArray[np.uint8], local: NDArray[np.float32], face_width: float, own_eyes: bool = True
) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """Where the face's own eyes and mouth opening show through, ``(h, w)`` weights, and
    what fills them ``(h, w, 3)``: the person's own eyes (gaze and blinks follow them; an
    averaged eye is dead) and, inside the lips of an open mouth, their mouth lightly
    blurred (teeth and tongue as they are, no fine detail). A closed mouth shows the
    surrogate's lips: the person's lip line, blurred, would draw a dark smear there.
    ``local``: mesh points in ``roi`` pixels; without ``own_eyes`` the surrogate's eyes stay."""
    shape = roi.shape[:2]
    through = _polygon(shape, local, INNER_LIPS) * mouth_open(local)
    fill = roi.astype(np.float32)
    ys, xs = np.nonzero(through)
    if len(ys):  # blur only around the mouth: the rest of the window shows nothing of it
        sigma = max(1.0, 0.025 * face_width)
        pad = int(np.ceil(3 * sigma))
        y1, y2, x1, x2 = (
            max(0, ys.min() - pad),
            ys.max() + pad + 1,
            max(0, xs.min() - pad),
            xs.max() + pad + 1,
        )
        window = fill[y1:y2, x1:x2]
        blurred = cv2.GaussianBlur(window, (0, 0), sigmaX=sigma)
        window[...] = np.where(through[y1:y2, x1:x2, None] > 0, blurred, window)
    if own_eyes:
        eyes = np.maximum(_polygon(shape, local, LEFT_EYE), _polygon(shape, local, RIGHT_EYE))
        through = np.maximum(through, eyes)
    return through, fill


# Eyes and the whole mouth (inner and outer lip contours), by mesh index.
OUTER_LIPS = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 409, 270, 269, 267, 0, 37, 39, 40, 185)
_OPENINGS = [list(LEFT_EYE), list(RIGHT_EYE), list(INNER_LIPS + OUTER_LIPS)]


@lru_cache(maxsize=1)
def _smoothing() -> NDArray[np.float32]:
    """``(468, 468)`` row-normalised Gaussian weights (sigma 14 canonical px) between the mesh
    points: a displacement field averaged with them changes slowly across the face."""
    points = canonical().points
    distance2 = np.sum((points[:, None] - points[None]) ** 2, axis=2)
    weights = np.exp(-distance2 / (2 * 14.0**2))
    return read_only(np.asarray(weights / weights.sum(axis=1, keepdims=True), np.float32))


def reshape(
    points: NDArray[np.float32], amount: float, neutral: NDArray[np.float32] | None = None
) -> tuple[NDArray[np.float32], NDArray[np.float32] | None]:
    """The mesh ``(468, 3)`` with the person's face layout moved ``amount`` of the way to the
    mean face layout (after a similarity alignment; past it above 1): the face outline, nose
    and jaw carry identity the texture does not. What moves is ``neutral``, the person's
    usual layout (aligned, ``(468, 2)``), so the frame's expression still follows them;
    without it, this frame's own layout. The displacement is smoothed over the face and
    each opening (eyes, lips) is moved as a whole, never reshaped: how far it is open stays
    the person's, and no triangle folds over its neighbours (dark spikes at the lips).

    Returns the moved mesh and this frame's aligned layout (None when it could not be aligned).
    """
    if amount <= 0:
        return points, None
    canon = canonical().points
    to_canon, _ = cv2.estimateAffinePartial2D(np.ascontiguousarray(points[:, :2]), canon, method=cv2.LMEDS)
    if to_canon is None:
        return points, None
    aligned = points[:, :2] @ to_canon[:, :2].T + to_canon[:, 2]
    offset = _smoothing() @ (canon - (aligned if neutral is None else neutral))
    for group in _OPENINGS:
        offset[group] = offset[group].mean(axis=0)
    moved = aligned + amount * offset
    back = cv2.invertAffineTransform(to_canon)
    out = points.copy()
    out[:, :2] = moved @ back[:, :2].T + back[:, 2]
    return out, np.asarray(aligned, np.float32)


@lru_cache(maxsize=1)
def _edge_fade() -> NDArray[np.float32]:
    """Per canonical pixel, how much of the surrogate shows: 1 inside the face, falling to 0
    at its outline over 4% of the frame, and over up to 14% towards the hairline, so the
    person's own forehead meets their hair (an average's hairline band never shows)."""
    inside = canonical().mask.astype(np.uint8)
    distance = cv2.distanceTransform(inside, cv2.DIST_L2, 5)
    eye_line = float(canonical().points[list(LEFT_EYE + RIGHT_EYE), 1].mean())
    y = np.arange(SIZE, dtype=np.float32)[:, None]
    reach = SIZE * (0.04 + 0.05 * np.clip((eye_line - y) / eye_line, 0, 1))
    return read_only(np.asarray(np.clip(distance / reach, 0, 1) * inside, np.float32))


def with_grain(
    pixels: NDArray[np.uint8], roi: NDArray[np.uint8], valid: NDArray[np.bool_], seed: int | None = None
) -> NDArray[np.float32]:
    """The drawn surrogate with as much fine grain as the frame shows there: an average of k
    faces is smoother than any camera's picture of a face (it reads as airbrushed, and as
    blur to a sharpness measure). The frame's grain level is read robustly (median absolute
    fine detail) from the face it replaces; none is added where the surrogate has as much."""
    out = pixels.astype(np.float32)
    if valid.sum() < 64:
        return out

    def level(image: NDArray[np.uint8]) -> float:
        grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32)
        fine = grey - cv2.GaussianBlur(grey, (0, 0), 1.0)
        return 1.4826 * float(np.median(np.abs(fine[valid])))

    missing = level(roi) ** 2 - level(pixels) ** 2
    if missing <= 0.25:
        return out
    noise = np.random.default_rng(seed).normal(0.0, np.sqrt(missing) * 1.15, pixels.shape[:2])
    return out + np.asarray(noise, np.float32)[..., None]


def replace_face(
    frame: NDArray[np.uint8], points: NDArray[np.float32], texture: NDArray[np.uint8],
    mask: NDArray[np.bool_], shape: NDArray[np.float32] | None = None, own_eyes: bool = True,
) -> Rendered | None:  # fmt: skip
    """Draw a canonical ``texture`` (RGB, valid where ``mask``) onto the face with mesh ``points``
    ``(468, 3)`` in ``frame``, in place, the face's own eyes and mouth opening showing through;
    ``shape``: the mesh to draw on instead (``reshape``d).

    Returns what was drawn (window and coverage), or None when nothing could be.
    """
    # The texture's validity, faded towards the hairline, travels as a fourth channel.
    rgba = np.dstack([texture, (mask * _edge_fade() * 255).astype(np.uint8)])
    drawn_on = points if shape is None else shape
    rendered = from_canonical(rgba, drawn_on, frame.shape[:2])
    if rendered is None:
        return None
    h, w = rendered.pixels.shape[:2]
    valid = rendered.coverage & (rendered.pixels[..., 3] > 127)
    width = float(np.ptp(points[:, 0]))
    roi = frame[rendered.y1 : rendered.y1 + h, rendered.x1 : rendered.x1 + w]
    local = drawn_on - np.array([rendered.x1, rendered.y1, 0], np.float32)
    through, fill = openings(roi, local, width, own_eyes)
    fade = rendered.pixels[..., 3].astype(np.float32) / 255.0
    alpha = (feathered_alpha(valid, width) * fade * (1 - through))[..., None]
    face = alpha * with_grain(rendered.pixels[..., :3], roi, valid) + (1 - alpha) * fill
    roi[:] = np.clip(face, 0, 255).astype(np.uint8)
    return Rendered(rendered.pixels[..., :3], valid, rendered.x1, rendered.y1, rendered.coords)


def draw_surrogate(
    frame: NDArray[np.uint8], points: NDArray[np.float32], box: NDArray[np.float32], surrogate: Surrogate,
    lab: NDArray[np.float32], lab_mask: NDArray[np.bool_], own_eyes: bool,
) -> Rendered | None:  # fmt: skip
    """Draw ``surrogate`` in place on the face with mesh ``points`` and track box ``box``, at
    its strength: relit to the face's sampled Lab texture (``sample_lab``), on the reshaped
    mesh, the head around it softened. Returns what was drawn, or None."""
    strength = surrogate.strength
    texture = surrogate.relit(lab, lab_mask)
    # A mesh placed whole on the landmarks holds the mean layout: nothing of the person to move.
    whole = placed_whole(points)
    shape, layout = (points, None) if whole else reshape(points, strength.reshape, surrogate.neutral)
    if layout is not None:  # the person's usual layout: a slow average over the frames drawn
        last = surrogate.neutral
        surrogate.neutral = layout if last is None else last + NEUTRAL_RATE * (layout - last)
    drawn = replace_face(frame, points, texture, surrogate.entry.mask, shape, own_eyes)
    if drawn is not None:
        soften_surround(frame, box, drawn, strength.surround_blur)
    return drawn


def soften_surround(
    frame: NDArray[np.uint8], box: NDArray[np.float32], drawn: Rendered, strength: float
) -> None:
    """Blur the head around a replaced face (hair, ears, jaw line inside the ellipse of the
    track's box), in place; the replaced face itself stays sharp. ``strength``: blur sigma as
    a fraction of the box width (0: nothing)."""
    from stream.algorithms.obscure import _blurred, clip_box, region_mask

    h, w = frame.shape[:2]
    clipped = clip_box(box, w, h)
    if clipped is None or strength <= 0:
        return
    x1, y1, x2, y2 = clipped
    roi = frame[y1:y2, x1:x2]
    ring = region_mask(box, clipped, "ellipse").astype(np.float32) / 255.0
    face = np.zeros(ring.shape, np.float32)
    fx1, fy1 = drawn.x1 - x1, drawn.y1 - y1
    fh, fw = drawn.coverage.shape
    ya, yb, xa, xb = max(0, fy1), min(ring.shape[0], fy1 + fh), max(0, fx1), min(ring.shape[1], fx1 + fw)
    if ya < yb and xa < xb:
        face[ya:yb, xa:xb] = drawn.coverage[ya - fy1 : yb - fy1, xa - fx1 : xb - fx1]
    width = float(box[2] - box[0])
    soft_face = np.asarray(cv2.GaussianBlur(face, (0, 0), sigmaX=max(1.0, 0.02 * width)), np.float32)
    weight = (ring * (1.0 - soft_face))[..., None]
    blurred = _blurred(roi, strength * width).astype(np.float32)
    roi[:] = np.clip(weight * blurred + (1 - weight) * roi, 0, 255).astype(np.uint8)
