"""RTSP output: the anonymized stream published to an RTSP server by a process of its own.

PyAV holds the GIL through the RTSP handshake (ANNOUNCE, SETUP, RECORD), so
a publisher on a thread of the pipeline's process would freeze capture and
processing whenever the server is slow, gone, or accepts the connection and
never answers. Here the pipeline hands frames over through shared memory
and never waits: when the publisher is behind or disconnected, the frame is
dropped and counted, and processing keeps its pace. The publisher encodes
H.264 with low-latency settings (no B-frames, no look-ahead, frame threads
rather than x264's sliced threads), copies the audio packets through, and
when the server goes away it reconnects with exponential backoff, starting
again on a key frame.

Only frames the pipeline marked anonymized are handed over (``RtspSink``
refuses others like every sink); the publisher process sees nothing else.

Over 400 lines: the parent-side sink and the child process's loop share one
protocol of messages and shared memory, kept in one file so they change together.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import queue
import time
from collections import deque
from dataclasses import dataclass
from fractions import Fraction
from multiprocessing import shared_memory
from typing import Any

import numpy as np

from stream.config import SinkConfig
from stream.errors import InternalError, SinkError
from stream.frames import FramePacket, PassthroughPacket
from stream.io.redact import display_url, scrub
from stream.io.sinks import even_size, hold_audio, refuse_raw

log = logging.getLogger("anonymousnet")

_SLOTS = 4  # frames in flight between the pipeline and the publisher
_MAX_AUDIO_IN_FLIGHT = 2000  # audio messages not yet taken by the publisher


@dataclass(frozen=True)
class AudioParams:
    """What the publisher needs to copy one audio stream: codec parameters, not the stream object."""

    index: int
    codec: str
    rate: int
    layout: str
    extradata: bytes
    time_base: Fraction

    @classmethod
    def of(cls, stream: Any) -> AudioParams:
        ctx = stream.codec_context
        return cls(
            index=stream.index,
            codec=ctx.name,
            rate=ctx.sample_rate,
            layout=ctx.layout.name,
            extradata=bytes(ctx.extradata or b""),
            time_base=Fraction(stream.time_base),
        )


@dataclass(frozen=True)
class PublishSettings:
    url: str
    width: int
    height: int
    rate: Fraction | None
    time_base: Fraction
    codec: str
    preset: str
    crf: int
    pix_fmt: str
    keyint_s: float
    transport: str
    timeout_s: float
    backoff_s: float
    backoff_max_s: float
    connect_attempts: int
    parent_pid: int
    audio: tuple[AudioParams, ...]


@dataclass
class PublishStats:
    """Counters of the publisher, as the pipeline's process last heard them."""

    frames_handed: int = 0
    frames_published: int = 0
    frames_dropped: int = 0  # no free slot (publisher behind) or not connected
    audio_dropped: int = 0
    connects: int = 0
    reconnects: int = 0
    publisher_restarts: int = 0
    last_error: str | None = None


