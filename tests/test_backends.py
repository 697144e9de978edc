"""Backends: selection, the torch form of every model, TensorRT options and engine manifests,
and GPU agreement (marked ``gpu``, skipped where no CUDA device exists)."""

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
from conftest import ROOT

from engines import tensorrt, zoo
from engines.base import BackendOptions, create_backend

# The stream's models; faceapi-recognition is an attacker for measurements, run by ONNX Runtime only.
MODELS = [name for name in zoo.REGISTRY if name != "faceapi-recognition"]


def sample_input(name: Any, batch: Any = 2, seed: Any = 0) -> Any:
    rng = np.random.default_rng(seed)
    backend = create_backend("cpu", zoo.ensure(name), threads=2)
    (spec,) = backend.input_spec()
    shape = [batch if d is None and i == 0 else (64 if d is None else d) for i, d in enumerate(spec.shape)]
    scale = 255.0 if name in ("centerface", "faceres") else 1.0
    return backend, (rng.random(shape) * scale).astype(np.float32)


def test_importing_the_packages_loads_no_gpu_library() -> None:
    code = "import sys, run_stream, stream.run.job, engines.base, engines.torch_backend, engines.tensorrt, calibration.int8; " \
           "print(sorted(m for m in ('torch', 'tensorrt', 'pycuda', 'cuda') if m in sys.modules))"  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_auto_says_which_backend_it_chose(capsys: pytest.CaptureFixture[str]) -> None:
    backend = create_backend("auto", zoo.ensure("emotion"))
    assert backend.name
    assert "backend: auto chose" in capsys.readouterr().err


@pytest.mark.parametrize("name", MODELS)
def test_torch_module_matches_onnx_runtime(name: Any) -> None:
    torch = pytest.importorskip("torch")
    from engines.torch_backend import load_module

    backend, x = sample_input(name)
    expected = backend.infer(x)
    module = load_module(zoo.ensure(name))
    with torch.no_grad():
        got = [t.numpy() for t in module(torch.from_numpy(x))]
    names = [s.name for s in backend.output_spec()]
    assert module.output_names == names
    for a, b in zip(expected, got):
        assert (np.abs(a - b) / np.maximum(1.0, np.abs(a))).max() < 1e-4


def test_torch_module_is_differentiable() -> None:
    torch = pytest.importorskip("torch")
    from engines.torch_backend import load_module

    module = load_module(zoo.ensure("faceres"))
    x = torch.rand(1, 224, 224, 3) * 255
    x.requires_grad_(True)
    descriptor = module(x)[module.output_names.index("global_pooling/Mean")]
    descriptor.norm().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0


def test_tensorrt_options_for_fp16_and_int8(tmp_path: Path) -> None:
    profiles = tensorrt.default_profiles(zoo.ensure("faceres"))
    assert profiles == {"input_1": ((1, 224, 224, 3), (8, 224, 224, 3), (32, 224, 224, 3))}
    options = tensorrt.provider_options(tmp_path, "fp16", profiles)
    assert (
        options["trt_fp16_enable"]
        and options["trt_engine_cache_enable"]
        and options["trt_timing_cache_enable"]
    )
    assert options["trt_profile_opt_shapes"] == "input_1:8x224x224x3"
    with pytest.raises(ValueError, match="calibration table"):
        tensorrt.provider_options(tmp_path, "int8", profiles)
    table = tmp_path / "table" / "calibration.flatbuffers"
    table.parent.mkdir()
    table.write_bytes(b"x")
    cache = tmp_path / "cache"
    cache.mkdir()
    options = tensorrt.provider_options(cache, "int8", profiles, table)
    assert options["trt_int8_enable"] and (cache / "calibration.flatbuffers").exists()
    detector = tensorrt.default_profiles(zoo.ensure("centerface"))["input.1"]
    assert detector[1] == (1, 3, 736, 1280) and detector[2][0] == tensorrt.MAX_FRAME_BATCH


def test_engine_manifest_removes_stale_engines(tmp_path: Path) -> None:
    cache = tmp_path / "engines"
    first = {"onnx_sha256": "a", "tensorrt": "10.0", "precision": "fp16"}
    assert not tensorrt.prepare_engine_cache(cache, first)
    (cache / "model.engine").write_bytes(b"engine")
    assert tensorrt.prepare_engine_cache(cache, first)  # same set-up: engines kept
    assert (cache / "model.engine").exists()
    assert not tensorrt.prepare_engine_cache(cache, {**first, "tensorrt": "10.1"})
    assert not (cache / "model.engine").exists()
    assert json.loads((cache / "manifest.json").read_text())["tensorrt"] == "10.1"


