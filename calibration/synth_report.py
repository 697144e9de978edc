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

Image quality against the originals (PSNR, SSIM, MS-SSIM on the face crop,
as the paper's Table 1 reports for blurring, pixelation, masking and its own
method), and a contact sheet (original | blur | pixelate | mask | synth).
"""

from __future__ import annotations

import argparse
import itertools
import json
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

from calibration.command import command
from engines.crops import crop_from_box
from engines.evaluation import frame_sized, labelled_photos, main_face, read_rgb
from engines.facemodels import FaceRes
from stream.config import parse_option

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


def largest_face(detector: Any, image: NDArray[np.uint8], threshold: float = 0.5,
                 max_side: int = 1280) -> tuple[NDArray[np.float32], NDArray[np.float32]] | None:  # fmt: skip
    """The box and five landmarks of the largest face CenterFace finds, detected on the image
    scaled to at most ``max_side``; None when it finds none."""
    (faces,) = detector.detect([image], min(1.0, max_side / max(image.shape[:2])), threshold)
    if len(faces.boxes) == 0:
        return None
    i = int(np.argmax((faces.boxes[:, 2] - faces.boxes[:, 0]) * (faces.boxes[:, 3] - faces.boxes[:, 1])))
    return faces.boxes[i], faces.landmarks[i]


Face = tuple[NDArray[np.float32], NDArray[np.float32]]


def _descriptor(faceres: FaceRes, image: NDArray[np.uint8], face: Face) -> NDArray[np.float32]:
    return faceres.predict([crop_from_box(image, face[0], face[1], FaceRes.size)]).descriptor[0]


Attacker = Callable[[NDArray[np.uint8], Face], NDArray[np.float32]]


def attackers() -> dict[str, Attacker]:
    """Identity descriptors the measurement attacks with: faceres (the one the stream itself
    uses, for attributes and for its identity check) and dlib's ResNet from face-api.js,
    which the stream never sees (another network, other training data)."""
    from engines import zoo
    from engines.base import create_backend
    from engines.faceapi import FaceApiRecognition

    faceres = FaceRes(create_backend("cpu", zoo.ensure("faceres")))
    dlib = FaceApiRecognition(create_backend("cpu", zoo.ensure("faceapi-recognition")))
    return {
        "faceres": lambda image, face: _descriptor(faceres, image, face),
        "dlib": lambda image, face: dlib.describe(
            [crop_from_box(image, face[0], face[1], dlib.size, dlib.enlarge)]
        )[0],
    }


def ms_ssim(a: NDArray[np.uint8], b: NDArray[np.uint8]) -> float:
    """Multi-scale SSIM (Wang et al. 2003) of two grey images, five scales with the standard weights."""
    from skimage.metrics import structural_similarity

    weights = np.array([0.0448, 0.2856, 0.3001, 0.2363, 0.1333])
    x, y = a.astype(np.float64), b.astype(np.float64)
    values = []
    for level in range(len(weights)):
        win = min(7, *(s - (s + 1) % 2 for s in x.shape))
        values.append(max(structural_similarity(x, y, data_range=255, win_size=max(3, win)), 1e-6))
        if level < len(weights) - 1:
            x, y = np.asarray(cv2.pyrDown(x), np.float64), np.asarray(cv2.pyrDown(y), np.float64)
    return float(np.prod(np.array(values) ** weights))


def quality(
    original: NDArray[np.uint8], anonymized: NDArray[np.uint8], face: Face
) -> tuple[float, float, float]:
    """PSNR, SSIM and MS-SSIM of the anonymized face against the original, on the face crop."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    def grey(image: NDArray[np.uint8]) -> NDArray[np.uint8]:
        crop = crop_from_box(image, face[0], None, 128, enlarge=1.2).image
        return np.asarray(cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY), np.uint8)

    a, b = grey(original), grey(anonymized)
    return (
        float(peak_signal_noise_ratio(a, b, data_range=255)),
        float(structural_similarity(a, b, data_range=255)),
        ms_ssim(a, b),
    )