class RtspSink:
    """Publishes to ``rtsp://`` (ANNOUNCE and RECORD) from a separate process; never blocks."""

    def __init__(
        self, url: str, config: SinkConfig, rate: Fraction | None, audio_templates: list[Any]
    ) -> None:
        self.url = url
        self.description = display_url(url)
        self.config = config
        self.rate = rate
        self.frames_written = 0
        self.stats = PublishStats()
        self._audio = [AudioParams.of(t) for t in audio_templates]
        self._audio_indices = {a.index for a in self._audio}
        self._held: deque[PassthroughPacket] = deque()
        self._ctx = multiprocessing.get_context("spawn")
        self._process: Any = None
        self._shm: shared_memory.SharedMemory | None = None
        self._frames: np.ndarray | None = None
        self._settings: PublishSettings | None = None
        self._audio_sent = 0
        self._latencies: list[float] = []
        self._gave_up: str | None = None
        self._closed = False

    # --- the pipeline's side ----------------------------------------------------

    def _start(self, first: FramePacket) -> None:
        height, width = first.image.shape[:2]
        cfg = self.config
        self._settings = PublishSettings(
            url=self.url,
            width=width,
            height=height,
            rate=self.rate,
            time_base=first.time_base,
            codec=cfg.codec,
            preset=cfg.preset,
            crf=cfg.crf,
            pix_fmt=cfg.pix_fmt,
            keyint_s=cfg.keyint_s,
            transport=cfg.rtsp_transport,
            timeout_s=cfg.timeout_s,
            backoff_s=cfg.reconnect_backoff_s,
            backoff_max_s=cfg.reconnect_backoff_max_s,
            connect_attempts=cfg.connect_attempts,
            parent_pid=os.getpid(),
            audio=tuple(self._audio),
        )
        self._shm = shared_memory.SharedMemory(create=True, size=_SLOTS * height * width * 3)
        self._frames = np.ndarray((_SLOTS, height, width, 3), np.uint8, buffer=self._shm.buf)
        self._spawn()
        while self._held:
            self._send_audio(self._held.popleft())

    def _spawn(self) -> None:
        if self._settings is None or self._shm is None:
            raise InternalError("publisher: spawned before its first frame set it up")
        self._free: Any = self._ctx.Queue()
        self._work: Any = self._ctx.Queue()
        self._events: Any = self._ctx.Queue()
        self._taken: Any = self._ctx.Value("q", 0, lock=False)
        for slot in range(_SLOTS):
            self._free.put(slot)
        self._process = self._ctx.Process(
            target=publish,
            args=(self._settings, self._shm.name, self._free, self._work, self._events, self._taken),
            name="rtsp-publisher",
            daemon=True,
        )
        self._process.start()
        self._audio_sent = 0

    def _alive(self) -> bool:
        """The publisher runs; one that died (a crash) is started again and counted.
        One that gave up connecting ends the run with a SinkError."""
        if self._process.is_alive():
            self._check_gave_up()
            return True
        self._poll()
        self._check_gave_up()
        self.stats.publisher_restarts += 1
        self.stats.last_error = f"the publisher process exited with code {self._process.exitcode}"
        log.warning("output %s: %s; starting it again", self.description, self.stats.last_error)
        self._spawn()
        return True

    def write_frame(self, packet: FramePacket) -> None:
        refuse_raw(packet)
        if self._process is None:
            self._start(packet)
        self._alive()  # what the publisher reported is taken in by drain_latencies, once a frame
        try:
            slot = self._free.get_nowait()
        except queue.Empty:
            self.stats.frames_dropped += 1
            return
        if self._frames is None:
            raise InternalError("publisher: a frame before the shared memory was set up")
        self._frames[slot] = packet.image  # the source keeps one size, also across reconnections
        self._work.put(("frame", slot, packet.pts, packet.time_base, packet.capture_time))
        self.stats.frames_handed += 1
        self.frames_written += 1

    def write_passthrough(self, packet: PassthroughPacket) -> None:
        if packet.stream_index not in self._audio_indices:
            return
        if self._process is None:
            hold_audio(self._held, packet, self.description)
            return
        self._send_audio(packet)

    def _send_audio(self, packet: PassthroughPacket) -> None:
        if self._audio_sent - self._taken.value > _MAX_AUDIO_IN_FLIGHT:
            self.stats.audio_dropped += 1
            return
        pkt = packet.packet
        self._work.put(
            (
                "audio",
                packet.stream_index,
                bytes(pkt),
                pkt.pts,
                pkt.dts,
                Fraction(pkt.time_base),
                pkt.is_keyframe,
            )
        )
        self._audio_sent += 1

    def _poll(self) -> None:
        """Take in what the publisher reported."""
        if self._process is None:
            return
        while True:
            try:
                event = self._events.get_nowait()
            except (queue.Empty, OSError, ValueError):
                return
            kind = event[0]
            if kind == "published":
                self.stats.frames_published += event[1]
                self._latencies.extend(event[2])
            elif kind == "dropped":
                self.stats.frames_dropped += event[1]
                self.stats.audio_dropped += event[2]
            elif kind == "connected":
                self.stats.connects += 1
                self.stats.reconnects = max(0, self.stats.connects - 1)
            elif kind == "error":
                self.stats.last_error = event[1]
            elif kind == "gave up":
                self._gave_up = event[1]

    def _check_gave_up(self) -> None:
        if self._gave_up is not None and not self._closed:
            raise SinkError(f"output {self.description}: {self._gave_up}")

    def drain_latencies(self) -> list[float]:
        """Capture-to-publish times (s) of the frames published since the last call."""
        self._poll()
        out, self._latencies = self._latencies, []
        return out

    def close(self) -> None:
        """Let the publisher send what it holds, flush and disconnect; then stop it."""
        if self._closed:
            return
        self._closed = True
        if self._process is None:
            return
        try:
            self._work.put(None)
            deadline = time.monotonic() + self.config.timeout_s + 5
            while self._process.is_alive() and time.monotonic() < deadline:
                self._poll()
                self._process.join(0.1)
            if self._process.is_alive():
                self._process.terminate()
                self._process.join(2)
            self._poll()
        finally:
            self._frames = None
            if self._shm is not None:
                self._shm.close()
                with contextlib.suppress(FileNotFoundError):  # the publisher unlinks it if orphaned
                    self._shm.unlink()
        if self._gave_up is not None:
            raise SinkError(f"output {self.description}: {self._gave_up}")
        if self.stats.frames_handed and not self.stats.connects:
            raise SinkError(
                f"output {self.description}: never connected, nothing was published"
                + (f" ({self.stats.last_error})" if self.stats.last_error else "")
            )


# --- the publisher's process ---------------------------------------------------------


