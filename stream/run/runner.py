"""The runner: capture, processing and writing on three threads joined by bounded queues.

All threading, queueing, drop policy, fail policy and shutdown live here.
Worker exceptions stop the run and are re-raised on the caller's thread;
every thread is joined; the sink is closed (container finalized) on every
path, so a partial output stays playable.

Over 400 lines: the threads, queues and their shutdown paths are one piece of
concurrency; split, their invariants would span files.
"""

from __future__ import annotations

import bisect
import collections
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from stream.algorithms.obscure import Obscurer
from stream.config import RunnerConfig
from stream.errors import (
    AnonError,
    InputDamagedError,
    Interrupted,
    SinkError,
    SourceError,
    StageError,
    signal_number,
)
from stream.frames import FramePacket, PassthroughPacket
from stream.io.sinks import Publishing, Sink
from stream.io.sources import Interruptible, Source
from stream.stages import Stage

_END = object()


def _read_errors() -> tuple[type[BaseException], ...]:
    """What reading a damaged input raises (FFmpeg's errors, I/O errors): the input's fault."""
    import av

    return (av.error.FFmpegError, OSError, EOFError)


_POLL_S = 0.1
# Upper bounds (s) of the latency histogram's buckets, as Prometheus exports them.
LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0)


@dataclass
class RunStats:
    """Counters of one run; written by the worker threads, read by the caller."""

    frames_in: int = 0
    frames_out: int = 0
    frames_dropped: int = 0
    frames_masked_whole: int = 0
    passthrough_packets: int = 0
    audio_dropped: int = 0  # live input: audio waiting past FrameQueue.MAX_AUDIO during a stall
    faces: int = 0
    max_track_id: int = 0
    failures: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None
    latencies: collections.deque[float] = field(default_factory=lambda: collections.deque(maxlen=4096))
    # Every latency since the start, by bucket (the last one: above every bound).
    latency_counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    latency_sum: float = 0.0

    def latency_ms(self, q: float) -> float | None:
        """The ``q`` quantile (0-1) of the recent latencies, in ms; None before the first frame."""
        lat = sorted(self.latencies)
        return 1000 * lat[min(len(lat) - 1, int(q * len(lat)))] if lat else None

    def observe_latency(self, seconds: float) -> None:
        self.latencies.append(seconds)
        self.latency_counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.latency_sum += seconds

    @property
    def elapsed_s(self) -> float:
        return (self.finished or time.monotonic()) - self.started

    @property
    def fps(self) -> float:
        return self.frames_out / self.elapsed_s if self.elapsed_s > 0 else 0.0


class _Aborted(Exception):
    """Raised inside a worker when another worker has failed."""


class FrameQueue:
    """A bounded FIFO. ``put`` blocks while full; ``put_latest`` instead drops the
    oldest video frame to make room (audio only past ``MAX_AUDIO`` waiting)."""

    MAX_AUDIO = 2000  # about 40 s of AAC

    def __init__(self, size: int, abort: threading.Event) -> None:
        self._items: collections.deque[Any] = collections.deque()
        self._size = size
        self._abort = abort
        self._cond = threading.Condition()
        self._taken = 0
        self.audio_dropped = 0
        self._frames_taken: int | None = (
            None  # video frames only: audio does not advance the detection schedule
        )

    def put(self, item: Any) -> None:
        with self._cond:
            while len(self._items) >= self._size:
                if self._abort.is_set():
                    raise _Aborted
                self._cond.wait(_POLL_S)
            self._items.append(item)
            self._cond.notify_all()

    def put_latest(self, item: Any) -> int:
        """Append without blocking; returns how many video frames were dropped.

        Only video frames count against the size here: an audio packet never
        pushes a frame out, and a new frame pushes out the oldest waiting one.
        Audio waits up to ``MAX_AUDIO`` packets (seconds of sound); past that,
        with processing stalled, the oldest goes (``audio_dropped``), so a
        stall cannot fill memory.
        """
        dropped = 0
        with self._cond:
            if isinstance(item, FramePacket):
                frames = [x for x in self._items if isinstance(x, FramePacket)]
                while len(frames) >= self._size:
                    self._items.remove(frames.pop(0))
                    dropped += 1
            else:
                audio = [x for x in self._items if not isinstance(x, FramePacket)]
                while len(audio) >= self.MAX_AUDIO:
                    self._items.remove(audio.pop(0))
                    self.audio_dropped += 1
            self._items.append(item)
            self._cond.notify_all()
        return dropped

    def get(self) -> Any:
        return self.get_numbered()[1]

    def get_numbered(self) -> tuple[int, Any]:
        """The oldest item and its position in the order items were taken (0, 1, ...)."""
        with self._cond:
            while not self._items:
                if self._abort.is_set():
                    raise _Aborted
                self._cond.wait(_POLL_S)
            item = self._items.popleft()
            seq = self._taken
            self._taken += 1
            if isinstance(item, FramePacket):
                if self._frames_taken is None:  # counted from the first frame's index, so a
                    self._frames_taken = item.index  # segment of a file keeps the file's schedule
                item.processed = self._frames_taken
                self._frames_taken += 1
            self._cond.notify_all()
            return seq, item


