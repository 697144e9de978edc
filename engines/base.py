"""The one inference backend protocol, and the choice of a backend at start-up."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from stream.errors import BackendUnavailableError


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape (None for a symbolic axis) and dtype of one model input or output."""

    name: str
    shape: tuple[int | None, ...]
    dtype: np.dtype


class Backend(Protocol):
    """Runs one model. ``infer`` takes the inputs in ``input_spec()`` order and
    returns the outputs in ``output_spec()`` order."""

    name: str

    def input_spec(self) -> Sequence[TensorSpec]: ...

    def output_spec(self) -> Sequence[TensorSpec]: ...

    def infer(self, *inputs: NDArray[np.float32]) -> list[NDArray[np.float32]]: ...

    def close(self) -> None: ...


BackendFactory = Callable[[Path, int], Backend]


def _onnxruntime_factory(provider: str) -> tuple[Callable[[], bool], BackendFactory]:
    def available() -> bool:
        import onnxruntime

        return provider in onnxruntime.get_available_providers()

    def make(model: Path, threads: int) -> Backend:
        from .onnxrt import OnnxRuntimeBackend

        return OnnxRuntimeBackend(model, provider=provider, threads=threads)

    return available, make


# name -> (is it available here, how to make it); best first for "auto".
_BACKENDS: dict[str, tuple[Callable[[], bool], BackendFactory]] = {
    "cuda": _onnxruntime_factory("CUDAExecutionProvider"),
    "cpu": _onnxruntime_factory("CPUExecutionProvider"),
}


def available_backends() -> list[str]:
    """Names of the backends that can run on this machine, best first."""
    return [name for name, (available, _) in _BACKENDS.items() if available()]


def resolve_backend_name(requested: str) -> str:
    """The backend to use for ``requested``; ``auto`` picks the best available.

    Raises BackendUnavailableError naming the available ones.
    """
    available = available_backends()
    if requested == "auto":
        if not available:
            raise BackendUnavailableError("no inference backend is available")
        return available[0]
    if requested not in available:
        known = ", ".join(available) or "none"
        raise BackendUnavailableError(
            f"backend {requested!r} is not available on this machine (available: {known})"
        )
    return requested


def create_backend(requested: str, model: Path, threads: int = 0) -> Backend:
    """A backend for ``model``, chosen by name (see ``resolve_backend_name``)."""
    name = resolve_backend_name(requested)
    return _BACKENDS[name][1](model, threads)
