"""ONNX Runtime backend (CPU, and CUDA where onnxruntime-gpu is installed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .base import TensorSpec
from .errors import ModelError

_DTYPES: dict[str, np.dtype[Any]] = {
    "tensor(float)": np.dtype(np.float32),
    "tensor(float16)": np.dtype(np.float16),
    "tensor(uint8)": np.dtype(np.uint8),
    "tensor(int64)": np.dtype(np.int64),
    "tensor(int32)": np.dtype(np.int32),
}


class OnnxRuntimeBackend:
    """One ``InferenceSession`` on one execution provider.

    threads: intra-op threads (0 lets ONNX Runtime use every core).
    provider_options: passed to the provider (TensorRT's caches, precision, profiles).
    """

    def __init__(
        self,
        model: Path,
        provider: str,
        threads: int = 0,
        provider_options: dict[str, Any] | None = None,
        fallback: str | None = None,
        arena: bool = True,
    ) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.enable_cpu_mem_arena = arena
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        # Idle pool threads would spin-wait between calls and starve the
        # decode and encode threads that share the cores with inference.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            providers: list[Any] = [(provider, provider_options or {})]
            if fallback:  # nodes the first provider cannot take run here
                providers.append(fallback)
            self._session = ort.InferenceSession(str(model), options, providers=providers)
        except Exception as exc:  # ORT raises its own untyped errors
            raise ModelError(f"cannot load {model} on {provider}: {exc}") from exc
        self.name = provider
        self._inputs = [self._spec(i) for i in self._session.get_inputs()]
        self._outputs = [self._spec(o) for o in self._session.get_outputs()]
        self._output_names = [o.name for o in self._outputs]

    @staticmethod
    def _spec(arg: Any) -> TensorSpec:
        """From an ``onnxruntime.NodeArg``."""
        shape = tuple(d if isinstance(d, int) else None for d in arg.shape)
        return TensorSpec(arg.name, shape, _DTYPES.get(arg.type, np.dtype(np.float32)))

    def input_spec(self) -> Sequence[TensorSpec]:
        return self._inputs

    def output_spec(self) -> Sequence[TensorSpec]:
        return self._outputs

    def infer(self, *inputs: NDArray[np.float32]) -> list[NDArray[np.float32]]:
        if len(inputs) != len(self._inputs):
            raise ValueError(f"expected {len(self._inputs)} inputs, got {len(inputs)}")
        feed = {spec.name: x for spec, x in zip(self._inputs, inputs, strict=True)}
        return list(self._session.run(self._output_names, feed))

    def close(self) -> None:
        del self._session
