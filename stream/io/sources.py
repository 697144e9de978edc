"""Inputs: media files and network streams through PyAV, local cameras through OpenCV.

A source yields, in input order, ``FramePacket`` for each decoded video frame
(RGB, rotated upright, with its stream time) and ``PassthroughPacket`` for
each compressed packet of the audio streams, which the sink copies as is.

Over 400 lines: files, network streams (reconnection, timeouts) and cameras share
the packet protocol and the stream-time bookkeeping.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from stream.config import SourceConfig
from stream.errors import SourceError
from stream.frames import FramePacket, PassthroughPacket
from stream.io.adts import give_headers

_LIVE_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "rtp", "udp", "srt", "tcp")
_NETWORK_SCHEMES = (*_LIVE_SCHEMES, "http", "https")
_NEEDS_HEADER = ("opus", "vorbis", "flac", "alac")  # audio codecs whose set-up is in the codec header

log = logging.getLogger("anonymousnet")


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
    reconnects: int = 0
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


@runtime_checkable
class Interruptible(Protocol):
    """A source whose reading can be stopped from another thread, mid-wait."""

    def interrupt(self) -> None: ...


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
    """A file or network stream read with PyAV (FFmpeg).

    A live network input that ends or breaks (PyAV reports a dropped
    connection as a clean end of stream) is opened again with exponential
    backoff; ``loop`` starts a file again at its end. Either way the time
    stamps of every stream continue from where the last session stopped, in
    the first session's time bases, so the output stays one monotonic stream.
    """

    def __init__(self, spec: str, config: SourceConfig) -> None:
        self.description = spec
        self.config = config
        self._scheme = scheme(spec)
        self._network = self._scheme in _NETWORK_SCHEMES
        self._lavfi = spec.startswith("lavfi:")
        if self._scheme is None and not self._lavfi and not os.path.exists(spec):
            raise SourceError(f"input {spec}: no such file")
        if self._scheme is None and os.path.isdir(spec):
            raise SourceError(f"input {spec}: is a folder, expected a video file")
        self._closing = threading.Event()
        self._hw_failed = False  # a hardware decoder that failed once is not tried again
        self.hw_device: str | None = None  # the device type decoding runs on, if any
        self._size: tuple[int, ...] | None = None  # of the first frame, upright; kept across reconnections
        self._container = self._open()
        # Its audio streams are the sinks' templates (``audio_templates``), which PyAV reads
        # through the container's own memory: it stays open until ``close`` (a sink opened
        # after a loop or reconnection crashed the process in add_stream_from_template).
        self._first = self._container
        self._video = self._container.streams.video[0]
        if self._scheme is None and not self._lavfi:
            give_headers(spec, list(self._container.streams.audio))  # ADTS AAC from MPEG-TS
        self.audio_templates = _copyable(self._container.streams.audio)
        # Audio whose parameters were lost (to damage, mostly) cannot be copied.
        kept = {t.index for t in self.audio_templates}
        self._uncopyable = [s.index for s in self._container.streams.audio if s.index not in kept]
        self.live = (
            config.live
            if config.live is not None
            else (
                self._scheme in _LIVE_SCHEMES
                or config.realtime
                or (self._network and self._container.duration is None)
            )
        )
        self.stats = SourceStats()
        self.info = self._probe()

    def _open(self) -> Any:
        """Open the input (again): a container with at least one video stream, or SourceError."""
        import av

        spec, config = self.description, self.config
        options: dict[str, str] = {}
        kwargs: dict[str, Any] = {}
        if self._network:
            # Both are needed: the option bounds FFmpeg's socket reads, the
            # argument PyAV's own open and read calls; else a stalled server
            # blocks forever.
            options["timeout"] = str(int(config.timeout_s * 1_000_000))
            kwargs["timeout"] = (config.timeout_s, config.timeout_s)
            if self._scheme in ("rtsp", "rtsps"):
                options["rtsp_transport"] = config.rtsp_transport
        target, fmt = (spec[len("lavfi:") :], "lavfi") if self._lavfi else (spec, None)
        silent = SourceError(
            f"input {spec}: no answer within {config.timeout_s:g} s; check the address "
            "or raise source.timeout_s"
        )
        started = time.monotonic()
        hardware = self._hardware()
        if hardware is not None:
            try:
                container = av.open(target, format=fmt, options=options, metadata_errors="replace",
                                    hwaccel=hardware, **kwargs)  # fmt: skip
                log.info("input %s: decoding on %s", spec, self.hw_device)
                return self._checked(container)
            except (av.error.FFmpegError, OSError) as exc:
                # Reported once; the input is opened again, decoded on the CPU from now on.
                self._hw_failed = True
                log.warning("input %s: hardware decoding (%s) unavailable (%s); decoding on the CPU",
                            spec, self.hw_device, _reason(exc))  # fmt: skip
                self.hw_device = None
                started = time.monotonic()
        try:
            # A damaged tag is no reason to refuse the video: tags are decoded leniently.
            container = av.open(target, format=fmt, options=options, metadata_errors="replace", **kwargs)
        except FileNotFoundError:
            raise SourceError(f"input {spec}: no such file") from None
        except PermissionError:
            raise SourceError(f"input {spec}: permission denied") from None
        except av.error.ExitError:
            raise silent from None
        except (av.error.FFmpegError, OSError) as exc:
            if self._network and time.monotonic() - started >= 0.9 * config.timeout_s:
                # FFmpeg's own socket timeout reports itself as bad data.
                raise silent from None
            what = "cannot connect" if self._network else "not a readable video"
            raise SourceError(f"input {spec}: {what} ({_reason(exc)})") from None
        return self._checked(container)

    def _hardware(self) -> Any:
        """The ``HWAccel`` to decode with (``source.hw_decode``), or None for the CPU."""
        choice = self.config.hw_decode
        if choice == "off" or self._hw_failed or self._lavfi:
            return None
        from av.codec.hwaccel import HWAccel, hwdevices_available

        if choice == "auto":
            if "cuda" not in hwdevices_available() or not os.path.exists("/dev/nvidiactl"):
                return None
            choice = "cuda"
        elif choice not in hwdevices_available():
            self._hw_failed = True
            log.warning("input %s: this FFmpeg has no %s decoding (it has: %s); decoding on the CPU",
                        self.description, choice, ", ".join(hwdevices_available()) or "none")  # fmt: skip
            return None
        self.hw_device = choice
        return HWAccel(choice, allow_software_fallback=True)

    def _checked(self, container: Any) -> Any:
        """``container`` if it holds a decodable video stream, else closed and SourceError."""
        spec = self.description
        if not container.streams.video:
            container.close()
            raise SourceError(f"input {spec}: holds no video stream")
        video = container.streams.video[0]
        if video.codec_context is None:  # PyAV found no decoder for the codec the header names
            container.close()
            raise SourceError(f"input {spec}: no decoder for its video (unknown codec, or a damaged header)")
        video.thread_type = "AUTO"
        return container

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
            frames=int(stream.frames or 0) if not self.config.loop else 0,
            duration_s=duration if not self.config.loop else None,
            codec=ctx.name,
        )

    @property
    def reconnects(self) -> bool:
        return self.live and self._network and self.config.reconnect_attempts > 0

    def packets(self) -> Iterator[FramePacket | PassthroughPacket]:
        clock = _Timeline(self.info.time_base, _frame_step(self.info) * self.info.time_base)
        pace = _Pacer() if self.config.realtime else None
        while True:
            yield from self._session(clock, pace)
            if self._closing.is_set():
                return
            if self.config.loop and not self._network:
                self._retire(self._container)
                self._container = self._open()
            elif self.reconnects:
                self._reconnect()
            else:
                return
            clock.new_session()

    def _session(self, clock: _Timeline, pace: _Pacer | None) -> Iterator[FramePacket | PassthroughPacket]:
        """Packets of the open container until it ends or breaks."""
        import av

        container = self._container
        video = container.streams.video[0]
        # Audio streams are copied by position; a later session whose audio
        # differs from the first one's has its audio dropped.
        audio = {
            s.index: t.index
            for s, t in zip(_copyable(container.streams.audio), self.audio_templates, strict=False)
            if s.codec_context.name == t.codec_context.name
        }
        demuxer = container.demux([video, *(s for s in container.streams.audio if s.index in audio)])
        while not self._closing.is_set():
            try:
                packet = next(demuxer)
            except StopIteration:
                return
            except av.error.FFmpegError as exc:
                # A read error mid-stream: like an end of stream; the frames so
                # far are kept, a live input is opened again.
                self.stats.error = f"read failed after {self.stats.frames} frames ({_reason(exc)})"
                return
            if packet.stream.index != video.index:
                if packet.size:
                    if packet.pts is not None:
                        clock.shift_packet(packet)
                    yield PassthroughPacket(packet, audio[packet.stream.index])
                continue
            try:
                frames = packet.decode()
            except av.error.FFmpegError:
                self.stats.corrupt_packets += 1
                continue
            for frame in frames:
                pts, restamped = clock.video_pts(frame.pts, frame.time_base or video.time_base)
                self.stats.restamped += restamped
                if pace is not None:
                    pace.wait(pts * self.info.time_base, self._closing)
                image = upright(frame.to_ndarray(format="rgb24"), frame.rotation)
                size = self._size = self._size or image.shape[:2]
                if image.shape[:2] != size:  # a reconnected stream with another size
                    import cv2

                    image = np.asarray(cv2.resize(image, size[::-1], interpolation=cv2.INTER_AREA), np.uint8)
                yield FramePacket(
                    index=self.stats.frames,
                    image=image,
                    pts=pts,
                    time_base=self.info.time_base,
                    duration=frame.duration or None,
                    capture_time=time.monotonic(),
                )
                self.stats.frames += 1

    def _reconnect(self) -> None:
        """Open the input again with exponential backoff, or raise SourceError after the limit."""
        config = self.config
        self._retire(self._container)
        delay = config.reconnect_backoff_s
        last = self.stats.error or "the stream ended"
        for attempt in range(1, config.reconnect_attempts + 1):
            log.warning("input %s: lost (%s); reconnecting in %.1f s (attempt %d of %d)",
                        self.description, last, delay, attempt, config.reconnect_attempts)  # fmt: skip
            if self._closing.wait(delay):
                return
            try:
                self._container = self._open()
            except SourceError as exc:
                last = str(exc)
                delay = min(delay * 2, config.reconnect_backoff_max_s)
                continue
            self.stats.reconnects += 1
            self.stats.error = None
            log.warning("input %s: reconnected (%d so far)", self.description, self.stats.reconnects)
            return
        raise SourceError(
            f"input {self.description}: lost, and {config.reconnect_attempts} attempts to reconnect "
            f"failed (last: {last}); check the server, or raise source.reconnect_attempts"
        )

    def damage(self) -> str | None:
        """What was wrong with the input once read to its end, or None if it was whole."""
        problems = [self.stats.error] if self.stats.error else []
        if self.stats.corrupt_packets:
            problems.append(
                f"{self.stats.corrupt_packets} video packets could not be decoded and were skipped"
            )
        if self._uncopyable:
            numbers = ", ".join(map(str, self._uncopyable))
            problems.append(f"audio stream {numbers} lacks its codec parameters (damaged?) and was left out")
        return f"input {self.description}: {'; '.join(problems)}" if problems else None

    def interrupt(self) -> None:
        """Stop reading at the next packet; a reconnect or pacing wait ends at once (any thread)."""
        self._closing.set()

    def _retire(self, container: Any) -> None:
        """Close a session's container, unless it holds the audio templates (see ``_first``)."""
        if container is not self._first:
            with contextlib.suppress(Exception):
                container.close()

    def close(self) -> None:
        self._closing.set()
        for container in {id(c): c for c in (self._container, self._first)}.values():
            with contextlib.suppress(Exception):
                container.close()