class _Connection:
    """One RTSP session: the muxer, a fresh encoder (so it starts on a key frame), the audio streams."""

    def __init__(self, s: PublishSettings) -> None:
        import av

        options = {"rtsp_transport": s.transport, "timeout": str(int(s.timeout_s * 1_000_000))}
        self.container = av.open(
            s.url, mode="w", format="rtsp", options=options, timeout=(s.timeout_s, s.timeout_s)
        )
        try:
            codec_options = {"g": str(max(1, round(s.keyint_s * float(s.rate or 25))))}
            if s.codec in ("libx264", "libx265"):
                codec_options |= {"preset": s.preset, "tune": "zerolatency", "crf": str(s.crf)}
            if s.codec == "libx264":
                # zerolatency turns on sliced threads; frame threads are kinder to quality.
                codec_options["x264-params"] = "sliced-threads=0"
            video: Any = self.container.add_stream(s.codec, rate=s.rate, options=codec_options)
            video.width = s.width + s.width % 2
            video.height = s.height + s.height % 2
            video.pix_fmt = s.pix_fmt
            video.codec_context.time_base = s.time_base
            self.video = video
            self.audio: dict[int, Any] = {}
            for a in s.audio:
                stream: Any = self.container.add_stream(a.codec, rate=a.rate, layout=a.layout)
                if a.extradata:
                    stream.codec_context.extradata = a.extradata
                stream.time_base = a.time_base
                self.audio[a.index] = stream
            self.container.start_encoding()  # the handshake: ANNOUNCE, SETUP, RECORD
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.container.close()


def publish(s: PublishSettings, shm_name: str, free: Any, work: Any, events: Any, taken: Any) -> None:  # noqa: C901 - the publisher process's loop: connect, retry, mux, drain
    """The publisher process: frames and audio from ``work`` to the server, reconnecting as needed."""
    import av

    shm = shared_memory.SharedMemory(name=shm_name)
    frames = np.ndarray((_SLOTS, s.height, s.width, 3), np.uint8, buffer=shm.buf)
    conn: _Connection | None = None
    backoff = s.backoff_s
    next_try = 0.0
    failures = 0  # failed connection attempts in a row
    published: list[float] = []  # capture-to-send seconds of frames sent since the last report
    captured: dict[int, float] = {}  # pts -> capture time of frames inside the encoder
    dropped = [0, 0]
    last_report = time.monotonic()

    def report(force: bool = False) -> None:
        nonlocal published, last_report
        now = time.monotonic()
        if force or now - last_report > 0.25:
            if published:
                events.put(("published", len(published), published))
                published = []
            if any(dropped):
                events.put(("dropped", dropped[0], dropped[1]))
                dropped[0] = dropped[1] = 0
            last_report = now

    def send(packets: list[Any]) -> None:
        """Mux encoded frames; a frame counts as published once its packet is sent."""
        if conn is None:
            raise InternalError("publisher: sending before connecting")
        for out in packets:
            conn.container.mux(out)
            published.append(time.monotonic() - captured.pop(out.pts, time.monotonic()))

    def lost(exc: BaseException) -> None:
        nonlocal conn, next_try
        events.put(("error", scrub(f"{type(exc).__name__}: {exc}", s.url)))
        captured.clear()  # frames inside the dropped encoder
        if conn is not None:
            conn.close()
        conn = None
        next_try = time.monotonic() + backoff

    orphaned = False
    try:
        while True:
            if os.getppid() != s.parent_pid:  # the pipeline's process died (SIGKILL, OOM): leave
                orphaned = True
                break
            try:
                item = work.get(timeout=0.25)
            except queue.Empty:
                report()
                continue
            if item is None:
                break
            if conn is None and time.monotonic() >= next_try and item[0] == "frame":
                try:
                    conn = _Connection(s)
                    events.put(("connected",))
                    backoff = s.backoff_s
                    failures = 0
                except Exception as exc:  # any failure to connect: wait and retry
                    lost(exc)
                    backoff = min(backoff * 2, s.backoff_max_s)
                    failures += 1
                    if s.connect_attempts and failures >= s.connect_attempts:
                        events.put(("gave up", scrub(
                            f"could not connect in {failures} attempts in a row "
                            f"({type(exc).__name__}: {exc})",
                            s.url)))  # fmt: skip
                        break
            if item[0] == "frame":
                _, slot, pts, time_base, capture_time = item
                if conn is None:
                    dropped[0] += 1
                else:
                    frame = av.VideoFrame.from_ndarray(even_size(frames[slot]), format="rgb24")
                    frame.pts, frame.time_base = pts, time_base
                    captured[pts] = capture_time
                    try:
                        send(conn.video.encode(frame))
                    except (av.error.FFmpegError, OSError) as exc:
                        dropped[0] += len(captured)
                        lost(exc)
                free.put(slot)
            else:
                taken.value += 1
                _, index, data, pts, dts, time_base, key = item
                if conn is None or index not in conn.audio:
                    dropped[1] += 1
                else:
                    packet = av.Packet(data)
                    packet.pts, packet.dts, packet.time_base = pts, dts, time_base
                    packet.is_keyframe = key
                    packet.stream = conn.audio[index]
                    try:
                        conn.container.mux(packet)
                    except (av.error.FFmpegError, OSError) as exc:
                        dropped[1] += 1
                        lost(exc)
            report()
        if conn is not None:
            with contextlib.suppress(av.error.FFmpegError, OSError):
                send(conn.video.encode(None))
    finally:
        if conn is not None:
            conn.close()
        report(force=True)
        del frames
        shm.close()
        if orphaned:  # nobody else is left to free it
            with contextlib.suppress(FileNotFoundError):
                shm.unlink()
