"""One anonymization job: open the input, build the stages, run, report."""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from engines import zoo
from engines.base import BackendOptions, create_backend
from engines.centerface import CenterFace

from .config import Config
from .errors import AnonError, SourceError
from .frames import FramePacket
from .obscure import Obscurer
from .runner import Runner, RunStats
from .sinks import open_sink
from .sources import open_source
from .stages import DetectStage, ObscureStage, Stage, TrackStage


def load_detector(config: Config) -> CenterFace:
    """CenterFace on the configured backend, fetching the model on first use."""
    cfg = config.detect
    options = BackendOptions(
        threads=cfg.threads,
        precision=cfg.precision,
        calibration_table=Path(cfg.calibration_table) if cfg.calibration_table else None,
    )
    return CenterFace(create_backend(cfg.backend, zoo.ensure("centerface"), options=options))


def build_stages(config: Config, detector: CenterFace) -> list[Stage]:
    return [DetectStage(detector, config.detect), TrackStage(config.track), ObscureStage(config.obscure)]


@dataclass
class JobResult:
    input: str
    output: str
    stats: RunStats
    info: dict[str, Any]
    live: bool
    backend: str
    damage: str | None = None

    def summary(self) -> dict[str, Any]:
        s = self.stats
        lat = sorted(s.latencies)

        def pct(p: float) -> float | None:
            return round(lat[min(len(lat) - 1, int(p * len(lat)))] * 1000, 1) if lat else None

        return {
            "input": self.input,
            "output": self.output,
            "live": self.live,
            "backend": self.backend,
            "frames_in": s.frames_in,
            "frames_out": s.frames_out,
            "frames_dropped": s.frames_dropped,
            "frames_masked_whole": s.frames_masked_whole,
            "audio_packets_copied": s.passthrough_packets,
            "faces_detected": s.faces,
            "tracks": s.max_track_id,
            "seconds": round(s.elapsed_s, 3),
            "fps": round(s.fps, 2),
            "latency_ms": {"p50": pct(0.5), "p95": pct(0.95), "p99": pct(0.99)},
            "failures": s.failures,
            "input_damage": self.damage,
        }


class RegionLog:
    """Per-frame record of what was obscured, for leak measurement (written by the runner's callback)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.frames: list[dict[str, Any]] = []
        self._stream = stream

    def __call__(self, packet: FramePacket) -> None:
        record = {
            "index": packet.index,
            "pts": packet.pts,
            "masked_whole": packet.masked_whole,
            "boxes": np.round(packet.tracks.xyxy, 1).tolist(),
            "track_ids": packet.tracks.track_id.tolist(),
            "coasting": packet.tracks.coasting.tolist(),
        }
        if self._stream is not None:
            self._stream.write(json.dumps(record) + "\n")
        else:
            self.frames.append(record)


def run_job(
    input_spec: str,
    output: str,
    config: Config,
    detector: CenterFace | None = None,
    progress: Callable[[RunStats, int, bool], None] | None = None,
    regions: RegionLog | None = None,
    stages: list[Stage] | None = None,
    report: Path | None = None,
) -> JobResult:
    """Anonymize ``input_spec`` into ``output``. Raises AnonError subclasses on failure.

    ``report``: where to write the JSON run report, also when the run fails
    or is interrupted part-way. ``stages`` replaces the default stage list
    (tests inject faults this way).
    """
    source = open_source(input_spec, config.source)
    try:
        detector = detector or load_detector(config)
        stages = stages if stages is not None else build_stages(config, detector)
        sink = open_sink(output, config.sink, source.info.rate, source.audio_templates)
    except BaseException:
        source.close()
        raise
    runner = Runner(source, stages, sink, Obscurer(config.obscure), config.runner, on_frame=regions)
    total = source.info.frames

    def on_progress(stats: RunStats) -> None:
        if progress is not None:
            progress(stats, total, source.live)

    error: AnonError | None = None
    try:
        runner.run(on_progress)
        if runner.stats.frames_out == 0:
            raise SourceError(f"input {input_spec}: no video frame could be decoded")
    except AnonError as exc:
        error = exc
        raise
    finally:
        result = JobResult(
            input=input_spec,
            output=sink.description,
            stats=runner.stats,
            info=asdict(source.info)
            | {"rate": str(source.info.rate), "time_base": str(source.info.time_base)},
            live=source.live,
            backend=detector.backend.name,
            damage=source.damage(),
        )
        if report is not None:
            write_report(report, result, config, error)
    return result


def write_report(path: Path, result: JobResult, config: Config, error: AnonError | None = None) -> None:
    """The JSON run report: config, input, counters, timing, input damage and any error."""
    document = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": platform.node(),
        "summary": result.summary(),
        "input_info": result.info,
        "config": asdict(config),
        "error": str(error) if error else None,
    }
    path.write_text(json.dumps(document, indent=2, default=str) + "\n")