class _Timeline:
    """Time stamps that continue across sessions (reconnections, loops).

    Video pts come out in the first session's video time base, re-stamped
    where missing or not increasing. Each new session is shifted so that its
    first time stamp lands one frame after the last one emitted; audio
    packets get the same shift, in their own time base.
    """

    def __init__(self, time_base: Fraction, step_s: Fraction) -> None:
        self.time_base = time_base
        self.step = max(1, round(step_s / time_base))
        self.last: int | None = None  # last video pts emitted, in time_base
        self.end_s = Fraction(0)  # end of everything emitted, in seconds
        self.shift_s: Fraction | None = Fraction(0)  # None: decided by the next session's first stamp

    def new_session(self) -> None:
        self.shift_s = None

    def _shift(self, stamp_s: Fraction) -> Fraction:
        if self.shift_s is None:
            self.shift_s = self.end_s - stamp_s
        return self.shift_s

    def shift_packet(self, packet: Any) -> None:
        tb = Fraction(packet.time_base)
        shift = self._shift(packet.pts * tb)
        if shift:
            delta = round(shift / tb)
            packet.pts += delta
            if packet.dts is not None:
                packet.dts += delta
        self.end_s = max(self.end_s, packet.pts * tb)

    def video_pts(self, pts: int | None, time_base: Any) -> tuple[int, int]:
        """The frame's output pts and 1 if it had to be re-stamped."""
        restamped = 0
        if pts is None:
            out = 0 if self.last is None else self.last + self.step
            restamped = 1
        else:
            stamp = pts * Fraction(time_base)
            out = round((stamp + self._shift(stamp)) / self.time_base)
            if self.last is not None and out <= self.last:
                out = self.last + self.step
                restamped = 1
        self.last = out
        self.end_s = max(self.end_s, (out + self.step) * self.time_base)
        return out, restamped


