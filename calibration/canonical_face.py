"""Make the canonical face layout of the dense warps (stream/data/canonical_face.npy).

The mesh of a public-domain frontal portrait (``skimage.data.astronaut()``,
NASA) brought by a similarity transform to a level eye line, the eyes 30% of
the frame apart and their midpoint at (50%, 40%) of a 256-pixel square.

    python -m calibration.canonical_face
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from calibration.command import command
from engines.facemodels import MESH_EYE_CORNERS
from stream.algorithms.facewarp import CANONICAL_FILE, SIZE
from stream.errors import InternalError

EYE_DISTANCE = 0.30
EYE_LINE = 0.40


def normalise(points: NDArray[np.float32]) -> NDArray[np.float32]:
    """``(468, 2)`` mesh points placed in the canonical square (see the module docstring)."""
    left = points[list(MESH_EYE_CORNERS[0])].mean(axis=0)
    right = points[list(MESH_EYE_CORNERS[1])].mean(axis=0)
    if left[0] > right[0]:
        left, right = right, left
    d = right - left
    scale = EYE_DISTANCE * SIZE / float(np.hypot(*d))
    angle = -np.arctan2(d[1], d[0])
    rotation = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    centre = (left + right) / 2
    out = (points - centre) @ rotation.T + np.array([SIZE / 2, EYE_LINE * SIZE])
    return out.astype(np.float32)


@command
def main(argv: list[str] | None = None) -> int:
    del argv  # no options
    from skimage import data

    from engines import zoo
    from engines.base import create_backend
    from engines.centerface import CenterFace
    from engines.crops import crop_from_box
    from engines.facemodels import FaceMesh

    image = data.astronaut()
    (faces,) = CenterFace(create_backend("cpu", zoo.ensure("centerface"))).detect([image], 1.0, 0.5)
    mesh = FaceMesh(create_backend("cpu", zoo.ensure("facemesh")))
    points = mesh.predict([crop_from_box(image, faces.boxes[0], faces.landmarks[0], FaceMesh.size)]).points[
        0, :, :2
    ]
    layout = normalise(points)
    if layout.min() < 1 or layout.max() > SIZE - 2:
        raise InternalError("the layout does not fit the canonical square")
    np.save(CANONICAL_FILE, layout)
    print(f"wrote {CANONICAL_FILE}: x {layout[:, 0].min():.0f}-{layout[:, 0].max():.0f}, "
          f"y {layout[:, 1].min():.0f}-{layout[:, 1].max():.0f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
