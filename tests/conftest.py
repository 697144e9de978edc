"""Shared fixtures: synthetic clips made in the test, the real detector, shared media."""

from __future__ import annotations

import hashlib
import sys
from fractions import Fraction
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MEDIA = ROOT.parent / "shared" / "media"
HAMILTON = MEDIA / "face_recognition" / "examples" / "short_hamilton_clip.mp4"
FACENET = MEDIA / "facenet-pytorch" / "examples" / "video.mp4"


def write_clip(
    path: Path,
    frames: list[np.ndarray],
    codec: str = "libx264",
    rate: int = 25,
    pts: list[int] | None = None,
    time_base: Fraction | None = None,
    audio_streams: int = 0,
    rotation: int | None = None,
    fmt: str | None = None,
) -> Path:
    """Encode RGB frames (and optional sine-tone AAC audio streams) into ``path``."""
    import av  # here, not at the top: the GPU machine runs the tests without PyAV

    with av.open(str(path), "w", format=fmt) as container:
        video = cast(av.VideoStream, container.add_stream(codec, rate=rate))
        height, width = frames[0].shape[:2]
        video.width, video.height = width, height
        video.pix_fmt = "rgb8" if codec == "gif" else "yuv420p"
        if time_base is not None:
            video.time_base = time_base
            video.codec_context.time_base = time_base
        if rotation is not None:
            video.set_display_rotation(rotation)
        audios = []
        for k in range(audio_streams):
            audio = container.add_stream("aac", rate=22050)
            audio.layout = "mono"
            audios.append((audio, 220 * (k + 1)))
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = pts[i] if pts is not None else i
            if time_base is not None:
                frame.time_base = time_base
            for packet in video.encode(frame):
                container.mux(packet)
        seconds = len(frames) / rate
        for audio, hz in audios:
            samples = int(22050 * seconds)
            tone = (0.2 * np.sin(2 * np.pi * hz * np.arange(samples) / 22050)).astype(np.float32)
            for start in range(0, samples, 1024):
                chunk = av.AudioFrame.from_ndarray(
                    tone[None, start : start + 1024], format="fltp", layout="mono"
                )
                chunk.sample_rate = 22050
                chunk.pts = start
                for packet in audio.encode(chunk):
                    container.mux(packet)
            for packet in audio.encode(None):
                container.mux(packet)
        for packet in video.encode(None):
            container.mux(packet)
    return path


def decode_frames(path: Path) -> list[np.ndarray]:
    import av

    with av.open(str(path)) as container:
        return [np.asarray(f.to_ndarray(format="rgb24"), np.uint8) for f in container.decode(video=0)]


def video_pts(path: Path) -> list[float]:
    import av

    with av.open(str(path)) as container:
        times = []
        for f in container.decode(video=0):
            assert f.pts is not None and f.time_base is not None
            times.append(float(f.pts * f.time_base))
        return times


def audio_packets(path: Path) -> list[list[bytes]]:
    """Bytes of every audio packet, per audio stream."""
    import av

    with av.open(str(path)) as container:
        streams: list[av.stream.Stream] = list(container.streams.audio)
        out: list[list[bytes]] = [[] for _ in streams]
        if not streams:
            return out
        for packet in container.demux(*streams):
            if packet.size:
                out[streams.index(packet.stream)].append(bytes(packet))
        return out


def free_port() -> int:
    """A TCP port nobody listens on at 127.0.0.1 (for the test servers)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def digest(chunks: list[bytes]) -> str:
    return hashlib.sha256(b"".join(chunks)).hexdigest()


def noise_frames(count: int, width: int = 160, height: int = 96, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(count)]


@pytest.fixture(scope="session")
def detector() -> Any:
    """The real CenterFace detector on the CPU (fetched by set-up)."""
    from stream.config import build_config
    from stream.run.job import load_detector

    return load_detector(build_config())


@pytest.fixture(scope="session")
def astronaut_mesh(detector: Any) -> Any:
    """The astronaut photo and its 468-point mesh (the real mesh model on the CPU)."""
    from skimage import data

    from engines import zoo
    from engines.base import create_backend
    from engines.crops import crop_from_box
    from engines.facemodels import FaceMesh

    image = data.astronaut()
    (faces,) = detector.detect([image], 1.0, 0.5)
    mesh = FaceMesh(create_backend("cpu", zoo.ensure("facemesh")))
    points = mesh.predict([crop_from_box(image, faces.boxes[0], faces.landmarks[0], 192)]).points[0]
    return image, points


@pytest.fixture(scope="session")
def demo_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built-in demo clip (astronaut, with AAC audio)."""
    from stream.io.demo import write_demo_clip

    return write_demo_clip(tmp_path_factory.mktemp("demo") / "astronaut.mp4")


@pytest.fixture
def media() -> Path:
    if not MEDIA.exists():
        pytest.fail(f"shared media not found at {MEDIA}: tests need ../shared/media beside the checkout")
    return MEDIA
