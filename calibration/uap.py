"""Stage IV, offline: a universal adversarial perturbation against face recognizers.

    python -m calibration.uap fit -o uap.npz [--norm inf] [--xi 10] [--delta 0.2] [--target identity]
                                             [--method deepfool|sgd]
    python -m calibration.uap report --seed 0 [--picture uap.png] [-o half.npz]

One pattern in the canonical face frame of ``stream/algorithms/facewarp.py`` (Moosavi-Dezfooli
et al. 2017, "Universal adversarial perturbations"): the faces are visited in a
seeded order; for each face the target still classifies as it does the clean
face, DeepFool (multi-class, over the clean face's top candidate classes) finds
the l_2-smallest step that changes the decision, and the pattern plus that step
is projected back onto the l_p ball (p = inf or 2) of radius ``xi`` (pixel
levels, 0-255), as in the paper's Algorithm 1. Passes end when the fooling rate
reaches ``1 - delta`` or after ``--max-passes`` (each takes minutes on a CPU).

``--method sgd`` fits the same ball by stochastic gradient instead (Shafahi et
al. 2020, "Universal adversarial training"): per mini-batch of faces, one step
against the mean clipped margin loss ``max(z_label - max_other z, -clip)``
(signed gradient for l_inf, normalised gradient for l_2), then the same
projection; a face pushed ``clip`` past the boundary stops pulling the pattern.
On faces DeepFool's l_2-minimal per-face steps exceed the l_inf radius (median
l_inf about 17 levels against xi = 10) and clipping them undoes most of each.

Targets, from the faceres model run as a torch module: ``identity`` classifies a
face among the fitting identities by the cosine of its descriptor to each
identity's mean; ``attributes`` is the attribute estimator's gender decision.

Each face reaches the target exactly as the stream will show it, made
differentiable: the pattern is sampled onto the face's mesh with the same
per-triangle map ``from_canonical`` draws with, added and clipped to 0-255, and
the faceres crop is sampled from that (the crop's affine map).

``report`` splits the identities of the labelled photos in two halves (seeded),
fits on one and measures on the other through the stream's own drawing
(``stream.algorithms.perturbation``), with Gaussian noise of the same l_2 energy as a
baseline: the target's fooling rate, dodging at the 1%-false-accept threshold,
transfer to models it was not fitted on (gear, emotion), PSNR and SSIM.

Over 400 lines: to split along its sections (issue 16 item 6, not done yet).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import cv2
import numpy as np
from numpy.typing import NDArray

from engines.crops import crop_from_box
from engines.evaluation import frame_sized, labelled_photos, main_face, read_rgb
from stream.algorithms.facewarp import SIZE, canonical, canonical_map
from stream.algorithms.perturbation import (
    MAX_LEVEL,
    NORMS,
    Perturbation,
    build_manifest,
    noise,
    pattern_norm,
    track_generator,
)
from stream.errors import AnonError, ConfigError, ModelError

if TYPE_CHECKING:
    import torch

    Logits = Callable[[torch.Tensor], torch.Tensor]

MEDIA_DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "media"
DESCRIPTOR = "global_pooling/Mean"
GENDER = "gender_pred/Sigmoid"
TARGETS = ("identity", "attributes")
METHODS = ("deepfool", "sgd")
FACERES_SIZE = 224
LOGIT_SCALE = 10.0  # cosine logits; DeepFool's decisions do not depend on the scale
FALSE_ACCEPTS = 0.01
CHUNK = 16  # faces per no-grad forward pass


@dataclass(frozen=True)
class Settings:
    """UAP settings; ``xi`` in pixel levels (0-255) of the canonical frame. ``candidates``,
    ``overshoot`` and ``max_iter`` are DeepFool's; ``batch`` (faces per step), ``step`` (the
    step length as a fraction of ``xi``) and ``clip`` (logit units past the boundary at which
    a face stops counting) are the SGD method's, whose passes are epochs."""

    norm: str = "inf"
    xi: float = 10.0
    delta: float = 0.2
    max_passes: int = 3
    candidates: int = 10
    overshoot: float = 0.02
    max_iter: int = 50
    method: str = "deepfool"
    batch: int = 8
    step: float = 0.1
    clip: float = 0.5

    def __post_init__(self) -> None:
        checks = (
            ("norm", self.norm in NORMS, f"one of {NORMS}"),
            ("xi", self.xi > 0, "> 0"),
            ("delta", 0 <= self.delta < 1, "in [0, 1)"),
            ("max_passes", self.max_passes >= 1, ">= 1"),
            ("candidates", self.candidates >= 2, ">= 2"),
            ("overshoot", self.overshoot >= 0, ">= 0"),
            ("max_iter", self.max_iter >= 1, ">= 1"),
            ("method", self.method in METHODS, f"one of {METHODS}"),
            ("batch", self.batch >= 1, ">= 1"),
            ("step", 0 < self.step <= 1, "in (0, 1] (a fraction of xi)"),
            ("clip", self.clip >= 0, ">= 0"),
        )
        for name, ok, expected in checks:
            if not ok:
                raise ConfigError(f"uap {name}: expected {expected}, got {getattr(self, name)!r}")


