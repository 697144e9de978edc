"""A stand-in for Triton Inference Server's gRPC API, for the backend tests.

Serves a model repository that ``run_stream.py models export-triton`` wrote
(``NAME/1/model.onnx``), running each model with ONNX Runtime on the CPU,
over the real protocol (tritonclient's own service definitions), on
loopback. Only what the client uses: liveness, readiness, metadata,
inference with raw tensor contents. Counts the requests it served.
"""

from __future__ import annotations

from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnxruntime
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as rpc

_TYPES = {"tensor(float)": "FP32", "tensor(float16)": "FP16", "tensor(int64)": "INT64"}
_NUMPY = {"FP32": np.float32, "FP16": np.float16, "INT64": np.int64}


class FakeTriton(rpc.GRPCInferenceServiceServicer):
    def __init__(self, repository: Path) -> None:
        self.sessions = {
            d.name: onnxruntime.InferenceSession(
                str(d / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
            )
            for d in sorted(repository.iterdir())
            if (d / "1" / "model.onnx").exists()
        }
        self.requests = 0

    def ServerLive(  # the gRPC method's name
        self, request: pb.ServerLiveRequest, context: grpc.ServicerContext
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    def ServerReady(
        self, request: pb.ServerReadyRequest, context: grpc.ServicerContext
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=True)

    def ModelReady(
        self, request: pb.ModelReadyRequest, context: grpc.ServicerContext
    ) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=request.name in self.sessions)

    def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.ServicerContext
    ) -> pb.ModelMetadataResponse:
        session = self.sessions.get(request.name)
        if session is None:
            context.abort(
                grpc.StatusCode.NOT_FOUND, f"Request for unknown model: '{request.name}' is not found"
            )
        assert session is not None  # abort() raised

        def meta(values: list[Any]) -> list[pb.ModelMetadataResponse.TensorMetadata]:
            return [
                pb.ModelMetadataResponse.TensorMetadata(
                    name=v.name,
                    datatype=_TYPES[v.type],
                    shape=[d if isinstance(d, int) else -1 for d in v.shape],
                )
                for v in values
            ]

        return pb.ModelMetadataResponse(
            name=request.name, versions=["1"], platform="onnxruntime_onnx",
            inputs=meta(session.get_inputs()), outputs=meta(session.get_outputs()),
        )  # fmt: skip

    def ModelInfer(
        self, request: pb.ModelInferRequest, context: grpc.ServicerContext
    ) -> pb.ModelInferResponse:
        session = self.sessions.get(request.model_name)
        if session is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"unknown model {request.model_name}")
        assert session is not None  # abort() raised
        self.requests += 1
        feeds = {
            t.name: np.frombuffer(raw, _NUMPY[t.datatype]).reshape(list(t.shape))
            for t, raw in zip(request.inputs, request.raw_input_contents, strict=True)
        }
        names = [o.name for o in request.outputs] or [o.name for o in session.get_outputs()]
        results = session.run(names, feeds)
        response = pb.ModelInferResponse(model_name=request.model_name, model_version="1")
        for name, value in zip(names, results, strict=True):
            value = np.ascontiguousarray(value)
            response.outputs.append(
                pb.ModelInferResponse.InferOutputTensor(name=name, datatype="FP32", shape=list(value.shape))
            )
            response.raw_output_contents.append(value.astype(np.float32).tobytes())
        return response


def serve(repository: Path, port: int = 0) -> tuple[grpc.Server, int, FakeTriton]:
    """Start the fake server on 127.0.0.1 (``port`` 0: any free one); returns it, its port, its servicer."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    servicer = FakeTriton(repository)
    rpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    return server, port, servicer