class _Pacer:
    """Holds frames back to their time stamps, as a camera would deliver them."""

    def __init__(self) -> None:
        self._start: tuple[float, Fraction] | None = None

    def wait(self, stamp_s: Fraction, stop: threading.Event) -> None:
        if self._start is None:
            self._start = (time.monotonic(), stamp_s)
            return
        due = self._start[0] + float(stamp_s - self._start[1])
        delay = due - time.monotonic()
        if delay > 0:
            stop.wait(delay)


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


def _copyable(streams: Any) -> list[Any]:
    """The audio streams a muxer can take as they are: codec, sample rate and channels known,
    and the codec header where the codec keeps its set-up there (else MP4 gets a broken index)."""

    def known(stream: Any) -> bool:
        ctx = stream.codec_context
        if ctx is None or ctx.sample_rate <= 0 or ctx.channels <= 0:
            return False
        return bool(ctx.extradata) or ctx.name not in _NEEDS_HEADER

    return [s for s in streams if known(s)]


def _frame_step(info: VideoInfo) -> int:
    """One nominal frame interval in time-base units (at least 1)."""
    if info.rate:
        return max(1, round(1 / (info.rate * info.time_base)))
    return 1


def _reason(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc)
    return re.sub(r"\s*:\s*'[^']*'$", "", text).strip() or type(exc).__name__
