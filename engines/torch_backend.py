"""The zoo's ONNX models as native PyTorch modules, and the ``torch-cuda`` backend.

``OnnxModule`` loads an ONNX graph's initializers as buffers and runs its
nodes with torch operations, so the model is differentiable (calibration
jobs take gradients through it) and runs wherever torch does. It covers the
ops of the zoo's graphs (CenterFace and the converted TFJS models); an
unknown op is an error naming it. No onnx2torch: it imports torchvision,
which does not load beside the CPU build of torch used here.

``TorchCudaBackend`` runs the module in FP16 on a CUDA device and replays a
CUDA graph per input shape. torch is imported only when one is created.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .base import TensorSpec
from .errors import BackendUnavailableError, ModelError


def _attrs(node: Any) -> dict[str, Any]:
    from onnx import helper

    values = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    return {k: v.decode() if isinstance(v, bytes) else v for k, v in values.items()}


def _ops() -> dict[str, Callable[..., Any]]:  # noqa: C901 - a dispatch table of ONNX ops, one branch each
    import torch
    import torch.nn.functional as F

    def conv(
        x: Any,
        w: Any,
        b: Any = None,
        *,
        group: Any = 1,
        strides: Any = (1, 1),
        dilations: Any = (1, 1),
        pads: Any = None,
        auto_pad: Any = "NOTSET",
        **_: Any,
    ) -> Any:
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            pads = _same_pads(x.shape[2:], w.shape[2:], strides, dilations, auto_pad)
        if pads is not None and any(pads):
            n = len(pads) // 2
            begin, end = pads[:n], pads[n:]
            if list(begin) == list(end):
                return F.conv2d(x, w, b, tuple(strides), tuple(begin), tuple(dilations), group)
            x = F.pad(x, [begin[1], end[1], begin[0], end[0]])
        return F.conv2d(x, w, b, tuple(strides), 0, tuple(dilations), group)

    def conv_transpose(x: Any, w: Any, b: Any = None, *, group: Any = 1, strides: Any = (1, 1),
                       pads: Any = (0, 0, 0, 0), output_padding: Any = (0, 0), dilations: Any = (1, 1),
                       **_: Any) -> Any:  # fmt: skip
        if pads[0] != pads[2] or pads[1] != pads[3]:
            raise ModelError("ConvTranspose with asymmetric pads is not supported")
        return F.conv_transpose2d(x, w, b, tuple(strides), tuple(pads[:2]), tuple(output_padding), group,
                                  tuple(dilations))  # fmt: skip

    def max_pool(
        x: Any,
        *,
        kernel_shape: Any,
        strides: Any = None,
        pads: Any = None,
        auto_pad: Any = "NOTSET",
        **_: Any,
    ) -> Any:
        strides = strides or kernel_shape
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            pads = _same_pads(x.shape[2:], kernel_shape, strides, (1, 1), auto_pad)
        if pads is not None and any(pads):
            x = F.pad(x, [pads[1], pads[3], pads[0], pads[2]], value=float("-inf"))
        return F.max_pool2d(x, tuple(kernel_shape), tuple(strides))

    def batch_norm(
        x: Any, scale: Any, bias: Any, mean: Any, var: Any, *, epsilon: Any = 1e-5, **_: Any
    ) -> Any:
        return F.batch_norm(x, mean, var, scale, bias, False, 0.0, epsilon)

    def gemm(
        a: Any,
        b: Any,
        c: Any = None,
        *,
        transA: Any = 0,
        transB: Any = 0,
        alpha: Any = 1.0,
        beta: Any = 1.0,
        **_: Any,
    ) -> Any:
        a = a.t() if transA else a
        b = b.t() if transB else b
        y = alpha * (a @ b)
        return y if c is None else y + beta * c

    def pad(x: Any, pads: Any, value: Any = None, *, mode: Any = "constant", **_: Any) -> Any:
        p = [int(v) for v in pads.tolist()]
        n = len(p) // 2
        torch_pads: list[int] = []
        for axis in reversed(range(n)):
            torch_pads += [p[axis], p[axis + n]]
        return F.pad(x, torch_pads, mode=mode, value=0.0 if value is None else float(value))

    def resize(x: Any, roi: Any = None, scales: Any = None, sizes: Any = None, *, mode: Any = "nearest",
               coordinate_transformation_mode: Any = "half_pixel", **_: Any) -> Any:  # fmt: skip
        size = [int(v) for v in sizes.tolist()][2:] if sizes is not None else None
        if mode == "linear":
            align = coordinate_transformation_mode == "align_corners"
            return F.interpolate(x, size=size, mode="bilinear", align_corners=align)
        return F.interpolate(x, size=size, mode="nearest")

    def slice_(x: Any, starts: Any, ends: Any, axes: Any = None, steps: Any = None, **_: Any) -> Any:
        index: list[Any] = [slice(None)] * x.dim()
        axes_l = axes.tolist() if axes is not None else list(range(len(starts)))
        steps_l = steps.tolist() if steps is not None else [1] * len(axes_l)
        for s, e, a, st in zip(starts.tolist(), ends.tolist(), axes_l, steps_l, strict=True):
            size = x.shape[a]
            s = max(-size, min(s, size))
            e = max(-size - 1, min(e, size))
            index[a] = slice(s, e, st)
        return x[tuple(index)]

    def shape(x: Any, **_: Any) -> Any:
        # Shape arithmetic stays on the CPU: no device sync, so CUDA graphs can capture the model.
        return torch.tensor(list(x.shape), dtype=torch.int64)

    def reshape(x: Any, s: Any, **_: Any) -> Any:
        target = [int(v) for v in s.tolist()]
        target = [x.shape[i] if v == 0 else v for i, v in enumerate(target)]
        return x.reshape(target)

    def unsqueeze(x: Any, axes: Any, **_: Any) -> Any:
        for a in sorted(int(v) for v in axes.tolist()):
            x = x.unsqueeze(a)
        return x

    def squeeze(x: Any, axes: Any = None, **_: Any) -> Any:
        if axes is None:
            return x.squeeze()
        for a in sorted((int(v) for v in axes.tolist()), reverse=True):
            x = x.squeeze(a)
        return x

    def concat(*xs: Any, axis: Any, **_: Any) -> Any:
        return torch.cat(xs, dim=axis)

    def reduce(fn: Callable[..., Any]) -> Callable[..., Any]:
        def run(x: Any, *, axes: Any, keepdims: Any = 1, **_: Any) -> Any:
            dims = [a % x.dim() for a in axes]
            if fn is torch.amax:
                return torch.amax(x, dim=dims, keepdim=bool(keepdims))
            return torch.mean(x, dim=dims, keepdim=bool(keepdims))

        return run

    def depth_to_space(x: Any, *, blocksize: Any, mode: Any = "DCR", **_: Any) -> Any:
        n, c, h, w = x.shape
        b = blocksize
        if mode == "DCR":
            y = x.reshape(n, b, b, c // (b * b), h, w).permute(0, 3, 4, 1, 5, 2)
        else:
            y = x.reshape(n, c // (b * b), b, b, h, w).permute(0, 1, 4, 2, 5, 3)
        return y.reshape(n, c // (b * b), h * b, w * b)

    def prelu(x: Any, slope: Any, **_: Any) -> Any:
        return torch.where(x >= 0, x, x * slope)

    def clip(x: Any, lo: Any = None, hi: Any = None, **_: Any) -> Any:
        return torch.clamp(x, lo, hi)

    def cast(x: Any, *, to: Any, **_: Any) -> Any:
        return x.to(torch.int64) if to == 7 else x.to(torch.float32)

    return {
        "Conv": conv,
        "ConvTranspose": conv_transpose,
        "MaxPool": max_pool,
        "BatchNormalization": batch_norm,
        "Gemm": gemm,
        "Pad": pad,
        "Resize": resize,
        "Slice": slice_,
        "Shape": shape,
        "Reshape": reshape,
        "Unsqueeze": unsqueeze,
        "Squeeze": squeeze,
        "Concat": concat,
        "ReduceMean": reduce(torch.mean),
        "ReduceMax": reduce(torch.amax),
        "DepthToSpace": depth_to_space,
        "PRelu": prelu,
        "Clip": clip,
        "Cast": cast,
        "Transpose": lambda x, *, perm, **_: x.permute(*perm),
        "Add": lambda a, b, **_: a + b,
        "Sub": lambda a, b, **_: a - b,
        "Mul": lambda a, b, **_: a * b,
        "Min": lambda a, b, **_: torch.minimum(a, b),
        "Max": lambda a, b, **_: torch.maximum(a, b),
        "Relu": lambda x, **_: torch.relu(x),
        "Sigmoid": lambda x, **_: torch.sigmoid(x),
        "Tanh": lambda x, **_: torch.tanh(x),
        "Softmax": lambda x, *, axis=-1, **_: torch.softmax(x, dim=axis),
        "Identity": lambda x, **_: x,
    }


def _same_pads(
    spatial: Sequence[int], kernel: Sequence[int], strides: Sequence[int], dilations: Sequence[int], mode: str
) -> list[int]:
    """ONNX ``pads`` (begins then ends) for SAME auto-padding."""
    begins, ends = [], []
    for size, k, s, d in zip(spatial, kernel, strides, dilations, strict=True):
        out = -(-int(size) // s)
        total = max((out - 1) * s + (k - 1) * d + 1 - int(size), 0)
        small, large = total // 2, total - total // 2
        begins.append(small if mode == "SAME_UPPER" else large)
        ends.append(large if mode == "SAME_UPPER" else small)
    return begins + ends


def load_module(model: Path) -> Any:
    """An ``OnnxModule`` (a ``torch.nn.Module``) for the ONNX file ``model``."""
    import onnx
    import torch
    from onnx import numpy_helper

    class OnnxModule(torch.nn.Module):
        """Runs an ONNX graph with torch operations; initializers are buffers."""

        def __init__(self, graph: Any) -> None:
            super().__init__()
            self._names: dict[str, str] = {}
            for i, init in enumerate(graph.initializer):
                value = numpy_helper.to_array(init)
                key = f"w{i}"
                self.register_buffer(key, torch.from_numpy(np.array(value)))
                self._names[init.name] = key
            self._nodes = [(n.op_type, list(n.input), list(n.output), _attrs(n)) for n in graph.node]
            self.input_names = [i.name for i in graph.input if i.name not in self._names]
            self.output_names = [o.name for o in graph.output]
            self._ops = _ops()
            unknown = sorted({op for op, *_ in self._nodes if op not in self._ops})
            if unknown:
                raise ModelError(f"{model.name}: ops {unknown} have no torch form")

        def forward(self, *inputs: Any) -> list[Any]:
            values: dict[str, Any] = dict(zip(self.input_names, inputs, strict=True))
            for name, key in self._names.items():
                values[name] = getattr(self, key)
            for op, ins, outs, attrs in self._nodes:
                args = [values[i] if i else None for i in ins]
                while args and args[-1] is None:
                    args.pop()
                values[outs[0]] = self._ops[op](*args, **attrs)
            return [values[n] for n in self.output_names]

    graph = onnx.load(str(model)).graph
    module = OnnxModule(graph)
    module.eval()
    return module


class TorchCudaBackend:
    """The ONNX model as a torch module in FP16 on CUDA, one CUDA graph per input shape."""

    def __init__(self, model: Path, threads: int = 0, device: str = "cuda", fp16: bool = True,
                 cuda_graphs: bool = True) -> None:  # fmt: skip
        import torch

        if device.startswith("cuda") and not torch.cuda.is_available():
            raise BackendUnavailableError("torch-cuda: torch sees no CUDA device")
        self.name = f"torch-{device}" + ("-fp16" if fp16 else "")
        self._torch = torch
        self._device = torch.device(device)
        self._dtype = torch.float16 if fp16 else torch.float32
        module = load_module(model)
        # Weights move to the device in the compute precision; integer constants
        # (shapes, axes, pads) stay int64 on the CPU with the shape arithmetic.
        for key, buf in list(module.named_buffers()):
            if buf.is_floating_point():
                setattr(module, key, buf.to(self._device, self._dtype))
        self._module = module
        self._graphs: dict[tuple[int, ...], tuple[Any, Any, list[Any]]] = {}
        self._replay = threading.Lock()
        self._cuda_graphs = cuda_graphs and self._device.type == "cuda"
        import onnx

        graph = onnx.load(str(model), load_external_data=False).graph
        init = {i.name for i in graph.initializer}
        self._inputs = [
            TensorSpec(
                i.name, tuple(d.dim_value or None for d in i.type.tensor_type.shape.dim), np.dtype(np.float32)
            )
            for i in graph.input
            if i.name not in init
        ]
        self._outputs = [TensorSpec(o.name, (), np.dtype(np.float32)) for o in graph.output]

    def input_spec(self) -> Sequence[TensorSpec]:
        return self._inputs

    def output_spec(self) -> Sequence[TensorSpec]:
        return self._outputs

    @property
    def device(self) -> Any:
        """The ``torch.device`` the model runs on: frames kept there skip the host round trip
        (``infer_tensors``)."""
        return self._device

    def infer(self, *inputs: NDArray[np.float32]) -> list[NDArray[np.float32]]:
        torch = self._torch
        with torch.inference_mode():
            tensors = [torch.from_numpy(np.ascontiguousarray(x)).to(self._device) for x in inputs]
            return [o.float().cpu().numpy() for o in self.infer_tensors(*tensors)]

    def infer_tensors(self, *inputs: Any) -> list[Any]:
        """``infer`` on torch tensors already on ``device`` (any float type), outputs left
        there in the compute precision: the GPU frame path (``CenterFace.detect`` on device
        frames) uploads a frame once and downloads only what it decoded."""
        torch = self._torch
        with torch.inference_mode():
            tensors = [x.to(self._device, self._dtype) for x in inputs]
            if not self._cuda_graphs:
                return list(self._module(*tensors))
            # A graph's buffers are shared: the pipeline's detection workers
            # (and several streams) call in from many threads.
            with self._replay:
                key = tuple(s for t in tensors for s in t.shape)
                if key not in self._graphs:
                    static_in = [t.clone() for t in tensors]
                    stream = torch.cuda.Stream()
                    stream.wait_stream(torch.cuda.current_stream())
                    with torch.cuda.stream(stream):
                        for _ in range(2):  # warm up before capture
                            self._module(*static_in)
                    torch.cuda.current_stream().wait_stream(stream)
                    graph = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(graph):
                        static_out = self._module(*static_in)
                    self._graphs[key] = (graph, static_in, static_out)
                graph, static_in, static_out = self._graphs[key]
                for dst, src in zip(static_in, tensors, strict=True):
                    dst.copy_(src)
                graph.replay()
                # The next replay overwrites the static outputs: the caller gets its own.
                return [o.clone() for o in static_out]

    def close(self) -> None:
        self._graphs.clear()
