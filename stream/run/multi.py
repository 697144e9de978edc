"""Several streams in one process: one pipeline per stream, the models shared.

Each stream keeps its own runner (capture, detection workers, tracking and
obscuring in order, writing) and its own state (tracks, surrogates), so
one stream's trouble (a lost camera, a stalled server) touches no other.
The models are loaded once: the detector behind a ``BatchedDetector``, which
on a GPU gathers the detection calls that the streams' workers make at the
same time into one batched inference per frame size (on a CPU, runs them on
a thread per core), and the face models of the attribute and synthesis stages.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engines.centerface import CenterFace, FaceArrays
from stream.config import Config, load_toml
from stream.errors import AnonError, ConfigError, InternalError, Interrupted, signal_number
from stream.run.job import JobResult, build_stages, load_detector, load_estimator
from stream.run.runner import Runner

log = logging.getLogger("anonymousnet")


@dataclass
class _Call:
    images: list[Any]
    key: tuple[Any, ...]
    done: threading.Event = field(default_factory=threading.Event)
    result: list[FaceArrays] | None = None
    error: BaseException | None = None


class BatchedDetector:
    """Stands in for a ``CenterFace``: ``detect`` calls made at the same time from
    many threads run as one batch per (frame size, scale, threshold) group.

    A call waits at most ``wait_s`` for others to join its batch; a batch
    holds at most ``max_batch`` frames. ``servers`` threads run batches at once:
    one for a GPU, where a batch of eight costs little more than one frame; on
    a CPU, where a batch of two costs two frames, one per core with batches of
    one (``shared_detector``).
    """

    def __init__(
        self, detector: CenterFace, max_batch: int = 8, wait_s: float = 0.003, servers: int = 1
    ) -> None:
        self.detector = detector
        self.backend = detector.backend
        self.max_batch = max_batch
        self.wait_s = wait_s
        self.calls = 0
        self.batches = 0
        self._count = threading.Lock()
        self._queue: queue.Queue[_Call | None] = queue.Queue()
        self._threads = [
            threading.Thread(target=self._serve, name=f"batched-detector-{i}", daemon=True)
            for i in range(servers)
        ]
        for thread in self._threads:
            thread.start()

    def detect(
        self, images: Sequence[Any], scale: float = 1.0, threshold: float = 0.5, nms_iou: float = 0.3
    ) -> list[FaceArrays]:
        if not images:
            return []
        call = _Call(list(images), (images[0].shape, scale, threshold, nms_iou))
        self._queue.put(call)
        call.done.wait()
        if call.error is not None:
            raise call.error
        if call.result is None:
            raise InternalError("the shared detector answered nothing")
        return call.result

    def _serve(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            calls, frames = [first], len(first.images)
            deadline = time.monotonic() + self.wait_s
            while frames < self.max_batch:
                try:
                    call = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if call is None:
                    self._queue.put(None)
                    break
                calls.append(call)
                frames += len(call.images)
            groups: dict[tuple[Any, ...], list[_Call]] = {}
            for call in calls:
                groups.setdefault(call.key, []).append(call)
            for (_, scale, threshold, nms_iou), members in groups.items():
                self._run(members, scale, threshold, nms_iou)

    def _run(self, calls: list[_Call], scale: float, threshold: float, nms_iou: float) -> None:
        images = [image for call in calls for image in call.images]
        try:
            faces = self.detector.detect(images, scale, threshold, nms_iou)
        except BaseException as exc:  # handed to every caller
            for call in calls:
                call.error = exc
                call.done.set()
            return
        with self._count:
            self.calls += len(calls)
            self.batches += 1
        start = 0
        for call in calls:
            call.result = faces[start : start + len(call.images)]
            start += len(call.images)
            call.done.set()

    def close(self) -> None:
        for _ in self._threads:  # each server ends on one (a server that sees one in a batch puts it back)
            self._queue.put(None)
        for thread in self._threads:
            thread.join(5)


# Backends where a batch costs what its frames cost alone: a pool of servers, not batches.
_CPU_BACKENDS = ("CPUExecutionProvider", "torch-cpu")


def shared_detector(config: Config, streams: int) -> BatchedDetector:
    """The detector the streams of one process share. On a GPU one server batches the
    streams' calls; on the CPU ``runner.workers`` servers (default: one per core) each run
    one call, so inference uses every core (a single server held two 360p streams to one
    core: 60-72% of one core busy while 68-76% of their frames were dropped)."""
    detector = load_detector(config)
    if detector.backend.name not in _CPU_BACKENDS:
        return BatchedDetector(detector, max_batch=max(8, 2 * streams))
    cores = os.cpu_count() or 1
    servers = config.runner.workers or max(1, min(4, cores // max(1, config.detect.threads)))
    return BatchedDetector(detector, max_batch=1, wait_s=0.0, servers=servers)


@dataclass(frozen=True)
class StreamSpec:
    name: str
    input: str
    output: str
    report: Path | None = None


def read_streams(path: Path) -> list[StreamSpec]:
    """A TOML list of streams: ``[[stream]]`` tables with ``input``, ``output``, and
    optionally ``name`` and ``report``."""
    tree = load_toml(path, "streams file")
    tables = tree.get("stream")
    if not isinstance(tables, list) or not tables:
        raise ConfigError(f"streams file {path}: expected [[stream]] tables with input and output")
    specs = []
    for i, table in enumerate(tables):
        unknown = sorted(set(table) - {"name", "input", "output", "report"})
        if unknown or "input" not in table or "output" not in table:
            raise ConfigError(
                f"streams file {path}: stream {i + 1} needs input and output "
                f"(and may have name, report){'; unknown: ' + ', '.join(unknown) if unknown else ''}"
            )
        report = Path(table["report"]) if table.get("report") else None
        specs.append(
            StreamSpec(str(table.get("name", f"stream{i + 1}")), table["input"], table["output"], report)
        )
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ConfigError(f"streams file {path}: stream names must differ, got {names}")
    return specs


@dataclass
class StreamOutcome:
    spec: StreamSpec
    result: JobResult | None = None
    error: AnonError | None = None


def run_streams(  # noqa: C901 - starts, watches and stops the streams; a branch per outcome
    specs: Sequence[StreamSpec],
    config: Config,
    on_start: Callable[[str, Runner], None] | None = None,
    progress: Callable[[dict[str, Runner]], None] | None = None,
    detector: BatchedDetector | None = None,
) -> list[StreamOutcome]:
    """Run every stream to its end (or until Ctrl-C) with shared models.

    A stream that fails ends alone, with its error in its outcome (an
    exception that is not the project's as an ``InternalError``); the others
    go on. Ctrl-C or SIGTERM stops every stream; each output is finalized and
    each outcome without an error gets ``Interrupted``. ``detector``:
    a batched detector of the caller's (who then reads its batch counts and
    closes it); by default one is made and closed here.
    """
    from stream.run.job import run_job

    own = detector is None
    detector = detector or shared_detector(config, len(specs))
    needs_estimator = config.attributes.enabled or config.obscure.mode == "synth"
    estimator = load_estimator(config) if needs_estimator else None
    runners: dict[str, Runner] = {}
    outcomes = [StreamOutcome(spec) for spec in specs]

    def started(name: str, runner: Runner) -> None:
        runners[name] = runner
        if on_start is not None:
            on_start(name, runner)

    def one(outcome: StreamOutcome) -> None:
        spec = outcome.spec
        try:
            stages = build_stages(config, detector, estimator)  # type: ignore[arg-type]
            outcome.result = run_job(
                spec.input, spec.output, config, detector=detector,  # type: ignore[arg-type]
                stages=stages, report=spec.report, on_start=lambda r: started(spec.name, r),
            )  # fmt: skip
        except AnonError as exc:
            outcome.error = exc
            log.error("stream %s: %s", spec.name, exc)
        except Exception as exc:  # a bug ends this stream alone, and the run's code says so
            outcome.error = InternalError(f"stream {spec.name}: {type(exc).__name__}: {exc}")
            log.error("stream %s: internal error: %s: %s", spec.name, type(exc).__name__, exc)

    threads = [threading.Thread(target=one, args=(o,), name=f"stream-{o.spec.name}") for o in outcomes]
    for thread in threads:
        thread.start()
    try:
        while any(t.is_alive() for t in threads):
            for thread in threads:
                thread.join(0.5)
            if progress is not None:
                progress(runners)
    except KeyboardInterrupt as exc:
        for runner in list(runners.values()):
            runner.stop()
        for thread in threads:
            thread.join()
        signum = signal_number(exc)
        for outcome in outcomes:  # every output is finalized; the run still says it was stopped
            if outcome.error is None:
                frames = outcome.result.stats.frames_out if outcome.result else 0
                outcome.error = Interrupted(f"interrupted after {frames} frames; output finalized", signum)
    finally:
        if own:
            detector.close()
    if progress is not None:
        progress(runners)
    return outcomes