def evaluate(  # noqa: C901 - one pass over the media, tallying every mode
    media: Path, modes: list[str], gallery: str, sheet: Path | None = None,
    options: dict[str, dict[str, Any]] | None = None, every: int = 1,
) -> dict[str, Any]:  # fmt: skip
    """Re-identification and quality figures per mode; ``options``: config sections applied to the
    synth mode (``{"synth": {...}, "perturb": {...}}``); ``every``: one probe photo in that many."""
    from stream.algorithms.obscure import Obscurer
    from stream.config import build_config
    from stream.run.job import anonymize_still, build_stages, load_detector, load_estimator
    from stream.stages import SynthStage

    base = build_config()
    detector, estimator = load_detector(base), load_estimator(base)
    attack = attackers()
    people = identities(media)
    names = sorted(people)
    originals: dict[str, dict[str, NDArray[np.float32]]] = {}
    padded: dict[Path, NDArray[np.uint8]] = {}
    for name in names:
        for path in people[name]:
            found = main_face(detector, frame_sized(read_rgb(path)))
            if found is not None:
                padded[path] = found[0]
        first = next((p for p in people[name] if p in padded), None)
        if first is not None:
            face = largest_face(detector, padded[first])
            if face is not None:
                originals[name] = {a: describe(padded[first], face) for a, describe in attack.items()}
    names = [n for n in names if n in originals]
    reference = {a: np.array([originals[n][a] for n in names]) for a in attack}
    probes = [(n, p) for n in names for p in people[n][1:] if p in padded][::every]
    results: dict[str, Any] = {
        "identities": len(names),
        "probes": len(probes),
        "chance": 1 / len(names),
        "modes": {},
    }
    sheet_rows: dict[Path, dict[str, NDArray[np.uint8]]] = {}
    for mode in modes:
        overrides: dict[str, dict[str, Any]] = {
            "obscure": {"mode": "blur" if mode == "original" else mode},
            "attributes": {"every": 1, "min_estimates": 1, "max_estimates": 1},
            "synth": {"gallery": gallery, "min_face": 16},
        }
        if mode == "synth":
            for section, values in (options or {}).items():
                overrides[section] = {**overrides.get(section, {}), **values}
        config = build_config(None, overrides)
        stages = build_stages(config, detector, estimator) if mode != "original" else []
        obscurer = Obscurer(config.obscure)
        synth = next((s for s in stages if isinstance(s, SynthStage)), None)
        top1 = dict.fromkeys(attack, 0)
        top5 = dict.fromkeys(attack, 0)
        detected = 0
        scores, likeness, fallbacks, photos = [], [], [], []
        for name, path in probes:
            image = (
                padded[path] if mode == "original" else anonymize_still(padded[path], stages, obscurer).image
            )
            photo: dict[str, Any] = {"photo": str(path.relative_to(media)), "identity": name}
            photos.append(photo)
            if synth is not None:  # what the stream's own check measured, and why faces fell back
                checked = [v for v in synth.likeness.values() if v is not None]
                likeness += checked
                fallbacks += list(synth.counts.fallback)
                photo.update(likeness=checked, fallback=list(synth.counts.fallback))
            sheet_rows.setdefault(path, {})[mode] = image
            where = largest_face(detector, padded[path])
            if where is not None:
                scores.append(quality(padded[path], image, where))
            face = largest_face(detector, image)
            detected += face is not None
            photo["found"] = face is not None
            # The attacker knows where the face was even when no detector finds it any more.
            face = face or largest_face(detector, padded[path])
            if face is None:
                continue
            truth = names.index(name)
            for a, describe in attack.items():
                ranking = np.argsort(-(reference[a] @ describe(image, face)))
                top1[a] += int(ranking[0] == truth)
                top5[a] += int(truth in ranking[:5])
                photo[f"{a}_rank"] = int(np.nonzero(ranking == truth)[0][0]) + 1
        psnr, ssim, msssim = (float(np.mean(v)) for v in zip(*scores, strict=True)) if scores else (0.0,) * 3
        results["modes"][mode] = {
            "top1": top1["faceres"] / len(probes),
            "top5": top5["faceres"] / len(probes),
            "dlib_top1": top1["dlib"] / len(probes),
            "dlib_top5": top5["dlib"] / len(probes),
            "face_found": detected / len(probes),
            "psnr": psnr,
            "ssim": ssim,
            "ms_ssim": msssim,
        }
        results["modes"][mode]["photos"] = photos
        if synth is not None:
            results["modes"][mode]["likeness"] = likeness
            results["modes"][mode]["fallback"] = {str(r): fallbacks.count(r) for r in sorted(set(fallbacks))}
    if sheet is not None:
        write_sheet(
            sheet, [sheet_rows[p] for n, p in probes[:: max(1, len(probes) // 8)]][:8], padded, detector
        )
    return results


def write_sheet(path: Path, rows: list[dict[str, NDArray[np.uint8]]], padded: Any, detector: Any) -> None:
    """A contact sheet: one face per row, one mode per column (original | blur | pixelate | synth ...)."""
    tiles = []
    for row in rows:
        original = row.get("original", next(iter(row.values())))
        where = largest_face(detector, original)
        if where is None:
            continue
        tiles.append(
            np.concatenate([crop_from_box(img, where[0], None, 160, 1.8).image for img in row.values()], 1)
        )
    if tiles:
        header = np.full((24, tiles[0].shape[1], 3), 255, np.uint8)
        for i, mode in enumerate(rows[0].keys()):
            cv2.putText(
                header, mode, (i * 160 + 6, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA
            )
        cv2.imwrite(str(path), cv2.cvtColor(np.concatenate([header, *tiles], 0), cv2.COLOR_RGB2BGR))


def stability(clips: list[Path], gallery: str, workdir: Path) -> dict[str, Any]:
    """Per clip: the median cosine between each replaced frame's face descriptor and its
    track's mean (the surrogate must stay the same person-that-isn't), and flicker: the mean
    frame-to-frame change of the face region in the output over the same in the input."""
    import av

    from engines import zoo
    from engines.base import create_backend
    from stream.config import build_config
    from stream.run.job import RegionLog, load_detector, run_job

    config = build_config(None, {"obscure": {"mode": "synth"}, "synth": {"gallery": gallery}})
    detector = load_detector(config)
    faceres = FaceRes(create_backend("cpu", zoo.ensure("faceres")))
    out: dict[str, Any] = {}
    for clip in clips:
        log = RegionLog()
        target = workdir / f"{clip.stem}.mkv"
        run_job(str(clip), str(target), config, detector=detector, regions=log)
        with av.open(str(clip)) as a, av.open(str(target)) as b:
            originals = [np.asarray(f.to_ndarray(format="rgb24"), np.uint8) for f in a.decode(video=0)]
            frames = [np.asarray(f.to_ndarray(format="rgb24"), np.uint8) for f in b.decode(video=0)]
        per_track: dict[int, list[NDArray[np.float32]]] = defaultdict(list)
        boxes = []
        for record, frame, original in zip(log.frames, frames, originals, strict=False):
            for tid in record["track_ids"]:
                if tid not in record["replaced"]:
                    continue
                face = largest_face(detector, original)
                if face is None:
                    continue
                per_track[tid].append(_descriptor(faceres, frame, face))
                boxes.append(face[0])
        flicker = None
        if boxes:  # frame-to-frame change inside the region the faces occupy, output over input
            x1, y1 = (int(max(0, v)) for v in np.min(boxes, axis=0)[:2])
            x2, y2 = (int(v) for v in np.max(boxes, axis=0)[2:])
            region = (slice(y1, y2), slice(x1, x2))
            change_out = np.mean([np.abs(b[region].astype(np.float32) - a[region]).mean()
                                  for a, b in itertools.pairwise(frames)])  # fmt: skip
            change_in = np.mean([np.abs(b[region].astype(np.float32) - a[region]).mean()
                                 for a, b in itertools.pairwise(originals)])  # fmt: skip
            flicker = float(change_out) / max(float(change_in), 1e-6)
        cosines = []
        for descriptors in per_track.values():
            d = np.array(descriptors)
            mean = d.mean(axis=0)
            mean /= np.linalg.norm(mean)
            cosines += list(d @ mean)
        out[clip.name] = {
            "replaced_frames": sum(len(v) for v in per_track.values()),
            "frames": len(frames),
            "median_cosine": float(np.median(cosines)) if cosines else None,
            "flicker_ratio": flicker,
        }
    return out


@command
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m calibration.synth_report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--media", type=Path, default=MEDIA_DEFAULT)
    p.add_argument(
        "--gallery",
        default="builtin",
        help="gallery for synth: a file (python -m calibration.gallery), builtin, or '' for none",
    )
    p.add_argument("--modes", nargs="+", default=["original", "blur", "pixelate", "mask", "synth"])
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="a config option for the synth mode, e.g. synth.reshape=0.5 or perturb.mode='noise' "
                        "(repeatable)")  # fmt: skip
    p.add_argument("--json", type=Path)
    p.add_argument("--sheet", type=Path, help="write a contact sheet (PNG) of faces in every mode")
    p.add_argument(
        "--stability", action="store_true", help="also measure surrogate stability on talking heads"
    )
    args = p.parse_args(argv)
    if args.stability:
        import tempfile

        clips = sorted((args.media / "LivePortrait" / "assets" / "examples" / "driving").glob("*.mp4"))
        with tempfile.TemporaryDirectory() as tmp:
            for name, r in stability(clips, args.gallery, Path(tmp)).items():
                print(f"{name}: {r['replaced_frames']} of {r['frames']} frames replaced; median cosine "
                      f"{r['median_cosine']}; flicker {r['flicker_ratio']} x the input's")  # fmt: skip
        return 0
    options: dict[str, dict[str, Any]] = {}
    for section, name, value in map(parse_option, args.set):
        options.setdefault(section, {})[name] = value
    results = evaluate(args.media, args.modes, args.gallery, args.sheet, options)
    chance = 100 * results["chance"]
    print(f"{results['identities']} identities, {results['probes']} anonymized photos; chance {chance:.1f}%")
    print("re-identified by faceres (top-1, top-5) and by dlib, which the stream never uses (top-1, top-5)")
    columns = ("top-1", "top-5", "dlib top-1", "dlib top-5", "face found", "PSNR", "SSIM", "MS-SSIM")
    print(f"{'mode':10s} " + " ".join(f"{c:>10s}" for c in columns))
    for mode, r in results["modes"].items():
        rates = (r["top1"], r["top5"], r["dlib_top1"], r["dlib_top5"], r["face_found"])
        print(f"{mode:10s} " + " ".join(f"{100 * v:9.1f}%" for v in rates)
              + f" {r['psnr']:10.2f} {r['ssim']:10.3f} {r['ms_ssim']:10.3f}")  # fmt: skip
    for mode, r in results["modes"].items():
        if r.get("likeness"):
            print(f"{mode}: the stream's own check, cosine of replaced face to person: median "
                  f"{np.median(r['likeness']):.2f}, max {max(r['likeness']):.2f}; photos that fell back, "
                  f"by reason: {r['fallback']}")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
