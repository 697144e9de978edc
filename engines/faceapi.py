"""Three face-api.js nets rebuilt as ONNX from their weights: the face recognition net
(dlib's ResNet face descriptor), the SSD MobileNet v1 face detector and the 68-point
face landmark net.

face-api ships its models as weights only (a TFJS weights manifest and one
shard of uint8-quantized tensors); the architectures are code. All three are
measurement tools, independent of the stream's own models (other
architectures, other training data), and not used by the stream itself.

Over 400 lines: three architectures that share one graph builder and the TFJS weights
reader; split, each would repeat it.

Recognition (``src/faceRecognitionNet``): a strided 7x7 convolution, max
pooling, residual blocks of two 3x3 convolutions with per-channel scale and
bias, four down-sampling blocks, global mean and a 256 -> 128 linear layer;
an identity attacker in the re-identification measurements.

Detection (``src/ssdMobilenetv1``): MobileNet v1 (depthwise separable
convolutions, batch norm, ReLU6), eight extra pointwise layers and six SSD
box predictors over a 512 x 512 input, 5118 anchors; the second detector of
the leak measure's reference. Its outputs match face-api's own (TFJS, CPU)
to 1e-3 px and score on the media photos.

Landmarks (``src/faceLandmarkNet``, ``src/faceFeatureExtractor``): four dense blocks
of depthwise separable convolutions over a 112 x 112 input, global mean and a
256 -> 136 linear layer giving 68 points; it measures the mouth opening on input and
output, apart from the stream's MediaPipe mesh. Its points match face-api's own
(TFJS, CPU) to 0.03 px on the astronaut.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

from .base import Backend
from .centerface import nms
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

    def serialize(self, name: str, inputs: list[Any], outputs: list[Any]) -> bytes:
        """The graph built so far as a checked ONNX model (opset 17), its bytes."""
        from onnx import checker, helper

        graph = helper.make_graph(
            self.nodes,  # type: ignore[arg-type]
            name,
            inputs,
            outputs,
            initializer=self.initializers,  # type: ignore[arg-type]
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        checker.check_model(model, full_check=True)
        return bytes(model.SerializeToString(deterministic=True))

    def const(self, value: NDArray[np.generic]) -> str:
        from onnx import numpy_helper

        name = self._name("const")
        # ascontiguousarray would make a 0-d array (Clip's bounds) 1-d
        array = value if value.ndim == 0 else np.ascontiguousarray(value)
        self.initializers.append(numpy_helper.from_array(array, name))
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
    from onnx import TensorProto, helper

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
    return g.serialize(
        "faceapi_recognition",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", SIZE, SIZE, 3])],
        [helper.make_tensor_value_info("descriptor", TensorProto.FLOAT, ["batch", 128])],
    )


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


# --- SSD MobileNet v1 face detector -------------------------------------------------

SSD_SIZE = 512
_BN_EPSILON = 0.0010000000474974513  # face-api's mobileNetV1 batch norm
_STRIDE_2 = (2, 4, 6, 12)  # MobileNet pairs whose depthwise convolution has stride 2
# (side, anchors per cell) of the six prediction maps of a 512 input
_MAPS = ((32, 3), (16, 6), (8, 6), (4, 6), (2, 6), (1, 6))


class _SsdGraph(_Graph):
    """face-api's SsdMobilenetv1: TF "same" padding (the extra row and column at the end,
    as ONNX's SAME_UPPER), ReLU6 after every convolution but the predictors."""

    def conv2d(self, x: str, filters: NDArray[np.float32], bias: NDArray[np.float32], stride: int,
               group: int = 1) -> str:  # fmt: skip
        """``filters`` HWIO (HW1C for a depthwise convolution, ``group`` = C)."""
        kernel = filters.transpose(3, 2, 0, 1) if group == 1 else filters.transpose(2, 3, 0, 1)
        return self.op(
            "Conv", [x, self.const(kernel), self.const(bias)], strides=[stride] * 2, group=group,
            auto_pad="SAME_UPPER",
        )  # fmt: skip

    def relu6(self, x: str) -> str:
        low, high = self.const(np.array(0, np.float32)), self.const(np.array(6, np.float32))
        return self.op("Clip", [x, low, high])

    def pointwise(self, x: str, prefix: str, stride: int) -> str:
        w = self.weights
        return self.relu6(
            self.conv2d(x, w[f"{prefix}/weights"], w[f"{prefix}/convolution_bn_offset"], stride)
        )

    def depthwise(self, x: str, prefix: str, stride: int) -> str:
        """Depthwise 3x3 with its batch norm folded into the filters and a bias."""
        w = self.weights
        scale = w[f"{prefix}/BatchNorm/gamma"] / np.sqrt(
            w[f"{prefix}/BatchNorm/moving_variance"] + _BN_EPSILON
        )
        filters = (w[f"{prefix}/depthwise_weights"] * scale[None, None, :, None]).astype(np.float32)
        bias = (w[f"{prefix}/BatchNorm/beta"] - w[f"{prefix}/BatchNorm/moving_mean"] * scale).astype(
            np.float32
        )
        return self.relu6(self.conv2d(x, filters, bias, stride, group=int(filters.shape[2])))

    def predictor(self, x: str, index: int) -> tuple[str, str]:
        """Box encodings ``(B, cells * anchors, 4)`` and class logits ``(B, cells * anchors, 3)``
        of one prediction map, cells in row-major order as TF's NHWC reshape lists them."""
        w = self.weights
        outputs = []
        for name, width in (("BoxEncodingPredictor", 4), ("ClassPredictor", 3)):
            prefix = f"Prediction/BoxPredictor_{index}/{name}"
            y = self.conv2d(x, w[f"{prefix}/weights"], w[f"{prefix}/biases"], 1)
            y = self.op("Transpose", [y], perm=[0, 2, 3, 1])
            outputs.append(self.op("Reshape", [y, self.const(np.array([0, -1, width], np.int64))]))
        return outputs[0], outputs[1]


