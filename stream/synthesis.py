"""Stage III, k-Same-Select on the dense face mesh: surrogate faces averaged over k identities.

A gallery entry is the canonical-frame texture averaged over k distinct
identities (``calibration/gallery.py`` builds gallery files; a built
gallery never holds one person's texture) with the members' mean
attributes. A track gets, once, the entry that best matches the attributes
PPAS selected for it, never one containing the track's own identity; each
frame the entry is warped onto the track's own mesh (pose and expression
follow the person), relit to the frame (a smooth quadratic lighting surface
per Lab channel is swapped for the target's), and feathered in.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from numpy.typing import NDArray

from .facewarp import SIZE, Rendered, canonical, from_canonical, to_canonical
from .privacy import INDEX

# Attributes that decide the look of a surrogate, most important first (weights).
MATCH_WEIGHTS = {"Male": 4.0, "Young": 2.0, "Black_Hair": 1.0, "Blond_Hair": 1.0, "Brown_Hair": 1.0,
                 "Gray_Hair": 1.0, "Bald": 1.0, "Pale_Skin": 1.0}  # fmt: skip
OWN_IDENTITY_COSINE = 0.5  # a member this close to the track's descriptor is the same person


@dataclass(frozen=True)
class GalleryEntry:
    """``texture`` ``(SIZE, SIZE, 3)`` uint8 RGB canonical frame; ``mask`` where it is valid;
    ``attributes`` ``(40,)`` members' mean probabilities (NaN: unknown); ``members`` the
    identity descriptors ``(k, 1024)`` kept only to exclude a person from their own surrogate."""

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
            ),  # fmt: skip
        )

    @classmethod
    def load(cls, path: Path) -> Gallery:
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
    """The per-pixel mean of textures where each is valid; valid where at least ``min_share`` of them are."""
    stack = np.array(textures, np.float32)
    weights = np.array(masks, np.float32)[..., None]
    count = weights.sum(axis=0)
    mean = (stack * weights).sum(axis=0) / np.maximum(count, 1)
    valid = count[..., 0] >= max(1.0, min_share * len(textures))
    return np.clip(mean, 0, 255).astype(np.uint8), np.asarray(valid & canonical().mask)


def choose_entry(
    gallery: Gallery, selected: NDArray[np.bool_], descriptor: NDArray[np.float32] | None
) -> int | None:
    """Index of the entry best matching the selected attributes, excluding entries that
    contain the track's own identity; None when no entry is left."""
    best, best_score = None, -np.inf
    for i, entry in enumerate(gallery.entries):
        if descriptor is not None and len(entry.members):
            members = entry.members / np.maximum(np.linalg.norm(entry.members, axis=1, keepdims=True), 1e-9)
            if float((members @ descriptor).max()) > OWN_IDENTITY_COSINE:
                continue
        score = 0.0
        for name, weight in MATCH_WEIGHTS.items():
            p = entry.attributes[INDEX[name]]
            if not np.isnan(p):
                score += weight * (1.0 - abs(float(selected[INDEX[name]]) - float(p)))
        if score > best_score:
            best, best_score = i, score
    return best


def _surface(lab: NDArray[np.float32], mask: NDArray[np.bool_], step: int = 4) -> NDArray[np.float32]:
    """Least-squares quadratic surface ``(S, S, 3)`` in canonical (u, v) fitted to each Lab channel."""
    ys, xs = np.nonzero(mask[::step, ::step])
    u, v = xs * step / SIZE - 0.5, ys * step / SIZE - 0.5
    basis = np.stack([np.ones_like(u), u, v, u * u, u * v, v * v], axis=1)
    coeffs, *_ = np.linalg.lstsq(basis, lab[ys * step, xs * step], rcond=None)
    gv, gu = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) / SIZE - 0.5
    full = np.stack([np.ones_like(gu), gu, gv, gu * gu, gu * gv, gv * gv], axis=-1)
    return np.asarray(full @ coeffs, np.float32)


def relight(
    surrogate: NDArray[np.uint8], surrogate_mask: NDArray[np.bool_], target: NDArray[np.uint8],
    target_mask: NDArray[np.bool_],
) -> NDArray[np.uint8]:  # fmt: skip
    """The surrogate texture with its smooth lighting and tone replaced by the target's."""
    common = surrogate_mask & target_mask
    if common.sum() < 200:
        return surrogate
    s_lab = cv2.cvtColor(surrogate, cv2.COLOR_RGB2LAB).astype(np.float32)
    t_lab = cv2.cvtColor(target, cv2.COLOR_RGB2LAB).astype(np.float32)
    out = s_lab - _surface(s_lab, common) + _surface(t_lab, common)
    return np.asarray(cv2.cvtColor(np.clip(out, 0, 255).astype(np.uint8), cv2.COLOR_LAB2RGB), np.uint8)


def feathered_alpha(coverage: NDArray[np.bool_], face_width: float) -> NDArray[np.float32]:
    """A soft mask inside the covered face: eroded by 3% and blurred by 3% of the face width."""
    radius = max(1, int(0.03 * face_width))
    mask = cv2.erode(coverage.astype(np.uint8) * 255, np.ones((2 * radius + 1, 2 * radius + 1), np.uint8))
    alpha = cv2.GaussianBlur(mask.astype(np.float32) / 255.0, (0, 0), sigmaX=max(1.0, 0.03 * face_width))
    return np.asarray(alpha * coverage, np.float32)


def replace_face(
    frame: NDArray[np.uint8], points: NDArray[np.float32], entry: GalleryEntry
) -> Rendered | None:
    """Draw ``entry`` onto the face with mesh ``points`` ``(468, 3)`` in ``frame``, in place.

    Returns what was drawn (window and coverage), or None when nothing could be.
    """
    target, target_mask = to_canonical(frame, points)
    texture = relight(entry.texture, entry.mask, target, target_mask)
    # The entry's validity travels as a fourth channel through the same warp.
    rgba = np.dstack([texture, entry.mask.astype(np.uint8) * 255])
    rendered = from_canonical(rgba, points, frame.shape[:2])
    if rendered is None:
        return None
    h, w = rendered.pixels.shape[:2]
    valid = rendered.coverage & (rendered.pixels[..., 3] > 127)
    alpha = feathered_alpha(valid, float(np.ptp(points[:, 0])))[..., None]
    roi = frame[rendered.y1 : rendered.y1 + h, rendered.x1 : rendered.x1 + w]
    roi[:] = np.clip(alpha * rendered.pixels[..., :3] + (1 - alpha) * roi, 0, 255).astype(np.uint8)
    return Rendered(rendered.pixels[..., :3], valid, rendered.x1, rendered.y1)


def soften_surround(
    frame: NDArray[np.uint8], box: NDArray[np.float32], drawn: Rendered, strength: float
) -> None:
    """Blur the head around a replaced face (hair, ears, jaw line inside the ellipse of the
    track's box), in place; the replaced face itself stays sharp. ``strength``: blur sigma as
    a fraction of the box width (0: nothing)."""
    from .obscure import _blurred, clip_box, region_mask

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
