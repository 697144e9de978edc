"""Dense face alignment on the 468-point mesh: piecewise-affine warps to and from a canonical frame.

The canonical frame is a ``SIZE`` x ``SIZE`` square holding a mean-like face
layout (``data/canonical_face.npy``, made by ``calibration/canonical_face.py``
from a public-domain portrait), triangulated once (Delaunay). A face is
brought into it with one ``cv2.remap`` built from per-triangle affine maps,
so faces of different people, poses and sizes line up pixel for pixel; a
canonical texture is drawn back onto a face's own mesh the same way,
triangles painted far-to-near by mesh depth so the near side wins.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

SIZE = 256
CANONICAL_FILE = Path(__file__).resolve().parent.parent / "data" / "canonical_face.npy"


@dataclass(frozen=True)
class Canonical:
    """``points``: ``(468, 2)`` float32 in canonical pixels; ``triangles``: ``(T, 3)`` int32;
    ``tri_map``: ``(SIZE, SIZE)`` int32 triangle index per canonical pixel (-1 outside);
    ``bary``: ``(SIZE, SIZE, 3)`` float32 barycentric weights of each pixel in its triangle."""

    points: NDArray[np.float32]
    triangles: NDArray[np.int32]
    tri_map: NDArray[np.int32]
    bary: NDArray[np.float32]

    def __post_init__(self) -> None:
        for array in (self.points, self.triangles, self.tri_map, self.bary):
            read_only(array)

    @property
    def mask(self) -> NDArray[np.bool_]:
        return np.asarray(self.tri_map >= 0)


def read_only(array: NDArray[Any]) -> NDArray[Any]:
    """``array`` made unwriteable: data computed once and shared by every caller (the
    ``lru_cache`` singletons of this package) cannot be changed by one of them."""
    array.flags.writeable = False
    return array


MAX_TURN = 0.15  # beyond this, a face's far side is stretched in the canonical frame


def turn(points: NDArray[np.float32]) -> float:
    """How far a face (mesh ``(468, 2+)``) is turned: the nose tip's offset from the eyes'
    midpoint along the eye line, in eye distances (0: frontal)."""
    left, right, nose = points[33, :2], points[263, :2], points[1, :2]
    return float((nose - (left + right) / 2) @ (right - left) / max(float(np.sum((right - left) ** 2)), 1e-6))


@lru_cache(maxsize=1)
def canonical() -> Canonical:
    from scipy.spatial import Delaunay

    points = np.load(CANONICAL_FILE).astype(np.float32)
    triangles = Delaunay(points).simplices.astype(np.int32)
    tri_map = rasterize(points, triangles, SIZE, SIZE)
    bary = barycentric(points, triangles, tri_map)
    return Canonical(points, triangles, tri_map, bary)


def rasterize(
    points: NDArray[np.float32], triangles: NDArray[np.int32], height: int, width: int,
    order: NDArray[np.intp] | None = None,
) -> NDArray[np.int32]:  # fmt: skip
    """``(height, width)`` int32 map of which triangle covers each pixel (-1: none); later
    triangles in ``order`` paint over earlier ones."""
    tri_map = np.full((height, width), -1, np.int32)
    shift = 4
    scaled = np.round(points * (1 << shift)).astype(np.int32)
    for t in order if order is not None else range(len(triangles)):
        cv2.fillConvexPoly(tri_map, scaled[triangles[t]], int(t), lineType=cv2.LINE_8, shift=shift)
    return tri_map


def barycentric(
    points: NDArray[np.float32], triangles: NDArray[np.int32], tri_map: NDArray[np.int32]
) -> NDArray[np.float32]:
    """Barycentric weights ``(H, W, 3)`` of every covered pixel within its triangle."""
    h, w = tri_map.shape
    ys, xs = np.nonzero(tri_map >= 0)
    tri = triangles[tri_map[ys, xs]]
    a, b, c = points[tri[:, 0]], points[tri[:, 1]], points[tri[:, 2]]
    v0, v1 = b - a, c - a
    v2 = np.stack([xs, ys], axis=1).astype(np.float32) - a
    det = v0[:, 0] * v1[:, 1] - v0[:, 1] * v1[:, 0]
    det = np.where(np.abs(det) < 1e-9, 1e-9, det)
    wb = (v2[:, 0] * v1[:, 1] - v2[:, 1] * v1[:, 0]) / det
    wc = (v0[:, 0] * v2[:, 1] - v0[:, 1] * v2[:, 0]) / det
    out = np.zeros((h, w, 3), np.float32)
    out[ys, xs] = np.stack([1 - wb - wc, wb, wc], axis=1)
    return out


def to_canonical(
    image: NDArray[np.uint8], points: NDArray[np.float32], step: int = 1
) -> tuple[NDArray[np.uint8], NDArray[np.bool_]]:
    """The face of ``image`` (RGB) with mesh ``points`` ``(468, 2+)`` warped into the canonical
    frame, sampled every ``step`` canonical pixels, and the mask of the samples it covers
    (inside the image)."""
    c = canonical()
    src = points[:, :2].astype(np.float32)
    covered = c.mask[::step, ::step]
    tri = c.triangles[np.where(covered, c.tri_map[::step, ::step], 0)]  # (S, S, 3) vertex indices
    coords = np.einsum("hwk,hwkd->hwd", c.bary[::step, ::step], src[tri])
    map_x = np.where(covered, coords[..., 0], -1).astype(np.float32)
    map_y = np.where(covered, coords[..., 1], -1).astype(np.float32)
    texture = cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    h, w = image.shape[:2]
    inside = covered & (map_x >= 0) & (map_x <= w - 1) & (map_y >= 0) & (map_y <= h - 1)
    return np.asarray(texture, np.uint8), np.asarray(inside)


@dataclass(frozen=True)
class Rendered:
    """A canonical texture drawn onto a face: ``pixels`` ``(h, w, 3)`` and ``coverage`` ``(h, w)``
    bool, for the window ``(x1, y1)`` of the frame; ``coords`` ``(h, w, 2)`` the canonical
    coordinates it was drawn from (see ``canonical_map``), so more can be drawn the same way."""

    pixels: NDArray[np.uint8]
    coverage: NDArray[np.bool_]
    x1: int
    y1: int
    coords: NDArray[np.float32]

    def draw(self, texture: NDArray[np.uint8]) -> NDArray[np.uint8]:
        """Another canonical texture drawn through the same map, ``(h, w, C)``."""
        return _remap(texture, self.coords)


def canonical_map(
    points: NDArray[np.float32], frame_shape: tuple[int, int]
) -> tuple[NDArray[np.float32], NDArray[np.bool_], int, int] | None:
    """Where each pixel of the window around the face with mesh ``points`` ``(468, 3)`` lies in
    the canonical frame: coordinates ``(h, w, 2)`` (-1 where uncovered), the pixels the mesh
    covers (triangles painted far-to-near by mean depth, so the near side wins), and the
    window's corner ``(x1, y1)`` in the frame. None when the mesh lies outside the frame."""
    c = canonical()
    h, w = frame_shape
    x1, y1 = (int(max(0, np.floor(v))) for v in points[:, :2].min(axis=0))
    x2, y2 = (int(min(lim, np.ceil(v) + 1)) for v, lim in zip(points[:, :2].max(axis=0), (w, h), strict=True))
    if x2 - x1 < 2 or y2 - y1 < 2:
        return None
    local = points[:, :2] - np.array([x1, y1], np.float32)
    affine = _as_affine(local)
    if affine is not None:  # the mean layout placed whole (the landmark path): no triangles to paint
        return (*_affine_map(affine, y2 - y1, x2 - x1), x1, y1)
    height, width = y2 - y1, x2 - x1
    # A large face is mapped on every second pixel and the map scaled up: the map is piecewise
    # affine, so what is interpolated is (all but exactly) what would be computed.
    step = 2 if height > COARSE_FACE else 1
    depth = points[c.triangles, 2].mean(axis=1)
    # Coarse sample (i, j) lies at pixel (2i + 0.5, 2j + 0.5), where the scaling up reads it.
    at = ((local - (step - 1) / 2) / step).astype(np.float32)
    tri_map = rasterize(at, c.triangles, -(-height // step), -(-width // step), order=np.argsort(-depth))
    covered = tri_map >= 0
    if step > 1:  # the scaled-up map reads one sample past the edge: extend the edge triangles
        grown = cv2.dilate(tri_map.astype(np.float32), np.ones((3, 3), np.uint8)).astype(np.int32)
        tri_map = np.where(covered, tri_map, grown)
    # Per-triangle affine from the face's pixels to canonical pixels.
    src_h = np.concatenate([local[c.triangles], np.ones((len(c.triangles), 3, 1), np.float32)], axis=2)
    det_ok = np.abs(np.linalg.det(src_h)) > 1e-6
    affine = np.zeros((len(c.triangles), 3, 2), np.float32)
    affine[det_ok] = np.linalg.solve(src_h[det_ok], c.points[c.triangles][det_ok])
    ys, xs = np.nonzero(tri_map >= 0)
    pix = np.stack([step * xs + (step - 1) / 2, step * ys + (step - 1) / 2, np.ones_like(xs)], axis=1)
    coords = np.full((*tri_map.shape, 2), -1, np.float32)
    coords[ys, xs] = np.einsum("nk,nkd->nd", pix.astype(np.float32), affine[tri_map[ys, xs]])
    if step > 1:
        coords = cv2.resize(coords, None, fx=step, fy=step, interpolation=cv2.INTER_LINEAR)[:height, :width]
        covered = cv2.resize(covered.astype(np.uint8), None, fx=step, fy=step,
                             interpolation=cv2.INTER_NEAREST)[:height, :width] > 0  # fmt: skip
        coords[~covered] = -1
    return np.ascontiguousarray(coords), np.asarray(covered), x1, y1


COARSE_FACE = 160  # px: taller mesh windows are mapped at half resolution and scaled up


AFFINE_TOLERANCE = 0.5  # px: a mesh this close to an affine image of the canonical layout is drawn as one


@lru_cache(maxsize=1)
def _canonical_solver() -> NDArray[np.float64]:
    """The least-squares solver ``(3, 468)`` of ``[canonical points, 1] @ A = points``."""
    c = canonical().points.astype(np.float64)
    return read_only(np.linalg.pinv(np.concatenate([c, np.ones((len(c), 1))], axis=1)))


def _as_affine(points: NDArray[np.float32]) -> NDArray[np.float64] | None:
    """The affine map ``(2, 3)`` from the canonical frame that places its layout on ``points``
    ``(468, 2)`` within ``AFFINE_TOLERANCE``, or None (a mesh with a shape of its own)."""
    fit = _canonical_solver() @ points.astype(np.float64)  # (3, 2)
    c = canonical().points
    placed = c @ fit[:2] + fit[2]
    if float(np.abs(placed - points).max()) > AFFINE_TOLERANCE or abs(np.linalg.det(fit[:2])) < 1e-6:
        return None
    return np.asarray(fit.T, np.float64)


def placed_whole(points: NDArray[np.float32]) -> bool:
    """Whether a mesh ``(468, 2+)`` is the canonical layout placed whole (an affine image of it,
    as the landmark path draws): it carries no face shape of its own."""
    return _as_affine(np.ascontiguousarray(points[:, :2])) is not None


@lru_cache(maxsize=16)
def _grown_mask(reach: int) -> NDArray[np.uint8]:
    """The canonical mask grown by ``reach`` canonical pixels: where a face drawn at a scale
    of ``0.5 / reach`` has its pixels within half a pixel of the layout, as ``rasterize``
    paints triangle edges."""
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * reach + 1, 2 * reach + 1))
    return read_only(np.asarray(cv2.dilate(canonical().mask.astype(np.uint8), kernel), np.uint8))


