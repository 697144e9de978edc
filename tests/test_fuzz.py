"""Fuzzing the command line with damaged and unusual inputs made from the shared clips.

Every input must end within ``TIME_LIMIT_S`` either with exit 0 and a correct
output (it decodes whole, holds no more frames than the input could give, and
every frame that shows a visible face of the input has that face masked), or
with an input error (3 unreadable, 4 damaged part-way, with a playable output)
and exactly one ``error: ...`` line on stderr: never a traceback, an internal
error (70), another stage's exit code or a hang.

The cases are a fixed list first (each base clip as it is, wrong extensions,
files with no video) and then seeded random ones (truncations, bit flips,
smashed, cut, doubled or spliced byte ranges, random size / codec / pixel
format / rotation / frame rate variants). Case ``i`` depends on the seed and
``i`` only, so a larger budget runs the smaller one's cases and more.

    ANONYMOUSNET_FUZZ=N       cases (48 by default; 200 or more for the full run)
    ANONYMOUSNET_FUZZ_SEED=S  the seed (15)

A case's id says what was done to which clip; a failure prints the command that
reruns it alone (same seed and budget, the node id). Inputs run in parallel subprocesses (two at most).
"""

from __future__ import annotations

import os
import random
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, cast

import av
import cv2
import numpy as np
import pytest
from conftest import HAMILTON, MEDIA, ROOT
from numpy.typing import NDArray

pytestmark = pytest.mark.media

BUDGET = int(os.environ.get("ANONYMOUSNET_FUZZ", "48"))
SEED = int(os.environ.get("ANONYMOUSNET_FUZZ_SEED", "15"))
TIME_LIMIT_S = 60.0  # a 16-frame clip takes about 1.5 s; far above it is a hang
JOBS = max(1, min(2, os.cpu_count() or 1))
MEMORY_LIMIT = 6 << 30  # address space per run: a decompression bomb stops here, not the machine
FACE_CLIP = MEDIA / "LivePortrait" / "assets" / "examples" / "driving" / "d0.mp4"
FRAMES = 16
SIZE = 256
PORTRAIT = (192, 256)  # rotated clips are not square, so a rotation left undone shows in the size
CLI_OPTIONS = ["-q", "--mode", "mask", "--shape", "box", "--colour", "255,0,255",
               "--preset", "ultrafast", "--workers", "1", "--threads", "1"]  # fmt: skip
INPUT_CODES = {3, 4}

Image = NDArray[np.uint8]


# --- making clips -------------------------------------------------------------------------------


def encode(
    path: Path,
    frames: list[Image],
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    fmt: str | None = None,
    pts: list[int] | None = None,
    time_base: Fraction | None = None,
    rotation: int | None = None,
    audio: int = 0,
    options: dict[str, str] | None = None,
    mux_video: bool = True,
) -> Path:
    """Encode RGB frames at 25 fps, with ``audio`` tone streams (AAC, Opus in WebM)."""
    with av.open(str(path), "w", format=fmt, options=options or {}) as container:
        video = cast(av.VideoStream, container.add_stream(codec, rate=25))
        video.height, video.width = frames[0].shape[:2]
        video.pix_fmt = pix_fmt
        if time_base is not None:
            video.time_base = video.codec_context.time_base = time_base
        if rotation is not None:
            video.set_display_rotation(rotation)
        webm = path.suffix == ".webm"
        tones = []
        for k in range(audio):
            stream = cast(
                av.AudioStream,
                container.add_stream("libopus" if webm else "aac", rate=48000 if webm else 22050),
            )
            stream.layout = "mono"
            tones.append((stream, 220.0 * (k + 1)))
        for i, image in enumerate(frames if mux_video else []):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = pts[i] if pts is not None else i
            if time_base is not None:
                frame.time_base = time_base
            for packet in video.encode(frame):
                container.mux(packet)
        for packet in video.encode(None) if mux_video else []:
            container.mux(packet)
        for stream, hz in tones:
            _tone(container, stream, hz, len(frames) / 25)
    return path


def _tone(container: av.container.OutputContainer, stream: av.AudioStream, hz: float, seconds: float) -> None:
    rate = stream.rate
    samples = int(rate * seconds)
    wave = (0.2 * np.sin(2 * np.pi * hz * np.arange(samples) / rate)).astype(np.float32)
    step = stream.codec_context.frame_size or 1024
    for start in range(0, samples, step):
        chunk = av.AudioFrame.from_ndarray(wave[None, start : start + step], format="flt", layout="mono")
        chunk.sample_rate, chunk.pts = rate, start
        for packet in stream.encode(chunk):
            container.mux(packet)
    for packet in stream.encode(None):
        container.mux(packet)


def resized(frames: list[Image], width: int, height: int) -> list[Image]:
    return [
        np.ascontiguousarray(cv2.resize(f, (width, height), interpolation=cv2.INTER_AREA)) for f in frames
    ]


