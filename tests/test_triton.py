"""Triton: the exported model repository, and the gRPC backend against a stand-in
server on loopback (tests/servers/fake_triton.py: the real protocol, ONNX
Runtime behind it). No real Triton server runs in these tests."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import ROOT, write_clip
from test_backends import sample_input

from engines import zoo
from engines.base import create_backend

pytest.importorskip("tritonclient.grpc")


@pytest.fixture(scope="module")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    sys.path.insert(0, str(ROOT / "tests" / "servers"))
    from fake_triton import serve

    repository = tmp_path_factory.mktemp("triton")
    done = subprocess.run([sys.executable, "run_stream.py", "models", "export-triton", str(repository),
                           "centerface", "faceres", "--max-batch", "4"],
                          cwd=ROOT, capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    server, port, servicer = serve(repository)
    yield repository, f"triton://127.0.0.1:{port}", servicer
    server.stop(0)


def test_repository_layout_and_configs(triton: Any) -> None:
    repository, _, _ = triton
    config = (repository / "centerface" / "config.pbtxt").read_text()
    assert (repository / "centerface" / "1" / "model.onnx").read_bytes() == zoo.ensure(
        "centerface"
    ).read_bytes()
    assert 'platform: "onnxruntime_onnx"' in config and "max_batch_size: 4" in config
    assert 'name: "input.1" data_type: TYPE_FP32 dims: [3, -1, -1]' in config
    assert "dynamic_batching" in config and 'value: "FP16"' in config and "KIND_GPU" in config
    faceres = (repository / "faceres" / "config.pbtxt").read_text()
    assert 'name: "global_pooling/Mean" data_type: TYPE_FP32 dims: [1024]' in faceres


@pytest.mark.parametrize("name", ["centerface", "faceres"])
def test_triton_backend_agrees_with_the_local_one(triton: Any, name: Any) -> None:
    _, url, servicer = triton
    local, x = sample_input(name, batch=2)
    remote = create_backend(url, zoo.ensure(name))
    assert [s.name for s in remote.input_spec()] == [s.name for s in local.input_spec()]
    assert [s.name for s in remote.output_spec()] == [s.name for s in local.output_spec()]
    before = servicer.requests
    for a, b in zip(local.infer(x), remote.infer(x), strict=True):
        assert a.shape == b.shape and np.allclose(a, b, atol=1e-4)
    assert servicer.requests == before + 1
    remote.close()


def test_the_pipeline_runs_on_triton(tmp_path: Path, triton: Any, demo_clip: Path) -> None:
    _, url, servicer = triton
    out = tmp_path / "out.mp4"
    before = servicer.requests
    # Blur: the served repository holds the detector (synth would need the mesh models too).
    done = subprocess.run([sys.executable, "run_stream.py", str(demo_clip), "-o", str(out), "--backend", url,
                           "--mode", "blur", "--max-frames", "10", "-q"], cwd=ROOT, capture_output=True,
                          text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert servicer.requests - before >= 10  # every frame's detection went to the server


def test_a_server_without_the_model_or_no_server_is_a_clear_error(triton: Any, tmp_path: Path) -> None:
    from stream.errors import BackendUnavailableError

    _, url, _ = triton
    with pytest.raises(BackendUnavailableError, match="no ready model 'gear'"):
        create_backend(url, zoo.ensure("gear"))
    clip = write_clip(tmp_path / "c.mp4", [np.zeros((64, 64, 3), np.uint8)] * 3)
    done = subprocess.run([sys.executable, "run_stream.py", str(clip), "-o", "null", "--backend",
                           "triton://127.0.0.1:1"], cwd=ROOT, capture_output=True, text=True)  # fmt: skip
    assert done.returncode != 0 and "Triton server 127.0.0.1:1" in done.stderr


def test_plaintext_off_the_machine_is_told_and_tls_files_are_checked(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from engines.triton import TritonBackend, TritonTLS, _loopback
    from stream.errors import BackendUnavailableError

    assert _loopback("127.0.0.1:8001") and _loopback("localhost:8001") and not _loopback("10.0.0.5:8001")
    with pytest.raises(BackendUnavailableError, match=r"CA .*missing.pem"):
        TritonBackend("127.0.0.1:9", "centerface", tls=TritonTLS(ca=str(tmp_path / "missing.pem")))
    with caplog.at_level("WARNING", logger="anonymousnet"), pytest.raises(BackendUnavailableError):
        TritonBackend("192.0.2.1:9", "centerface", timeout_s=0.5)  # TEST-NET: nobody answers
    assert "unencrypted" in caplog.text and "tritons://" in caplog.text
