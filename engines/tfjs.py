"""A TensorFlow.js graph-model to ONNX converter, in plain Python with the ``onnx`` package.

TFJS graph models (``model.json`` + ``*.bin`` weight shards) are frozen
TensorFlow graphs: nodes with a TF op name, inputs and attributes, weights
as constants whose bytes sit in the shards, often fp16- or uint8-quantized.
This converter keeps the TF data layout (NHWC) for every tensor and wraps
the layout-sensitive ops (convolutions, pooling, resize, depth-to-space) in
transposes; ONNX Runtime's optimizer cancels the adjacent pairs. Integer
tensors become int64, as ONNX shape ops want.

Supported ops are those the zoo's models use (``OPS``); an unknown op is an
error naming it, never a silent skip.

Over 400 lines: one converter function per supported TF op, which read best side by side.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .errors import ModelError

OPSET = 17
TO_NCHW = [0, 3, 1, 2]
TO_NHWC = [0, 2, 3, 1]


def _s(attr: dict[str, Any], key: str, default: str = "") -> str:
    value = attr.get(key, {}).get("s")
    return base64.b64decode(value).decode() if value else default


def _ints(attr: dict[str, Any], key: str) -> list[int]:
    return [int(v) for v in attr.get(key, {}).get("list", {}).get("i", [])]


def _int(attr: dict[str, Any], key: str, default: int = 0) -> int:
    return int(attr.get(key, {}).get("i", default))


def _bool(attr: dict[str, Any], key: str) -> bool:
    return bool(attr.get(key, {}).get("b", False))


def _strings(attr: dict[str, Any], key: str) -> list[str]:
    return [base64.b64decode(v).decode() for v in attr.get(key, {}).get("list", {}).get("s", [])]


def read_weights(manifest: list[dict[str, Any]], shards: list[bytes]) -> dict[str, NDArray[Any]]:
    """Weights by name, dequantized to float32 (floats) or int64 (integers)."""
    data = b"".join(shards)
    weights: dict[str, NDArray[Any]] = {}
    offset = 0
    for group in manifest:
        for spec in group["weights"]:
            shape = [int(d) for d in spec["shape"]]
            count = int(np.prod(shape)) if shape else 1
            quant = spec.get("quantization")
            dtype = spec["dtype"]
            if quant:
                qtype = {"float16": np.float16, "uint8": np.uint8, "uint16": np.uint16}[quant["dtype"]]
                raw = np.frombuffer(data, qtype, count, offset)
                offset += raw.nbytes
                if quant["dtype"] == "float16":
                    value = raw.astype(np.float32)
                else:
                    value = (raw.astype(np.float32) * quant["scale"] + quant["min"]).astype(np.float32)
            else:
                np_type = {"float32": np.float32, "int32": np.int32, "bool": np.bool_}[dtype]
                value = np.frombuffer(data, np_type, count, offset)
                offset += value.nbytes
            if dtype == "int32":
                value = value.astype(np.int64)
            weights[spec["name"]] = value.reshape(shape)
    if offset != len(data):
        raise ModelError(f"weight shards hold {len(data)} bytes, the manifest describes {offset}")
    return weights


@dataclass
class _Builder:
    """Accumulates ONNX nodes and initializers while walking the TF graph."""

    weights: dict[str, NDArray[Any]]
    nodes: list[Any] = field(default_factory=list)
    initializers: dict[str, NDArray[Any]] = field(default_factory=dict)
    counter: int = 0

    def fresh(self, base: str) -> str:
        self.counter += 1
        return f"{base}__{self.counter}"

    def const(self, base: str, value: NDArray[Any]) -> str:
        name = self.fresh(base)
        self.initializers[name] = value
        return name

    def node(self, op: str, inputs: list[str], output: str | None = None, **attrs: Any) -> str:
        from onnx import helper

        output = output or self.fresh(op)
        self.nodes.append(helper.make_node(op, inputs, [output], name=self.fresh(op), **attrs))
        return output

    def constant_value(self, name: str) -> NDArray[Any]:
        if name in self.weights:
            return self.weights[name]
        raise ModelError(f"expected a constant for {name!r}")


def _inputs(node: dict[str, Any]) -> list[str]:
    """Data inputs of a TF node (control dependencies ``^name`` dropped)."""
    return [_tf_input(i) for i in node.get("input", []) if not i.startswith("^")]


def _tf_input(name: str) -> str:
    """TF input reference -> our tensor name (``node:0`` and ``node`` are the same tensor)."""
    return name[:-2] if name.endswith(":0") else name.replace(":", "__out")


def _pads_for(attr: dict[str, Any]) -> dict[str, Any]:
    padding = _s(attr, "padding", "VALID")
    if padding == "SAME":
        return {"auto_pad": "SAME_UPPER"}
    if padding == "EXPLICIT":
        p = _ints(attr, "explicit_paddings")  # NHWC pairs
        return {"pads": [p[2], p[4], p[3], p[5]]}
    return {}


def _conv(b: _Builder, node: dict[str, Any], depthwise: bool) -> str:
    attr = node.get("attr", {})
    x, w_name, *extra = _inputs(node)
    if _s(attr, "data_format", "NHWC") != "NHWC":
        raise ModelError(f"{node['name']}: only NHWC convolutions are supported")
    kernel = b.constant_value(w_name)  # HWIO, or HWCM for depthwise
    if depthwise:
        kh, kw, channels, multiplier = kernel.shape
        weight = kernel.transpose(2, 3, 0, 1).reshape(channels * multiplier, 1, kh, kw)
        group = channels
    else:
        weight = kernel.transpose(3, 2, 0, 1)
        group = 1
    strides = _ints(attr, "strides")[1:3] or [1, 1]
    dilations = _ints(attr, "dilations")[1:3] or [1, 1]
    fused = _strings(attr, "fused_ops")
    inputs = [
        b.node("Transpose", [x], perm=TO_NCHW),
        b.const(w_name, np.ascontiguousarray(weight, np.float32)),
    ]
    rest = list(extra)
    if fused and fused[0] == "BiasAdd":
        inputs.append(b.const(rest.pop(0), b.constant_value(extra[0]).astype(np.float32)))
        fused = fused[1:]
    elif fused:
        raise ModelError(f"{node['name']}: fused ops {fused} not supported")
    y = b.node("Conv", inputs, strides=strides, dilations=dilations, group=group, **_pads_for(attr))
    y = b.node("Transpose", [y], perm=TO_NHWC)
    return _activation(b, node, y, fused, rest)


def _activation(b: _Builder, node: dict[str, Any], y: str, fused: list[str], rest: list[str]) -> str:
    for op in fused:
        if op == "Relu":
            y = b.node("Relu", [y])
        elif op == "Relu6":
            y = b.node(
                "Clip", [y, b.const("zero", np.array(0, np.float32)), b.const("six", np.array(6, np.float32))]
            )
        elif op == "Prelu":
            y = b.node("PRelu", [y, rest.pop(0)])
        elif op == "Sigmoid":
            y = b.node("Sigmoid", [y])
        else:
            raise ModelError(f"{node['name']}: fused activation {op} not supported")
    return y


def _matmul(b: _Builder, node: dict[str, Any]) -> str:
    attr = node.get("attr", {})
    a, w, *extra = _inputs(node)
    inputs = [a, w]
    fused = _strings(attr, "fused_ops")
    y = b.node("Gemm", [*inputs, extra[0]] if fused and fused[0] == "BiasAdd" else inputs,
               transA=int(_bool(attr, "transpose_a")), transB=int(_bool(attr, "transpose_b")))  # fmt: skip
    return _activation(b, node, y, fused[1:] if fused and fused[0] == "BiasAdd" else fused, extra[1:])


def _pool(b: _Builder, node: dict[str, Any]) -> str:
    attr = node.get("attr", {})
    x = b.node("Transpose", [_inputs(node)[0]], perm=TO_NCHW)
    y = b.node("MaxPool", [x], kernel_shape=_ints(attr, "ksize")[1:3], strides=_ints(attr, "strides")[1:3],
               **_pads_for(attr))  # fmt: skip
    return b.node("Transpose", [y], perm=TO_NHWC)


def _resize(b: _Builder, node: dict[str, Any], mode: str) -> str:
    attr = node.get("attr", {})
    x, size = _inputs(node)
    if _bool(attr, "align_corners"):
        transform = "align_corners"
    elif _bool(attr, "half_pixel_centers"):
        transform = "half_pixel" if mode == "linear" else "tf_half_pixel_for_nn"
    else:
        transform = "asymmetric"
    nchw = b.node("Transpose", [x], perm=TO_NCHW)
    shape = b.node("Shape", [nchw])
    batch_channels = b.node("Slice", [shape, b.const("s0", np.array([0])), b.const("s2", np.array([2]))])
    sizes = b.node("Concat", [batch_channels, b.node("Cast", [size], to=7)], axis=0)
    y = b.node("Resize", [nchw, "", "", sizes], mode=mode, coordinate_transformation_mode=transform,
               nearest_mode="floor" if mode == "nearest" else "round_prefer_floor")  # fmt: skip
    return b.node("Transpose", [y], perm=TO_NHWC)


def _depth_to_space(b: _Builder, node: dict[str, Any]) -> str:
    attr = node.get("attr", {})
    x = b.node("Transpose", [_inputs(node)[0]], perm=TO_NCHW)
    y = b.node("DepthToSpace", [x], blocksize=_int(attr, "block_size"), mode="DCR")
    return b.node("Transpose", [y], perm=TO_NHWC)


def _strided_slice(b: _Builder, node: dict[str, Any]) -> str:
    attr = node.get("attr", {})
    x, begin, end, strides = _inputs(node)
    begin_v, end_v, strides_v = (b.constant_value(n).astype(np.int64) for n in (begin, end, strides))
    for mask_name in ("ellipsis_mask", "new_axis_mask"):
        if _int(attr, mask_name):
            raise ModelError(f"{node['name']}: StridedSlice {mask_name} is not supported")
    begin_mask, end_mask, shrink = (
        _int(attr, "begin_mask"),
        _int(attr, "end_mask"),
        _int(attr, "shrink_axis_mask"),
    )
    big = np.iinfo(np.int64).max
    starts, ends = begin_v.copy(), end_v.copy()
    for axis in range(len(begin_v)):
        if begin_mask >> axis & 1:
            starts[axis] = 0 if strides_v[axis] > 0 else big
        if end_mask >> axis & 1:
            ends[axis] = big if strides_v[axis] > 0 else -big
        if shrink >> axis & 1:
            ends[axis] = starts[axis] + 1 if starts[axis] != -1 else big
    axes = np.arange(len(begin_v), dtype=np.int64)
    y = b.node("Slice", [x, b.const("starts", starts), b.const("ends", ends), b.const("axes", axes),
                         b.const("steps", strides_v)])  # fmt: skip
    squeeze = [axis for axis in range(len(begin_v)) if shrink >> axis & 1]
    if squeeze:
        y = b.node("Squeeze", [y, b.const("axes", np.array(squeeze, np.int64))])
    return y


def _reduce(b: _Builder, node: dict[str, Any], op: str) -> str:
    x, axes = _inputs(node)
    values = b.constant_value(axes).astype(np.int64).reshape(-1).tolist()
    return b.node(op, [x], axes=values, keepdims=int(_bool(node.get("attr", {}), "keep_dims")))


def _pad(b: _Builder, node: dict[str, Any]) -> str:
    x, paddings = _inputs(node)[:2]
    pairs = b.constant_value(paddings).astype(np.int64)
    return b.node("Pad", [x, b.const("pads", np.concatenate([pairs[:, 0], pairs[:, 1]]))], mode="constant")


def _pack(b: _Builder, node: dict[str, Any]) -> str:
    axis = _int(node.get("attr", {}), "axis")
    parts = []
    for name in _inputs(node):
        if name in b.weights:  # TFJS may store a scalar constant with shape [1]
            value = b.weights[name]
            parts.append(
                b.const(
                    name,
                    np.expand_dims(
                        value.reshape(value.shape if value.ndim != 1 or value.size != 1 else ()), axis
                    ),
                )
            )
        else:
            parts.append(b.node("Unsqueeze", [name, b.const("axes", np.array([axis]))]))
    return b.node("Concat", parts, axis=axis)


def _concat(b: _Builder, node: dict[str, Any]) -> str:
    *parts, axis = _inputs(node)
    return b.node("Concat", parts, axis=int(b.constant_value(axis)))


def _simple(op: str) -> Callable[[_Builder, dict[str, Any]], str]:
    return lambda b, node: b.node(op, _inputs(node))


OPS: dict[str, Callable[[_Builder, dict[str, Any]], str]] = {
    "_FusedConv2D": lambda b, n: _conv(b, n, depthwise=False),
    "Conv2D": lambda b, n: _conv(b, n, depthwise=False),
    "FusedDepthwiseConv2dNative": lambda b, n: _conv(b, n, depthwise=True),
    "DepthwiseConv2dNative": lambda b, n: _conv(b, n, depthwise=True),
    "_FusedMatMul": _matmul,
    "MatMul": _matmul,
    "MaxPool": _pool,
    "ResizeBilinear": lambda b, n: _resize(b, n, "linear"),
    "ResizeNearestNeighbor": lambda b, n: _resize(b, n, "nearest"),
    "DepthToSpace": _depth_to_space,
    "StridedSlice": _strided_slice,
    "Mean": lambda b, n: _reduce(b, n, "ReduceMean"),
    "Max": lambda b, n: _reduce(b, n, "ReduceMax"),
    "Pad": _pad,
    "Pack": _pack,
    "ConcatV2": _concat,
    "Add": _simple("Add"),
    "AddV2": _simple("Add"),
    "Sub": _simple("Sub"),
    "Mul": _simple("Mul"),
    "Minimum": _simple("Min"),
    "Maximum": _simple("Max"),
    "Relu": _simple("Relu"),
    "Sigmoid": _simple("Sigmoid"),
    "Tanh": _simple("Tanh"),
    "Prelu": _simple("PRelu"),
    "Identity": _simple("Identity"),
    "Shape": _simple("Shape"),
    "Reshape": _simple("Reshape"),
    "Softmax": lambda b, n: b.node("Softmax", [_inputs(n)[0]], axis=-1),
}


def convert(model_json: bytes, shards: list[bytes], name: str) -> bytes:
    """ONNX bytes for a TFJS graph model. Inputs and outputs keep their TF names
    (``:0`` dropped); the batch axis is symbolic."""
    from onnx import TensorProto, checker, helper, numpy_helper, shape_inference

    spec = json.loads(model_json)
    if spec.get("format") not in (None, "graph-model"):
        raise ModelError(f"{name}: not a TFJS graph model (format {spec.get('format')!r})")
    weights = read_weights(spec["weightsManifest"], shards)
    builder = _Builder(weights)
    graph_inputs = []
    produced: dict[str, str] = {}
    for node in spec["modelTopology"]["node"]:
        op, tf_name = node["op"], node["name"]
        if op == "Const":
            if tf_name not in weights:
                raise ModelError(f"{name}: constant {tf_name} has no weight data")
            continue
        if op == "Placeholder":
            dims = node["attr"]["shape"]["shape"]["dim"]
            shape = ["batch" if int(d["size"]) < 0 else int(d["size"]) for d in dims]
            graph_inputs.append(helper.make_tensor_value_info(tf_name, TensorProto.FLOAT, shape))
            continue
        handler = OPS.get(op)
        if handler is None:
            raise ModelError(f"{name}: TF op {op} (node {tf_name}) is not supported by the converter")
        out = handler(builder, node)
        builder.nodes.append(helper.make_node("Identity", [out], [tf_name], name=builder.fresh("out")))
        produced[tf_name] = op
    # Constants referenced by nodes become initializers under their TF names.
    referenced = {i for n in builder.nodes for i in n.input}
    for const_name, value in weights.items():
        if const_name in referenced and const_name not in builder.initializers:
            builder.initializers[const_name] = value.astype(np.float32) if value.dtype.kind == "f" else value
    signature = spec.get("signature", {}).get("outputs")
    if signature:
        # Outputs take the signature's names (``output_mesh``), else the tensor's.
        out_names = []
        for key, value in signature.items():
            out_name, tensor = _tf_input(key), _tf_input(value["name"])
            if out_name != tensor:
                builder.nodes.append(
                    helper.make_node("Identity", [tensor], [out_name], name=builder.fresh("sig"))
                )
            out_names.append(out_name)
    else:  # no signature: the nodes nobody consumes
        consumed = {_tf_input(i) for n in spec["modelTopology"]["node"] for i in n.get("input", [])}
        out_names = [n for n in produced if n not in consumed]
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in sorted(out_names)]
    graph = helper.make_graph(
        builder.nodes,
        name,
        graph_inputs,
        outputs,
        initializer=[
            numpy_helper.from_array(np.ascontiguousarray(v), k) for k, v in builder.initializers.items()
        ],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="anonymousnet"
    )
    model.ir_version = 8
    # Give the outputs the shapes inference finds (the batch axis stays symbolic).
    inferred = {v.name: v for v in shape_inference.infer_shapes(model).graph.output}
    for output in model.graph.output:
        found = inferred.get(output.name)
        if found is not None and found.type.tensor_type.HasField("shape"):
            output.CopyFrom(found)
        else:
            output.type.tensor_type.shape.SetInParent()  # rank unknown
    checker.check_model(model, full_check=True)
    return model.SerializeToString(deterministic=True)
