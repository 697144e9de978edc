"""Outputs: video files through PyAV, image sequences, and a null sink.

Every sink refuses a frame that is not marked anonymized: whatever goes wrong
upstream, a raw frame cannot reach the output.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from stream.config import SinkConfig
from stream.errors import SinkError
from stream.frames import FramePacket, PassthroughPacket
from stream.io.adts import strips_headers, without_header

log = logging.getLogger("anonymousnet")

if TYPE_CHECKING:
    from stream.io.publisher import PublishStats

# Audio packets held while the video stream is not yet set up (first frame).
_MAX_HELD_PACKETS = 20000
VIDEO_EXTENSIONS = (".mp4", ".mkv", ".mov", ".m4v")


class Sink(Protocol):
    description: str
    frames_written: int

    def write_frame(self, packet: FramePacket) -> None: ...

    def write_passthrough(self, packet: PassthroughPacket) -> None: ...

    def close(self) -> None: ...


@runtime_checkable
class Publishing(Protocol):
    """A sink that hands frames to a publisher and hears back from it (RTSP): its counters,
    and the latencies of the frames it published since last asked."""

    stats: PublishStats

    def drain_latencies(self) -> list[float]: ...


def even_size(image: np.ndarray) -> np.ndarray:
    """4:2:0 needs even sizes: one replicated row or column where odd."""
    h, w = image.shape[:2]
    return np.pad(image, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge") if h % 2 or w % 2 else image


def hold_audio(held: deque[PassthroughPacket], packet: PassthroughPacket, output: str) -> None:
    """Keep an audio packet until the output opens at its first video frame (bounded)."""
    if len(held) >= _MAX_HELD_PACKETS:
        raise SinkError(f"output {output}: {_MAX_HELD_PACKETS} audio packets arrived before any video frame")
    held.append(packet)


def container_options(path: Path, config: SinkConfig, audio_templates: Sequence[Any] = ()) -> dict[str, str]:
    """Muxer options that let a file outlive its process.

    MP4 and MOV are written fragmented (``sink.fragment_s``, half a second by default):
    an index per fragment instead of one at the end, so a SIGKILL, an
    out-of-memory kill or a power cut leaves a file that plays up to its last
    fragment. Every packet is flushed to the file as it is muxed, for MKV too.
    ``fragment_s`` 0 writes a plain MP4, whose index only the trailer writes.
    AAC copied from MPEG-TS (ADTS) goes in as raw AAC with the codec header the
    source read from its first frame (``stream.io.adts``); where no header could be
    had (a live MPEG-TS input), such files are written plain, with a warning.
    """
    options = {"flush_packets": "1"}
    adts = [t for t in audio_templates if t.codec_context.name == "aac" and not t.codec_context.extradata]
    if adts and config.fragment_s > 0 and path.suffix.lower() in (".mp4", ".mov", ".m4v"):
        log.warning("output %s: its AAC audio has no codec header (MPEG-TS input), so the file is written "
                    "unfragmented and would not survive a kill; an .mkv output would", path)  # fmt: skip
        return options
    if path.suffix.lower() in (".mp4", ".mov", ".m4v") and config.fragment_s > 0:
        options["movflags"] = "frag_keyframe+empty_moov+default_base_moof+delay_moov"
        options["frag_duration"] = str(round(config.fragment_s * 1_000_000))
    return options


def refuse_raw(packet: FramePacket) -> None:
    if not packet.anonymized:
        raise SinkError(f"frame {packet.index} reached the sink without being anonymized; refusing it")


def open_sink(target: str, config: SinkConfig, rate: Fraction | None, audio_templates: list[Any]) -> Sink:
    """A sink for ``target``: ``null``, a folder or ``%``-pattern for images, or a video file."""
    if target in ("null", "-"):
        return NullSink()
    if target.lower().startswith(("rtsp://", "rtsps://")):
        from stream.io.publisher import RtspSink

        return RtspSink(target, config, rate, audio_templates)
    path = Path(target)
    if "%" in target or target.endswith(os.sep) or path.is_dir():
        return ImageSequenceSink(path, config)
    if path.suffix.lower() not in VIDEO_EXTENSIONS:
        raise SinkError(
            f"output {target}: unknown container {path.suffix or '(none)'}; "
            f"use one of {', '.join(VIDEO_EXTENSIONS)}, a folder for images, or 'null'"
        )
    if not path.parent.exists():
        raise SinkError(f"output {target}: folder {path.parent} does not exist")
    if config.segment_s > 0:
        return SegmentedFileSink(path, config, rate, audio_templates)
    return VideoFileSink(path, config, rate, audio_templates)


class NullSink:
    """Discards frames (for benchmarks and dry runs), still enforcing the anonymized check."""

    description = "null"

    def __init__(self) -> None:
        self.frames_written = 0

    def write_frame(self, packet: FramePacket) -> None:
        refuse_raw(packet)
        self.frames_written += 1

    def write_passthrough(self, packet: PassthroughPacket) -> None:
        return None

    def close(self) -> None:
        return None


class ImageSequenceSink:
    """One image file per frame: ``folder/frame_000000.png`` or a ``%06d`` pattern."""

    def __init__(self, target: Path, config: SinkConfig) -> None:
        if "%" in str(target):
            self._pattern = str(target)
            folder = target.parent
        else:
            folder = target
            self._pattern = str(target / f"frame_%06d.{config.image_format}")
        folder.mkdir(parents=True, exist_ok=True)
        self.description = self._pattern
        self.frames_written = 0

    def write_frame(self, packet: FramePacket) -> None:
        import cv2

        refuse_raw(packet)
        name = self._pattern % packet.index
        if not cv2.imwrite(name, cv2.cvtColor(packet.image, cv2.COLOR_RGB2BGR)):
            raise SinkError(f"output {name}: cannot write image")
        self.frames_written += 1

    def write_passthrough(self, packet: PassthroughPacket) -> None:
        return None

    def close(self) -> None:
        return None


class VideoFileSink:
    """An MP4/MKV/MOV file written frame by frame, audio streams copied packet for packet.

    The video stream keeps the input's time base and each frame's pts, so
    frame count, duration and variable frame rate survive. The container is
    opened at the first frame (its size is known then); audio packets that
    arrive earlier are held until then. ``close`` flushes the encoder and
    writes the trailer, also after an error, so a partial file stays playable.
    """

    def __init__(
        self, path: Path, config: SinkConfig, rate: Fraction | None, audio_templates: list[Any]
    ) -> None:
        self.path = path
        self.description = str(path)
        self.config = config
        self.rate = rate
        self.frames_written = 0
        self._templates = {t.index: t for t in audio_templates}
        self._held: deque[PassthroughPacket] = deque()
        self._container: Any = None
        self._video: Any = None
        self._audio: dict[int, Any] = {}
        self._last_dts: dict[int, int] = {}
        self._raw_aac = strips_headers(str(path))
        self.audio_dropped = 0
        self._closed = False

    def _open(self, first: FramePacket) -> None:
        import av

        height, width = first.image.shape[:2]
        try:
            options = container_options(self.path, self.config, list(self._templates.values()))
            container = av.open(str(self.path), mode="w", options=options)
        except (av.error.FFmpegError, OSError) as exc:
            raise SinkError(f"output {self.path}: cannot create ({exc})") from None
        try:
            cfg = self.config
            options = {}
            if cfg.codec in ("libx264", "libx265"):
                options = {"crf": str(cfg.crf), "preset": cfg.preset}
            if cfg.codec == "libx264" and cfg.x264_params:
                options["x264-params"] = cfg.x264_params
            stream: Any = container.add_stream(cfg.codec, rate=self.rate, options=options)
            # 4:2:0 needs even sizes; odd frames get one replicated row or column.
            stream.width = width + width % 2
            stream.height = height + height % 2
            stream.pix_fmt = cfg.pix_fmt
            stream.time_base = first.time_base
            stream.codec_context.time_base = first.time_base
            for index, template in self._templates.items():
                self._audio[index] = container.add_stream_from_template(template)
        except (av.error.FFmpegError, ValueError) as exc:
            container.close()
            raise SinkError(
                f"output {self.path}: cannot set up encoder {self.config.codec} ({exc})"
            ) from None
        self._container = container
        self._video = stream
        while self._held:
            self._mux_passthrough(self._held.popleft())

    def write_frame(self, packet: FramePacket) -> None:
        import av

        refuse_raw(packet)
        if self._container is None:
            self._open(packet)
        frame = av.VideoFrame.from_ndarray(even_size(packet.image), format="rgb24")
        frame.pts = packet.pts
        frame.time_base = packet.time_base
        if packet.duration:
            frame.duration = packet.duration
        try:
            for out in self._video.encode(frame):
                self._container.mux(out)
        except av.error.FFmpegError as exc:
            raise SinkError(f"output {self.path}: encoding frame {packet.index} failed ({exc})") from None
        self.frames_written += 1

    def write_passthrough(self, packet: PassthroughPacket) -> None:
        if packet.stream_index not in self._templates:
            return
        if self._container is None:
            hold_audio(self._held, packet, str(self.path))
            return
        self._mux_passthrough(packet)

    def _mux_passthrough(self, packet: PassthroughPacket) -> None:
        import av

        pkt = packet.packet
        last = self._last_dts.get(packet.stream_index)
        if pkt.dts is not None:
            if last is not None and pkt.dts <= last:
                # Only where a reconnected input's audio overlaps what was written.
                self.audio_dropped += 1
                return
            self._last_dts[packet.stream_index] = pkt.dts
        if self._raw_aac:
            pkt = without_header(pkt)  # MP4 takes raw AAC frames, not ADTS ones
        pkt.stream = self._audio[packet.stream_index]
        try:
            self._container.mux(pkt)
        except av.error.FFmpegError as exc:
            raise SinkError(f"output {self.path}: writing an audio packet failed ({exc})") from None

    def close(self) -> None:
        """Flush the encoder and finalize the container; safe to call twice."""
        if self._closed or self._container is None:
            self._closed = True
            return
        self._closed = True
        import av

        try:
            for out in self._video.encode(None):
                self._container.mux(out)
        except av.error.FFmpegError as exc:
            self._close_quietly()
            raise SinkError(f"output {self.path}: flushing the encoder failed ({exc})") from None
        try:
            self._container.close()
        except (av.error.FFmpegError, OSError) as exc:  # the trailer: a full disk shows here
            raise SinkError(f"output {self.path}: finishing the file failed ({exc})") from None

    def _close_quietly(self) -> None:
        try:
            self._container.close()
        except (OSError, ValueError):  # already failing: the first error is the one reported
            pass


class SegmentedFileSink:
    """Video files of ``sink.segment_s`` seconds each, as a recorder rotates them:
    ``NAME_000.mp4``, ``NAME_001.mp4``, ... beside ``NAME.mp4``.

    A new file starts at the first frame at or past the segment's length in
    stream time (its first frame is a key frame: each file has its own
    encoder). Audio goes to the file open when it arrives. Timestamps are
    kept, as FFmpeg's segment muxer keeps them, so files line up on one clock.
    """

    def __init__(
        self, path: Path, config: SinkConfig, rate: Fraction | None, audio_templates: list[Any]
    ) -> None:
        self.path = path
        self.config = config
        self.rate = rate
        self._templates = audio_templates
        self.description = str(path.with_name(f"{path.stem}_%03d{path.suffix}"))
        self.paths: list[Path] = []
        self.frames_written = 0
        self._current: VideoFileSink | None = None
        self._start: float | None = None

    @property
    def audio_dropped(self) -> int:
        return self._current.audio_dropped if self._current else 0

    def _rotate(self) -> VideoFileSink:
        if self._current is not None:
            self._current.close()
        path = self.path.with_name(f"{self.path.stem}_{len(self.paths):03d}{self.path.suffix}")
        self.paths.append(path)
        self._current = VideoFileSink(path, self.config, self.rate, self._templates)
        return self._current

    def write_frame(self, packet: FramePacket) -> None:
        refuse_raw(packet)
        t = packet.time
        current = self._current
        if current is None or (self._start is not None and t - self._start >= self.config.segment_s):
            current = self._rotate()
        if self._start is None or current.frames_written == 0:
            self._start = t
        current.write_frame(packet)
        self.frames_written += 1

    def write_passthrough(self, packet: PassthroughPacket) -> None:
        (self._current or self._rotate()).write_passthrough(packet)

    def close(self) -> None:
        if self._current is not None:
            self._current.close()
