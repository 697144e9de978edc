"""``report``: fit on half the identities, measure on the other half through the stream's
own drawing, Gaussian noise of the same energy beside it."""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

from calibration.uap.data import fit_artifact, load_faces, method_settings, split
from calibration.uap.faces import Face
from calibration.uap.settings import FACERES_SIZE, FALSE_ACCEPTS, Settings
from calibration.uap.targets import identity_means
from engines.crops import crop_from_box
from stream.algorithms.facewarp import canonical
from stream.algorithms.perturbation import (
    Perturbation,
    noise,
    pattern_norm,
    track_generator,
)


@dataclass(frozen=True)
class Readout:
    """What the models say about N faces: faceres ``descriptor`` ``(N, 1024)`` and ``male``
    ``(N,)``; gear ``gear_male`` ``(N,)`` and ``gear_age`` bin ``(N,)``; ``emotion`` argmax
    ``(N,)``; ``found``: CenterFace still finds a face ``(N,)``."""

    descriptor: NDArray[np.float32]
    male: NDArray[np.float32]
    gear_male: NDArray[np.float32]
    gear_age: NDArray[np.int64]
    emotion: NDArray[np.int64]
    found: NDArray[np.bool_]


class Models:
    """The onnxruntime models the evaluation reads faces with (the stream's own backends)."""

    def __init__(self) -> None:
        from engines import zoo
        from engines.base import create_backend
        from engines.facemodels import Emotion, FaceRes, Gear
        from stream.config import build_config
        from stream.run.job import load_detector

        self.detector = load_detector(build_config())
        self.faceres = FaceRes(create_backend("cpu", zoo.ensure("faceres")))
        self.gear = Gear(create_backend("cpu", zoo.ensure("gear")))
        self.emotion = Emotion(create_backend("cpu", zoo.ensure("emotion")))

    def read(self, faces: Sequence[Face], images: Sequence[NDArray[np.uint8]]) -> Readout:
        """The models' outputs for ``images`` (each a ``Face.image``, maybe perturbed), cropped
        where the clean face was found (the attacker knows where the face is)."""

        def crops(size: int) -> list[Any]:
            return [crop_from_box(im, f.box, f.landmarks, size) for f, im in zip(faces, images, strict=True)]

        res = self.faceres.predict(crops(FACERES_SIZE))
        gear = self.gear.predict(crops(self.gear.size))
        emotion = self.emotion.predict(crops(self.emotion.size))
        found = [len(self.detector.detect([im], 1.0, 0.5)[0].boxes) > 0 for im in images]
        return Readout(res.descriptor, res.male, gear.male, gear.age_bins.argmax(1), emotion.argmax(1),
                       np.array(found))  # fmt: skip


def face_region(face: Face) -> NDArray[np.bool_]:
    """``(H, W)`` mask of the mesh's convex hull in ``face.image``."""
    mask = np.zeros(face.image.shape[:2], np.uint8)
    hull = cv2.convexHull(np.round(face.points[:, :2]).astype(np.int32))
    cv2.fillConvexPoly(mask, hull, 1)
    return mask.astype(bool)


def quality(
    clean: NDArray[np.uint8], changed: NDArray[np.uint8], region: NDArray[np.bool_]
) -> tuple[float, float]:
    """PSNR (dB) and SSIM (RGB, mean of the SSIM map) of ``changed`` against ``clean`` in ``region``."""
    from skimage.metrics import structural_similarity

    diff = clean.astype(np.float64)[region] - changed.astype(np.float64)[region]
    mse = float(np.mean(diff**2))
    psnr = float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)
    _, ssim_map = structural_similarity(clean, changed, data_range=255, channel_axis=2, full=True)
    return psnr, float(ssim_map.mean(axis=2)[region].mean())


def _cosines(a: NDArray[np.float32], b: NDArray[np.float32]) -> NDArray[np.float32]:
    return np.asarray(a @ b.T, np.float32)


