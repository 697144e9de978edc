"""The TFJS -> ONNX converter is exact: the converted models reproduce the
original TFJS models' outputs (run once in @tensorflow/tfjs's pure JavaScript
CPU backend by tests/fixtures/tfjs/reference.mjs) within 1e-4, relative to
the output's magnitude where it exceeds 1."""

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from engines import tfjs, zoo
from stream.errors import ModelError

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "tfjs"
INPUTS = json.loads((FIXTURES / "inputs.json").read_text())
OUTPUTS = json.loads((FIXTURES / "outputs.json").read_text())


def test_the_reference_ran_on_the_pure_javascript_cpu_backend() -> None:
    assert OUTPUTS["backend"] == "cpu" and OUTPUTS["tfjs"].startswith("4.")


@pytest.mark.parametrize("name", sorted(INPUTS))
def test_converted_model_matches_tfjs(name: Any) -> None:
    spec = INPUTS[name]
    raw = np.fromfile(FIXTURES / "inputs" / f"{name}.u8", np.uint8).reshape(spec["shape"])
    x = raw.astype(np.float32) * np.float32(spec["scale"]) + np.float32(spec["offset"])
    session = ort.InferenceSession(str(zoo.ensure(name)), providers=["CPUExecutionProvider"])
    got = dict(zip([o.name for o in session.get_outputs()], session.run(None, {spec["input"]: x})))
    expected = OUTPUTS["models"][name]
    assert set(expected) <= set(got), f"outputs {sorted(got)} lack some of {sorted(expected)}"
    for tensor, meta in expected.items():
        ref = np.fromfile(FIXTURES / "outputs" / meta["file"], np.float32).reshape(meta["shape"])
        error = np.abs(got[tensor] - ref) / np.maximum(1.0, np.abs(ref))
        assert got[tensor].shape == ref.shape
        assert error.max() < 1e-4, (tensor, float(error.max()))


def test_an_unknown_op_is_named() -> None:
    model = {
        "format": "graph-model",
        "modelTopology": {"node": [
            {"name": "x", "op": "Placeholder", "attr": {"shape": {"shape": {"dim": [{"size": "-1"}, {"size": "4"}]}}}},
            {"name": "y", "op": "Erfinv", "input": ["x"]},
        ]},
        "weightsManifest": [{"paths": [], "weights": []}],
    }  # fmt: skip
    with pytest.raises(ModelError, match=r"TF op Erfinv .*not supported"):
        tfjs.convert(json.dumps(model).encode(), [], "toy")


def test_quantized_weights_are_dequantized() -> None:
    manifest = [{"paths": ["w.bin"], "weights": [
        {"name": "a", "shape": [2], "dtype": "float32", "quantization": {"dtype": "float16"}},
        {"name": "b", "shape": [3], "dtype": "float32", "quantization": {"dtype": "uint8", "min": -1.0, "scale": 0.5}},
        {"name": "c", "shape": [1], "dtype": "int32"},
    ]}]  # fmt: skip
    data = np.array([1.5, -2.0], np.float16).tobytes() + bytes([0, 2, 4]) + np.array([7], np.int32).tobytes()
    weights = tfjs.read_weights(manifest, [data])
    assert weights["a"].tolist() == [1.5, -2.0]
    assert weights["b"].tolist() == [-1.0, 0.0, 1.0]
    assert weights["c"].dtype == np.int64 and weights["c"].tolist() == [7]
    with pytest.raises(ModelError, match="manifest describes"):
        tfjs.read_weights(manifest, [data + b"\0"])
