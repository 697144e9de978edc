"""Many streams over worker processes: each process one interpreter, its own models
and runners (``multi.run_streams`` over its share of the streams); frames never
leave the process that read them.

One interpreter lock per process is the point: in one process the capture
hand-off, tracking, compositing, writing and the batched detector's thread of
every stream share one lock (docs/live.md). The parent only starts the workers,
collects what they report (each stream's counters about once a second, for the
status lines and the one metrics endpoint, and each stream's outcome at its
end), and passes a stop on: SIGTERM, SIGHUP or Ctrl-C of the parent reaches every
worker as the same signal, and each finalizes its outputs. A stream that fails ends alone;
a worker that dies (killed, out of memory) ends only its own streams, each with an
error that says so.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import queue
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from stream.config import Config
from stream.errors import AnonError, Interrupted, Signalled, signal_number
from stream.io.sources import SourceStats
from stream.run.multi import StreamSpec
from stream.run.runner import RunStats

log = logging.getLogger("anonymousnet")

EXIT_INTERNAL = 70
STOP_GRACE_S = 60.0  # a stopped worker that has not finalized by then is killed


def auto_processes(streams: int, cores: int | None = None) -> int:
    """Processes for ``streams`` streams: one per core, never more than streams."""
    return max(1, min(streams, cores or os.cpu_count() or 1))


def share(specs: Sequence[StreamSpec], processes: int) -> list[list[StreamSpec]]:
    """The streams dealt round-robin over ``processes`` workers (none left empty)."""
    groups: list[list[StreamSpec]] = [[] for _ in range(max(1, min(processes, len(specs))))]
    for i, spec in enumerate(specs):
        groups[i % len(groups)].append(spec)
    return groups


def worker_config(config: Config, processes: int, cores: int | None = None) -> Config:
    """The config a worker runs: detection workers sized so the processes together do
    not oversubscribe the cores (each call already runs ``detect.threads`` threads);
    an explicit ``runner.workers`` wins."""
    if config.runner.workers:
        return config
    cores = cores or os.cpu_count() or 1
    per_process = max(1, cores // (processes * max(1, config.detect.threads)))
    return dataclasses.replace(config, runner=dataclasses.replace(config.runner, workers=min(4, per_process)))


@dataclass
class StreamReport:
    """What a worker tells the parent of one stream: its counters as it runs, its
    summary and error at its end (plain data: it crosses a process boundary)."""

    name: str
    stats: dict[str, Any] = field(default_factory=dict)
    reconnects: int = 0
    summary: dict[str, Any] | None = None
    error: str | None = None
    exit_code: int = 0
    done: bool = False


def _counters(stats: RunStats) -> dict[str, Any]:
    names = ("frames_in", "frames_out", "frames_dropped", "frames_masked_whole", "passthrough_packets",
             "faces", "max_track_id", "started", "finished", "latency_counts", "latency_sum")  # fmt: skip
    return {n: getattr(stats, n) for n in names} | {"latencies": list(stats.latencies)[-256:]}


@dataclass
class _RemoteSource:
    stats: SourceStats = field(default_factory=SourceStats)


class RemoteRunner:
    """A worker's stream as the parent sees it: what ``StreamsCollector`` and the status
    lines read of a ``Runner`` (its stats, its source's reconnects; no sink, no stages)."""

    def __init__(self) -> None:
        self.stats = RunStats()
        self.source = _RemoteSource()
        self.sink: Any = None
        self.stages: list[Any] = []

    def update(self, report: StreamReport) -> None:
        for name, value in report.stats.items():
            if name == "latencies":
                self.stats.latencies.clear()
                self.stats.latencies.extend(value)
            else:
                setattr(self.stats, name, value)
        self.source.stats.reconnects = report.reconnects


def _worker(index: int, specs: list[StreamSpec], config: Config, events: Any) -> None:
    """A worker process: its streams through ``run_streams``; every report to ``events``."""
    from stream.run.multi import run_streams

    def stop(signum: int, frame: Any) -> None:
        for name in ("SIGINT", "SIGTERM", "SIGHUP"):  # once: the outputs are being finalized
            signal.signal(getattr(signal, name), signal.SIG_IGN)
        raise Signalled(signum)

    for name in ("SIGINT", "SIGTERM", "SIGHUP"):
        signal.signal(getattr(signal, name), stop)
    try:
        import cv2

        cv2.setNumThreads(max(1, config.runner.workers))
    except ImportError:
        pass
    last = [0.0]

    def progress(runners: dict[str, Any]) -> None:
        if time.monotonic() - last[0] < 1.0:
            return
        last[0] = time.monotonic()
        for name, runner in list(runners.items()):
            events.put(
                ("stats", index, StreamReport(name, _counters(runner.stats), runner.source.stats.reconnects))
            )

    try:
        outcomes = run_streams(specs, config, progress=progress)
        for outcome in outcomes:
            result = outcome.result
            report = StreamReport(
                outcome.spec.name,
                _counters(result.stats) if result else {},
                result.reconnects if result else 0,
                summary=result.summary() if result else None,
                error=str(outcome.error) if outcome.error else None,
                exit_code=outcome.error.exit_code if outcome.error else 0,
                done=True,
            )
            events.put(("done", index, report))
    except BaseException as exc:  # the models failed to load, or a bug: every stream of it says so
        code = exc.exit_code if isinstance(exc, AnonError) else EXIT_INTERNAL
        for spec in specs:
            events.put(("done", index, StreamReport(spec.name, error=f"{type(exc).__name__}: {exc}",
                                                    exit_code=code, done=True)))  # fmt: skip
    finally:
        events.put(("exit", index, None))


def run_in_processes(
    specs: Sequence[StreamSpec],
    config: Config,
    processes: int,
    on_start: Callable[[str, RemoteRunner], None] | None = None,
    progress: Callable[[dict[str, RemoteRunner]], None] | None = None,
) -> list[StreamReport]:
    """Run every stream to its end over ``processes`` worker processes (spawned: no
    fork of a process holding threads and inference sessions). Returns each stream's
    report in the order given; a stop of the parent (Ctrl-C, SIGTERM, SIGHUP) stops
    every worker, waits for their outputs to be finalized, and marks each stream that
    had not failed ``Interrupted``."""
    supervisor = _Supervisor(specs, config, processes)
    for name, runner in supervisor.runners.items():
        if on_start is not None:
            on_start(name, runner)
    supervisor.start()
    while not supervisor.finished():
        try:
            supervisor.step()
            if progress is not None:
                progress(supervisor.runners)
        except KeyboardInterrupt as exc:
            supervisor.stop(signal_number(exc))
    return supervisor.reports()


class _Supervisor:
    """The parent's side: the workers, what they reported, and the stop."""

    def __init__(self, specs: Sequence[StreamSpec], config: Config, processes: int) -> None:
        self.specs = list(specs)
        self.groups = share(specs, processes)
        context = multiprocessing.get_context("spawn")
        self.events = context.Queue()
        child = worker_config(config, len(self.groups))
        self.workers = [
            context.Process(target=_worker, args=(i, group, child, self.events), name=f"streams-{i}")
            for i, group in enumerate(self.groups)
        ]
        self.runners = {spec.name: RemoteRunner() for spec in specs}
        self._reports = {spec.name: StreamReport(spec.name) for spec in specs}
        self.exited: set[int] = set()
        self.stopped: int | None = None
        self.deadline = float("inf")

    def start(self) -> None:
        for worker in self.workers:
            worker.start()

    def finished(self) -> bool:
        return len(self.exited) == len(self.workers)

    def step(self) -> None:
        """Take one report (waiting at most half a second), and notice dead workers."""
        try:
            kind, index, report = self.events.get(timeout=0.5)
        except queue.Empty:
            kind, index, report = None, -1, None
        if kind == "exit":
            self.exited.add(index)
        elif report is not None:
            self.runners[report.name].update(report)
            if kind == "done":
                self._reports[report.name] = report
        for i, worker in enumerate(self.workers):
            if i not in self.exited and not worker.is_alive() and self.events.empty():
                self.exited.add(i)  # died without a word: killed, or out of memory
                _lost(self._reports, self.groups[i], worker.exitcode)
            elif i not in self.exited and time.monotonic() > self.deadline:
                worker.kill()  # stopped, and not finalized in time

    def stop(self, signum: int) -> None:
        """Pass the parent's stop signal on to every worker still running (once)."""
        if self.stopped is not None:
            return
        self.stopped, self.deadline = signum, time.monotonic() + STOP_GRACE_S
        for i, worker in enumerate(self.workers):
            if i not in self.exited and worker.pid is not None:
                try:
                    os.kill(worker.pid, signum)
                except ProcessLookupError:
                    pass  # ended meanwhile: its exit is on the queue

    def reports(self) -> list[StreamReport]:
        for worker in self.workers:
            worker.join(5)
        if self.stopped is not None:
            for report in self._reports.values():
                if report.error is None:
                    frames = (report.summary or {}).get("frames_out", 0)
                    error = Interrupted(f"interrupted after {frames} frames; output finalized", self.stopped)
                    report.error, report.exit_code = str(error), error.exit_code
        return [self._reports[spec.name] for spec in self.specs]


def _lost(reports: dict[str, StreamReport], specs: list[StreamSpec], exitcode: int | None) -> None:
    how = f"signal {-exitcode}" if exitcode is not None and exitcode < 0 else f"exit code {exitcode}"
    for spec in specs:
        report = reports[spec.name]
        if not report.done:
            report.error = f"stream {spec.name}: its worker process ended ({how}) before the stream did"
            report.exit_code, report.done = EXIT_INTERNAL, True
