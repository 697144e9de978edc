"""Model serving on NVIDIA Triton Inference Server.

``export_repository`` writes a Triton model repository of the zoo's ONNX
models (``config.pbtxt`` with dynamic batching, and TensorRT FP16 as the
GPU execution accelerator, which Triton uses where it has TensorRT);
``TritonBackend`` runs a model on such a server over gRPC, so that many
stream workers share its GPUs. Choose it with ``--backend triton://HOST:PORT``:
each model is looked up on the server by its zoo name; ``tritons://HOST:PORT``
speaks TLS (certificates from ANONYMOUSNET_TRITON_CA / _CERT / _KEY).
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .base import TensorSpec
from .errors import BackendUnavailableError, ModelError

log = logging.getLogger("anonymousnet")

_DTYPES = {"FP32": np.float32, "FP16": np.float16, "INT64": np.int64, "INT32": np.int32, "UINT8": np.uint8}
_ONNX_TO_TRITON = {1: "TYPE_FP32", 10: "TYPE_FP16", 7: "TYPE_INT64", 6: "TYPE_INT32", 2: "TYPE_UINT8"}


def _dims(value_info: Any) -> list[int]:
    """The dims of an ONNX tensor after the batch axis (-1 where symbolic)."""
    dims = value_info.type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") else -1 for d in dims[1:]]


def model_config(name: str, onnx_path: Path, max_batch: int, gpu: bool) -> str:
    """``config.pbtxt`` for one ONNX model whose first axis is the batch."""
    import onnx

    model = onnx.shape_inference.infer_shapes(onnx.load(str(onnx_path)))
    graph = model.graph
    initializers = {i.name for i in graph.initializer}

    def tensors(values: Sequence[Any]) -> str:
        rows = []
        for v in values:
            kind = _ONNX_TO_TRITON.get(v.type.tensor_type.elem_type)
            if kind is None:
                raise ModelError(f"{onnx_path}: tensor {v.name} has a type Triton config cannot name")
            rows.append(f'  {{ name: "{v.name}" data_type: {kind} dims: {_dims(v)} }}')
        return ",\n".join(rows)

    inputs = [v for v in graph.input if v.name not in initializers]
    lines = [
        f'name: "{name}"',
        'platform: "onnxruntime_onnx"',
        f"max_batch_size: {max_batch}",
        f"input [\n{tensors(inputs)}\n]",
        f"output [\n{tensors(graph.output)}\n]",
        "dynamic_batching { max_queue_delay_microseconds: 2000 }",
        f"instance_group [ {{ kind: {'KIND_GPU' if gpu else 'KIND_CPU'} count: 1 }} ]",
    ]
    if gpu:
        lines.append(
            "optimization { execution_accelerators { gpu_execution_accelerator: [ {\n"
            '  name: "tensorrt"\n'
            '  parameters { key: "precision_mode" value: "FP16" }\n'
            '  parameters { key: "max_workspace_size_bytes" value: "1073741824" }\n'
            "} ] } }"
        )
    return "\n".join(lines) + "\n"


def export_repository(folder: Path, names: Sequence[str], max_batch: int = 8, gpu: bool = True) -> list[Path]:
    """Write ``folder/NAME/1/model.onnx`` and ``folder/NAME/config.pbtxt`` for each zoo model."""
    from . import zoo

    written = []
    for name in names:
        onnx_path = zoo.ensure(name)
        target = folder / name
        (target / "1").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(onnx_path, target / "1" / "model.onnx")
        (target / "config.pbtxt").write_text(model_config(name, onnx_path, max_batch, gpu))
        written.append(target)
    return written


@dataclass(frozen=True)
class TritonTLS:
    """gRPC over TLS to a Triton server: PEM files for a private CA and a client
    certificate, each optional (the system's roots when no CA is given)."""

    ca: str | None = None
    cert: str | None = None
    key: str | None = None

    @classmethod
    def from_env(cls) -> TritonTLS:
        """From ANONYMOUSNET_TRITON_CA, ANONYMOUSNET_TRITON_CERT and ANONYMOUSNET_TRITON_KEY."""
        env = os.environ
        return cls(env.get("ANONYMOUSNET_TRITON_CA"), env.get("ANONYMOUSNET_TRITON_CERT"),
                   env.get("ANONYMOUSNET_TRITON_KEY"))  # fmt: skip

    def options(self) -> dict[str, Any]:
        def read(path: str | None, what: str) -> bytes | None:
            if path is None:
                return None
            try:
                return Path(path).read_bytes()
            except OSError as exc:
                raise BackendUnavailableError(f"Triton TLS {what} {path}: {exc.strerror}") from None

        return {
            "ssl": True,
            "root_certificates": read(self.ca, "CA"),
            "private_key": read(self.key, "key"),
            "certificate_chain": read(self.cert, "certificate"),
        }


def _loopback(url: str) -> bool:
    host = url.rsplit("@", 1)[-1].rsplit(":", 1)[0].strip("[]")
    return host in ("localhost", "::1") or host.startswith("127.")


class TritonBackend:
    """One model on a Triton server, over gRPC; the same protocol as the local backends.

    Frames are sent as they are, faces and all: over ``tritons://`` they travel
    encrypted; plain ``triton://`` to another machine logs a warning, once per model.
    """

    def __init__(self, url: str, model: str, timeout_s: float = 10.0, tls: TritonTLS | None = None) -> None:
        try:
            import tritonclient.grpc as grpcclient
            from tritonclient.utils import InferenceServerException
        except ImportError:
            raise BackendUnavailableError(
                "backend triton needs tritonclient: pip install 'tritonclient[grpc]'"
            ) from None
        self._grpc = grpcclient
        self._error = InferenceServerException
        self.name = f"triton {url} {model}"
        self.url, self.model, self.timeout_s = url, model, timeout_s
        if tls is None and not _loopback(url):
            log.warning("backend triton://%s: raw frames (every face in them) leave the machine unencrypted; "
                        "use tritons://%s for TLS", url, url)  # fmt: skip
        self._client = grpcclient.InferenceServerClient(url, **(tls.options() if tls else {}))
        try:
            if not self._client.is_server_live(client_timeout=timeout_s):
                raise BackendUnavailableError(f"Triton server {url} is not live")
            if not self._client.is_model_ready(model, client_timeout=timeout_s):
                raise BackendUnavailableError(
                    f"Triton server {url} has no ready model {model!r}; export one with "
                    "run_stream.py models export-triton DIR and start the server on DIR"
                )
            meta = self._client.get_model_metadata(model, as_json=True, client_timeout=timeout_s)
        except InferenceServerException as exc:
            raise BackendUnavailableError(f"Triton server {url}: {exc.message()}") from None
        self._inputs = [self._spec(t) for t in meta["inputs"]]
        self._outputs = [self._spec(t) for t in meta["outputs"]]

    @staticmethod
    def _spec(tensor: dict[str, Any]) -> TensorSpec:
        shape = tuple(None if int(d) < 0 else int(d) for d in tensor["shape"])
        return TensorSpec(tensor["name"], shape, np.dtype(_DTYPES.get(tensor["datatype"], np.float32)))

    def input_spec(self) -> Sequence[TensorSpec]:
        return self._inputs

    def output_spec(self) -> Sequence[TensorSpec]:
        return self._outputs

    def infer(self, *inputs: NDArray[np.float32]) -> list[NDArray[np.float32]]:
        grpc = self._grpc
        requests = []
        for spec, array in zip(self._inputs, inputs, strict=True):
            array = np.ascontiguousarray(array, dtype=spec.dtype)
            request = grpc.InferInput(spec.name, list(array.shape), _triton_type(spec.dtype))
            request.set_data_from_numpy(array)
            requests.append(request)
        wanted = [grpc.InferRequestedOutput(spec.name) for spec in self._outputs]
        try:
            result = self._client.infer(self.model, requests, outputs=wanted, client_timeout=self.timeout_s)
        except self._error as exc:
            raise ModelError(f"Triton server {self.url}, model {self.model}: {exc.message()}") from None
        return [np.asarray(result.as_numpy(spec.name), np.float32) for spec in self._outputs]

    def close(self) -> None:
        self._client.close()


def _triton_type(dtype: np.dtype) -> str:
    return next(name for name, t in _DTYPES.items() if np.dtype(t) == dtype)