def figures(faces: Sequence[Face], clean: Readout, seen: Readout, threshold: float) -> dict[str, float]:
    """Rates for one condition ``seen`` against the ``clean`` readout of the same faces."""
    ids = np.array([f.identity for f in faces])
    names, means = identity_means(list(ids), clean.descriptor)
    truth = np.array([names.index(i) for i in ids])
    before = (clean.descriptor @ means.T).argmax(1)
    after = (seen.descriptor @ means.T).argmax(1)
    genuine = (ids[:, None] == ids[None, :]) & ~np.eye(len(ids), dtype=bool)
    return {
        "identity top-1": float(np.mean(after == truth)),
        "identity fooling": float(np.mean(after != before)),
        "dodging": float(np.mean(_cosines(seen.descriptor, clean.descriptor)[genuine] < threshold)),
        "faceres gender flips": float(np.mean((seen.male > 0.5) != (clean.male > 0.5))),
        "gear gender flips": float(np.mean((seen.gear_male > 0.5) != (clean.gear_male > 0.5))),
        "gear age-bin changes": float(np.mean(seen.gear_age != clean.gear_age)),
        "emotion changes": float(np.mean(seen.emotion != clean.emotion)),
        "face found": float(np.mean(seen.found)),
    }


ROWS = (
    ("identity top-1", "identity top-1 (gallery of this half)"),
    ("identity fooling", "identity fooling rate (decision changed)"),
    ("dodging", "dodging: genuine cosine < threshold"),
    ("faceres gender flips", "faceres gender flips"),
    ("gear gender flips", "transfer: gear gender flips"),
    ("gear age-bin changes", "transfer: gear age-bin changes"),
    ("emotion changes", "transfer: emotion argmax changes"),
    ("face found", "CenterFace still finds the face"),
    ("psnr", "PSNR, face region (dB)"),
    ("ssim", "SSIM, face region"),
)


@dataclass(frozen=True)
class Evaluation:
    """Figures per condition (clean, gaussian, uap), the uap images, the identity threshold and
    the median milliseconds ``apply`` took per face."""

    table: dict[str, dict[str, float]]
    perturbed: list[NDArray[np.uint8]]
    threshold: float
    apply_ms: float


def evaluate(
    faces: Sequence[Face], perturbation: Perturbation, sigma: float, seed: int, models: Models
) -> Evaluation:
    """Draw the pattern (and, per face, seeded noise of ``sigma`` levels) as the stream does and
    read the faces with every model."""
    clean_images = [f.image for f in faces]
    noisy, perturbed, costs = [], [], []
    for i, face in enumerate(faces):
        image = face.image.copy()
        noise(image, face.points, sigma, track_generator(seed, i))
        noisy.append(image)
        image = face.image.copy()
        start = time.perf_counter()
        perturbation.apply(image, face.points)
        costs.append(time.perf_counter() - start)
        perturbed.append(image)
    clean = models.read(faces, clean_images)
    threshold = _threshold(faces, clean.descriptor)
    table = {}
    for name, images in (("clean", clean_images), ("gaussian", noisy), ("uap", perturbed)):
        row = figures(faces, clean, clean if name == "clean" else models.read(faces, images), threshold)
        scores = [quality(f.image, im, face_region(f)) for f, im in zip(faces, images, strict=True)]
        row["psnr"] = float(np.mean([s[0] for s in scores]))
        row["ssim"] = float(np.mean([s[1] for s in scores]))
        table[name] = row
    return Evaluation(table, perturbed, threshold, 1000 * float(np.median(costs)))


def _threshold(faces: Sequence[Face], descriptor: NDArray[np.float32]) -> float:
    """The cosine above which ``FALSE_ACCEPTS`` of the clean impostor pairs fall."""
    ids = np.array([f.identity for f in faces])
    upper = np.triu_indices(len(ids), k=1)
    impostor = ids[upper[0]] != ids[upper[1]]
    return float(np.quantile(_cosines(descriptor, descriptor)[upper][impostor], 1 - FALSE_ACCEPTS))


