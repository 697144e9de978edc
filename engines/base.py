"""The one inference backend protocol, and the choice of a backend at start-up."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from .errors import BackendUnavailableError


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


@dataclass(frozen=True)
class BackendOptions:
    """threads: CPU inference threads per call (0: all cores). precision: TensorRT
    engine precision (fp16, fp32, int8); int8 needs ``calibration_table``. fp32_ops:
    ONNX op types kept in FP32 under a reduced-precision TensorRT engine (they run on
    the CUDA provider instead), such as StarGAN's instance norm. memory_arena: ONNX
    Runtime's CPU memory arena; off for models whose batch varies (faces per frame), where
    it keeps a high-water mark per mix of sizes seen (docs/soak.md: 404 MB against 220)."""

    threads: int = 0
    precision: str = "fp16"
    calibration_table: Path | None = None
    fp32_ops: tuple[str, ...] = ()
    memory_arena: bool = True


BackendFactory = Callable[[Path, BackendOptions], Backend]


def _ort_has(provider: str) -> bool:
    import onnxruntime

    return provider in onnxruntime.get_available_providers()


def _make_ort(provider: str) -> BackendFactory:
    def make(model: Path, options: BackendOptions) -> Backend:
        from .onnxrt import OnnxRuntimeBackend

        return OnnxRuntimeBackend(
            model, provider=provider, threads=options.threads, arena=options.memory_arena
        )

    return make


def _tensorrt_available() -> bool:
    import importlib.util

    return _ort_has("TensorrtExecutionProvider") and importlib.util.find_spec("tensorrt") is not None


def _make_tensorrt(model: Path, options: BackendOptions) -> Backend:
    from . import tensorrt, zoo
    from .onnxrt import OnnxRuntimeBackend

    precision = options.precision
    profiles = tensorrt.default_profiles(model)
    digest = zoo.sha256_file(model)
    cache = zoo.cache_dir() / "tensorrt" / f"{model.stem}-{digest[:16]}-{precision}"
    expected = tensorrt.manifest(digest, precision, profiles)
    if options.calibration_table is not None:
        expected["calibration_sha256"] = zoo.sha256_file(options.calibration_table)
    tensorrt.prepare_engine_cache(cache, expected)
    provider = tensorrt.provider_options(
        cache, precision, profiles, options.calibration_table, options.fp32_ops
    )
    return OnnxRuntimeBackend(
        model, "TensorrtExecutionProvider", options.threads, provider, fallback="CUDAExecutionProvider"
    )


def _torch_cuda_available() -> bool:
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return bool(torch.cuda.is_available())


def _make_torch_cuda(model: Path, options: BackendOptions) -> Backend:
    from .torch_backend import TorchCudaBackend

    return TorchCudaBackend(model)


def _torch_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("torch") is not None


def _make_torch_cpu(model: Path, options: BackendOptions) -> Backend:
    from .torch_backend import TorchCudaBackend

    return TorchCudaBackend(model, device="cpu", fp16=False)


# name -> (is it available here, how to make it); best first for "auto".
_BACKENDS: dict[str, tuple[Callable[[], bool], BackendFactory]] = {
    "tensorrt": (_tensorrt_available, _make_tensorrt),
    "cuda": (lambda: _ort_has("CUDAExecutionProvider"), _make_ort("CUDAExecutionProvider")),
    "torch-cuda": (_torch_cuda_available, _make_torch_cuda),
    "cpu": (lambda: _ort_has("CPUExecutionProvider"), _make_ort("CPUExecutionProvider")),
    # The torch-cuda code (and the device frame path) in FP32 on the CPU: slower than "cpu",
    # there to check that path on a machine without a GPU; last, so "auto" never picks it.
    "torch-cpu": (_torch_available, _make_torch_cpu),
}


def available_backends() -> list[str]:
    """Names of the backends that can run on this machine, best first."""
    return [name for name, (available, _) in _BACKENDS.items() if available()]


def resolve_backend_name(requested: str) -> str:
    """The backend to use for ``requested``; ``auto`` picks the best available and says which.

    Raises BackendUnavailableError naming the available ones.
    """
    if requested not in (*_BACKENDS, "auto"):
        raise BackendUnavailableError(f"unknown backend {requested!r} (known: auto, {', '.join(_BACKENDS)})")
    if requested != "auto" and _BACKENDS[requested][0]():
        return requested  # checks only the one asked for: no GPU library is loaded for "cpu"
    available = available_backends()
    if requested == "auto":
        if not available:
            raise BackendUnavailableError("no inference backend is available")
        print(f"backend: auto chose {available[0]} (available: {', '.join(available)})", file=sys.stderr)
        return available[0]
    known = ", ".join(available) or "none"
    raise BackendUnavailableError(
        f"backend {requested!r} is not available on this machine (available: {known})"
    )


def create_backend(
    requested: str, model: Path, threads: int = 0, options: BackendOptions | None = None
) -> Backend:
    """A backend for ``model``, chosen by name (see ``resolve_backend_name``), or
    ``triton://HOST:PORT`` (plaintext gRPC) / ``tritons://HOST:PORT`` (TLS): the model
    of the same zoo name on a Triton server."""
    if requested.startswith(("triton://", "tritons://")):
        from .triton import TritonBackend, TritonTLS

        scheme, _, address = requested.partition("://")
        return TritonBackend(address, model.stem, tls=TritonTLS.from_env() if scheme == "tritons" else None)
    name = resolve_backend_name(requested)
    return _BACKENDS[name][1](model, options or BackendOptions(threads=threads))
