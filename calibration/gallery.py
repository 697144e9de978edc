"""Build a k-Same gallery file from a folder of face photos the user has the right to use.

    python -m calibration.gallery FOLDER -o gallery.npz [--k 4]

FOLDER holds one sub-folder per identity with that person's photos. Each
identity's face is warped into the canonical frame on its mesh and averaged
over its photos, described by the built-in attribute estimators, then the
identities are grouped by gender and age (k-Same-Select) and each entry
written is the average of k distinct identities: the file never holds one
person's texture. Identities left over from a group join its last entry.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from stream.synthesis import Gallery, GalleryEntry, average_textures

PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


@dataclass
class Identity:
    name: str
    texture: NDArray[np.uint8]
    mask: NDArray[np.bool_]
    attributes: NDArray[np.float32]
    descriptor: NDArray[np.float32]


def _nanmean(rows: list[NDArray[np.float32]]) -> NDArray[np.float32]:
    """Column means ignoring NaN; NaN where no row has a value (attributes never estimated)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(np.array(rows), axis=0).astype(np.float32)


def describe_identity(
    name: str, photos: list[Path], detector: object, estimator: object, mesh: object
) -> Identity | None:
    """One identity's mean canonical texture, attributes and descriptor over its photos."""
    from engines.crops import crop_from_box
    from engines.evaluation import main_face, read_rgb
    from stream.attributes import FaceInput
    from stream.facewarp import to_canonical

    textures, masks, attributes, descriptors = [], [], [], []
    for path in photos:
        found = main_face(detector, read_rgb(path))  # type: ignore[arg-type]
        if found is None:
            continue
        padded, face = found
        result = mesh.predict([crop_from_box(padded, face.boxes[0], face.landmarks[0], 192)])  # type: ignore[attr-defined]
        if result.confidence[0] < 0.5:
            continue
        texture, mask = to_canonical(padded, result.points[0])
        estimate = estimator.estimate([FaceInput(padded, face.boxes[0], face.landmarks[0])])  # type: ignore[attr-defined]
        textures.append(texture)
        masks.append(mask)
        attributes.append(estimate.probability[0])
        descriptors.append(estimate.descriptor[0])
    if not textures:
        return None
    texture, mask = average_textures(textures, masks)
    descriptor = np.mean(descriptors, axis=0)
    return Identity(
        name,
        texture,
        mask,
        _nanmean(attributes),
        (descriptor / np.linalg.norm(descriptor)).astype(np.float32),
    )


def group(identities: list[Identity], k: int) -> list[list[Identity]]:
    """k-Same-Select groups: identities of the same gender and age class, k or more per group.

    A class smaller than k joins the other age class of its gender; what still
    falls short of k is left out (it cannot be published as an average of k).
    """
    from stream.privacy import INDEX

    def key(identity: Identity) -> tuple[bool, bool]:
        return bool(identity.attributes[INDEX["Male"]] > 0.5), bool(identity.attributes[INDEX["Young"]] > 0.5)

    classes: dict[tuple[bool, bool], list[Identity]] = {}
    for identity in identities:
        classes.setdefault(key(identity), []).append(identity)
    for (male, young), members in list(classes.items()):
        other = (male, not young)
        if len(members) < k and other in classes and classes[other] is not members:
            classes[other] = classes[other] + members
            del classes[(male, young)]
    groups = []
    for members in classes.values():
        chunks = [members[i : i + k] for i in range(0, len(members) - len(members) % k, k)]
        if chunks:
            chunks[-1] += members[len(chunks) * k :]
            groups += chunks
    return groups


def build(folder: Path, k: int) -> Gallery:
    from engines import zoo
    from engines.base import create_backend
    from engines.facemodels import FaceMesh
    from stream.config import build_config
    from stream.job import load_detector, load_estimator

    config = build_config()
    detector, estimator = load_detector(config), load_estimator(config)
    mesh = FaceMesh(create_backend("cpu", zoo.ensure("facemesh")))
    identities = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        photos = sorted(p for p in sub.iterdir() if p.suffix.lower() in PHOTO_SUFFIXES)
        identity = describe_identity(sub.name, photos, detector, estimator, mesh)
        if identity is not None:
            identities.append(identity)
    if len(identities) < k:
        raise ValueError(
            f"{folder}: {len(identities)} identities with a usable face; k={k} needs at least {k}"
        )
    entries = []
    for members in group(identities, k):
        texture, mask = average_textures([m.texture for m in members], [m.mask for m in members])
        attributes = _nanmean([m.attributes for m in members])
        entries.append(GalleryEntry(texture, mask, attributes, np.array([m.descriptor for m in members])))
    return Gallery(entries, k, str(folder))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m calibration.gallery", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("folder", type=Path)
    p.add_argument("-o", "--out", type=Path, required=True)
    p.add_argument("--k", type=int, default=4)
    args = p.parse_args(argv)
    gallery = build(args.folder, args.k)
    gallery.save(args.out)
    print(f"wrote {args.out}: {len(gallery.entries)} entries of k >= {args.k} identities", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
