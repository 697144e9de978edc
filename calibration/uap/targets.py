"""What the perturbation is fitted against: faceres run as a torch module, classifying
identities by cosine to their means (``identity``) or deciding gender (``attributes``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from calibration.uap.algorithm import Fit, fit_universal
from calibration.uap.faces import Face, FacePath, FaceProblem
from calibration.uap.settings import CHUNK, DESCRIPTOR, GENDER, LOGIT_SCALE, Settings
from stream.algorithms.facewarp import SIZE, canonical
from stream.errors import ModelError

if TYPE_CHECKING:
    import torch

    Logits = Callable[[torch.Tensor], torch.Tensor]


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