def write_picture(
    path: Path, faces: Sequence[Face], perturbed: Sequence[NDArray[np.uint8]], gain: float
) -> None:
    """Rows of faces: clean | change x ``gain`` around grey | perturbed (PNG)."""
    tile = 192
    rows = []
    for face, image in list(zip(faces, perturbed, strict=True))[:4]:
        clean = crop_from_box(face.image, face.box, face.landmarks, tile).image
        changed = crop_from_box(image, face.box, face.landmarks, tile).image
        diff = np.clip(128 + gain * (changed.astype(np.float32) - clean), 0, 255).astype(np.uint8)
        rows.append(np.concatenate([clean, diff, changed], axis=1))
    header = np.full((24, 3 * tile, 3), 255, np.uint8)
    for i, label in enumerate(("clean", f"change x{gain:.0f}", "perturbed")):
        cv2.putText(
            header, label, (i * tile + 6, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA
        )
    sheet = np.concatenate([header, *rows], axis=0)
    if not cv2.imwrite(str(path), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR)):
        raise OSError(f"cannot write {path}")


def report(args: argparse.Namespace, settings: Settings) -> None:
    """Fit on one half of the identities, measure on both, print every figure (stdout)."""
    start = time.perf_counter()
    faces = load_faces(args.media)
    fitting, held_out = split(faces, args.seed)
    perturbation, fit = fit_artifact(fitting, args.media, args.target, settings, args.seed)
    if args.out:
        perturbation.save(args.out)
    pattern = perturbation.pattern
    count = int(canonical().mask.sum()) * 3
    sigma = pattern_norm(pattern, "2") / np.sqrt(count)  # same expected l_2 energy on the face mask
    models = Models()
    print(f"seed {args.seed}: fit on {len({f.identity for f in fitting})} identities ({len(fitting)} faces), "
          f"evaluated on {len({f.identity for f in held_out})} others ({len(held_out)} faces)")  # fmt: skip
    print(f"target faceres {args.target}, l_{settings.norm} xi={settings.xi:g}, delta={settings.delta:g}, "
          f"{settings.method} {method_settings(settings)}: "
          f"fooling rate on the fitting faces {fit.fooling_rate:.3f} "
          f"after {fit.passes} passes ({', '.join(f'{h:.3f}' for h in fit.history)}) "
          f"in {fit.seconds:.0f} s")  # fmt: skip
    print(f"pattern: l_inf {pattern_norm(pattern, 'inf'):.2f}, l_2 {pattern_norm(pattern, '2'):.0f} levels; "
          f"gaussian baseline sigma {sigma:.2f} levels (same l_2 energy)")  # fmt: skip
    costs = []
    for title, group in (("held-out identities", held_out), ("fitting identities", fitting)):
        result = evaluate(group, perturbation, sigma, args.seed, models)
        costs.append(result.apply_ms)
        print(f"\n{title} ({len(group)} faces; threshold cosine {result.threshold:.3f} at "
              f"{100 * FALSE_ACCEPTS:g}% false accepts on clean impostor pairs)")  # fmt: skip
        print(f"{'':44s} {'clean':>9s} {'gaussian':>9s} {'uap':>9s}")
        for key, label in ROWS:
            print(
                f"{label:44s} "
                + " ".join(f"{result.table[c][key]:9.3f}" for c in ("clean", "gaussian", "uap"))
            )
        if args.picture and group is held_out:
            write_picture(args.picture, group, result.perturbed, 127 / max(pattern_norm(pattern, "inf"), 1.0))
    heights = [float(np.ptp(f.points[:, 1])) for f in faces]
    print(f"\napply: median {np.median(costs):.1f} ms per face (median mesh height "
          f"{np.median(heights):.0f} px); total {time.perf_counter() - start:.0f} s")  # fmt: skip