def test_int8_calibration_table_from_video_frames(tmp_path: Path, demo_clip: Path) -> None:
    from calibration.int8 import write_table

    table = write_table(str(demo_clip), tmp_path, frames=6)
    assert table.exists() and table.stat().st_size > 1000
    ranges = json.loads((tmp_path / "calibration.json").read_text())["data"]
    assert len(ranges) > 50  # every tensor of the detector
    highs = [r["highest"]["data"][0] for r in ranges.values()]
    assert all(np.isfinite(highs)) and max(highs) > 1
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["frames"] == 6 and manifest["onnx_sha256"] == zoo.REGISTRY["centerface"].onnx_sha256
    options = BackendOptions(precision="int8", calibration_table=table)
    assert options.calibration_table == table


def _cuda() -> Any:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    return torch


@pytest.mark.gpu
@pytest.mark.parametrize("name", MODELS)
def test_torch_cuda_fp16_agrees_with_cpu(name: Any) -> None:
    _cuda()
    backend, x = sample_input(name, batch=4)
    expected = backend.infer(x)
    gpu = create_backend("torch-cuda", zoo.ensure(name))
    for _ in range(2):  # the second call replays the captured CUDA graph
        got = gpu.infer(x)
    for a, b in zip(expected, got):
        scale = max(1.0, float(np.abs(a).max()))
        assert np.abs(a - b).max() / scale < 3e-2, (name, float(np.abs(a - b).max()))


@pytest.mark.gpu
def test_torch_cuda_graphs_give_each_thread_its_own_answer() -> None:
    """The runner's detection workers call one backend from several threads; the
    replayed CUDA graph's shared buffers must not mix their inputs up."""
    from concurrent.futures import ThreadPoolExecutor

    _cuda()
    backend, _ = sample_input("faceres", batch=1)
    inputs = [sample_input("faceres", batch=1, seed=seed)[1] for seed in range(8)]
    expected = [backend.infer(x)[0] for x in inputs]
    gpu = create_backend("torch-cuda", zoo.ensure("faceres"))
    gpu.infer(inputs[0])  # capture the graph
    with ThreadPoolExecutor(8) as pool:
        for _ in range(5):
            got = list(pool.map(lambda x: gpu.infer(x)[0], inputs))
            for a, b in zip(expected, got, strict=True):
                assert np.abs(a - b).max() / max(1.0, float(np.abs(a).max())) < 3e-2


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["cuda", "tensorrt"])
def test_onnx_runtime_gpu_providers_agree_with_cpu(kind: Any) -> None:
    from engines.base import available_backends

    if kind not in available_backends():
        pytest.skip(f"{kind} is not available here")
    backend, x = sample_input("faceres", batch=4)
    expected = backend.infer(x)
    got = create_backend(kind, zoo.ensure("faceres")).infer(x)
    for a, b in zip(expected, got):
        assert np.abs(a - b).max() / max(1.0, float(np.abs(a).max())) < 3e-2


def test_torch_backend_class_runs_on_the_cpu_too() -> None:
    """The torch-cuda backend's own code path (buffers, specs, output order), on the CPU in FP32."""
    pytest.importorskip("torch")
    from engines.torch_backend import TorchCudaBackend

    backend, x = sample_input("facemesh-detection-full")  # has shape arithmetic (Shape/Slice/Reshape)
    torch_backend = TorchCudaBackend(zoo.ensure("facemesh-detection-full"), device="cpu", fp16=False)
    assert [s.name for s in torch_backend.input_spec()] == [s.name for s in backend.input_spec()]
    for a, b in zip(backend.infer(x), torch_backend.infer(x)):
        assert np.abs(a - b).max() / max(1.0, float(np.abs(a).max())) < 1e-4


def test_models_whose_batch_varies_run_without_the_memory_arena() -> None:
    """faceres, the mesh and emotion take one batch item a face: ONNX Runtime's arena would
    keep a high-water mark for every mix of batch sizes (docs/soak.md); the detector's
    input size is fixed per stream, so it keeps its arena."""
    from engines.onnxrt import OnnxRuntimeBackend
    from stream.algorithms.attributes import BuiltinEstimator
    from stream.config import build_config
    from stream.run.job import load_detector, load_estimator

    config = build_config()
    estimator = load_estimator(config)
    assert isinstance(estimator, BuiltinEstimator)  # no forest configured
    models = (estimator.mesh, estimator.faceres, estimator.emotion)
    sessions = [cast(OnnxRuntimeBackend, m.backend)._session for m in models]
    assert not any(s.get_session_options().enable_cpu_mem_arena for s in sessions)
    detector = cast(OnnxRuntimeBackend, load_detector(config).backend)
    assert detector._session.get_session_options().enable_cpu_mem_arena