# --- the algorithm ------------------------------------------------------------------------------


def project(v: torch.Tensor, norm: str, xi: float) -> torch.Tensor:
    """The nearest point to ``v`` in the l_``norm`` ball of radius ``xi`` (inf: clip; 2: scale)."""
    import torch

    if norm == "inf":
        return torch.clamp(v, -xi, xi)
    length = float(torch.linalg.vector_norm(v))
    return v * (xi / length) if length > xi else v


def into_ball(v: torch.Tensor, keep: torch.Tensor, settings: Settings) -> torch.Tensor:
    """``v`` zeroed where ``keep`` is 0 and projected onto the ball, then clipped to the
    ``MAX_LEVEL`` a pattern may hold to be drawn (binds only for l_2, whose ball lets one value
    grow to ``xi``; clipping only shortens ``v``, so it stays in the ball)."""
    import torch

    return torch.clamp(project(v * keep, settings.norm, settings.xi), -MAX_LEVEL, MAX_LEVEL)


def deepfool(
    logits_of: Logits, v: torch.Tensor, label: int, candidates: Sequence[int], overshoot: float = 0.02,
    max_iter: int = 50,
) -> tuple[torch.Tensor, int]:  # fmt: skip
    """DeepFool (Moosavi-Dezfooli et al. 2016) from ``v``: the l_2-smallest step ``r`` (for the
    linearised classifier) after which ``logits_of(v + r)`` ``(C,)`` has its maximum on another
    class than ``label``, moving only towards ``candidates``. Returns the step and the
    iterations taken (0: ``v`` already changes the decision)."""
    import torch

    others = [int(k) for k in candidates if int(k) != label]
    total = torch.zeros_like(v)
    for iteration in range(max_iter):
        point = (v + (1 + overshoot) * total).detach().requires_grad_(True)
        logits = logits_of(point)
        if int(logits.argmax()) != label:
            return (1 + overshoot) * total, iteration
        gaps = logits[others] - logits[label]
        grads = [torch.autograd.grad(gap, point, retain_graph=True)[0] for gap in gaps]
        flat = torch.stack(grads).reshape(len(others), -1)
        lengths = torch.linalg.vector_norm(flat, dim=1)
        distance = gaps.detach().abs() / lengths.clamp_min(1e-12)
        k = int(distance.argmin())
        if float(lengths[k]) == 0.0:  # flat in every direction: no step helps
            break
        step = (gaps[k].detach().abs() + 1e-4) / lengths[k] ** 2 * flat[k]
        total = total + step.reshape(v.shape)
    return (1 + overshoot) * total, max_iter


class Problem(Protocol):
    """Inputs seen through one classifier: ``logits(indices, v)`` is ``(len(indices), C)`` for
    those inputs with the shared perturbation ``v`` added."""

    def __len__(self) -> int: ...

    def logits(self, indices: Sequence[int], v: torch.Tensor) -> torch.Tensor: ...


def decisions(problem: Problem, v: torch.Tensor) -> torch.Tensor:
    """``(N, C)`` logits of every input with ``v`` added, without gradients."""
    import torch

    with torch.no_grad():
        chunks = [
            problem.logits(range(i, min(i + CHUNK, len(problem))), v) for i in range(0, len(problem), CHUNK)
        ]
    return torch.cat(chunks)


