"""Inputs: media files and network streams through PyAV, local cameras through OpenCV.

A source yields, in input order, ``FramePacket`` for each decoded video frame
(RGB, rotated upright, with its stream time) and ``PassthroughPacket`` for
each compressed packet of the audio streams, which the sink copies as is.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from .config import SourceConfig
from .errors import SourceError
from .frames import FramePacket, PassthroughPacket

_LIVE_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "rtp", "udp", "srt", "tcp")
_NETWORK_SCHEMES = (*_LIVE_SCHEMES, "http", "https")


@dataclass(frozen=True)
class VideoInfo:
    """What is known of the video before decoding: stored size (before any
    rotation), nominal rate, time base, frame count (0 if unknown)."""

    width: int
    height: int
    rate: Fraction | None
    time_base: Fraction
    frames: int
    duration_s: float | None
    codec: str


@dataclass
class SourceStats:
    frames: int = 0
    corrupt_packets: int = 0
    restamped: int = 0
    error: str | None = None


class Source(Protocol):
    description: str
    live: bool
    info: VideoInfo
    stats: SourceStats
    audio_templates: list[Any]

    def packets(self) -> Iterator[FramePacket | PassthroughPacket]: ...

    def damage(self) -> str | None: ...

    def close(self) -> None: ...


def scheme(spec: str) -> str | None:
    match = re.match(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://", spec)
    return match.group(1).lower() if match else None


def is_camera(spec: str) -> bool:
    return spec.isdigit() or spec.startswith("/dev/video")


def open_source(spec: str, config: SourceConfig) -> Source:
    """Open ``spec``: a camera index or ``/dev/videoN``, a URL, or a file path."""
    if is_camera(spec):
        return CameraSource(spec, config)
    return MediaSource(spec, config)


def upright(image: NDArray[np.uint8], rotation: int) -> NDArray[np.uint8]:
    """Rotate a decoded image so that it displays upright.

    ``rotation`` is the display matrix angle as FFmpeg reports it
    (counter-clockwise degrees by which the stored picture must be turned).
    """
    turns = round(rotation / 90) % 4
    return image if turns == 0 else np.ascontiguousarray(np.rot90(image, turns))


class MediaSource:
    """A file or network stream read with PyAV (FFmpeg)."""

    def __init__(self, spec: str, config: SourceConfig) -> None:
        import av

        self.description = spec
        url_scheme = scheme(spec)
        network = url_scheme in _NETWORK_SCHEMES
        if url_scheme is None and not os.path.exists(spec):
            raise SourceError(f"input {spec}: no such file")
        if url_scheme is None and os.path.isdir(spec):
            raise SourceError(f"input {spec}: is a folder, expected a video file")
        options: dict[str, str] = {}
        kwargs: dict[str, Any] = {}
        if network:
            # Both are needed: the option bounds FFmpeg's socket reads, the
            # argument PyAV's own open and read calls; else a stalled server
            # blocks forever.
            options["timeout"] = str(int(config.timeout_s * 1_000_000))
            kwargs["timeout"] = (config.timeout_s, config.timeout_s)
            if url_scheme in ("rtsp", "rtsps"):
                options["rtsp_transport"] = config.rtsp_transport
        try:
            self._container = av.open(spec, mode="r", options=options, **kwargs)
        except FileNotFoundError:
            raise SourceError(f"input {spec}: no such file") from None
        except PermissionError:
            raise SourceError(f"input {spec}: permission denied") from None
        except av.error.ExitError:
            raise SourceError(
                f"input {spec}: no answer within {config.timeout_s:g} s; check the address "
                "or raise source.timeout_s"
            ) from None
        except (av.error.FFmpegError, OSError) as exc:
            what = "cannot connect" if network else "not a readable video"
            raise SourceError(f"input {spec}: {what} ({_reason(exc)})") from None
        if not self._container.streams.video:
            self._container.close()
            raise SourceError(f"input {spec}: holds no video stream")
        self._video = self._container.streams.video[0]
        self._video.thread_type = "AUTO"
        self.audio_templates = list(self._container.streams.audio)
        self.live = (
            config.live
            if config.live is not None
            else (url_scheme in _LIVE_SCHEMES or (network and self._container.duration is None))
        )
        self.stats = SourceStats()
        self.info = self._probe()

    def _probe(self) -> VideoInfo:
        stream = self._video
        ctx = stream.codec_context
        width, height = ctx.width, ctx.height
        rate = stream.average_rate or stream.guessed_rate or None
        time_base = stream.time_base or (Fraction(1, int(rate)) if rate else Fraction(1, 90000))
        duration = None
        if stream.duration is not None and stream.time_base:
            duration = float(stream.duration * stream.time_base)
        elif self._container.duration is not None:
            duration = self._container.duration / 1_000_000
        return VideoInfo(
            width=width,
            height=height,
            rate=Fraction(rate) if rate else None,
            time_base=Fraction(time_base),
            frames=int(stream.frames or 0),
            duration_s=duration,
            codec=ctx.name,
        )

    def packets(self) -> Iterator[FramePacket | PassthroughPacket]:
        import av

        video = self._video
        time_base = self.info.time_base
        step = _frame_step(self.info)
        last_pts: int | None = None
        streams = [video, *self.audio_templates]
        demuxer = self._container.demux(streams)
        while True:
            try:
                packet = next(demuxer)
            except StopIteration:
                return
            except av.error.FFmpegError as exc:
                # A read error mid-stream: end here; the frames so far are kept.
                self.stats.error = f"read failed after {self.stats.frames} frames ({_reason(exc)})"
                return
            if packet.stream.index != video.index:
                if packet.size:
                    yield PassthroughPacket(packet, packet.stream.index)
                continue
            try:
                frames = packet.decode()
            except av.error.FFmpegError:
                self.stats.corrupt_packets += 1
                continue
            for frame in frames:
                pts = frame.pts
                if pts is None or (last_pts is not None and pts <= last_pts):
                    pts = 0 if last_pts is None else last_pts + step
                    self.stats.restamped += 1
                last_pts = pts
                image = upright(frame.to_ndarray(format="rgb24"), frame.rotation)
                duration = frame.duration or None
                yield FramePacket(
                    index=self.stats.frames,
                    image=image,
                    pts=pts,
                    time_base=time_base,
                    duration=duration,
                    capture_time=time.monotonic(),
                )
                self.stats.frames += 1

    def damage(self) -> str | None:
        """What was wrong with the input once read to its end, or None if it was whole."""
        if self.stats.error:
            return f"input {self.description}: {self.stats.error}"
        if self.stats.corrupt_packets:
            return (
                f"input {self.description}: {self.stats.corrupt_packets} video packets could not "
                "be decoded and were skipped"
            )
        return None

    def close(self) -> None:
        self._container.close()


class CameraSource:
    """A local camera through OpenCV; stream time is the capture clock in milliseconds."""

    def __init__(self, spec: str, config: SourceConfig) -> None:
        import cv2

        device: int | str = int(spec) if spec.isdigit() else spec
        self.description = f"camera {spec}"
        self._capture = cv2.VideoCapture(device)
        if not self._capture.isOpened():
            raise SourceError(f"input camera {spec}: cannot open (no such device, or busy)")
        if config.camera_width:
            self._capture.set(cv2.CAP_PROP_FRAME_WIDTH, config.camera_width)
        if config.camera_height:
            self._capture.set(cv2.CAP_PROP_FRAME_HEIGHT, config.camera_height)
        if config.camera_fps:
            self._capture.set(cv2.CAP_PROP_FPS, config.camera_fps)
        fps = self._capture.get(cv2.CAP_PROP_FPS) or 0.0
        self.live = config.live if config.live is not None else True
        self.audio_templates: list[Any] = []
        self.stats = SourceStats()
        self.info = VideoInfo(
            width=int(self._capture.get(cv2.CAP_PROP_FRAME_WIDTH)),
            height=int(self._capture.get(cv2.CAP_PROP_FRAME_HEIGHT)),
            rate=Fraction(fps).limit_denominator(1001) if fps > 0 else None,
            time_base=Fraction(1, 1000),
            frames=0,
            duration_s=None,
            codec="camera",
        )

    def packets(self) -> Iterator[FramePacket]:
        import cv2

        start: float | None = None
        last_pts = -1
        while True:
            ok, bgr = self._capture.read()
            now = time.monotonic()
            if not ok:
                return
            start = now if start is None else start
            pts = max(int((now - start) * 1000), last_pts + 1)
            last_pts = pts
            yield FramePacket(
                index=self.stats.frames,
                image=np.asarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), dtype=np.uint8),
                pts=pts,
                time_base=self.info.time_base,
                capture_time=now,
            )
            self.stats.frames += 1

    def damage(self) -> str | None:
        return None

    def close(self) -> None:
        self._capture.release()


def _frame_step(info: VideoInfo) -> int:
    """One nominal frame interval in time-base units (at least 1)."""
    if info.rate:
        return max(1, round(1 / (info.rate * info.time_base)))
    return 1


def _reason(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc)
    return re.sub(r"\s*:\s*'[^']*'$", "", text).strip() or type(exc).__name__
