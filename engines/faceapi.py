"""face-api.js's face recognition net (dlib's ResNet face descriptor) rebuilt as ONNX.

face-api ships this model as weights only (a TFJS weights manifest and one
shard of uint8-quantized tensors); its architecture is code
(``src/faceRecognitionNet``): a strided 7x7 convolution, max pooling, residual
blocks of two 3x3 convolutions with per-channel scale and bias, four
down-sampling blocks, global mean and a 256 -> 128 linear layer. This module
builds the same graph from the weights' names. It serves as an identity
attacker independent of faceres (another architecture, other training data)
in the re-identification measurements, and is not used by the stream itself.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .base import Backend
from .crops import Crop
from .tfjs import read_weights

SIZE = 150
MEAN_RGB = np.array([122.782, 117.001, 104.298], np.float32)


class _Graph:
    """ONNX nodes and initializers, each name made unique by a counter."""

    def __init__(self, weights: dict[str, NDArray[np.float32]]) -> None:
        self.weights = weights
        self.nodes: list[object] = []
        self.initializers: list[object] = []
        self.count = 0

    def _name(self, base: str) -> str:
        self.count += 1
        return f"{base}_{self.count}"

    def const(self, value: NDArray[np.generic]) -> str:
        from onnx import numpy_helper

        name = self._name("const")
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def op(self, kind: str, inputs: list[str], **attributes: Any) -> str:
        from onnx import helper

        name = self._name(kind)
        self.nodes.append(helper.make_node(kind, inputs, [name], name=name, **attributes))
        return name

    def conv(self, x: str, prefix: str, stride: int, relu: bool, same: bool) -> str:
        """face-api's ConvLayer: convolution (HWIO filters), then per-channel scale and bias."""
        filters = self.weights[f"{prefix}/conv/filters"]
        pads = [filters.shape[0] // 2] * 4 if same else [0] * 4
        kernel = self.const(filters.transpose(3, 2, 0, 1))
        bias_in = self.const(self.weights[f"{prefix}/conv/bias"])
        y = self.op("Conv", [x, kernel, bias_in], strides=[stride] * 2, pads=pads)
        scale = self.weights[f"{prefix}/scale/weights"].reshape(1, -1, 1, 1)
        bias = self.weights[f"{prefix}/scale/biases"].reshape(1, -1, 1, 1)
        y = self.op("Add", [self.op("Mul", [y, self.const(scale)]), self.const(bias)])
        return self.op("Relu", [y]) if relu else y

    def residual(self, x: str, prefix: str) -> str:
        y = self.conv(self.conv(x, f"{prefix}/conv1", 1, True, True), f"{prefix}/conv2", 1, False, True)
        return self.op("Relu", [self.op("Add", [y, x])])

    def residual_down(self, x: str, prefix: str, size: int, channels: int) -> tuple[str, int, int]:
        """A down-sampling block: strided valid conv branch plus an average-pooled shortcut;
        face-api pads the conv branch with a zero row and column when the two sizes differ,
        and the shortcut with zero channels."""
        y = self.conv(self.conv(x, f"{prefix}/conv1", 2, True, False), f"{prefix}/conv2", 1, False, True)
        out_channels = int(self.weights[f"{prefix}/conv2/conv/filters"].shape[3])
        pooled = self.op("AveragePool", [x], kernel_shape=[2, 2], strides=[2, 2])
        if (size - 3) // 2 + 1 != size // 2:
            y = self.op("Pad", [y, self.const(np.array([0, 0, 0, 0, 0, 0, 1, 1], np.int64))])
        if out_channels != channels:
            pads = np.array([0, 0, 0, 0, 0, out_channels - channels, 0, 0], np.int64)
            pooled = self.op("Pad", [pooled, self.const(pads)])
        return self.op("Relu", [self.op("Add", [pooled, y])]), size // 2, out_channels


def convert(manifest: bytes, shard: bytes) -> bytes:
    """The ONNX model: input ``input`` ``(B, 150, 150, 3)`` float32, RGB 0-255 minus
    ``MEAN_RGB`` over 255; output ``descriptor`` ``(B, 128)`` (not normalised)."""
    from onnx import TensorProto, checker, helper

    g = _Graph(read_weights(json.loads(manifest), [shard]))
    x = g.op("Transpose", ["input"], perm=[0, 3, 1, 2])
    x = g.conv(x, "conv32_down", 2, True, False)  # 150 -> 72
    x = g.op("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2])  # -> 35
    size, channels = 35, 32
    for stage, blocks in (("32", 3), ("64", 3), ("128", 2), ("256", 2)):
        if stage != "32":
            x, size, channels = g.residual_down(x, f"conv{stage}_down", size, channels)
        for i in range(1, blocks + 1):
            x = g.residual(x, f"conv{stage}_{i}")
    x, size, channels = g.residual_down(x, "conv256_down_out", size, channels)
    pooled = g.op("ReduceMean", [x], axes=[2, 3], keepdims=0)
    g.nodes.append(helper.make_node("MatMul", [pooled, g.const(g.weights["fc"])], ["descriptor"], name="fc"))
    graph = helper.make_graph(
        g.nodes,  # type: ignore[arg-type]
        "faceapi_recognition",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", SIZE, SIZE, 3])],
        [helper.make_tensor_value_info("descriptor", TensorProto.FLOAT, ["batch", 128])],
        initializer=g.initializers,  # type: ignore[arg-type]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    checker.check_model(model, full_check=True)
    return bytes(model.SerializeToString(deterministic=True))


class FaceApiRecognition:
    """Identity descriptors ``(B, 128)``, L2-normalised, from tight face crops
    (``crop_from_box(image, box, landmarks, size, enlarge)``), RGB 0-255."""

    size = SIZE
    enlarge = 1.0

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    def describe(self, crops: Sequence[Crop]) -> NDArray[np.float32]:
        if not crops:
            return np.zeros((0, 128), np.float32)
        batch = (np.stack([c.image for c in crops]).astype(np.float32) - MEAN_RGB) / 255.0
        (descriptor,) = self.backend.infer(batch)
        descriptor = np.asarray(descriptor, np.float32)
        return descriptor / np.maximum(np.linalg.norm(descriptor, axis=1, keepdims=True), 1e-12)
