"""TensorRT through ONNX Runtime's TensorRT execution provider: options, profiles, engine manifest.

Engines are built by the provider on first use and kept in an engine cache
with a timing cache beside it. A manifest (ONNX sha256, TensorRT and ORT
versions, GPU name, precision, shape profiles) is written next to the
engines; when any of those differs from the running set-up, the stale
engines are removed before the session is created, so an engine is never
used with a model, library or GPU it was not built for.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

Profile = dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]

MAX_BATCH = 32
OPT_BATCH = 8
MAX_FRAME_BATCH = 4


def default_profiles(model: Path) -> Profile:
    """Optimisation profiles (min, opt, max) for each input: a symbolic batch of crops
    1 / 8 / 32; a fully convolutional detector (symbolic spatial axes) batch 1 / 1 / 4
    and 32 px through 720p (opt) to 4K."""
    import onnx

    graph = onnx.load(str(model), load_external_data=False).graph
    init = {i.name for i in graph.initializer}
    profiles: Profile = {}
    for value in graph.input:
        if value.name in init:
            continue
        dims = [d.dim_value if d.dim_value > 0 else None for d in value.type.tensor_type.shape.dim]
        ranges = []
        for axis, dim in enumerate(dims):
            if dim is not None:
                ranges.append((dim, dim, dim))
            elif axis == 0:  # crops batch widely; whole frames (symbolic sizes) only a few at once
                fixed = all(d for d in dims[1:])
                ranges.append((1, OPT_BATCH, MAX_BATCH) if fixed else (1, 1, MAX_FRAME_BATCH))
            else:  # spatial axes of a fully convolutional detector (NCHW)
                ranges.append((32, 736, 2176) if axis == 2 else (32, 1280, 3840))
        low, opt, high = (tuple(r[k] for r in ranges) for k in range(3))
        profiles[value.name] = (low, opt, high)
    return profiles


def _shapes(profiles: Profile, which: int) -> str:
    return ",".join(f"{name}:{'x'.join(str(d) for d in shapes[which])}" for name, shapes in profiles.items())


def gpu_name() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=10)  # fmt: skip
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def tensorrt_version() -> str:
    try:
        import tensorrt

        return str(tensorrt.__version__)
    except ImportError:
        return "unknown"


def manifest(model_sha256: str, precision: str, profiles: Profile) -> dict[str, Any]:
    import onnxruntime

    return {
        "onnx_sha256": model_sha256,
        "tensorrt": tensorrt_version(),
        "onnxruntime": onnxruntime.__version__,
        "gpu": gpu_name(),
        "precision": precision,
        "profiles": {k: [list(s) for s in v] for k, v in profiles.items()},
    }


def prepare_engine_cache(cache: Path, expected: dict[str, Any]) -> bool:
    """Make ``cache`` hold only engines built for ``expected``; True if existing engines were kept."""
    path = cache / "manifest.json"
    if path.exists():
        try:
            current = json.loads(path.read_text())
        except json.JSONDecodeError:
            current = None
        if current == expected:
            return True
        shutil.rmtree(cache)
    cache.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(expected, indent=2, sort_keys=True) + "\n")
    return False


def provider_options(
    cache: Path, precision: str, profiles: Profile, calibration_table: Path | None = None,
    fp32_ops: tuple[str, ...] = (),
) -> dict[str, Any]:  # fmt: skip
    """Options of ``TensorrtExecutionProvider`` for FP16 or INT8 engines with on-disk caches.

    ``fp32_ops``: op types left out of the engine (``trt_op_types_to_exclude``), so
    ONNX Runtime runs them on the CUDA provider in FP32."""
    if precision not in ("fp16", "fp32", "int8"):
        raise ValueError(f"precision: expected fp16, fp32 or int8, got {precision!r}")
    options: dict[str, Any] = {
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(cache),
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": str(cache),
        "trt_fp16_enable": precision in ("fp16", "int8"),
        "trt_max_workspace_size": 4 << 30,
        "trt_profile_min_shapes": _shapes(profiles, 0),
        "trt_profile_opt_shapes": _shapes(profiles, 1),
        "trt_profile_max_shapes": _shapes(profiles, 2),
    }
    if fp32_ops:
        options["trt_op_types_to_exclude"] = ",".join(fp32_ops)
    if precision == "int8":
        if calibration_table is None or not calibration_table.exists():
            raise ValueError("int8 needs a calibration table (python -m calibration.int8)")
        # The provider reads the table by name from the engine cache folder.
        shutil.copy(calibration_table, cache / calibration_table.name)
        options.update(
            trt_int8_enable=True,
            trt_int8_calibration_table_name=calibration_table.name,
            trt_int8_use_native_calibration_table=False,
        )
    return options