def read_frames(path: Path, count: int, start: int = 0) -> list[Image]:
    with av.open(str(path)) as container:
        frames = [cast(Image, f.to_ndarray(format="rgb24")) for f in container.decode(video=0)][
            start : start + count
        ]
    assert len(frames) == count, f"{path}: fewer than {start + count} frames"
    return frames


@dataclass(frozen=True)
class Base:
    """A clip cases start from. ``size``: its frames are the face clip's, resized to
    this stored size (before rotation), so the clean run says where the face is; None if not."""

    make: Callable[[Path, Footage], Path]
    size: tuple[int, int] | None = None


@dataclass
class Footage:
    """The shared clips' frames, read once: the face clip (one big frontal face) and Hamilton."""

    face: list[Image]
    hamilton: list[Image]

    def face_at(self, width: int, height: int, count: int = FRAMES) -> list[Image]:
        return resized(self.face[:count], width, height)


def stored(frames: list[Image], rotation: int | None) -> list[Image]:
    """Frames as a camera stores them for ``rotation`` metadata: turned back, so the display is upright."""
    turns = round((rotation or 0) / 90) % 4
    return [np.ascontiguousarray(np.rot90(f, -turns)) for f in frames] if turns else frames


def _clip(name: str, size: tuple[int, int] = (SIZE, SIZE), count: int = FRAMES, **kwargs: Any) -> Base:
    """The face clip at ``size`` (width, height as displayed), encoded by ``encode(**kwargs)``."""

    def make(folder: Path, footage: Footage) -> Path:
        return encode(folder / name, stored(footage.face_at(*size, count), kwargs.get("rotation")), **kwargs)

    return Base(make, size)


def _still(name: str) -> Base:
    def make(folder: Path, footage: Footage) -> Path:
        cv2.imwrite(str(folder / name), cv2.cvtColor(footage.face[0], cv2.COLOR_RGB2BGR))
        return folder / name

    return Base(make, (SIZE, SIZE))


def _concat(name: str) -> Base:
    """Two clips of different sizes, end to end (``cat a.ts b.ts``): time stamps restart, the size changes."""

    def make(folder: Path, footage: Footage) -> Path:
        ext = Path(name).suffix
        fmt = {".ts": "mpegts", ".h264": "h264"}[ext]
        a = encode(folder / f"{name}.a{ext}", footage.face_at(SIZE, SIZE), fmt=fmt)
        b = encode(folder / f"{name}.b{ext}", footage.hamilton[:8], fmt=fmt)
        (folder / name).write_bytes(a.read_bytes() + b.read_bytes())
        return folder / name

    return Base(make, (SIZE, SIZE))


def _audio_only(name: str) -> Base:
    def make(folder: Path, footage: Footage) -> Path:
        with av.open(str(folder / name), "w") as container:
            stream = container.add_stream("aac", rate=22050)
            stream.layout = "mono"
            _tone(container, stream, 440.0, 1.0)
        return folder / name

    return Base(make)


def _bytes(name: str, data: Callable[[], bytes]) -> Base:
    def make(folder: Path, footage: Footage) -> Path:
        (folder / name).write_bytes(data())
        return folder / name

    return Base(make)


def _vfr(step_ms: list[int]) -> list[int]:
    return [int(x) for x in np.cumsum([0, *step_ms])]