def _one(problem: Problem, index: int, keep: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return problem.logits([index], v * keep)[0]


def _deepfool_pass(
    problem: Problem, v: torch.Tensor, keep: torch.Tensor, labels: torch.Tensor, candidates: torch.Tensor,
    order: NDArray[np.intp], settings: Settings, done: Callable[[int], Any],
) -> torch.Tensor:  # fmt: skip
    """One pass of Algorithm 1: a DeepFool step for each input ``v`` does not fool yet, each
    followed by the projection."""
    for i in order:
        step, iterations = deepfool(
            partial(_one, problem, int(i), keep), v, int(labels[i]), candidates[i].tolist(),
            settings.overshoot, settings.max_iter,
        )  # fmt: skip
        if iterations > 0:
            v = into_ball(v + step, keep, settings)
        done(1)
    return v


def clipped_margin(logits: torch.Tensor, labels: torch.Tensor, clip: float) -> torch.Tensor:
    """``(B,)`` the label's logit minus the best other one, floored at ``-clip``: positive while
    the decision stands; below ``-clip`` an input gives no gradient."""
    import torch

    own = logits.gather(1, labels[:, None])[:, 0]
    others = logits.masked_fill(torch.nn.functional.one_hot(labels, logits.shape[1]).bool(), float("-inf"))
    return torch.clamp(own - others.max(1).values, min=-clip)


def _sgd_pass(
    problem: Problem, v: torch.Tensor, keep: torch.Tensor, labels: torch.Tensor, candidates: torch.Tensor,
    order: NDArray[np.intp], settings: Settings, done: Callable[[int], Any],
) -> torch.Tensor:  # fmt: skip
    """One epoch of stochastic gradient descent on the mean clipped margin over mini-batches of
    ``order`` (Shafahi et al. 2020), each step followed by the projection. l_inf steps by the
    gradient's sign, l_2 by its direction; both ``settings.step * xi`` long per value or in all."""
    import torch

    length = settings.step * settings.xi
    for start in range(0, len(order), settings.batch):
        batch = [int(i) for i in order[start : start + settings.batch]]
        point = v.detach().requires_grad_(True)
        loss = clipped_margin(problem.logits(batch, point * keep), labels[batch], settings.clip).mean()
        (grad,) = torch.autograd.grad(loss, point)
        grad = grad * keep
        if settings.norm == "inf":
            direction = grad.sign()
        else:
            direction = grad / torch.linalg.vector_norm(grad).clamp_min(1e-12)
        v = into_ball(v - length * direction, keep, settings)
        done(len(batch))
    return v


_METHOD_PASSES = {"deepfool": _deepfool_pass, "sgd": _sgd_pass}


@dataclass(frozen=True)
class Fit:
    """``perturbation`` shaped like the inputs' perturbation, float32; ``history``: the fooling
    rate after each pass."""

    perturbation: NDArray[np.float32]
    fooling_rate: float
    passes: int
    history: tuple[float, ...]
    seconds: float


def fit_universal(
    problem: Problem, shape: tuple[int, ...], settings: Settings, rng: np.random.Generator,
    mask: NDArray[np.bool_] | None = None, progress: bool = True,
) -> Fit:  # fmt: skip
    """The universal perturbation of ``shape`` for ``problem`` (zero where ``mask``, broadcast
    against ``shape``, is False); inputs are visited in an order drawn from ``rng``."""
    import torch
    from tqdm import tqdm

    start = time.perf_counter()
    v = torch.zeros(shape)
    keep = (
        torch.ones(shape)
        if mask is None
        else torch.from_numpy(np.broadcast_to(mask, shape).astype(np.float32))
    )
    clean = decisions(problem, v)
    labels = clean.argmax(1)
    candidates = clean.topk(min(settings.candidates, clean.shape[1]), dim=1).indices
    one_pass = _METHOD_PASSES[settings.method]
    history: list[float] = []
    for p in range(settings.max_passes):
        order = rng.permutation(len(problem))
        bar = tqdm(desc=f"uap pass {p + 1}/{settings.max_passes}", total=len(order),
                   disable=not progress, file=sys.stderr, leave=False)  # fmt: skip
        v = one_pass(problem, v, keep, labels, candidates, order, settings, bar.update)
        bar.close()
        history.append(float((decisions(problem, v).argmax(1) != labels).float().mean()))
        if progress:
            print(f"uap pass {p + 1}: fooling rate {history[-1]:.3f}", file=sys.stderr)
        if history[-1] >= 1 - settings.delta:
            break
    pattern = v.numpy().astype(np.float32)
    return Fit(pattern, history[-1], len(history), tuple(history), time.perf_counter() - start)


# --- faces, and the stream's drawing made differentiable ------------------------------------------


@dataclass(frozen=True)
class Face:
    """One photo's largest face, cut to its surroundings: ``image`` ``(H, W, 3)`` uint8 RGB; the
    detector's ``box`` ``(4,)`` xyxy and ``landmarks`` ``(5, 2)``, and the mesh ``points``
    ``(468, 3)``, all in ``image`` pixels."""

    identity: str
    image: NDArray[np.uint8]
    box: NDArray[np.float32]
    landmarks: NDArray[np.float32]
    points: NDArray[np.float32]


def find_face(image: NDArray[np.uint8], identity: str, detector: Any, mesh: Any) -> Face | None:
    """The photo's largest face with its mesh; None without a face or a confident mesh."""
    found = main_face(detector, frame_sized(image))
    if found is None:
        return None
    padded, faces = found
    box, landmarks = faces.boxes[0], faces.landmarks[0]
    result = mesh.predict([crop_from_box(padded, box, landmarks, mesh.size)])
    if result.confidence[0] < 0.5:
        return None
    # Wide enough for the faceres crop (1.5 x the box, turned by the eye line) around the face.
    side = 1.2 * float(max(box[2] - box[0], box[3] - box[1]))
    cx, cy = (box[:2] + box[2:]) / 2
    h, w = padded.shape[:2]
    x1, y1 = max(0, int(cx - side)), max(0, int(cy - side))
    x2, y2 = min(w, int(cx + side) + 1), min(h, int(cy + side) + 1)
    shift = np.array([x1, y1], np.float32)
    points = result.points[0].copy()
    points[:, :2] -= shift
    return Face(identity, padded[y1:y2, x1:x2].copy(), box - np.tile(shift, 2), landmarks - shift, points)


@dataclass(frozen=True)
class FacePath:
    """The path of a canonical pattern to one face's faceres input, as torch tensors: ``clean``
    ``(224, 224, 3)`` crop (RGB 0-255); ``window`` ``(1, 3, h, w)`` the mesh's window;
    ``to_canonical`` ``(1, h, w, 2)`` and ``to_window`` ``(1, 224, 224, 2)`` grid_sample grids
    (align_corners); ``covered`` ``(1, 1, h, w)`` the pixels the mesh covers."""

    clean: torch.Tensor
    window: torch.Tensor
    to_canonical: torch.Tensor
    to_window: torch.Tensor
    covered: torch.Tensor


def _normalized(coords: NDArray[np.floating], width: int, height: int) -> NDArray[np.float32]:
    """Pixel coordinates ``(..., 2)`` as grid_sample's [-1, 1] (align_corners=True)."""
    scale = np.array([2 / max(width - 1, 1), 2 / max(height - 1, 1)], np.float32)
    return np.asarray(coords * scale - 1, np.float32)


def face_path(face: Face, size: int = FACERES_SIZE) -> FacePath:
    """Precompute one face's path (see ``FacePath``)."""
    import torch

    crop = crop_from_box(face.image, face.box, face.landmarks, size)
    mapped = canonical_map(face.points, (face.image.shape[0], face.image.shape[1]))
    if mapped is None:
        raise ValueError(f"the mesh of a face of {face.identity} lies outside its image")
    coords, covered, x1, y1 = mapped
    h, w = covered.shape
    grid = np.stack(np.meshgrid(np.arange(size), np.arange(size)), axis=-1).reshape(-1, 2).astype(np.float64)
    inverse = cv2.invertAffineTransform(crop.to_crop)
    in_image = grid @ inverse[:, :2].T + inverse[:, 2] - np.array([x1, y1])
    window = face.image[y1 : y1 + h, x1 : x1 + w].astype(np.float32)
    return FacePath(
        clean=torch.from_numpy(crop.image.astype(np.float32)),
        window=torch.from_numpy(window).permute(2, 0, 1)[None].contiguous(),
        to_canonical=torch.from_numpy(_normalized(coords, SIZE, SIZE))[None],
        to_window=torch.from_numpy(_normalized(in_image.reshape(size, size, 2), w, h))[None],
        covered=torch.from_numpy(covered.astype(np.float32))[None, None],
    )


def perturbed_crops(paths: Sequence[FacePath], v: torch.Tensor) -> torch.Tensor:
    """``(N, 224, 224, 3)`` faceres inputs (RGB 0-255) of the faces with the canonical pattern
    ``v`` ``(SIZE, SIZE, 3)`` drawn on, added and clipped as the stream does."""
    import torch
    import torch.nn.functional as F

    texture = v.permute(2, 0, 1)[None]
    crops = []
    for p in paths:
        drawn = F.grid_sample(texture, p.to_canonical, align_corners=True) * p.covered
        change = torch.clamp(p.window + drawn, 0, 255) - p.window
        moved = F.grid_sample(change, p.to_window, align_corners=True)
        crops.append(p.clean + moved[0].permute(1, 2, 0))
    return torch.stack(crops)


class FaceProblem:
    """Faces seen through a target (``(B, 224, 224, 3)`` RGB 0-255 -> ``(B, C)`` logits)."""

    def __init__(self, paths: Sequence[FacePath], target: Logits) -> None:
        self.paths = list(paths)
        self.target = target

    def __len__(self) -> int:
        return len(self.paths)

    def logits(self, indices: Sequence[int], v: torch.Tensor) -> torch.Tensor:
        return self.target(perturbed_crops([self.paths[i] for i in indices], v))


# --- targets --------------------------------------------------------------------------------------


def load_faceres() -> Any:
    """faceres as a torch module (``engines.torch_backend``); outputs in ``output_names`` order."""
    from engines import zoo
    from engines.torch_backend import load_module

    return load_module(zoo.ensure("faceres"))


def descriptors(module: Any, crops: torch.Tensor) -> NDArray[np.float32]:
    """``(N, 1024)`` L2-normalised faceres descriptors of ``(N, 224, 224, 3)`` crops."""
    import torch
    import torch.nn.functional as F

    index = module.output_names.index(DESCRIPTOR)
    with torch.no_grad():
        out = [F.normalize(module(crops[i : i + CHUNK])[index], dim=1) for i in range(0, len(crops), CHUNK)]
    return torch.cat(out).numpy()


def identity_target(module: Any, means: NDArray[np.float32]) -> Logits:
    """Logits of a gallery classifier: scaled cosine of the descriptor to each row of ``means``."""
    import torch
    import torch.nn.functional as F

    index = module.output_names.index(DESCRIPTOR)
    gallery = torch.from_numpy(means / np.linalg.norm(means, axis=1, keepdims=True))

    def logits(crops: torch.Tensor) -> torch.Tensor:
        return LOGIT_SCALE * F.normalize(module(crops)[index], dim=1) @ gallery.T

    return logits


def gender_target(module: Any, model: Path) -> Logits:
    """Logits (male, female) of the attribute estimator's gender decision: +-z for faceres's
    pre-sigmoid output z, read from its graph (the sigmoid itself saturates)."""
    import onnx
    import torch

    nodes = onnx.load(str(model), load_external_data=False).graph.node
    producer = {out: node for node in nodes for out in node.output}
    node = producer[GENDER]
    while node.op_type == "Identity":
        node = producer[node.input[0]]
    if node.op_type != "Sigmoid":
        raise ModelError(f"{model.name}: {GENDER} is not a sigmoid output (found {node.op_type})")
    module.output_names = [*module.output_names, node.input[0]]
    index = len(module.output_names) - 1

    def logits(crops: torch.Tensor) -> torch.Tensor:
        z = module(crops)[index].reshape(-1, 1)
        return torch.cat([z, -z], dim=1)

    return logits


def identity_means(
    identities: Sequence[str], descriptors: NDArray[np.float32]
) -> tuple[list[str], NDArray[np.float32]]:
    """The distinct identities (sorted) and each one's normalised mean descriptor ``(K, 1024)``."""
    names = sorted(set(identities))
    ids = np.array(identities)
    means = np.array([descriptors[ids == n].mean(axis=0) for n in names], np.float32)
    return names, means / np.linalg.norm(means, axis=1, keepdims=True)


def fit_faces(
    faces: Sequence[Face], paths: Sequence[FacePath], module: Any, target: str, settings: Settings,
    rng: np.random.Generator,
) -> tuple[Fit, str]:  # fmt: skip
    """Fit the pattern on ``faces`` against ``target``; also returns the output it attacked."""
    from engines import zoo

    if target == "identity":
        import torch

        clean = descriptors(module, torch.stack([p.clean for p in paths]))
        _, means = identity_means([f.identity for f in faces], clean)
        logits, output = identity_target(module, means), DESCRIPTOR
    else:
        logits, output = gender_target(module, zoo.ensure("faceres")), GENDER
    fit = fit_universal(
        FaceProblem(paths, logits), (SIZE, SIZE, 3), settings, rng, canonical().mask[..., None]
    )
    return fit, output


# --- data -----------------------------------------------------------------------------------------


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
        **_method_settings(settings), seed=seed,
        fit_seconds=round(fit.seconds, 1), data=data_record(media, faces), torch=torch.__version__,
    )  # fmt: skip
    return Perturbation(fit.perturbation, manifest), fit


