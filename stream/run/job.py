"""One anonymization job: open the input, build the stages, run, report.

Over 400 lines: job building, model loading and the run report are kept together
until the report moves out (issue 16).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import platform
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, TextIO

import numpy as np
from numpy.typing import NDArray

from engines import zoo
from engines.base import Backend, BackendOptions, create_backend
from engines.centerface import CenterFace
from engines.facemodels import Emotion, FaceMesh, FaceRes
from stream.algorithms.attributes import BuiltinEstimator, Estimator, ForestEstimator
from stream.algorithms.obscure import Obscurer
from stream.algorithms.perturbation import Perturbation
from stream.algorithms.privacy import ATTRIBUTES, GlobalDistribution, StreamPrivacy
from stream.algorithms.synthesis import AttributeStyler, Gallery, builtin_path
from stream.config import Config
from stream.errors import AnonError, ConfigError, ModelError, SourceError
from stream.frames import FramePacket
from stream.io.publisher import RtspSink
from stream.io.redact import display_url, scrub
from stream.io.sinks import open_sink
from stream.io.sources import SourceStats, open_source
from stream.review.record import ReviewRecorder, frame_record
from stream.run.runner import Runner, RunStats
from stream.stages import (
    AttributeStage,
    DetectStage,
    ObscureStage,
    PerturbStage,
    Stage,
    SynthStage,
    TrackStage,
)

log = logging.getLogger(__name__)


def load_detector(config: Config) -> CenterFace:
    """CenterFace on the configured backend, fetching the model on first use."""
    cfg = config.detect
    options = BackendOptions(
        threads=cfg.threads,
        precision=cfg.precision,
        calibration_table=Path(cfg.calibration_table) if cfg.calibration_table else None,
    )
    return CenterFace(create_backend(cfg.backend, zoo.ensure("centerface"), options=options))


def load_estimator(config: Config) -> Estimator:
    """The built-in attribute estimator on the configured backend (and the forest, if given)."""
    # Faces per frame vary: no arena keeping a high-water mark per batch size (docs/soak.md).
    options = BackendOptions(threads=config.detect.threads, memory_arena=False)

    def backend(name: str) -> Backend:
        return create_backend(config.detect.backend, zoo.ensure(name), options=options)

    builtin = BuiltinEstimator(
        FaceMesh(backend("facemesh")), FaceRes(backend("faceres")), Emotion(backend("emotion"))
    )
    if config.attributes.forest:
        return ForestEstimator(Path(config.attributes.forest), builtin)
    return builtin


def load_gallery(name: str) -> Gallery | None:
    """The gallery a config names: a file, ``builtin`` (built on first use), or none."""
    if not name:
        return None
    if name == "builtin":
        path = builtin_path()
        if not path.exists():
            raise ModelError(
                f"the built-in gallery ({path}) is not built yet: run `run_stream.py models --fetch` "
                "(set-up does), or pass --gallery FILE or --gallery ''"
            )
        return Gallery.load(path)
    try:
        return Gallery.load(Path(name))
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(
            f"synth.gallery: cannot load {name} ({exc}); build one with python -m calibration.gallery"
        ) from None


def load_styler(checkpoint: str, backend: str) -> AttributeStyler:
    """StarGAN from the ONNX export of a checkpoint (``official``: the paper's CelebA 128
    generator) that ``run_stream.py models --stargan`` made, served by ``backend`` with
    instance norm kept in FP32. The stream only loads it: a missing export is an error
    naming that command."""
    from engines.stargan import OFFICIAL_FILE, onnx_path

    path = zoo.cache_dir() / "stargan" / OFFICIAL_FILE if checkpoint == "official" else Path(checkpoint)
    command = f"run_stream.py models --stargan {checkpoint}"
    if not path.exists():
        hint = f"fetch it with `{command}`" if checkpoint == "official" else (
            "train one (python -m calibration.stargan_train) or use 'official'")  # fmt: skip
        raise ConfigError(f"synth.stargan: {path} not found; {hint}")
    onnx = onnx_path(path, zoo.cache_dir())
    if not onnx.exists():
        raise ModelError(f"synth.stargan: {path} is not exported to ONNX yet; run `{command}`")
    return AttributeStyler(
        create_backend(backend, onnx, options=BackendOptions(fp32_ops=("InstanceNormalization",)))
    )


def build_stages(
    config: Config, detector: CenterFace, estimator: Estimator | None = None, secret_seed: int | None = None
) -> list[Stage]:
    """The pipeline's stages for ``config``; ``secret_seed``: the randomized response's secret
    (``StreamPrivacy``), drawn here when None."""
    detect = DetectStage(detector, config.detect)
    stages: list[Stage] = [detect, TrackStage(config.track, detect)]
    synth = config.obscure.mode == "synth"
    if config.attributes.enabled or synth:
        distribution = (
            GlobalDistribution.from_csv(Path(config.privacy.distribution))
            if config.privacy.distribution
            else GlobalDistribution.celeba()
        )
        privacy = StreamPrivacy(config.privacy.policy(), distribution, config.privacy.seed, secret_seed)
        attribute_stage = AttributeStage(estimator or load_estimator(config), config.attributes, privacy)
        stages.append(attribute_stage)
        if synth:
            gallery = load_gallery(config.synth.gallery)
            options = BackendOptions(threads=config.detect.threads, memory_arena=False)  # batch varies
            mesh = FaceMesh(create_backend(config.detect.backend, zoo.ensure("facemesh"), options=options))
            styler = (
                load_styler(config.synth.stargan, config.detect.backend) if config.synth.stargan else None
            )
            stages.append(SynthStage(gallery, mesh, config.synth, attribute_stage, styler, config.track))
            if config.perturb.mode != "none":
                perturbation = (
                    Perturbation.load(Path(config.perturb.file)) if config.perturb.mode == "uap" else None
                )
                stages.append(PerturbStage(config.perturb, perturbation))
    obscure = dataclasses.replace(config.obscure, mode=config.synth.fallback) if synth else config.obscure
    stages.append(ObscureStage(obscure))
    return stages


def anonymize_still(image: NDArray[np.uint8], stages: list[Stage], obscurer: Obscurer) -> FramePacket:
    """One photo through fresh stages, as the first frame of a stream (fail closed as the runner does).

    For stills, configure attributes to freeze on the first estimate
    (``every = 1``, ``max_estimates = 1``) so a surrogate is chosen at once.
    """
    for stage in stages:
        stage.reset()
    packet = FramePacket(0, image.copy(), 0, Fraction(1, 1))
    try:
        for stage in stages:
            packet = stage.process(packet)
        if not packet.anonymized:
            raise RuntimeError("no stage marked the photo anonymized")
    except Exception as exc:  # a still fails closed like a frame
        obscurer.mask_whole(packet.image)
        packet.failure = str(exc)
        packet.masked_whole = True
    return packet


def synthesis_report(stages: list[Stage]) -> dict[str, Any] | None:
    """Faces replaced by surrogates and those that fell back to obscuring, by reason."""
    stage = next((s for s in stages if isinstance(s, SynthStage)), None)
    if stage is None:
        return None
    return {
        "replaced": stage.counts.replaced,
        "fallback": dict(stage.counts.fallback),
        "surrogates": {str(t): origin for t, origin in stage.origins.items()},
        "tracks_not_listed": stage.counts.forgotten,  # ended long ago (stages.KEEP_ENDED)
        "shared_surrogates": stage.counts.shared,  # two people on screen, one gallery entry
        "from_landmarks": stage.counts.from_landmarks,  # faces drawn on five landmarks, no mesh
        # The identity check's cosine of each track's replaced face to the person (null: unchecked).
        "likeness": {str(t): None if v is None else round(v, 3) for t, v in stage.likeness.items()},
        "perturbed": next((s.perturbed for s in stages if isinstance(s, PerturbStage)), 0),
        "k": min([stage.config.k] + ([stage.gallery.k] if stage.gallery else [])),
    }


def privacy_report(stages: list[Stage], config: Config) -> dict[str, Any] | None:
    """Per-track attribute confidence and released attributes, and the run's privacy figures.

    Original attribute values appear only with ``privacy.report_original``.
    """
    stage = next((s for s in stages if isinstance(s, AttributeStage)), None)
    if stage is None:
        return None
    stage.finish()
    tracks = []
    sizes = stage.privacy.class_sizes()
    for track_id, state in sorted(stage.all_tracks().items()):
        record = stage.privacy.tracks.get(track_id)
        confidence = state.confidence()
        entry: dict[str, Any] = {
            "track": track_id,
            "estimates": state.estimates,
            "confidence": {
                a: round(float(c), 3) for a, c in zip(ATTRIBUTES, confidence, strict=True) if c == c
            },
        }
        if record is not None:
            entry["selected"] = {a: bool(v) for a, v in zip(ATTRIBUTES, record.released, strict=True)}
            entry["class_size"] = sizes.get(track_id)
            if config.privacy.report_original:
                entry["original"] = {
                    a: round(float(p), 3)
                    for a, p in zip(ATTRIBUTES, state.probability, strict=True)
                    if p == p
                }
        tracks.append(entry)
    verdict = stage.privacy.assessment(config.privacy.stricter())
    figures = None
    if verdict is not None:
        record_ids = list(stage.privacy.tracks)

        def listed(changes: list[Any] | None) -> list[dict[str, Any]] | None:
            if changes is None:
                return None
            return [{"track": record_ids[c.record], "attribute": c.attribute, "to": c.to} for c in changes]

        figures = {
            "private": verdict.private,
            "k": verdict.figures.k,
            "l": round(verdict.figures.l, 3) if verdict.figures.l != float("inf") else None,
            "t": round(verdict.figures.t, 3),
            "epsilon": verdict.epsilon,
            "classes": verdict.figures.classes,
            "worst_t": verdict.figures.worst_t,
            "stricter_target": {"k": verdict.target.k, "t": verdict.target.t},
            "changes_to_reach_k": None if verdict.to_reach_k is None else len(verdict.to_reach_k),
            "changes_to_reach_t": len(verdict.to_reach_t),
            "changes": {"k": listed(verdict.to_reach_k), "t": listed(verdict.to_reach_t)},
        }
    policy = config.privacy
    return {
        "policy": {
            "quasi_identifiers": policy.quasi_identifiers,
            "sensitive": policy.sensitive,
            "preserved": policy.preserved,
            "k": policy.k,
            "l": policy.l,
            "t": policy.t,
            "epsilon": policy.epsilon,
            "distribution": policy.distribution or "CelebA",
            "randomness": (
                "user seed: whoever knows it can recompute the randomized response, "
                "so the epsilon-differential privacy guarantee is weakened"
                if stage.privacy.seeded
                else "a secret seed drawn from the OS for this run, recorded nowhere"
            ),
        },
        "figures": figures,
        "tracks": tracks,
        # Ended long ago (stages.KEEP_ENDED): in the PPAS classes, not in these figures or listings.
        "tracks_not_listed": stage.privacy.forgotten,
    }


@dataclass
class JobResult:
    input: str
    output: str
    stats: RunStats
    info: dict[str, Any]
    live: bool
    backend: str
    damage: str | None = None
    privacy: dict[str, Any] | None = None
    synthesis: dict[str, Any] | None = None
    reconnects: int = 0
    publish: dict[str, Any] | None = None
    regions: str | None = None  # the regions file, where one was written
    review: dict[str, Any] | None = None  # the review page, where one was written

    def summary(self) -> dict[str, Any]:
        s = self.stats

        def pct(q: float) -> float | None:
            ms = s.latency_ms(q)
            return round(ms, 1) if ms is not None else None

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
            "audio_packets_dropped": s.audio_dropped,
            "faces_detected": s.faces,
            "tracks": s.max_track_id,
            "seconds": round(s.elapsed_s, 3),
            "fps": round(s.fps, 2),
            "latency_ms": {"p50": pct(0.5), "p95": pct(0.95), "p99": pct(0.99)},
            "failures": s.failures,
            "input_damage": self.damage,
            "input_reconnects": self.reconnects,
            "publish": self.publish,
            "privacy": self.privacy["figures"] if self.privacy else None,
            "synthesis": self.synthesis,
        }


class RegionLog:
    """Per-frame record of what was obscured, for leak measurement and the review page
    (written by the runner's callback; ``record.frame_record`` says what a line holds)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.frames: list[dict[str, Any]] = []
        self._stream = stream
        self.path = getattr(stream, "name", None) if stream is not None else None
        self.stats: RunStats | None = None
        self.source: SourceStats | None = None

    def attach(self, stats: RunStats, source: SourceStats | None) -> None:
        self.stats, self.source = stats, source

    def __call__(self, packet: FramePacket) -> None:
        record = frame_record(packet, self.stats, self.source)
        if self._stream is not None:
            self._stream.write(json.dumps(record) + "\n")
        else:
            self.frames.append(record)


@dataclass
class Review:
    """``--review DIR``: the recorder on the runner's callback, and where its page goes."""

    directory: Path
    recorder: ReviewRecorder

    @classmethod
    def for_config(cls, directory: Path, config: Config) -> Review:
        return cls(directory, ReviewRecorder(config.review, config.detect.min_face))

    def write(self, document: dict[str, Any], final: bool = True) -> dict[str, Any]:
        """The page for ``document`` (the run report); what the report says of it."""
        from stream.review.page import write_page  # Jinja2 and Matplotlib: only for a page

        page = write_page(self.directory, document, self.recorder, final)
        return {"page": str(page.path), "seconds": round(page.seconds, 2),
                "recorder_seconds": round(self.recorder.seconds, 2)}  # fmt: skip


def _attach(stats: RunStats, source: SourceStats, *recorders: RegionLog | ReviewRecorder | None) -> None:
    for recorder in recorders:
        if recorder is not None:
            recorder.attach(stats, source)


def _callbacks(*callbacks: Callable[[FramePacket], None] | None) -> Callable[[FramePacket], None] | None:
    """The runner's one frame callback, calling each given one in turn."""
    chosen = [c for c in callbacks if c is not None]
    if len(chosen) <= 1:
        return chosen[0] if chosen else None

    def each(packet: FramePacket) -> None:
        for callback in chosen:
            callback(packet)

    return each


def run_job(
    input_spec: str,
    output: str,
    config: Config,
    detector: CenterFace | None = None,
    progress: Callable[[RunStats, int, bool], None] | None = None,
    regions: RegionLog | None = None,
    stages: list[Stage] | None = None,
    report: Path | None = None,
    on_start: Callable[[Runner], None] | None = None,
    review: Review | None = None,
) -> JobResult:
    """Anonymize ``input_spec`` into ``output``. Raises AnonError subclasses on failure.

    ``on_start`` is handed the runner before it starts (to stop it from
    another thread, or to read its counters for metrics).

    ``report``: where to write the JSON run report, also when the run fails
    or is interrupted part-way. ``stages`` replaces the default stage list
    (tests inject faults this way). ``review``: the review page, written at the end
    (also of a failed or interrupted run) and, for a live input, every
    ``review.every_min`` minutes while it runs.
    """
    if config.source.realtime is None and output.lower().startswith(("rtsp://", "rtsps://")):
        # Published, a file plays at its own rate: read faster, the server would drop frames.
        config = dataclasses.replace(config, source=dataclasses.replace(config.source, realtime=True))
    try:
        source = open_source(input_spec, config.source)
    except AnonError as exc:
        _report_setup_failure(report, input_spec, output, config, exc)
        raise
    try:
        detector = detector or load_detector(config)
        stages = stages if stages is not None else build_stages(config, detector)
        sink = open_sink(output, config.sink, source.info.rate, source.audio_templates)
    except BaseException as exc:
        source.close()
        if isinstance(exc, AnonError):
            _report_setup_failure(report, input_spec, output, config, exc)
        raise
    recorder = review.recorder if review is not None else None
    runner = Runner(
        source, stages, sink, Obscurer(config.obscure), config.runner, on_frame=_callbacks(regions, recorder)
    )
    _attach(runner.stats, source.stats, regions, recorder)
    if on_start is not None:
        on_start(runner)
    total = source.info.frames

    def on_progress(stats: RunStats) -> None:
        if progress is not None:
            progress(stats, total, source.live)

    def result_now(privacy: dict[str, Any] | None) -> JobResult:
        return JobResult(
            input=display_url(input_spec),
            output=sink.description,
            stats=runner.stats,
            info=asdict(source.info)
            | {"rate": str(source.info.rate), "time_base": str(source.info.time_base)},
            live=source.live,
            backend=detector.backend.name,
            damage=source.damage(),
            reconnects=source.stats.reconnects,
            publish=asdict(sink.stats) if isinstance(sink, RtspSink) else None,
            privacy=privacy,
            synthesis=synthesis_report(stages),
            regions=regions.path if regions is not None else None,
        )

    rewriting = _LivePage.start(review, lambda: report_document(result_now(None), config), source.live)
    error: AnonError | None = None
    try:
        runner.run(on_progress)
        if runner.stats.frames_out == 0:
            raise SourceError(f"input {input_spec}: no video frame could be decoded")
    except AnonError as exc:
        error = exc
        raise
    finally:
        if rewriting is not None:
            rewriting.stop()
        result = result_now(privacy_report(stages, config) if error is None else None)
        if review is not None:
            result.review = review.write(report_document(result, config, error))
        if report is not None:
            write_report(report, result, config, error)
    return result


class _LivePage:
    """A live run's review page, rewritten every ``every_s`` seconds on a thread of its own
    (a page takes a second or more: never on the writer's thread), until ``stop``."""

    @classmethod
    def start(
        cls, review: Review | None, document: Callable[[], dict[str, Any]], live: bool
    ) -> _LivePage | None:
        """Rewriting for a live run with a review page; None otherwise."""
        if review is None or not live:
            return None
        return cls(review, document, 60 * review.recorder.config.every_min)

    def __init__(self, review: Review, document: Callable[[], dict[str, Any]], every_s: float) -> None:
        self._review, self._document, self._every_s = review, document, every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="review-page", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self._every_s):
            try:
                self._review.write(self._document(), final=False)
            except Exception as exc:  # the stream goes on; the final page is written at the end
                log.warning("review page: rewriting failed (%s: %s)", type(exc).__name__, exc)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _report_setup_failure(
    report: Path | None, input_spec: str, output: str, config: Config, error: AnonError
) -> None:
    """A run that failed before its first frame still leaves its report, with the error."""
    if report is not None:
        result = JobResult(
            display_url(input_spec), display_url(output), RunStats(), {}, live=False, backend="none"
        )
        write_report(report, result, config, error)


def report_document(result: JobResult, config: Config, error: AnonError | None = None) -> dict[str, Any]:
    """The run report: config, input, counters, timing, input damage and any error,
    scrubbed as a whole (a password may hide in any field, an error text included)."""
    document = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": platform.node(),
        "summary": result.summary(),
        "input_info": result.info,
        "config": asdict(config),
        "privacy": result.privacy,
        "regions": result.regions,
        "review": result.review,
        "error": str(error) if error else None,
    }
    scrubbed: dict[str, Any] = json.loads(scrub(json.dumps(document, default=str)))
    return scrubbed


def write_report(path: Path, result: JobResult, config: Config, error: AnonError | None = None) -> None:
    """The JSON run report (``report_document``)."""
    path.write_text(json.dumps(report_document(result, config, error), indent=2) + "\n")