def convert_ssd(manifest: bytes, shard: bytes) -> bytes:
    """The ONNX model: input ``input`` ``(B, 512, 512, 3)`` float32 RGB scaled to [-1, 1]
    (``x / 127.5 - 1``); outputs ``encodings`` ``(B, 5118, 4)`` box offsets (dy, dx, dh, dw)
    per anchor, ``scores`` ``(B, 5118)`` face probability per anchor, and the anchors
    themselves, ``anchors`` ``(5118, 4)`` (cx, cy, w, h) as fractions of the input side;
    ``decode_boxes`` turns the first and last into boxes. Box decoding stays outside the
    graph so that every backend (the torch one has no Exp) runs the same graph."""
    from onnx import TensorProto, helper

    g = _SsdGraph(read_weights(json.loads(manifest), [shard]))
    x = g.op("Transpose", ["input"], perm=[0, 3, 1, 2])
    x = g.pointwise(x, "MobilenetV1/Conv2d_0_pointwise", 2)  # 512 -> 256
    conv11 = x
    for layer in range(1, 14):
        x = g.depthwise(x, f"MobilenetV1/Conv2d_{layer}_depthwise", 2 if layer in _STRIDE_2 else 1)
        x = g.pointwise(x, f"MobilenetV1/Conv2d_{layer}_pointwise", 1)
        if layer == 11:
            conv11 = x  # 32 x 32
    maps = [conv11, x]  # x: 16 x 16
    y = x
    for layer in range(8):
        y = g.pointwise(y, f"Prediction/Conv2d_{layer}_pointwise", 2 if layer % 2 else 1)
        if layer % 2:
            maps.append(y)  # 8, 4, 2, 1
    predictions = [g.predictor(m, i) for i, m in enumerate(maps)]
    encodings = g.op("Concat", [p[0] for p in predictions], axis=1)
    logits = g.op("Concat", [p[1] for p in predictions], axis=1)

    g.nodes.append(helper.make_node("Identity", [encodings], ["encodings"], name="encodings"))
    # Class 0 is the background, 1 the face (face-api reads only that one).
    face = g.op("Slice", [logits, *(g.const(np.array([v], np.int64)) for v in (1, 2, 2))])
    face = g.op("Reshape", [face, g.const(np.array([0, -1], np.int64))])
    g.nodes.append(helper.make_node("Sigmoid", [face], ["scores"], name="scores"))
    # The anchors as (cx, cy, w, h) fractions: the weights hold them as (y1, x1, y2, x2).
    raw = g.weights["Output/extra_dim"][0].astype(np.float64)
    expected = sum(side * side * per_cell for side, per_cell in _MAPS)
    if raw.shape != (expected, 4):
        raise ValueError(f"Output/extra_dim: expected {expected} anchors, got {raw.shape}")
    wh = np.stack([raw[:, 3] - raw[:, 1], raw[:, 2] - raw[:, 0]], axis=1)
    anchors = np.concatenate([raw[:, [1, 0]] + wh / 2, wh], axis=1).astype(np.float32)
    g.nodes.append(helper.make_node("Identity", [g.const(anchors)], ["anchors"], name="anchors"))
    return g.serialize(
        "faceapi_ssd_mobilenetv1",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", SSD_SIZE, SSD_SIZE, 3])],
        [
            helper.make_tensor_value_info("encodings", TensorProto.FLOAT, ["batch", expected, 4]),
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", expected]),
            helper.make_tensor_value_info("anchors", TensorProto.FLOAT, [expected, 4]),
        ],
    )