def _method_settings(settings: Settings) -> dict[str, Any]:
    """The settings the fitting method used, for the manifest."""
    if settings.method == "deepfool":
        return {
            "candidates": settings.candidates,
            "overshoot": settings.overshoot,
            "max_iter": settings.max_iter,
        }
    return {"batch": settings.batch, "step": settings.step, "clip": settings.clip}


# --- evaluation through the stream's drawing --------------------------------------------------


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
          f"{settings.method} {_method_settings(settings)}: "
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


# --- command line -------------------------------------------------------------------------------


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--media", type=Path, default=MEDIA_DEFAULT, help="the shared media folder")
    p.add_argument("--target", choices=TARGETS, default="identity")
    p.add_argument("--norm", choices=NORMS, default="inf")
    p.add_argument("--xi", type=float, help="radius in pixel levels (default 10 for inf, 2000 for 2)")
    p.add_argument("--delta", type=float, default=Settings.delta, help="stop at fooling rate 1 - delta")
    p.add_argument("--method", choices=METHODS, default=Settings.method, help="DeepFool passes or SGD epochs")
    p.add_argument("--max-passes", type=int, default=Settings.max_passes, help="passes (sgd: epochs)")
    p.add_argument("--candidates", type=int, default=Settings.candidates, help="DeepFool's candidate classes")
    p.add_argument("--overshoot", type=float, default=Settings.overshoot)
    p.add_argument("--max-iter", type=int, default=Settings.max_iter, help="DeepFool iterations per face")
    p.add_argument("--batch", type=int, default=Settings.batch, help="sgd: faces per step")
    p.add_argument("--step", type=float, default=Settings.step, help="sgd: step length, a fraction of xi")
    p.add_argument(
        "--clip", type=float, default=Settings.clip, help="sgd: margin (logits) past which a face stops"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--threads", type=int, default=0, help="torch CPU threads (0: all cores; 1 on a busy machine)"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m calibration.uap", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    sub = p.add_subparsers(dest="command", required=True)
    fit = sub.add_parser("fit", help="fit on every labelled identity and write the perturbation file")
    _arguments(fit)
    fit.add_argument("-o", "--out", type=Path, required=True)
    rep = sub.add_parser("report", help="fit on half the identities, measure on the other half")
    _arguments(rep)
    rep.add_argument("-o", "--out", type=Path, help="also write the half's perturbation file")
    rep.add_argument("--picture", type=Path, help="write clean | change | perturbed faces (PNG)")
    args = p.parse_args(argv)
    xi = args.xi if args.xi is not None else (10.0 if args.norm == "inf" else 2000.0)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:
        settings = Settings(args.norm, xi, args.delta, args.max_passes, args.candidates, args.overshoot,
                            args.max_iter, args.method, args.batch, args.step, args.clip)  # fmt: skip
        if args.command == "report":
            report(args, settings)
            return 0
        faces = load_faces(args.media)
        perturbation, result = fit_artifact(faces, args.media, args.target, settings, args.seed)
        perturbation.save(args.out)
    except AnonError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(f"wrote {args.out}: fooling rate {result.fooling_rate:.3f} on {len(faces)} faces after "
          f"{result.passes} passes ({result.seconds:.0f} s)", file=sys.stderr)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