BASES: dict[str, Base] = {
    "face.mp4": _clip("face.mp4", audio=1),
    "face.mkv": _clip("face.mkv", audio=1),
    "face.mov": _clip("face.mov", audio=1),
    "face-frag.mp4": _clip(
        "face-frag.mp4", audio=1, options={"movflags": "frag_keyframe+empty_moov", "frag_duration": "200000"}
    ),
    "face.ts": _clip("face.ts", fmt="mpegts", audio=1),
    "face-vp9.webm": _clip("face-vp9.webm", codec="libvpx-vp9", audio=1),
    "face-mpeg4.avi": _clip("face-mpeg4.avi", codec="mpeg4"),
    "face-mjpeg.avi": _clip("face-mjpeg.avi", codec="mjpeg", pix_fmt="yuvj420p"),
    "face.h264": _clip("face.h264", fmt="h264"),
    "face.hevc": _clip("face.hevc", codec="libx265", fmt="hevc"),
    "face-av1.mkv": _clip("face-av1.mkv", codec="libsvtav1"),
    "face.gif": _clip("face.gif", codec="gif", pix_fmt="rgb8"),
    "face.png": _still("face.png"),
    "face.jpg": _still("face.jpg"),
    "face-x264-10bit.mp4": _clip("face-x264-10bit.mp4", pix_fmt="yuv420p10le", audio=1),
    "face-x265-10bit.mkv": _clip("face-x265-10bit.mkv", codec="libx265", pix_fmt="yuv420p10le"),
    "face-prores-10bit.mov": _clip("face-prores-10bit.mov", codec="prores_ks", pix_fmt="yuv422p10le"),
    "face-x264-yuv444.mp4": _clip("face-x264-yuv444.mp4", pix_fmt="yuv444p"),
    "face-vp9-yuv444.webm": _clip("face-vp9-yuv444.webm", codec="libvpx-vp9", pix_fmt="yuv444p"),
    "face-ffv1-16bit.mkv": _clip("face-ffv1-16bit.mkv", codec="ffv1", pix_fmt="yuv444p16le"),
    "face-gray.mp4": _clip("face-gray.mp4", pix_fmt="gray"),
    "face-alpha.webm": _clip("face-alpha.webm", codec="libvpx-vp9", pix_fmt="yuva420p"),
    "face-rot90.mp4": _clip("face-rot90.mp4", size=PORTRAIT, rotation=90, audio=1),
    "face-rot180.mov": _clip("face-rot180.mov", size=PORTRAIT, rotation=180),
    "face-rot270.mp4": _clip("face-rot270.mp4", size=PORTRAIT, rotation=-90),
    "face-rot45.mp4": _clip("face-rot45.mp4", size=PORTRAIT, rotation=45),
    "face-vfr.mkv": _clip(
        "face-vfr.mkv",
        time_base=Fraction(1, 1000),
        audio=1,
        pts=_vfr([40, 40, 120, 10, 10, 300, 40, 1, 40, 80, 40, 40, 500, 40, 40]),
    ),
    "face-vfr-gap.mp4": _clip(
        "face-vfr-gap.mp4", time_base=Fraction(1, 90000), pts=_vfr([3600] * 7 + [90000 * 600] + [3600] * 7)
    ),
    "face-1frame.mp4": _clip("face-1frame.mp4", count=1, audio=1),
    "face-8audio.mkv": _clip("face-8audio.mkv", audio=8),
    "face-97x61.mp4": _clip("face-97x61.mp4", size=(97, 61), pix_fmt="yuv444p"),
    "1x1.mkv": _clip("1x1.mkv", size=(1, 1), codec="ffv1", pix_fmt="yuv444p"),
    "2x2.mp4": _clip("2x2.mp4", size=(2, 2)),
    "33x17.mp4": _clip("33x17.mp4", size=(33, 17), pix_fmt="yuv444p"),
    "255x3.mkv": _clip("255x3.mkv", size=(255, 3), codec="ffv1", pix_fmt="yuv444p"),
    "3x255.mkv": _clip("3x255.mkv", size=(3, 255), codec="ffv1", pix_fmt="yuv444p"),
    "1920x8.mp4": _clip("1920x8.mp4", size=(1920, 8)),
    "sizes.ts": _concat("sizes.ts"),
    "sizes.h264": _concat("sizes.h264"),
    "hamilton.mp4": Base(lambda folder, footage: encode(folder / "hamilton.mp4", footage.hamilton, audio=1)),
    "audio.m4a": _audio_only("audio.m4a"),
    "audio.mkv": _audio_only("audio.mkv"),
    "no-video-frames.mkv": _clip("no-video-frames.mkv", audio=1, mux_video=False),
    "empty.mp4": _bytes("empty.mp4", lambda: b""),
    "text.mp4": _bytes("text.mp4", lambda: b"this is not a video\n" * 200),
    "noise.mp4": _bytes("noise.mp4", lambda: random.Random(SEED).randbytes(50_000)),
}
NOT_VIDEO = {"audio.m4a", "audio.mkv", "no-video-frames.mkv", "empty.mp4", "text.mp4", "noise.mp4"}


# --- what is done to a clip ---------------------------------------------------------------------


def _flips(data: bytes, rng: random.Random, count: int, start: int, stop: int) -> bytes:
    out = bytearray(data)
    for _ in range(count):
        if stop > start:
            at = rng.randrange(start, stop)
            out[at] ^= 1 << rng.randrange(8)
    return bytes(out)