@dataclass(frozen=True)
class FaceBoxes:
    """Detections of one image: ``boxes`` ``(N, 4)`` float32 x1 y1 x2 y2 in image pixels,
    ``scores`` ``(N,)`` float32, best first."""

    boxes: NDArray[np.float32]
    scores: NDArray[np.float32]

    def __post_init__(self) -> None:
        if self.boxes.shape != (len(self.scores), 4):
            raise ValueError(f"boxes: expected shape ({len(self.scores)}, 4), got {self.boxes.shape}")


def decode_boxes(encodings: NDArray[np.float32], anchors: NDArray[np.float32]) -> NDArray[np.float32]:
    """Boxes ``(..., N, 4)`` x1 y1 x2 y2 in input pixels from the net's ``encodings`` and
    ``anchors`` (see ``convert_ssd``), with TF object detection's scales 10 (centre) and 5 (size)."""
    centre = anchors[:, :2] + encodings[..., [1, 0]] / 10.0 * anchors[:, 2:]
    half = np.exp(encodings[..., [3, 2]] / 5.0) * anchors[:, 2:] / 2
    return (np.concatenate([centre - half, centre + half], axis=-1) * SSD_SIZE).astype(np.float32)


def tile_origins(length: int, size: int, overlap: int) -> list[int]:
    """Start offsets of tiles of ``size`` px along ``length`` px, neighbours overlapping by at
    least ``overlap`` px, the first at 0 and the last ending at the edge (one tile at 0 when
    ``length <= size``)."""
    if length <= size:
        return [0]
    count = -(-(length - overlap) // (size - overlap))
    return [round(i * (length - size) / (count - 1)) for i in range(count)]


def _resized(image: NDArray[np.uint8], scale: float) -> NDArray[np.uint8]:
    if scale == 1.0:
        return image
    h, w = image.shape[:2]
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return cv2.resize(image, size, interpolation=interpolation)  # type: ignore[return-value]


class FaceApiDetector:
    """face-api's SSD MobileNet v1 face detector (WIDER FACE) over 512 x 512 inputs.

    ``detect`` runs it on the whole image (padded square, as face-api does) and
    on overlapping tiles of the image resized by ``scale`` and by each halving
    of it that still needs more than one tile: at 512 px the net finds faces
    from about 16 px up, so tiles at scale 2 reach faces of 8 to 10 px.
    """

    size = SSD_SIZE

    def __init__(self, backend: Backend, batch: int = 4, overlap: int = 128) -> None:
        if batch < 1:
            raise ValueError(f"batch: expected at least 1, got {batch}")
        if not 0 <= overlap < SSD_SIZE // 2:
            raise ValueError(f"overlap: expected 0 to {SSD_SIZE // 2 - 1} px, got {overlap}")
        self.backend = backend
        self.batch = batch
        self.overlap = overlap
        names = [spec.name for spec in backend.output_spec()]
        self._order = [names.index(n) for n in ("encodings", "scores", "anchors")]

    def infer(self, tiles: NDArray[np.uint8]) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        """``(B, 512, 512, 3)`` uint8 RGB -> anchor boxes ``(B, 5118, 4)`` x1 y1 x2 y2 in
        tile pixels and their scores ``(B, 5118)``."""
        if tiles.shape[1:] != (SSD_SIZE, SSD_SIZE, 3):
            raise ValueError(f"tiles: expected (B, {SSD_SIZE}, {SSD_SIZE}, 3), got {tiles.shape}")
        boxes, scores = [], []
        for start in range(0, len(tiles), self.batch):
            batch = tiles[start : start + self.batch].astype(np.float32) / 127.5 - 1.0
            outputs = self.backend.infer(batch)
            encodings, score, anchors = (np.asarray(outputs[i], np.float32) for i in self._order)
            boxes.append(decode_boxes(encodings, anchors))
            scores.append(score)
        return np.concatenate(boxes), np.concatenate(scores)

    def detect(
        self, image: NDArray[np.uint8], scale: float = 1.0, threshold: float = 0.5, nms_iou: float = 0.4
    ) -> FaceBoxes:
        """Faces in ``image`` ``(H, W, 3)`` uint8 RGB, boxes clipped to it."""
        if scale <= 0:
            raise ValueError(f"scale: expected > 0, got {scale}")
        height, width = image.shape[:2]
        side = max(height, width)
        square = np.zeros((side, side, 3), np.uint8)
        square[:height, :width] = image
        # (tile, its offset in the resized image, that image's scale and size)
        tiles = [_resized(square, SSD_SIZE / side)]
        places = [(0, 0, SSD_SIZE / side, SSD_SIZE, SSD_SIZE)]
        level = scale
        while level * side > SSD_SIZE:
            resized = _resized(image, level)
            rh, rw = resized.shape[:2]
            for y in tile_origins(rh, SSD_SIZE, self.overlap):
                for x in tile_origins(rw, SSD_SIZE, self.overlap):
                    tile = np.zeros((SSD_SIZE, SSD_SIZE, 3), np.uint8)
                    part = resized[y : y + SSD_SIZE, x : x + SSD_SIZE]
                    tile[: part.shape[0], : part.shape[1]] = part
                    tiles.append(tile)
                    places.append((x, y, level, rw, rh))
            level /= 2
        boxes, scores = self.infer(np.stack(tiles))
        found_boxes, found_scores = [], []
        edge = 4.0  # px: a box this close to a tile's inner border is a face the border cuts
        for (x, y, s, rw, rh), b, sc in zip(places, boxes, scores, strict=True):
            keep = sc > threshold
            b, sc = b[keep], sc[keep]
            cut = np.zeros(len(b), bool)
            if x > 0:
                cut |= b[:, 0] < edge
            if y > 0:
                cut |= b[:, 1] < edge
            if x + SSD_SIZE < rw:
                cut |= b[:, 2] > SSD_SIZE - edge
            if y + SSD_SIZE < rh:
                cut |= b[:, 3] > SSD_SIZE - edge
            found_boxes.append((b[~cut] + np.array([x, y, x, y], np.float32)) / s)
            found_scores.append(sc[~cut])
        all_boxes = np.concatenate(found_boxes).astype(np.float32)
        all_scores = np.concatenate(found_scores).astype(np.float32)
        np.clip(all_boxes, 0, [width, height, width, height], out=all_boxes)
        keep = nms(all_boxes, all_scores, nms_iou)
        return FaceBoxes(all_boxes[keep].reshape(-1, 4), all_scores[keep])


# --- 68-point face landmarks ------------------------------------------------------

LANDMARKS_SIZE = 112


class _LandmarkGraph(_SsdGraph):
    """face-api's FaceFeatureExtractor: four dense blocks of (depthwise separable)
    convolutions with TF "same" padding, each block halving the side."""

    def separable(self, x: str, prefix: str, stride: int) -> str:
        """tf.separableConv2d: a depthwise 3x3 (``stride``), a pointwise 1x1, then the bias."""
        w = self.weights
        depthwise = w[f"{prefix}/depthwise_filter"]
        zeros = np.zeros(depthwise.shape[2], np.float32)
        y = self.conv2d(x, depthwise, zeros, stride, group=int(depthwise.shape[2]))
        return self.conv2d(y, w[f"{prefix}/pointwise_filter"], w[f"{prefix}/bias"], 1)

    def dense_block(self, x: str, prefix: str, first: bool) -> str:
        """denseBlock4: each of conv1 to conv3 takes the ReLU of the sum of all outputs
        before it; the first block's conv0 is a plain convolution."""
        w = self.weights
        if first:
            conv0 = self.conv2d(x, w[f"{prefix}/conv0/filters"], w[f"{prefix}/conv0/bias"], 2)
        else:
            conv0 = self.separable(x, f"{prefix}/conv0", 2)
        outputs = [self.op("Relu", [conv0])]
        total = outputs[0]
        for i in (1, 2, 3):
            inner = outputs[0] if i == 1 else self.op("Relu", [total])
            outputs.append(self.separable(inner, f"{prefix}/conv{i}", 1))
            total = self.op("Add", [total, outputs[-1]])
        return self.op("Relu", [total])


def convert_landmarks68(manifest: bytes, shard: bytes) -> bytes:
    """face-api's FaceLandmark68Net as ONNX: input ``input`` ``(B, 112, 112, 3)`` float32,
    (RGB 0-255 - ``MEAN_RGB``) / 255; output ``landmarks`` ``(B, 136)``: the 68 points of
    the iBUG 300-W layout as x0 y0 x1 y1 ..., fractions of the input side."""
    from onnx import TensorProto, helper

    g = _LandmarkGraph(read_weights(json.loads(manifest), [shard]))
    x = g.op("Transpose", ["input"], perm=[0, 3, 1, 2])
    for i in range(4):  # 112 -> 56 -> 28 -> 14 -> 7
        x = g.dense_block(x, f"dense{i}", i == 0)
    # face-api's 7x7 average pool (stride 2, valid) over the 7x7 map is the global mean
    pooled = g.op("ReduceMean", [x], axes=[2, 3], keepdims=0)
    fc = [g.const(g.weights["fc/weights"]), g.const(g.weights["fc/bias"])]
    g.nodes.append(helper.make_node("Gemm", [pooled, *fc], ["landmarks"], name="fc"))
    return g.serialize(
        "faceapi_landmarks68",
        [
            helper.make_tensor_value_info(
                "input", TensorProto.FLOAT, ["batch", LANDMARKS_SIZE, LANDMARKS_SIZE, 3]
            )
        ],
        [helper.make_tensor_value_info("landmarks", TensorProto.FLOAT, ["batch", 136])],
    )


def landmark_crop(image: NDArray[np.uint8], box: NDArray[np.floating], enlarge: float = 1.0) -> Crop:
    """The 112 x 112 input of the landmark net for one face, made as face-api makes it
    (``extractFaceTensors``, then ``NetInput.toBatchTensor(112, true)``): the detector box
    (xyxy image pixels; scaled by ``enlarge`` about its centre, where face-api takes it as
    detected) clipped to the image and cut at whole pixels, padded with black to a square
    (half the padding on each side of the shorter dimension, the larger half after) and
    resized bilinearly to 112 px. ``image``: ``(H, W, 3)`` uint8 RGB. ``Crop.to_image``
    maps crop pixels back to the image, exactly where the pixels were put."""
    if enlarge <= 0:
        raise ValueError(f"enlarge: expected > 0, got {enlarge}")
    height, width = image.shape[:2]
    cx, cy = (float(box[0]) + float(box[2])) / 2, (float(box[1]) + float(box[3])) / 2
    half_w = (float(box[2]) - float(box[0])) * enlarge / 2
    half_h = (float(box[3]) - float(box[1])) * enlarge / 2
    # face-api's Box.clipAtImageBorders: clip, then floor the corner and the size
    left, top = max(cx - half_w, 0.0), max(cy - half_h, 0.0)
    w, h = int(np.floor(min(cx + half_w, width) - left)), int(np.floor(min(cy + half_h, height) - top))
    x0, y0 = int(np.floor(left)), int(np.floor(top))
    if w < 1 or h < 1:
        raise ValueError(f"box: expected at least 1 px inside the {width} x {height} image, got {box}")
    side = max(w, h)
    before = (side - min(w, h)) // 2  # padToSquare appends Math.round(diff / 2), prepends the rest
    square = np.zeros((side, side, 3), np.uint8)
    dx, dy = (before, 0) if w < h else (0, before)
    square[dy : dy + h, dx : dx + w] = image[y0 : y0 + h, x0 : x0 + w]
    # tf.image.resizeBilinear without half-pixel centres samples the square at i * side / 112,
    # as warpAffine does with this matrix; beyond the last pixel it repeats it.
    scale = LANDMARKS_SIZE / side
    size = (LANDMARKS_SIZE, LANDMARKS_SIZE)
    resize = np.array([[scale, 0, 0], [0, scale, 0]], np.float64)
    pixels = cv2.warpAffine(square, resize, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    to_crop = np.array([[scale, 0, -scale * (x0 - dx)], [0, scale, -scale * (y0 - dy)]], np.float64)
    return Crop(np.asarray(pixels, np.uint8), to_crop)


class FaceLandmarks68:
    """face-api's 68-point landmark net (iBUG 300-W order: jaw 0-16, brows 17-26, nose
    27-35, eyes 36-47, outer lips 48-59, inner lips 60-67; the subject's right side first,
    which is the image's left on a frontal face). A measurement model the stream never uses."""

    size = LANDMARKS_SIZE

    def __init__(self, backend: Backend, batch: int = 16) -> None:
        if batch < 1:
            raise ValueError(f"batch: expected at least 1, got {batch}")
        self.backend = backend
        self.batch = batch

    def predict(self, crops: Sequence[Crop]) -> NDArray[np.float32]:
        """``(N, 68, 2)`` float32 x y in crop pixels (0 to 112) of ``landmark_crop`` crops."""
        if not crops:
            return np.zeros((0, 68, 2), np.float32)
        for crop in crops:
            if crop.image.shape != (LANDMARKS_SIZE, LANDMARKS_SIZE, 3):
                raise ValueError(
                    f"crop: expected ({LANDMARKS_SIZE}, {LANDMARKS_SIZE}, 3), got {crop.image.shape}"
                )
        points = []
        for start in range(0, len(crops), self.batch):
            images = np.stack([c.image for c in crops[start : start + self.batch]])
            (out,) = self.backend.infer((images.astype(np.float32) - MEAN_RGB) / 255.0)
            points.append(np.asarray(out, np.float32).reshape(-1, 68, 2) * LANDMARKS_SIZE)
        return np.concatenate(points)

    def locate(
        self, image: NDArray[np.uint8], boxes: NDArray[np.floating], enlarge: float = 1.0
    ) -> NDArray[np.float32]:
        """``(N, 68, 2)`` float32 x y in image pixels for the faces in ``boxes`` ``(N, 4)``
        (xyxy image pixels, as face-api's SSD or CenterFace finds them) of ``image``
        ``(H, W, 3)`` uint8 RGB."""
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise ValueError(f"boxes: expected shape (N, 4), got {boxes.shape}")
        crops = [landmark_crop(image, box, enlarge) for box in boxes]
        points = self.predict(crops)
        mapped = [c.to_image(p) for c, p in zip(crops, points, strict=True)]
        return np.stack(mapped) if mapped else np.zeros((0, 68, 2), np.float32)
