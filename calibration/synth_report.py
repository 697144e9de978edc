"""How private and how natural the anonymized faces are, measured on ../shared/media.

Re-identification: every photo of an identity with two or more photos
(deepface's clusters, face-api.js's people, dlib's johns, face_recognition's
known people) is anonymized in each mode; the faceres descriptor (the
attacker) of the anonymized face is matched against a gallery of originals,
one photo per identity, every identity of the media as a distractor. Top-1
and top-5 re-identification rates are printed per mode, with chance.
The attacker crops the face where CenterFace finds it in the anonymized
photo, or, when it finds none (blur), where the face was in the original.
Naturalness: the share of anonymized faces CenterFace still finds.

    python -m calibration.synth_report --gallery gallery.npz [--json out.json] [--sheet sheet.png]
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

from engines.crops import crop_from_box
from engines.evaluation import labelled_photos, main_face, read_rgb
from engines.facemodels import FaceRes

MEDIA_DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "media"


def identities(media: Path) -> dict[str, list[Path]]:
    """Identity -> photos, from the media's labelled sets."""
    out: dict[str, list[Path]] = defaultdict(list)
    for photo in labelled_photos(media):
        out[photo.identity].append(photo.path)
    roots = (
        media / "dlib" / "examples" / "johns",
        media / "face_recognition" / "examples" / "knn_examples" / "train",
        media / "facenet-pytorch" / "data" / "test_images",
    )
    for root in roots:
        if root.exists():
            for folder in sorted(p for p in root.iterdir() if p.is_dir()):
                out[folder.name] += sorted(
                    f for f in folder.iterdir() if f.suffix.lower() in (".jpg", ".jpeg", ".png")
                )
    return dict(out)


def _face(detector: Any, image: NDArray[np.uint8]) -> tuple[NDArray[np.float32], NDArray[np.float32]] | None:
    (faces,) = detector.detect([image], min(1.0, 1280 / max(image.shape[:2])), 0.5)
    if len(faces.boxes) == 0:
        return None
    i = int(np.argmax((faces.boxes[:, 2] - faces.boxes[:, 0]) * (faces.boxes[:, 3] - faces.boxes[:, 1])))
    return faces.boxes[i], faces.landmarks[i]


Face = tuple[NDArray[np.float32], NDArray[np.float32]]


def _descriptor(faceres: FaceRes, image: NDArray[np.uint8], face: Face) -> NDArray[np.float32]:
    return faceres.predict([crop_from_box(image, face[0], face[1], FaceRes.size)]).descriptor[0]


def evaluate(media: Path, modes: list[str], gallery: str, k_note: int | None = None) -> dict[str, Any]:
    from engines import zoo
    from engines.base import create_backend
    from stream.config import build_config
    from stream.job import anonymize_still, build_stages, load_detector, load_estimator
    from stream.obscure import Obscurer

    base = build_config()
    detector, estimator = load_detector(base), load_estimator(base)
    faceres = FaceRes(create_backend("cpu", zoo.ensure("faceres")))
    people = identities(media)
    names = sorted(people)
    originals = {}
    padded: dict[Path, NDArray[np.uint8]] = {}
    for name in names:
        for path in people[name]:
            image = read_rgb(path)
            if max(image.shape[:2]) > 640:  # large photos: the face is no smaller than a frame's
                scale = 640 / max(image.shape[:2])
                image = np.asarray(
                    cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA), np.uint8
                )
            found = main_face(detector, image)
            if found is not None:
                padded[path] = found[0]
        first = next((p for p in people[name] if p in padded), None)
        if first is not None:
            face = _face(detector, padded[first])
            if face is not None:
                originals[name] = _descriptor(faceres, padded[first], face)
    names = [n for n in names if originals.get(n) is not None]
    reference = np.array([originals[n] for n in names])
    probes = [(n, p) for n in names for p in people[n][1:] if p in padded]
    results: dict[str, Any] = {
        "identities": len(names),
        "probes": len(probes),
        "chance": 1 / len(names),
        "modes": {},
    }
    for mode in modes:
        overrides: dict[str, dict[str, Any]] = {
            "obscure": {"mode": "blur" if mode == "original" else mode},
            "attributes": {"every": 1, "min_estimates": 1, "max_estimates": 1},
            "synth": {"gallery": gallery, "min_face": 16},
        }
        config = build_config(None, overrides)
        stages = build_stages(config, detector, estimator) if mode != "original" else []
        obscurer = Obscurer(config.obscure)
        top1 = top5 = detected = 0
        for name, path in probes:
            image = (
                padded[path] if mode == "original" else anonymize_still(padded[path], stages, obscurer).image
            )
            face = _face(detector, image)
            detected += face is not None
            # The attacker knows where the face was even when no detector finds it any more.
            face = face or _face(detector, padded[path])
            if face is None:
                continue
            descriptor = _descriptor(faceres, image, face)
            ranking = np.argsort(-(reference @ descriptor))
            truth = names.index(name)
            top1 += int(ranking[0] == truth)
            top5 += int(truth in ranking[:5])
        results["modes"][mode] = {
            "top1": top1 / len(probes),
            "top5": top5 / len(probes),
            "face_found": detected / len(probes),
        }
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m calibration.synth_report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--media", type=Path, default=MEDIA_DEFAULT)
    p.add_argument("--gallery", default="", help="gallery file for synth (python -m calibration.gallery)")
    p.add_argument("--modes", nargs="+", default=["original", "blur", "pixelate", "synth"])
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    results = evaluate(args.media, args.modes, args.gallery)
    chance = 100 * results["chance"]
    print(f"{results['identities']} identities, {results['probes']} anonymized photos; chance {chance:.1f}%")
    print(f"{'mode':10s} {'top-1':>7s} {'top-5':>7s} {'face found':>11s}")
    for mode, r in results["modes"].items():
        print(f"{mode:10s} {100 * r['top1']:6.1f}% {100 * r['top5']:6.1f}% {100 * r['face_found']:10.1f}%")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
