"""The labelled photos, the seeded split by identity, and the fitted artifact with its
provenance."""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from calibration.uap.algorithm import Fit
from calibration.uap.faces import Face, face_path, find_face
from calibration.uap.settings import Settings
from calibration.uap.targets import fit_faces, load_faceres
from engines.evaluation import labelled_photos, read_rgb
from stream.algorithms.perturbation import (
    Perturbation,
    build_manifest,
)
from stream.errors import ModelError


def load_faces(media: Path) -> list[Face]:
    """The largest face of every labelled single-person photo of ``media`` (progress on stderr)."""
    from tqdm import tqdm

    from engines import zoo
    from engines.base import create_backend
    from engines.facemodels import FaceMesh
    from stream.config import build_config
    from stream.run.job import load_detector

    photos = labelled_photos(media)
    if not photos:
        raise ModelError(f"{media}: no labelled photos (MANIFEST.csv); pass --media")
    detector = load_detector(build_config())
    mesh = FaceMesh(create_backend("cpu", zoo.ensure("facemesh")))
    faces = []
    for photo in tqdm(photos, desc="faces", file=sys.stderr, leave=False):
        face = find_face(read_rgb(photo.path), photo.identity, detector, mesh)
        if face is not None:
            faces.append(face)
    return faces


def split(faces: Sequence[Face], seed: int) -> tuple[list[Face], list[Face]]:
    """Faces of one half of the identities (drawn with ``seed``) and of the other half."""
    names = sorted({f.identity for f in faces})
    order = np.random.default_rng(seed).permutation(len(names))
    first = {names[i] for i in order[: len(names) // 2]}
    return [f for f in faces if f.identity in first], [f for f in faces if f.identity not in first]


def data_record(media: Path, faces: Sequence[Face]) -> dict[str, Any]:
    """What a pattern was fitted on, for its manifest."""
    digest = hashlib.sha256((media / "MANIFEST.csv").read_bytes()).hexdigest()
    return {
        "source": "labelled single-person photos of ../shared/media (engines.evaluation.labelled_photos)",
        "media_manifest_sha256": digest,
        "identities": sorted({f.identity for f in faces}),
        "photos": len(faces),
    }


def fit_artifact(
    faces: Sequence[Face], media: Path, target: str, settings: Settings, seed: int
) -> tuple[Perturbation, Fit]:
    """Fit on ``faces`` and wrap the result with its manifest."""
    import torch

    module = load_faceres()
    paths = [face_path(f) for f in faces]
    fit, output = fit_faces(faces, paths, module, target, settings, np.random.default_rng(seed))
    manifest = build_manifest(
        fit.perturbation, "faceres", output, settings.norm, settings.xi,
        classifier=target, delta=settings.delta, fooling_rate=fit.fooling_rate, passes=fit.passes,
        max_passes=settings.max_passes, history=list(fit.history), method=settings.method,
        **method_settings(settings), seed=seed,
        fit_seconds=round(fit.seconds, 1), data=data_record(media, faces), torch=torch.__version__,
    )  # fmt: skip
    return Perturbation(fit.perturbation, manifest), fit


def method_settings(settings: Settings) -> dict[str, Any]:
    """The settings the fitting method used, for the manifest."""
    if settings.method == "deepfool":
        return {
            "candidates": settings.candidates,
            "overshoot": settings.overshoot,
            "max_iter": settings.max_iter,
        }
    return {"batch": settings.batch, "step": settings.step, "clip": settings.clip}