class Reorder:
    """Hands items back in sequence order after parallel workers finish them out of order.

    Sequence numbers are consecutive: workers number items as they take them
    from the input queue (``FrameQueue.get_numbered``).
    """

    def __init__(self, size: int, abort: threading.Event) -> None:
        self._items: dict[int, Any] = {}
        self._size = size
        self._abort = abort
        self._cond = threading.Condition()
        self._next = 0

    def put(self, seq: int, item: Any) -> None:
        with self._cond:
            # Never block the item the sequencer waits for, or it would deadlock.
            while len(self._items) >= self._size and seq != self._next:
                if self._abort.is_set():
                    raise _Aborted
                self._cond.wait(_POLL_S)
            self._items[seq] = item
            self._cond.notify_all()

    def next(self) -> Any:
        with self._cond:
            while self._next not in self._items:
                if self._abort.is_set():
                    raise _Aborted
                self._cond.wait(_POLL_S)
            item = self._items.pop(self._next)
            self._next += 1
            self._cond.notify_all()
            return item


FrameCallback = Callable[[FramePacket], None]


class Runner:
    """Runs one source through the stages into one sink.

    ``on_frame`` (optional) is called on the writer thread with each packet
    after it was written, for reports and measurements.
    """

    def __init__(
        self,
        source: Source,
        stages: Sequence[Stage],
        sink: Sink,
        obscurer: Obscurer,
        config: RunnerConfig,
        on_frame: FrameCallback | None = None,
    ) -> None:
        self.source = source
        self.stages = list(stages)
        self.sink = sink
        self.obscurer = obscurer
        self.config = config
        self.on_frame = on_frame
        self.workers = config.workers or max(1, min(os.cpu_count() or 1, 4))
        self.stats = RunStats()
        self._stop = threading.Event()  # no more input wanted (end, Ctrl-C)
        self._abort = threading.Event()  # a worker failed: everyone leaves now
        # Set when the writer has finished. Waiting on it, not on Thread.join,
        # because a Ctrl-C that lands inside join() can leave the thread
        # marked as stopped while it still runs (CPython < 3.12).
        self._written = threading.Event()
        self._error: BaseException | None = None
        self._input_error: BaseException | None = None
        self._error_lock = threading.Lock()
        self._q_in = FrameQueue(config.live_queue_size if source.live else config.queue_size, self._abort)
        self._q_out = FrameQueue(config.queue_size, self._abort)
        # A live input's frames wait only before detection, where they are dropped when the
        # machine falls behind: detected frames queued behind a slower stage would each add
        # that stage's time to the latency, never to be dropped.
        waiting = self.workers if source.live else config.queue_size + 2 * self.workers
        self._reorder = Reorder(waiting, self._abort)
        # Leading stages that declare themselves independent per frame run on
        # several workers; the rest (tracking onwards) run in input order.
        split = 0
        while split < len(self.stages) and self.stages[split].parallel:
            split += 1
        self._parallel_stages = self.stages[:split]
        self._serial_stages = self.stages[split:]

    # --- workers -----------------------------------------------------------------

    def _fail(self, exc: BaseException) -> None:
        with self._error_lock:
            if self._error is None:
                self._error = exc
        self._abort.set()
        self._stop.set()

    def _capture(self) -> None:
        try:
            limit = self.config.max_frames
            for item in self.source.packets():
                if self._stop.is_set():
                    break
                if isinstance(item, FramePacket):
                    self.stats.frames_in += 1
                if self.source.live:
                    # Never wait on a live input, not even for an audio packet:
                    # the oldest waiting video frame makes room instead.
                    self.stats.frames_dropped += self._q_in.put_latest(item)
                    self.stats.audio_dropped = self._q_in.audio_dropped
                else:
                    self._q_in.put(item)
                if limit and self.stats.frames_in >= limit:
                    break
            self._q_in.put(_END)
        except _Aborted:
            pass
        except Exception as exc:  # raised on the caller's thread once drained
            if not isinstance(exc, (AnonError, *_read_errors())):
                self._fail(exc)  # a bug, not the input: exit 70, as anywhere else
                return
            # The input broke: like an end of stream, everything read so far
            # is still processed and written, then the run reports the error.
            if not isinstance(exc, AnonError) and self.stats.frames_in == 0:
                # Nothing came before the break: the input is unreadable (3), not damaged part-way.
                exc = SourceError(
                    f"input {self.source.description}: no frame could be read ({type(exc).__name__}: {exc})"
                ).with_traceback(exc.__traceback__)
            elif not isinstance(exc, AnonError):
                exc = InputDamagedError(
                    f"input {self.source.description}: reading failed after {self.stats.frames_in} frames "
                    f"({type(exc).__name__}: {exc})"
                ).with_traceback(exc.__traceback__)
            self._input_error = exc
            try:
                self._q_in.put(_END)
            except _Aborted:
                pass
        except BaseException as exc:
            self._fail(exc)

    def _run_stages(self, packet: FramePacket, stages: Sequence[Stage]) -> FramePacket:
        """Run ``stages`` on one frame; a failure is recorded on the packet, not raised."""
        for stage in stages:
            if packet.failure is not None:
                break
            try:
                packet = stage.process(packet)
            except Exception as exc:  # any stage fault must fail closed
                packet.failure = (
                    f"frame {packet.index}: stage {stage.name} failed ({type(exc).__name__}: {exc})"
                )
        return packet

    def _finish(self, packet: FramePacket) -> FramePacket:
        """Apply the fail policy: a failed or unanonymized frame is masked whole, or the run stops."""
        if packet.failure is None and not packet.anonymized:
            packet.failure = f"frame {packet.index}: no stage marked it anonymized"
        if packet.failure is None:
            return packet
        if self.config.on_failure == "stop":
            raise StageError(packet.failure)
        if len(self.stats.failures) < 100:
            self.stats.failures.append(packet.failure)
        packet.device_image = None  # a failed frame is masked on the host, whatever the device held
        self.obscurer.mask_whole(packet.image)
        packet.masked_whole = True
        packet.anonymized = True
        self.stats.frames_masked_whole += 1
        return packet

    def process_frame(self, packet: FramePacket) -> FramePacket:
        """Every stage on one frame, then the fail policy (single-threaded use)."""
        return self._finish(self._run_stages(packet, self.stages))

    def _parallel_work(self) -> None:
        """Worker: the per-frame-independent leading stages (detection), several frames at once."""
        try:
            while True:
                seq, item = self._q_in.get_numbered()
                if item is _END:
                    self._reorder.put(seq, item)
                    self._q_in.put(_END)  # for the other workers
                    return
                if isinstance(item, FramePacket):
                    item = self._run_stages(item, self._parallel_stages)
                self._reorder.put(seq, item)
        except _Aborted:
            pass
        except BaseException as exc:
            self._fail(exc)

    def _process(self) -> None:
        """Sequencer: takes frames back in input order for the stateful stages (tracking, obscuring)."""
        try:
            while True:
                item = self._reorder.next()
                if isinstance(item, FramePacket):
                    item = self._finish(self._run_stages(item, self._serial_stages))
                    self.stats.faces += len(item.detections) if item.detections is not None else 0
                    if len(item.tracks):
                        self.stats.max_track_id = max(
                            self.stats.max_track_id, int(item.tracks.track_id.max())
                        )
                self._q_out.put(item)
                if item is _END:
                    return
        except _Aborted:
            pass
        except BaseException as exc:
            self._fail(exc)

    def _write(self) -> None:
        try:
            self._write_loop()
        finally:
            self._written.set()

    def _write_loop(self) -> None:
        drain_latencies = self.sink.drain_latencies if isinstance(self.sink, Publishing) else None
        try:
            while True:
                item = self._q_out.get()
                if item is _END:
                    return
                if isinstance(item, PassthroughPacket):
                    self.sink.write_passthrough(item)
                    self.stats.passthrough_packets += 1
                    continue
                self.sink.write_frame(item)
                self.stats.frames_out += 1
                if drain_latencies is None:
                    self.stats.observe_latency(time.monotonic() - item.capture_time)
                else:  # the sink knows when frames really left (published)
                    for seconds in drain_latencies():
                        self.stats.observe_latency(seconds)
                if self.on_frame is not None:
                    self.on_frame(item)
        except _Aborted:
            pass
        except AnonError as exc:
            self._fail(exc)
        except Exception as exc:
            error = SinkError(
                f"output {self.sink.description}: writing failed after {self.stats.frames_out} frames "
                f"({type(exc).__name__}: {exc})"
            )
            self._fail(error.with_traceback(exc.__traceback__))
        except BaseException as exc:
            self._fail(exc)

    # --- driver -------------------------------------------------------------------

    def stop(self) -> None:
        """Stop reading, from any thread; what is already queued is processed and written."""
        self._stop.set()
        if isinstance(self.source, Interruptible):
            self.source.interrupt()

    def run(self, progress: Callable[[RunStats], None] | None = None) -> RunStats:
        """Run to the end of the input. Raises the first worker error, or Interrupted
        on Ctrl-C; the sink is closed in every case."""
        threads = [
            threading.Thread(target=self._capture, name="capture", daemon=True),
            *(
                threading.Thread(target=self._parallel_work, name=f"worker-{i}", daemon=True)
                for i in range(self.workers)
            ),
            threading.Thread(target=self._process, name="process", daemon=True),
            threading.Thread(target=self._write, name="write", daemon=True),
        ]

        for stage in self.stages:
            stage.reset()
        interrupted: int | None = None  # the signal that stopped the run
        for thread in threads:
            thread.start()
        try:
            while not self._written.wait(0.2):
                if progress is not None:
                    progress(self.stats)
        except KeyboardInterrupt as exc:
            # Stop reading; what is already queued is processed and written.
            interrupted = signal_number(exc)
            self.stop()
            try:
                while not self._written.wait(0.2):
                    pass
            except KeyboardInterrupt:  # a second Ctrl-C: leave now
                self._abort.set()
        finally:
            self._stop.set()
            for thread in threads:
                thread.join(5.0)
            try:
                self.sink.close()
            except AnonError as exc:
                self._fail(exc)
            self.source.close()
            self.stats.finished = time.monotonic()
        if progress is not None:
            progress(self.stats)
        if self._error is not None:
            raise self._error
        if self._input_error is not None:
            raise self._input_error
        if interrupted is not None:
            raise Interrupted(
                f"interrupted after {self.stats.frames_out} frames; output finalized", interrupted
            )
        return self.stats
