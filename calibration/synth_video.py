"""What a viewer of synth mode sees, measured on video by models the stream does not use.

    python -m calibration.synth_video [CLIP ...] [--every 3] [--set synth.KEY=VALUE ...]
                                      [--json out.json] [--sheet DIR]

Each clip (by default hamilton, the facenet street clip and the LivePortrait
talking heads of ../shared/media) runs through the stream in synth mode; then
on every ``--every``-th frame, input and output side by side:

- coverage: of the faces at least 24 px tall that face-api's SSD MobileNet v1
  (which the stream never runs) finds in the input, the share it still finds
  in the output at the same place (IoU >= 0.5); a blurred face is no face to
  it. Beside it the report's own count of replaced faces and fallbacks.
- halo: in the ring between each such face's box and 1.5 times it, the
  output's sharpness (variance of the Laplacian) against the input's.
- look: the SSD's and CenterFace's scores of each face in the output against
  the input (a face that reads as a face scores as one).
- expression: the mouth opening (inner lips over face height) by face-api's
  68-point landmark net on input and output, correlated per clip; and the
  emotion net's class on both (agreement share).
- attributes: for each track, the faceres gender of its replaced face in the
  output against the Male the report says PPAS released for it.

``--sheet DIR`` writes one contact sheet per clip (input | output around each
face, a fixed set of frames); ``--privacy`` adds top-1 re-identification over the
single-person clips (one original frame per clip enrolled, every 5th output frame
matched, faceres and dlib), synth and blur.

Over 400 lines: one measurement pass whose readings (coverage, halo, look, expression,
attributes, re-identification) share the decoded frames and the models.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

from calibration.command import command
from calibration.synth_report import attackers, largest_face
from engines.crops import crop_from_box
from stream.algorithms.tracker import iou_matrix as iou
from stream.config import build_config, parse_option

Face = tuple[NDArray[np.float32], NDArray[np.float32]]  # box, five landmarks
MEDIA_DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "media"
MIN_HEIGHT = 24  # px: the faces counted
SAME_PLACE = 0.5  # IoU of a face found in the output to the input's


def default_clips(media: Path) -> list[Path]:
    driving = sorted((media / "LivePortrait" / "assets" / "examples" / "driving").glob("*.mp4"))
    return [
        media / "face_recognition" / "examples" / "short_hamilton_clip.mp4",
        media / "facenet-pytorch" / "examples" / "video.mp4",
        *driving,
    ]


def decode(path: Path) -> list[NDArray[np.uint8]]:
    import av

    with av.open(str(path)) as container:
        return [np.asarray(f.to_ndarray(format="rgb24"), np.uint8) for f in container.decode(video=0)]


def ring_sharpness(image: NDArray[np.uint8], box: NDArray[np.float32], scale: float = 1.5) -> float | None:
    """Variance of the Laplacian (grey) in the ring between ``box`` and ``scale`` times it."""
    h, w = image.shape[:2]
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    half = (box[2:] - box[:2]) * scale / 2
    x1, y1 = int(max(0, cx - half[0])), int(max(0, cy - half[1]))
    x2, y2 = int(min(w, cx + half[0])), int(min(h, cy + half[1]))
    if x2 - x1 < 8 or y2 - y1 < 8:
        return None
    grey = cv2.cvtColor(image[y1:y2, x1:x2], cv2.COLOR_RGB2GRAY)
    lap = cv2.Laplacian(grey, cv2.CV_32F)
    ring = np.ones(lap.shape, bool)
    ix1, iy1 = int(box[0]) - x1, int(box[1]) - y1
    ix2, iy2 = int(np.ceil(box[2])) - x1, int(np.ceil(box[3])) - y1
    ring[max(0, iy1) : max(0, iy2), max(0, ix1) : max(0, ix2)] = False
    ring[:1], ring[-1:], ring[:, :1], ring[:, -1:] = False, False, False, False  # the filter's border
    return float(lap[ring].var()) if ring.sum() > 32 else None


@dataclass
class Models:
    ssd: Any
    centerface: Any
    mesh: Any
    faceres: Any
    emotion: Any
    landmarks: Any  # face-api's 68-point net


def load_models() -> Models:
    from engines import zoo
    from engines.base import create_backend
    from engines.faceapi import FaceLandmarks68
    from engines.facemodels import Emotion, FaceMesh, FaceRes
    from stream.measure.leak import load_second
    from stream.run.job import load_detector

    landmarks = FaceLandmarks68(create_backend("cpu", zoo.ensure("faceapi-landmarks68")))
    return Models(
        ssd=load_second(),
        centerface=load_detector(build_config()),
        mesh=FaceMesh(create_backend("cpu", zoo.ensure("facemesh"))),
        faceres=FaceRes(create_backend("cpu", zoo.ensure("faceres"))),
        emotion=Emotion(create_backend("cpu", zoo.ensure("emotion"))),
        landmarks=landmarks,
    )


@dataclass
class FaceReading:
    """One face (found in the input by the SSD) as both frames show it."""

    found_out: bool
    ssd_in: float
    ssd_out: float
    centerface_in: float
    centerface_out: float
    halo: float | None  # output ring sharpness / input's
    mouth_in: float | None = None
    mouth_out: float | None = None
    emotion_in: int | None = None
    emotion_out: int | None = None
    male_out: float | None = None
    replaced: bool = False
    track: int | None = None


def _best(
    boxes: NDArray[np.float32], scores: NDArray[np.float32], box: NDArray[np.float32]
) -> tuple[int, float]:
    if len(boxes) == 0:
        return -1, 0.0
    overlap = iou(box[None], boxes)[0]
    i = int(np.argmax(overlap))
    return (i, float(scores[i])) if overlap[i] >= SAME_PLACE else (-1, 0.0)


def _mouth(models: Models, image: NDArray[np.uint8], box: NDArray[np.float32]) -> float | None:
    points = models.landmarks.locate(image, box[None])[0]
    height = float(np.linalg.norm(points[8] - (points[19] + points[24]) / 2)) + 1e-6
    return float(np.linalg.norm(points[66] - points[62]) / height)


def read_frame(models: Models, before: NDArray[np.uint8], after: NDArray[np.uint8],
               region: dict[str, Any] | None) -> list[FaceReading]:  # fmt: skip
    found_in = models.ssd.detect(before, 1.0)
    keep = (found_in.boxes[:, 3] - found_in.boxes[:, 1]) >= MIN_HEIGHT
    boxes_in, scores_in = found_in.boxes[keep], found_in.scores[keep]
    if len(boxes_in) == 0:
        return []
    found_out = models.ssd.detect(after, 1.0)
    (cf_in,), (cf_out,) = (
        models.centerface.detect([before], 1.0, 0.05),
        models.centerface.detect([after], 1.0, 0.05),
    )
    readings = []
    for box, score in zip(boxes_in, scores_in, strict=True):
        j, ssd_out = _best(found_out.boxes, found_out.scores, box)
        k, c_in = _best(cf_in.boxes, cf_in.scores, box)
        _, c_out = _best(cf_out.boxes, cf_out.scores, box)
        ring_in, ring_out = ring_sharpness(before, box), ring_sharpness(after, box)
        halo = ring_out / ring_in if ring_in and ring_out is not None and ring_in > 1.0 else None
        reading = FaceReading(j >= 0, float(score), ssd_out, c_in, c_out, halo)
        if k >= 0:
            landmarks = cf_in.landmarks[k]
            crops = [
                crop_from_box(img, cf_in.boxes[k], landmarks, models.emotion.size) for img in (before, after)
            ]
            emotions = models.emotion.predict(crops)
            reading.emotion_in, reading.emotion_out = int(np.argmax(emotions[0])), int(np.argmax(emotions[1]))
            face = crop_from_box(after, cf_in.boxes[k], landmarks, models.faceres.size)
            reading.male_out = float(models.faceres.predict([face]).male[0])
        reading.mouth_in, reading.mouth_out = _mouth(models, before, box), _mouth(models, after, box)
        if region is not None and region["boxes"]:
            overlap = iou(box[None], np.asarray(region["boxes"], np.float32))[0]
            t = int(np.argmax(overlap))
            if overlap[t] > 0.2:
                reading.track = int(region["track_ids"][t])
                reading.replaced = reading.track in region["replaced"]
        readings.append(reading)
    return readings


@dataclass
class ClipResult:
    name: str
    readings: list[FaceReading] = field(default_factory=list)
    synthesis: dict[str, Any] = field(default_factory=dict)
    released_male: dict[int, bool] = field(default_factory=dict)
    seconds: float = 0.0
    frames: int = 0
    output: Path | None = None

    def figures(self) -> dict[str, Any]:
        r = self.readings
        out: dict[str, Any] = {"clip": self.name, "faces": len(r), "frames": self.frames}
        if not r:
            return out
        out["coverage"] = float(np.mean([x.found_out for x in r]))
        halos = [x.halo for x in r if x.halo is not None]
        out["halo"] = float(np.median(halos)) if halos else None
        out["ssd_score"] = float(
            np.mean([x.ssd_out for x in r]) / max(float(np.mean([x.ssd_in for x in r])), 1e-6)
        )
        cin = [x.centerface_in for x in r if x.centerface_in > 0]
        out["centerface_score"] = (
            float(np.mean([x.centerface_out for x in r if x.centerface_in > 0]) / np.mean(cin))
            if cin
            else None
        )
        mouths = [(x.mouth_in, x.mouth_out) for x in r if x.mouth_in is not None and x.mouth_out is not None]
        if len(mouths) >= 5 and np.std([m[0] for m in mouths]) > 0:
            out["mouth_correlation"] = float(np.corrcoef(np.array(mouths).T)[0, 1])
        emotions = [(x.emotion_in, x.emotion_out) for x in r if x.emotion_in is not None]
        out["emotion_agreement"] = float(np.mean([a == b for a, b in emotions])) if emotions else None
        by_track: dict[int, list[float]] = defaultdict(list)
        for x in r:
            if x.replaced and x.track is not None and x.male_out is not None:
                by_track[x.track].append(x.male_out)
        agree = [
            (np.mean(v) > 0.5) == self.released_male[t]
            for t, v in by_track.items()
            if t in self.released_male
        ]
        out["gender_agreement"] = float(np.mean(agree)) if agree else None
        out["gender_tracks"] = len(agree)
        out["replaced_share"] = float(np.mean([x.replaced for x in r]))
        out["synthesis"] = self.synthesis
        out["fps"] = self.frames / self.seconds if self.seconds else None
        return out


Run = tuple[Path, dict[str, Any], list[dict[str, Any]], float]  # output, report, regions, seconds


def run_clip(clip: Path, overrides: dict[str, dict[str, Any]], workdir: Path, tag: str = "synth") -> Run:
    import time

    from stream.run.job import RegionLog, run_job

    config = build_config(None, overrides)
    out, report = workdir / f"{clip.stem}-{tag}.mp4", workdir / f"{clip.stem}-{tag}.json"
    regions = RegionLog()
    start = time.perf_counter()
    run_job(str(clip), str(out), config, regions=regions, report=report)
    seconds = time.perf_counter() - start
    return out, json.loads(report.read_text()), regions.frames, seconds


def measure(clip: Path, overrides: dict[str, dict[str, Any]], models: Models, every: int, workdir: Path,
            sheet: Path | None = None) -> ClipResult:  # fmt: skip
    out, report, regions, seconds = run_clip(clip, overrides, workdir)
    before, after = decode(clip), decode(out)
    if len(before) != len(after):
        raise RuntimeError(f"{clip}: {len(before)} frames in, {len(after)} out")
    result = ClipResult(clip.stem, seconds=seconds, frames=len(before), output=out)
    result.synthesis = report["summary"].get("synthesis") or {}
    for track in (report.get("privacy") or {}).get("tracks", []):
        if "selected" in track:
            result.released_male[int(track["track"])] = bool(track["selected"]["Male"])
    by_index = {r["index"]: r for r in regions}
    picked: list[tuple[int, list[FaceReading]]] = []
    for i in range(0, len(before), every):
        readings = read_frame(models, before[i], after[i], by_index.get(i))
        result.readings += readings
        picked.append((i, readings))
    if sheet is not None:
        write_sheet(sheet / f"{clip.stem}.png", before, after, models, [i for i, _ in picked])
    return result


def write_sheet(path: Path, before: list[NDArray[np.uint8]], after: list[NDArray[np.uint8]], models: Models,
                indexes: list[int], columns: int = 6) -> None:  # fmt: skip
    """Input over output around the largest face, at ``columns`` frames spread over the clip."""
    chosen = [indexes[int(j)] for j in np.linspace(0, len(indexes) - 1, min(columns, len(indexes)))]
    tiles = []
    for i in chosen:
        found = models.ssd.detect(before[i], 1.0)
        if len(found.boxes) == 0:
            continue
        box = found.boxes[int(np.argmax(found.boxes[:, 3] - found.boxes[:, 1]))]
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        half = max(box[2] - box[0], box[3] - box[1]) * 1.2
        h, w = before[i].shape[:2]
        x1, y1 = int(max(0, cx - half)), int(max(0, cy - half))
        x2, y2 = int(min(w, cx + half)), int(min(h, cy + half))
        pair = [
            cv2.resize(img[y1:y2, x1:x2], (240, 240), interpolation=cv2.INTER_AREA)
            for img in (before[i], after[i])
        ]
        tiles.append(np.concatenate(pair, axis=0))
    if tiles:
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), cv2.cvtColor(np.concatenate(tiles, axis=1), cv2.COLOR_RGB2BGR))


def summary(results: list[ClipResult]) -> dict[str, Any]:
    figures = [r.figures() for r in results]
    talking = [f for f in figures if f["clip"].startswith("d")]
    correlations = [f["mouth_correlation"] for f in talking if f.get("mouth_correlation") is not None]
    return {
        "clips": figures,
        "coverage_min": min((f["coverage"] for f in figures if "coverage" in f), default=None),
        "halo_min": min((f["halo"] for f in figures if f.get("halo") is not None), default=None),
        "mouth_correlation_median": float(np.median(correlations)) if correlations else None,
    }


def print_table(figures: dict[str, Any]) -> None:
    keys = ("faces", "coverage", "replaced_share", "halo", "ssd_score", "centerface_score",
            "mouth_correlation", "emotion_agreement", "gender_agreement", "fps")  # fmt: skip
    print("| clip | " + " | ".join(keys) + " | fallback |")
    print("|---" * (len(keys) + 2) + "|")
    for f in figures["clips"]:
        cells = []
        for k in keys:
            v = f.get(k)
            cells.append("-" if v is None else (f"{v:.2f}" if isinstance(v, float) else str(v)))
        fallback = ", ".join(f"{k} {v}" for k, v in (f.get("synthesis") or {}).get("fallback", {}).items())
        print(f"| {f['clip']} | " + " | ".join(cells) + f" | {fallback} |")


def _main_face(
    detector: Any, image: NDArray[np.uint8]
) -> tuple[NDArray[np.float32], NDArray[np.float32]] | None:
    return largest_face(detector, image, threshold=0.3, max_side=1 << 16)


def reidentification(clips: list[Path], outputs: dict[str, dict[str, Path]], models: Models,
                     every: int = 5) -> dict[str, Any]:  # fmt: skip
    """Top-1 re-identification over single-person clips: one original frame per clip enrolled
    (its first), every ``every``-th output frame matched against all clips' enrolled faces,
    by faceres and by dlib's network (``calibration.synth_report.attackers``); chance is one
    in the number of clips. The attacker crops the face where CenterFace finds it in the
    output, or where it was in the input when it finds none (a blurred face)."""

    attack = attackers()
    enrolled: dict[str, dict[str, NDArray[np.float32]]] = {}
    originals: dict[str, list[NDArray[np.uint8]]] = {}
    for clip in clips:
        frames = decode(clip)
        originals[clip.stem] = frames
        face = _main_face(models.centerface, frames[0])
        if face is None:
            raise RuntimeError(f"{clip}: no face in its first frame to enrol")
        enrolled[clip.stem] = {name: a(frames[0], face) for name, a in attack.items()}
    names = sorted(enrolled)
    results: dict[str, Any] = {"clips": len(names), "chance": 1 / len(names)}
    for mode in sorted({m for o in outputs.values() for m in o}):
        hits: dict[str, list[bool]] = {name: [] for name in attack}
        for stem in names:
            frames = decode(outputs[stem][mode])
            for i in range(0, len(frames), every):
                face = _main_face(models.centerface, frames[i]) or _main_face(
                    models.centerface, originals[stem][i]
                )
                if face is None:
                    continue
                for name, a in attack.items():
                    probe = a(frames[i], face)
                    gallery = np.array([enrolled[c][name] for c in names])
                    gallery /= np.linalg.norm(gallery, axis=1, keepdims=True)
                    probe = probe / np.linalg.norm(probe)
                    hits[name].append(names[int(np.argmax(gallery @ probe))] == stem)
        results[mode] = {name: float(np.mean(h)) for name, h in hits.items()} | {
            "probes": len(hits["faceres"])
        }
    return results


@command
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m calibration.synth_video", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("clips", nargs="*", type=Path, help="video clips (default: the media's, see above)")
    p.add_argument("--media", type=Path, default=MEDIA_DEFAULT)
    p.add_argument("--every", type=int, default=3, help="measure every this many frames")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    p.add_argument("--json", type=Path)
    p.add_argument("--sheet", type=Path, help="folder for one contact sheet per clip")
    p.add_argument("--privacy", action="store_true",
                   help="also re-identification over the single-person clips, synth and blur")  # fmt: skip
    args = p.parse_args(argv)
    overrides: dict[str, dict[str, Any]] = {"obscure": {"mode": "synth"}, "attributes": {"enabled": True}}
    for section, name, value in map(parse_option, args.set):
        overrides.setdefault(section, {})[name] = value
    models = load_models()
    clips = args.clips or default_clips(args.media)
    results = []
    with tempfile.TemporaryDirectory() as folder:
        for clip in clips:
            results.append(measure(clip, overrides, models, args.every, Path(folder), args.sheet))
            print(json.dumps(results[-1].figures(), default=str))
        figures = summary(results)
        if args.privacy:
            single = [c for c in clips if "LivePortrait" in str(c)]
            outputs: dict[str, dict[str, Path]] = {}
            for clip, result in zip(clips, results, strict=True):
                if clip in single and result.output is not None:
                    blur = run_clip(clip, overrides | {"obscure": {"mode": "blur"}}, Path(folder), "blur")[0]
                    outputs[clip.stem] = {"synth": result.output, "blur": blur}
            figures["reidentification"] = reidentification(single, outputs, models)
            print(json.dumps(figures["reidentification"]))
    print_table(figures)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