def _span(data: bytes, rng: random.Random, most: int) -> tuple[int, int]:
    length = rng.randint(1, max(1, min(most, len(data) // 4)))
    start = rng.randrange(0, max(1, len(data) - length))
    return start, start + length


def mutate(data: bytes, op: str, arg: float, rng: random.Random, other: bytes) -> bytes:
    """``data`` damaged by ``op`` (``arg``: its size or place; positions from ``rng``)."""
    n = len(data)
    if op == "truncate":
        return data[: int(n * arg)]
    if op == "flip-head":
        return _flips(data, rng, int(arg), 0, min(n, 1024))
    if op == "flip-tail":  # where an MP4 written in one go keeps its index (moov)
        return _flips(data, rng, int(arg), max(0, n - 4096), n)
    if op == "flip-body":
        return _flips(data, rng, int(arg), 0, n)
    if op in ("zero", "smash", "noise"):
        a, b = _span(data, rng, int(arg))
        fill = {"zero": b"\0" * (b - a), "smash": b"\xff" * (b - a), "noise": rng.randbytes(b - a)}[op]
        return data[:a] + fill + data[b:]
    if op == "cut":
        a, b = _span(data, rng, int(arg))
        return data[:a] + data[b:]
    if op == "double":
        a, b = _span(data, rng, int(arg))
        at = rng.randrange(0, n + 1)
        return data[:at] + data[a:b] + data[at:]
    if op == "splice":  # the head of one file on the tail of another
        return data[: int(n * arg)] + other[int(len(other) * arg) :]
    if op == "prepend":
        return rng.randbytes(int(arg)) + data
    if op == "append":
        return data + rng.randbytes(int(arg))
    if op in PATCHES:
        old, new = PATCHES[op]
        assert old in data, f"{op}: {old!r} not in the clip"
        return data.replace(old, new)
    raise ValueError(f"unknown mutation {op}")


# Damage aimed at one field (each was found by the random cases first), as
# a byte replacement that does not depend on where the encoder put the field.
PATCHES = {
    "patch-video-codec": (b"avc1", b"zzzz"),  # MP4: the video's codec names no decoder
    "patch-audio-codec": (b"A_AAC", b"A_ZZZ"),  # Matroska: the audio's codec names none
    "patch-opus-header": (b"\x63\xa2\x93OpusHead", b"\x63\xa3\x93OpusHead"),  # WebM: OpusHead lost
    "patch-tag-utf8": (b"Lavf", b"\xff\xfe\xfdf"),  # MP4: the encoder tag is not UTF-8
}


# (op, how its argument is drawn, weight)
MUTATIONS: list[tuple[str, Callable[[random.Random], float], int]] = [
    ("truncate", lambda r: round(r.random(), 4), 6),
    ("flip-head", lambda r: r.randint(1, 16), 4),
    ("flip-tail", lambda r: r.randint(1, 16), 3),
    ("flip-body", lambda r: r.choice([1, 4, 16, 64, 256]), 6),
    ("zero", lambda r: r.choice([16, 512, 8192]), 2),
    ("smash", lambda r: r.choice([16, 512, 8192]), 2),
    ("noise", lambda r: r.choice([16, 512, 8192]), 2),
    ("cut", lambda r: r.choice([1, 64, 4096, 32768]), 3),
    ("double", lambda r: r.choice([64, 4096, 32768]), 2),
    ("splice", lambda r: round(r.uniform(0.05, 0.95), 3), 2),
    ("prepend", lambda r: r.choice([1, 7, 188, 4096]), 1),
    ("append", lambda r: r.choice([1, 4096, 100_000]), 1),
]
WRONG_EXTENSIONS = [".mkv", ".avi", ".mov", ".mp4", ".ts", ".gif", ".png", ".jpg", ".txt", ".h264", ""]
# codec, pixel format, containers, even sizes only, smallest side (where the encoder can write them:
# libx265 fails in MP4 on short clips, FFV1 on one-pixel-wide frames)
VARIANTS: list[tuple[str, str, tuple[str, ...], bool, int]] = [
    ("libx264", "yuv420p", (".mp4", ".mkv", ".mov", ".ts"), True, 2),
    ("libx264", "yuv444p", (".mp4", ".mkv"), False, 1),
    ("libx264", "yuv420p10le", (".mp4", ".mkv"), True, 2),
    ("libx264", "gray", (".mkv", ".mp4"), False, 1),
    ("libx265", "yuv420p10le", (".mkv",), True, 16),
    ("libx265", "yuv444p", (".mkv",), False, 16),
    ("ffv1", "yuv444p16le", (".mkv",), False, 2),
    ("ffv1", "bgr0", (".mkv",), False, 2),
    ("mjpeg", "yuvj422p", (".avi", ".mkv"), True, 2),
    ("mpeg4", "yuv420p", (".avi", ".mp4"), True, 2),
    ("libvpx-vp9", "yuv444p", (".webm", ".mkv"), False, 1),
    ("prores_ks", "yuv444p10le", (".mov",), True, 2),
    ("gif", "rgb8", (".gif",), False, 1),
]


@dataclass(frozen=True)
class Case:
    index: int
    id: str
    base: str
    op: str = "none"  # a MUTATIONS op, "variant" (a new valid clip), or "none" (the base as it is)
    arg: float = 0.0
    ext: str | None = None  # the input's file name ending, when not the base's
    expect: str = "any"  # "ok": exit 0; "refused": exit 3; "damaged": exit 4; "any": 0, 3 or 4
    variant: tuple = ()

    def rng(self, purpose: str) -> random.Random:
        """The case's own random numbers for one purpose: the same on every run with this seed."""
        return random.Random(f"{SEED}:{self.index}:{purpose}")


def _fixed() -> list[Case]:
    """Every base as it is, wrong extensions on whole files, and two cuts that make
    the damaged-part-way path certain; the most telling first (a budget takes a prefix)."""
    specs: list[tuple[str, str, float, str | None, str]] = [  # base, op, arg, extension, expect
        ("face.mp4", "none", 0, None, "ok"),
        ("empty.mp4", "none", 0, None, "refused"),
        ("face.mp4", "none", 0, ".avi", "ok"),
        ("face.ts", "none", 0, None, "ok"),
        ("face.mp4", "patch-video-codec", 0, None, "refused"),
        ("face.mkv", "patch-audio-codec", 0, None, "damaged"),
        ("face-vp9.webm", "patch-opus-header", 0, None, "damaged"),
        ("face.mp4", "patch-tag-utf8", 0, None, "ok"),
        ("face.mkv", "none", 0, ".mp4", "ok"),
        ("audio.m4a", "none", 0, None, "refused"),
        ("no-video-frames.mkv", "none", 0, None, "refused"),
        ("1x1.mkv", "none", 0, None, "ok"),
        ("33x17.mp4", "none", 0, None, "ok"),
        ("255x3.mkv", "none", 0, None, "ok"),
        ("face-x264-10bit.mp4", "none", 0, None, "ok"),
        ("face-x265-10bit.mkv", "none", 0, None, "ok"),
        ("face-x264-yuv444.mp4", "none", 0, None, "ok"),
        ("face-rot90.mp4", "none", 0, None, "ok"),
        ("face-rot270.mp4", "none", 0, None, "ok"),
        ("face-vfr.mkv", "none", 0, None, "ok"),
        ("face.gif", "none", 0, None, "ok"),
        ("face.png", "none", 0, None, "ok"),
        ("text.mp4", "none", 0, None, "refused"),
        ("noise.mp4", "none", 0, None, "refused"),
        ("sizes.h264", "none", 0, None, "ok"),
        ("face-frag.mp4", "truncate", 0.5, None, "any"),
        ("face.mp4", "truncate", 0.9, None, "any"),
        ("face.jpg", "none", 0, None, "ok"),
        ("face-rot180.mov", "none", 0, None, "ok"),
        ("face-vfr-gap.mp4", "none", 0, None, "ok"),
        ("face-1frame.mp4", "none", 0, None, "ok"),
        ("face-gray.mp4", "none", 0, None, "ok"),
        ("sizes.ts", "none", 0, None, "ok"),
        ("hamilton.mp4", "none", 0, None, "ok"),
        ("face.mp4", "none", 0, ".png", "ok"),
        ("face.mp4", "none", 0, ".txt", "ok"),
        # the default budget (48: 36 of these, 12 random) takes the cases above
        ("face.mp4", "none", 0, "", "ok"),
        ("face.mp4", "none", 0, ".gif", "ok"),
        ("face.png", "none", 0, ".mp4", "ok"),
        ("face.gif", "none", 0, ".mp4", "ok"),
        ("audio.mkv", "none", 0, None, "refused"),
        ("audio.m4a", "none", 0, ".mp4", "refused"),
        ("face.mkv", "none", 0, None, "ok"),
        ("face.mov", "none", 0, None, "ok"),
        ("face-frag.mp4", "none", 0, None, "ok"),
        ("face-vp9.webm", "none", 0, None, "ok"),
        ("face-mpeg4.avi", "none", 0, None, "ok"),
        ("face-mjpeg.avi", "none", 0, None, "ok"),
        ("face.h264", "none", 0, None, "ok"),
        ("face.hevc", "none", 0, None, "ok"),
        ("face-av1.mkv", "none", 0, None, "ok"),
        ("face-prores-10bit.mov", "none", 0, None, "ok"),
        ("face-vp9-yuv444.webm", "none", 0, None, "ok"),
        ("face-ffv1-16bit.mkv", "none", 0, None, "ok"),
        ("face-alpha.webm", "none", 0, None, "ok"),
        ("face-rot45.mp4", "none", 0, None, "ok"),
        ("face-8audio.mkv", "none", 0, None, "ok"),
        ("face-97x61.mp4", "none", 0, None, "ok"),
        ("2x2.mp4", "none", 0, None, "ok"),
        ("3x255.mkv", "none", 0, None, "ok"),
        ("1920x8.mp4", "none", 0, None, "ok"),
    ]
    cases = []
    for i, (base, op, arg, ext, expect) in enumerate(specs):
        what = op if op in PATCHES else f"{op}@{arg:g}"
        if op == "none":
            what = "as-is" if ext is None else f"renamed{ext or '-noext'}"
        cases.append(Case(i, f"{i:03d}-{what}-{base}", base, op, arg, ext, expect))
    return cases


FIXED = _fixed()
MUTABLE = [name for name in BASES if name not in NOT_VIDEO]


def _random_case(index: int) -> Case:
    rng = random.Random(f"{SEED}:{index}:plan")
    if rng.random() < 0.15:
        return _variant_case(index, rng)
    base = rng.choice(MUTABLE)
    ops, draws, weights = zip(*MUTATIONS)
    k = rng.choices(range(len(ops)), weights)[0]
    arg = draws[k](rng)
    ext = rng.choice(WRONG_EXTENSIONS) if rng.random() < 0.15 else None
    renamed = "" if ext is None else f"-as{ext or '-noext'}"
    return Case(index, f"{index:03d}-{ops[k]}@{arg:g}-{base}{renamed}", base, ops[k], float(arg), ext)


def _variant_case(index: int, rng: random.Random) -> Case:
    """A valid clip of random size, codec, pixel format, rotation and frame timing."""
    codec, pix_fmt, containers, even, smallest = rng.choice(VARIANTS)
    sides = [rng.choice([rng.randint(smallest, 24), rng.randint(smallest, 400)]) for _ in range(2)]
    width, height = (max(smallest, s + s % 2) if even else s for s in sides)
    ext = rng.choice(containers)
    rotation = rng.choice([None, 90, 180, -90]) if ext in (".mp4", ".mov") else None
    count = rng.choice([1, 2, 5, FRAMES])
    vfr = ext in (".mkv", ".mp4", ".mov") and codec not in ("gif", "libx265") and rng.random() < 0.4
    name = (
        f"{width}x{height}-{codec}-{pix_fmt}"
        + (f"-rot{rotation}" if rotation else "")
        + ("-vfr" if vfr else "")
    )
    return Case(index, f"{index:03d}-variant-{name}-{count}f{ext}", "face.mp4", "variant", ext=ext,
                expect="ok", variant=(codec, pix_fmt, width, height, rotation, count, vfr))  # fmt: skip


def plan(budget: int) -> list[Case]:
    """The first ``budget`` cases: at least a quarter random, the rest from FIXED."""
    randoms = max(budget - len(FIXED), budget // 4)
    return FIXED[: budget - randoms] + [_random_case(len(FIXED) + k) for k in range(randoms)]


def make_input(case: Case, folder: Path, bases: Bases) -> Path:
    base = bases.get(case.base)
    ext = case.ext if case.ext is not None else base.suffix
    target = folder / f"input{ext}"
    if case.op == "variant":
        codec, pix_fmt, width, height, rotation, count, vfr = case.variant
        rng = case.rng("timing")
        pts = _vfr([rng.choice([1, 40, 40, 120, 700]) for _ in range(count - 1)]) if vfr else None
        frames = stored(bases.footage.face_at(width, height, count), rotation)
        encode(target, frames, codec=codec, pix_fmt=pix_fmt, rotation=rotation, pts=pts,
               time_base=Fraction(1, 1000) if vfr else None, fmt="mpegts" if ext == ".ts" else None)  # fmt: skip
        return target
    data = base.read_bytes()
    if case.op != "none":
        other = bases.get(case.rng("other").choice(MUTABLE)).read_bytes() if case.op == "splice" else b""
        data = mutate(data, case.op, case.arg, case.rng("bytes"), other)
    target.write_bytes(data)
    return target


class Bases:
    """The base clips, made on first use (from any thread) in one folder."""

    def __init__(self, folder: Path, footage: Footage) -> None:
        self.folder = folder
        self.footage = footage
        self._made: dict[str, Path] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> Path:
        with self._lock:
            if name not in self._made:
                self._made[name] = BASES[name].make(self.folder, self.footage)
            return self._made[name]


# --- reading back -------------------------------------------------------------------------------


@dataclass
class Decoded:
    """What PyAV can get out of a file, tolerating damage as the source does."""

    frames: list[Image] = field(default_factory=list)  # RGB, upright
    error: str | None = None


def decode(path: Path, tolerant: bool = True) -> Decoded:
    """Every decodable frame, upright; ``tolerant``: skip undecodable packets, stop at a read error."""
    out = Decoded()
    try:
        container = av.open(str(path), metadata_errors="replace")  # as the source reads tags
    except Exception as exc:  # any failure to open is an answer here
        out.error = f"open: {exc}"
        return out
    with container:
        if not container.streams.video:
            out.error = "no video stream"
            return out
        stream = container.streams.video[0]
        # Threaded as the source decodes: damage is concealed differently with frame threads.
        stream.thread_type = "AUTO"
        packets = container.demux(stream)
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                break
            except Exception as exc:
                out.error = f"read: {exc}"
                break
            try:
                frames = packet.decode()
            except Exception as exc:
                out.error = f"decode: {exc}"
                if not tolerant:
                    break
                continue
            for frame in frames:
                image = cast(Image, frame.to_ndarray(format="rgb24"))
                # The display matrix angle, counter-clockwise, as test_io checks it.
                turns = round((frame.rotation or 0) / 90) % 4
                out.frames.append(np.ascontiguousarray(np.rot90(image, turns)) if turns else image)
    return out


def luma(image: Image) -> NDArray[np.float32]:
    return image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)


def masked(image: Image) -> NDArray[np.bool_]:
    """Pixels of the mask (``--colour 255,0,255``), after the encoder's loss."""
    r, g, b = (image[..., c].astype(np.int16) for c in range(3))
    return (r > 180) & (g < 90) & (b > 180)


@dataclass
class Reference:
    """Where the clean run masked the face clip: ``core``, the face, masked in every frame,
    and ``outside``, never masked (with a margin), at the clip's size."""

    core: NDArray[np.bool_]
    outside: NDArray[np.bool_]

    def at(self, width: int, height: int) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:
        """Both for the face clip resized to ``width`` x ``height``."""
        kernel = np.ones((3, 3), np.uint8)
        return tuple(  # type: ignore[return-value]
            cv2.erode(cv2.resize(m.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST),
                      kernel, iterations=2) > 0
            for m in (self.core, self.outside)
        )  # fmt: skip


def reference_from(output: list[Image]) -> Reference:
    """From the clean run's output. The core is the middle 60% of the region masked in
    every frame: the face itself, not the margin the tracker adds around it (``--margin``
    0.25 a side), which a damaged, partly visible face rightly gets less of."""
    marks = np.stack([masked(f) for f in output])
    kernel = np.ones((3, 3), np.uint8)
    always = marks.all(0)
    ys, xs = np.nonzero(always)
    middle = np.zeros_like(always)
    (y1, y2), (x1, x2) = ((round(a + 0.2 * (b - a)), round(b - 0.2 * (b - a))) for a, b in
                          ((ys.min(), ys.max()), (xs.min(), xs.max())))  # fmt: skip
    middle[y1 : y2 + 1, x1 : x2 + 1] = True
    outside = cv2.dilate(cast(NDArray[np.bool_], marks.any(0)).astype(np.uint8), kernel, iterations=6) == 0
    return Reference(always & middle, outside)


# --- running a case -----------------------------------------------------------------------------


@dataclass
class Outcome:
    case: Case
    input: Path
    code: int | None  # None: killed at the time limit
    stderr: str
    seconds: float
    problems: list[str] = field(default_factory=list)

    def report(self) -> str:
        lines = "\n".join(f"  - {p}" for p in self.problems)
        return (f"{self.case.id}: exit {self.code} after {self.seconds:.1f} s, input {self.input}\n{lines}\n"
                f"  stderr: {self.stderr.strip()[-1500:]!r}\n  reproduce: ANONYMOUSNET_FUZZ={BUDGET} "
                f"ANONYMOUSNET_FUZZ_SEED={SEED} pytest 'tests/test_fuzz.py::test_fuzzed_input_ends_cleanly[{self.case.id}]'")  # fmt: skip


def run_cli(source: Path, output: Path) -> tuple[int | None, str, float]:
    """Exit code (None: killed at the time limit), stderr and seconds of one run."""
    start = time.monotonic()
    command = [sys.executable, str(ROOT / "run_stream.py"), str(source), "-o", str(output), *CLI_OPTIONS]
    with subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=output.parent
    ) as proc:
        # Set from here, not in preexec_fn, which is unsafe with the pool's threads.
        resource.prlimit(proc.pid, resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
        try:
            _, err = proc.communicate(timeout=TIME_LIMIT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
            return None, err.decode(errors="replace"), time.monotonic() - start
    return proc.returncode, err.decode(errors="replace"), time.monotonic() - start


def check(
    case: Case, base: Path, source: Path, output: Path, code: int | None, stderr: str, reference: Reference
) -> list[str]:
    """Everything wrong with one run."""
    problems = []
    if code is None:
        return [f"no exit within {TIME_LIMIT_S:g} s (a hang)"]
    # Logged warnings (an unfragmented MP4, say) may come first; nothing else may.
    lines = [line for line in stderr.splitlines() if line.strip() and not line.startswith("WARNING: ")]
    if "Traceback" in stderr or "internal error" in stderr.lower():
        problems.append("a traceback or internal error on stderr")
    if code != 0 and (len(lines) != 1 or not lines[0].startswith("error: ")):
        problems.append(f"exit {code} wants exactly one 'error: ...' line on stderr, got {len(lines)} lines")
    if code == 0 and lines:
        problems.append(f"exit 0 with {len(lines)} lines on stderr besides warnings")
    if case.expect == "ok" and code != 0:
        problems.append(f"a valid input must be anonymized (exit 0), got exit {code}")
    elif case.expect == "refused" and code != 3:
        problems.append(f"an input with no video must be refused with exit 3, got {code}")
    elif case.expect == "damaged" and code != 4:
        problems.append(f"an input with video and a damaged audio stream must exit 4, got {code}")
    elif code not in {0, *INPUT_CODES}:
        problems.append(f"exit {code} for a damaged input; expected 0, 3 or 4")
    if code not in (0, 4):
        return problems
    given = decode(source)
    written = decode(output, tolerant=False)
    if written.error or not written.frames:
        return [*problems, f"the output does not decode whole ({written.error or 'no frames'})"]
    n_in, n_out = len(given.frames), len(written.frames)
    if n_out > n_in:
        problems.append(f"{n_out} frames out of an input with {n_in} decodable frames")
    if case.expect == "ok" and n_out != n_in:
        problems.append(f"{n_out} frames out of a valid input with {n_in}")
    first = given.frames[0].shape[:2] if given.frames else None
    shape = written.frames[0].shape[:2]
    if first and case.expect == "ok" and shape != tuple(s + s % 2 for s in first):
        problems.append(f"output frames are {shape[1]}x{shape[0]}, the input's {first[1]}x{first[0]}")
    if first:
        whole = given if case.op in ("none", "variant") else decode(base)
        problems += leaks(case, given, whole, written, reference)
    return problems


def leaks(case: Case, given: Decoded, whole: Decoded, written: Decoded, reference: Reference) -> list[str]:
    """Output frames that show an input frame whose face is visible, with that face not masked.

    An output frame shows input frame k when the two agree away from the face.
    k's face is visible where k agrees with a frame of the undamaged clip
    (``whole``), so a face that damage smeared (and the decoders' concealment)
    is not judged. Clips with faces under 48 px, or squashed, are not judged.
    """
    size = case.variant[2:4] if case.op == "variant" else BASES[case.base].size
    if size is None or min(size) < 96 or max(size) > 1.5 * min(size):
        return []
    core, outside = reference.at(*size)
    height, width = core.shape
    # Frames of another size (a damaged header, a second clip) cannot be compared.
    inputs = [luma(f) for f in given.frames if f.shape[:2] == core.shape]
    originals = [luma(f) for f in whole.frames if f.shape[:2] == core.shape]
    problems = []
    for i, frame in enumerate(written.frames):
        frame = frame[:height, :width]  # less an odd size's padding
        if not inputs or frame.shape[:2] != core.shape:
            continue
        lum = luma(frame)
        away = [float(np.abs(lum - f)[outside].mean()) for f in inputs]
        k = int(np.argmin(away))
        if away[k] > 12:
            continue  # the frame shows no input frame (a changed size, or masked whole)
        diff = min(
            (cv2.blur(np.abs(inputs[k] - f), (5, 5)) for f in originals), key=lambda d: float(d[core].mean())
        )
        intact = core & (diff < 6)
        if intact.sum() < 0.5 * core.sum():
            continue  # the input frame's face is mostly damaged
        cover = float(masked(frame)[intact].mean())
        if cover < 0.9:
            problems.append(
                f"output frame {i} shows input frame {k} with its intact face {100 * cover:.0f}% masked"
            )
    return problems


class Fuzz:
    """Runs the selected cases in a small pool as soon as the module starts; a test waits on its own."""

    def __init__(self, folder: Path, bases: Bases, reference: Reference, cases: list[Case]) -> None:
        self.folder = folder
        self.bases = bases
        self.reference = reference
        self._pool = ThreadPoolExecutor(max_workers=JOBS)
        self._futures: dict[str, Future[Outcome]] = {c.id: self._pool.submit(self._run, c) for c in cases}

    def _run(self, case: Case) -> Outcome:
        folder = self.folder / f"case{case.index:03d}"
        folder.mkdir()
        source = make_input(case, folder, self.bases)
        output = folder / "out.mp4"
        code, stderr, seconds = run_cli(source, output)
        problems = check(case, self.bases.get(case.base), source, output, code, stderr, self.reference)
        return Outcome(case, source, code, stderr, seconds, problems)

    def outcome(self, case: Case) -> Outcome:
        return self._futures[case.id].result()

    def close(self) -> None:
        """Stop, and leave ``outcomes.tsv`` (case, exit, seconds, first problem) beside the cases."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        rows = [
            f.result() for f in self._futures.values() if f.done() and not f.cancelled() and not f.exception()
        ]
        (self.folder / "outcomes.tsv").write_text(
            "".join(f"{o.case.id}\t{o.code}\t{o.seconds:.1f}\t{(o.problems or [''])[0]}\n" for o in rows)
        )


@pytest.fixture(scope="module")
def footage() -> Footage:
    if not MEDIA.exists():
        pytest.fail(f"shared media not found at {MEDIA}: tests need ../shared/media beside the checkout")
    face = resized(read_frames(FACE_CLIP, FRAMES), SIZE, SIZE)
    hamilton = resized(read_frames(HAMILTON, FRAMES, start=100), 320, 180)
    return Footage(face, hamilton)


@pytest.fixture(scope="module")
def fuzz(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, footage: Any
) -> Iterator[Fuzz]:
    folder = tmp_path_factory.mktemp("fuzz")
    bases = Bases(folder / "bases", footage)
    bases.folder.mkdir()
    # The clean run says where the face is; every other face case is judged against it.
    clean = bases.get("face.mp4")
    code, stderr, _ = run_cli(clean, folder / "clean.mp4")
    assert code == 0, stderr
    reference = reference_from(decode(folder / "clean.mp4").frames)
    assert reference.core.mean() > 0.05 and reference.outside.mean() > 0.2, "the clean run masked no face"
    selected = [cast(Case, item.callspec.params["case"]) for item in request.session.items
                if isinstance(item, pytest.Function) and item.originalname == "test_fuzzed_input_ends_cleanly"]  # fmt: skip
    run = Fuzz(folder, bases, reference, selected)
    yield run
    run.close()


@pytest.mark.parametrize("case", plan(BUDGET), ids=lambda c: c.id)
def test_fuzzed_input_ends_cleanly(case: Any, fuzz: Any) -> None:
    outcome = fuzz.outcome(case)
    assert not outcome.problems, outcome.report()


def test_the_leak_check_sees_an_unmasked_face(fuzz: Any) -> None:
    """The judge the cases rely on passes the clean run and flags every frame of the raw input."""
    raw = decode(fuzz.bases.get("face.mp4"))
    clean = decode(fuzz.folder / "clean.mp4")
    assert leaks(FIXED[0], raw, raw, clean, fuzz.reference) == []
    assert len(leaks(FIXED[0], raw, raw, raw, fuzz.reference)) == len(raw.frames) == FRAMES