def _affine_map(affine: NDArray[np.float64], height: int, width: int
                ) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:  # fmt: skip
    """``canonical_map``'s coordinates and coverage for a window ``(height, width)`` onto which
    ``affine`` places the canonical frame: one inverse map and one warp of its mask."""
    inverse = cv2.invertAffineTransform(affine)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    coords = np.stack(
        [inverse[0, 0] * xs + inverse[0, 1] * ys + inverse[0, 2],
         inverse[1, 0] * xs + inverse[1, 1] * ys + inverse[1, 2]], axis=-1,
    ).astype(np.float32)  # fmt: skip
    reach = max(1, round(0.5 / np.sqrt(abs(np.linalg.det(affine[:, :2])))))
    covered = cv2.warpAffine(_grown_mask(reach), affine, (width, height), flags=cv2.INTER_NEAREST) > 0
    coords[~covered] = -1
    return coords, np.asarray(covered)


def from_canonical(
    texture: NDArray[np.uint8], points: NDArray[np.float32], frame_shape: tuple[int, int]
) -> Rendered | None:
    """Draw ``texture`` (canonical frame) onto the face whose mesh is ``points`` ``(468, 3)``.

    Triangles are painted far-to-near by mean depth, so a turned face shows its
    near side. None when the mesh lies outside the frame.
    """
    mapped = canonical_map(points, frame_shape)
    if mapped is None or not mapped[1].any():
        return None
    coords, covered, x1, y1 = mapped
    return Rendered(_remap(texture, coords), covered, x1, y1, coords)


def _remap(texture: NDArray[np.uint8], coords: NDArray[np.float32]) -> NDArray[np.uint8]:
    pixels = cv2.remap(
        texture, coords[..., 0], coords[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT
    )
    return np.asarray(pixels, np.uint8)
