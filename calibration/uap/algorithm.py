"""The universal perturbation algorithm: DeepFool passes (Moosavi-Dezfooli et al. 2017) or
SGD epochs (Shafahi et al. 2020) projected onto the l_p ball; knows nothing of faces."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from numpy.typing import NDArray

from calibration.uap.settings import CHUNK, Settings
from stream.algorithms.perturbation import (
    MAX_LEVEL,
)

if TYPE_CHECKING:
    import torch

    Logits = Callable[[torch.Tensor], torch.Tensor]


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
