"""The runner: fault injection (no raw frame ever written), stop policy, Ctrl-C, drops, order."""

import random
import threading
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
from conftest import decode_frames

from stream.algorithms.obscure import Obscurer
from stream.config import ObscureConfig, RunnerConfig, SinkConfig, build_config
from stream.errors import Interrupted, SinkError, SourceError, StageError
from stream.frames import Detections, FramePacket, PassthroughPacket
from stream.io.sinks import open_sink
from stream.io.sources import SourceStats, VideoInfo
from stream.run.runner import Runner
from stream.stages import DetectStage, ObscureStage, Stage, TrackStage

W, H = 96, 64
GREEN = (0, 255, 0)


class FakeSource:
    """Noise frames at 25 fps (optionally live, with passthrough packets, or failing)."""

    def __init__(
        self,
        count: Any = 30,
        live: Any = False,
        fail_at: Any = None,
        pace_s: Any = 0.0,
        passthrough_every: Any = 0,
    ) -> None:
        self.description = "fake"
        self.live = live
        self.audio_templates: list[Any] = []
        self.stats = SourceStats()
        self.info = VideoInfo(W, H, Fraction(25), Fraction(1, 25), count, count / 25, "fake")
        self.count, self.fail_at, self.pace_s, self.passthrough_every = (
            count,
            fail_at,
            pace_s,
            passthrough_every,
        )
        self.passthrough_sent = 0

    def packets(self) -> Iterator[Any]:
        rng = np.random.default_rng(0)
        for i in range(self.count):
            if i == self.fail_at:
                raise OSError("connection reset by fake peer")
            if self.pace_s:
                time.sleep(self.pace_s)
            if self.passthrough_every and i % self.passthrough_every == 0:
                self.passthrough_sent += 1
                yield PassthroughPacket(packet=None, stream_index=1)
            yield FramePacket(i, rng.integers(0, 256, (H, W, 3), dtype=np.uint8), i, Fraction(1, 25),
                              capture_time=time.monotonic())  # fmt: skip
            self.stats.frames += 1

    def damage(self) -> Any:
        return None

    def close(self) -> None:
        pass


class ScriptedDetector:
    """A fake backend-level detector: one fixed face per frame."""

    backend = type("B", (), {"name": "fake"})()

    def detect(self, images: Any, scale: Any = 1.0, threshold: Any = 0.5, nms_iou: Any = 0.3) -> Any:
        from engines.centerface import FaceArrays

        return [FaceArrays(np.array([[30, 10, 60, 50]], np.float32), np.array([0.9], np.float32),
                           np.zeros((1, 5, 2), np.float32)) for _ in images]  # fmt: skip


class Faulty:
    """Wraps a stage and raises on chosen frames."""

    def __init__(self, stage: Any, fail_on: Any) -> None:
        self.stage, self.fail_on = stage, set(fail_on)
        self.name, self.parallel = stage.name, getattr(stage, "parallel", False)

    def process(self, packet: Any) -> Any:
        if packet.index in self.fail_on:
            raise RuntimeError(f"injected fault in {self.name}")
        return self.stage.process(packet)

    def reset(self) -> None:
        self.stage.reset()


class PaintAll:
    """A last stage that paints every frame green: any raw (noise) frame in the output is a leak."""

    name, parallel = "paint", False

    def process(self, packet: Any) -> Any:
        packet.image[:] = GREEN
        packet.anonymized = True
        return packet

    def reset(self) -> None:
        pass


class Forgetful:
    """A stage that returns without marking the frame anonymized on chosen frames."""

    name, parallel = "forgetful", False

    def __init__(self, on: Any) -> None:
        self.on = set(on)

    def process(self, packet: Any) -> Any:
        if packet.index in self.on:
            packet.anonymized = False
        return packet

    def reset(self) -> None:
        pass


def real_stages(obscure: Any = ObscureConfig(mode="mask", shape="box")) -> Any:
    config = build_config()
    return [
        DetectStage(cast(Any, ScriptedDetector()), config.detect),
        TrackStage(config.track),
        ObscureStage(obscure),
    ]


def run(
    stages: Any, tmp_path: Path, source: Any = None, runner_config: Any = RunnerConfig(), progress: Any = None
) -> Any:
    source = source or FakeSource()
    out = tmp_path / "out.mp4"
    sink = open_sink(str(out), SinkConfig(crf=10), Fraction(25), [])
    runner = Runner(source, stages, sink, Obscurer(ObscureConfig()), runner_config)
    return runner, out, runner.run(progress) if progress is None else None


def is_black(frame: Any) -> Any:
    return frame.astype(int).max() < 24


def is_green(frame: Any) -> Any:
    return frame[..., 1].min() > 200 and frame[..., 0].max() < 60 and frame[..., 2].max() < 60


@pytest.mark.parametrize("where", [0, 1, 2])
def test_a_fault_in_any_stage_masks_that_frame_whole(tmp_path: Path, where: Any) -> None:
    stages = real_stages()
    stages[where] = Faulty(stages[where], fail_on={3, 7})
    _runner, out, stats = run(stages, tmp_path)
    frames = decode_frames(out)
    assert len(frames) == 30 and stats.frames_masked_whole == 2
    assert is_black(frames[3]) and is_black(frames[7])
    assert not is_black(frames[4])
    assert (frames[4][15:45, 35:55] < 24).all()  # the face box itself is masked on good frames
    assert all(f"stage {stages[where].name} failed" in m for m in stats.failures)


def test_no_raw_frame_is_ever_written_whatever_fails(tmp_path: Path) -> None:
    rng = random.Random(1)
    config = build_config()
    stages = [
        Faulty(DetectStage(cast(Any, ScriptedDetector()), config.detect), rng.sample(range(60), 8)),
        Faulty(TrackStage(config.track), rng.sample(range(60), 8)),
        Faulty(PaintAll(), rng.sample(range(60), 8)),
        Forgetful(rng.sample(range(60), 8)),
    ]
    _, out, stats = run(stages, tmp_path, FakeSource(60), RunnerConfig(workers=3))
    frames = decode_frames(out)
    assert len(frames) == 60
    assert all(is_green(f) or is_black(f) for f in frames)
    assert stats.frames_masked_whole == sum(is_black(f) for f in frames) > 0


def test_stop_policy_ends_the_run_and_keeps_a_playable_clean_output(tmp_path: Path) -> None:
    stages = [Faulty(PaintAll(), fail_on={12})]
    with pytest.raises(StageError, match="frame 12: stage paint failed"):
        run(stages, tmp_path, runner_config=RunnerConfig(on_failure="stop"))
    frames = decode_frames(tmp_path / "out.mp4")
    assert 0 < len(frames) <= 12 and all(is_green(f) for f in frames)


def test_sink_fault_stops_the_run_and_finalizes_the_file(tmp_path: Path) -> None:
    out = tmp_path / "out.mp4"
    sink = open_sink(str(out), SinkConfig(), Fraction(25), [])
    write = sink.write_frame

    def failing(packet: Any) -> None:
        if packet.index == 5:
            raise SinkError("disk full (injected)")
        write(packet)

    sink.write_frame = failing  # type: ignore[method-assign]
    runner = Runner(FakeSource(), [PaintAll()], sink, Obscurer(ObscureConfig()), RunnerConfig())
    with pytest.raises(SinkError, match="disk full"):
        runner.run()
    assert len(decode_frames(out)) == 5


def test_source_fault_mid_stream_keeps_what_was_written(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"input fake: reading failed after \d+ frames .*connection reset"):
        run([PaintAll()], tmp_path, FakeSource(30, fail_at=10))
    frames = decode_frames(tmp_path / "out.mp4")
    assert len(frames) == 10 and all(is_green(f) for f in frames)  # every frame before the break


class BuggySource(FakeSource):
    """A source whose own code breaks (a bug, not a damaged input) after 10 frames."""

    def packets(self) -> Iterator[Any]:
        for i, item in enumerate(super().packets()):
            if i == 10:
                raise KeyError("a bug in the source")
            yield item


def test_an_input_that_breaks_before_its_first_frame_is_unreadable_not_damaged(tmp_path: Path) -> None:
    from stream.errors import InputDamagedError

    with pytest.raises(SourceError, match=r"input fake: no frame could be read .*connection reset") as info:
        run([PaintAll()], tmp_path, FakeSource(30, fail_at=0))
    assert not isinstance(info.value, InputDamagedError) and info.value.exit_code == 3


def test_a_bug_in_reading_is_a_bug_not_a_damaged_input(tmp_path: Path) -> None:
    with pytest.raises(KeyError, match="a bug in the source"):
        run([PaintAll()], tmp_path, BuggySource(30))
    out = tmp_path / "out.mp4"  # none if the run stopped before the writer got a frame
    frames = decode_frames(out) if out.exists() else []
    assert len(frames) <= 10 and all(is_green(f) for f in frames)  # what was written is kept


def test_ctrl_c_finalizes_the_output(tmp_path: Path) -> None:
    out = tmp_path / "out.mp4"
    sink = open_sink(str(out), SinkConfig(), Fraction(25), [])
    runner = Runner(
        FakeSource(400, pace_s=0.005), [PaintAll()], sink, Obscurer(ObscureConfig()), RunnerConfig()
    )
    fired = threading.Event()

    def progress(stats: Any) -> None:
        if stats.frames_out >= 5 and not fired.is_set():
            fired.set()
            raise KeyboardInterrupt

    with pytest.raises(Interrupted, match="output finalized"):
        runner.run(progress)
    frames = decode_frames(out)
    assert 5 <= len(frames) < 400 and len(frames) == runner.stats.frames_out
    assert all(is_green(f) for f in frames)


class Slow:
    name, parallel = "slow", False

    def __init__(self, seconds: Any) -> None:
        self.seconds = seconds

    def process(self, packet: Any) -> Any:
        time.sleep(self.seconds)
        return packet

    def reset(self) -> None:
        pass


class Recorder:
    """A sink that keeps indexes and passthrough counts."""

    description = "recorder"

    def __init__(self) -> None:
        self.frames_written, self.passthrough = 0, 0
        self.indexes: list[int] = []

    def write_frame(self, packet: Any) -> None:
        assert packet.anonymized
        self.indexes.append(packet.index)
        self.frames_written += 1

    def write_passthrough(self, packet: Any) -> None:
        self.passthrough += 1

    def close(self) -> None:
        pass


def test_live_sources_drop_the_oldest_frames_but_never_passthrough_packets() -> None:
    source = FakeSource(150, live=True, pace_s=0.001, passthrough_every=5)
    sink = Recorder()
    runner = Runner(
        source, [Slow(0.01), PaintAll()], sink, Obscurer(ObscureConfig()), RunnerConfig(queue_size=4)
    )
    stats = runner.run()
    assert stats.frames_dropped > 0
    assert stats.frames_out + stats.frames_dropped == stats.frames_in == 150
    assert sink.indexes == sorted(sink.indexes)
    assert sink.passthrough == source.passthrough_sent == 30


def test_live_queue_counts_frames_only_so_audio_never_pushes_a_frame_out() -> None:
    from fractions import Fraction

    from stream.frames import FramePacket, PassthroughPacket
    from stream.run.runner import FrameQueue

    queue = FrameQueue(2, threading.Event())

    def frame(i: Any) -> Any:
        return FramePacket(index=i, image=np.zeros((2, 2, 3), np.uint8), pts=i, time_base=Fraction(1, 30))

    assert queue.put_latest(frame(0)) == 0
    for _ in range(5):  # audio between two frames: nothing is dropped
        assert queue.put_latest(PassthroughPacket(object(), 1)) == 0
    assert queue.put_latest(frame(1)) == 0
    assert queue.put_latest(frame(2)) == 1  # a third frame: the oldest frame goes, the audio stays
    items = [queue.get() for _ in range(7)]
    assert [x.index for x in items if isinstance(x, FramePacket)] == [1, 2]
    assert sum(isinstance(x, PassthroughPacket) for x in items) == 5


class Jittery:
    """A parallel stage that takes a random time, so workers finish out of order."""

    name, parallel = "jitter", True

    def __init__(self) -> None:
        self.rng = random.Random(3)
        self.lock = threading.Lock()

    def process(self, packet: Any) -> Any:
        with self.lock:
            delay = self.rng.random() * 0.004
        time.sleep(delay)
        packet.detections = Detections.empty()
        return packet

    def reset(self) -> None:
        pass


def test_parallel_workers_hand_frames_on_in_input_order() -> None:
    source = FakeSource(120, passthrough_every=7)
    sink = Recorder()
    runner = Runner(source, [Jittery(), PaintAll()], sink, Obscurer(ObscureConfig()), RunnerConfig(workers=4))
    stats = runner.run()
    assert sink.indexes == list(range(120)) and stats.frames_out == 120
    assert sink.passthrough == source.passthrough_sent


class LowScoreDetector(ScriptedDetector):
    """One face scored between the detection threshold (0.08) and the track-start one (0.12)."""

    def detect(self, images: Any, scale: Any = 1.0, threshold: Any = 0.5, nms_iou: Any = 0.3) -> Any:
        from engines.centerface import FaceArrays

        return [FaceArrays(np.array([[30, 10, 60, 50]], np.float32), np.array([0.1], np.float32),
                           np.zeros((1, 5, 2), np.float32)) for _ in images]  # fmt: skip


def test_a_detection_too_unsure_to_start_a_track_is_still_obscured(tmp_path: Path) -> None:
    config = build_config()
    assert config.detect.threshold < 0.1 < config.track.new_track_threshold
    stages = [DetectStage(cast(Any, LowScoreDetector()), config.detect), TrackStage(config.track),
              ObscureStage(ObscureConfig(mode="mask", shape="box"))]  # fmt: skip
    _, out, stats = run(stages, tmp_path)
    assert stats.max_track_id == 0  # no track was started
    assert all(is_black(frame[14:46, 34:56]) for frame in decode_frames(out))


class OddFramesOnly:
    """A live camera whose link drops every even frame: only odd indexes arrive."""

    def __init__(self, frames: Any) -> None:
        self.description, self.live = "odd", True
        self.audio_templates: list[Any] = []
        self.stats = SourceStats()
        self.info = VideoInfo(frames[0].shape[1], frames[0].shape[0], Fraction(25), Fraction(1, 25),
                              len(frames), len(frames) / 25, "fake")  # fmt: skip
        self.frames = frames

    def packets(self) -> Iterator[Any]:
        for i in range(1, len(self.frames), 2):
            time.sleep(0.05)
            yield FramePacket(i, self.frames[i].copy(), i, Fraction(1, 25), capture_time=time.monotonic())

    def damage(self) -> Any:
        return None

    def close(self) -> None:
        pass


@pytest.mark.media
def test_a_small_face_is_masked_in_every_frame_when_only_odd_frames_arrive(detector: Any, media: Any) -> None:
    """Full-resolution detection follows the frames processed, not the source's index parity
    (before, a live input delivering only odd frames never had a full pass and a 20 px face
    was never found)."""
    import cv2

    bgr = cv2.imread(str(media / "deepface/tests/unit/dataset/img1.jpg"))
    assert bgr is not None
    photo = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    (faces,) = detector.detect([photo], 0.25, 0.5)
    x1, y1, x2, y2 = faces.boxes[0].astype(int)
    pad = (y2 - y1) // 3
    top, left = max(0, y1 - pad), max(0, x1 - pad)
    face = photo[top : y2 + pad, left : x2 + pad]
    height = 20 * face.shape[0] // (y2 - y1)  # the face itself 20 px tall
    face = cv2.resize(face, (height * face.shape[1] // face.shape[0], height), interpolation=cv2.INTER_AREA)
    background = np.full((360, 640, 3), 110, np.uint8)
    frames, where = [], []
    for i in range(60):
        frame = background.copy()
        x, y = 200 + i, 150
        frame[y : y + face.shape[0], x : x + face.shape[1]] = face
        frames.append(frame)
        where.append((x + face.shape[1] // 2, y + face.shape[0] // 2))
    (found,) = detector.detect([frames[1]], 1.0, 0.5)
    assert len(found.boxes) == 1, "the 20 px face is found at full resolution"
    config = build_config(None, {"obscure": {"mode": "mask"}})
    detect = DetectStage(detector, config.detect)
    # As build_stages makes them.
    stages: list[Stage] = [detect, TrackStage(config.track, detect), ObscureStage(config.obscure)]
    sink = Recorder()
    images: dict[int, np.ndarray] = {}
    sink.write_frame = lambda packet: images.__setitem__(packet.index, packet.image)  # type: ignore[method-assign]
    Runner(OddFramesOnly(frames), stages, sink, Obscurer(config.obscure), RunnerConfig(workers=1)).run()
    assert len(images) >= 20
    unmasked = [i for i, image in sorted(images.items())
                if not is_black(image[where[i][1] - 4 : where[i][1] + 4, where[i][0] - 4 : where[i][0] + 4])]  # fmt: skip
    assert not unmasked, f"frames {unmasked} of {sorted(images)}: the face is not masked"


def test_a_stalled_live_pipeline_caps_the_audio_it_holds() -> None:
    from stream.run.runner import FrameQueue

    queue = FrameQueue(4, threading.Event())
    for _ in range(FrameQueue.MAX_AUDIO + 500):
        queue.put_latest(PassthroughPacket(packet=None, stream_index=1))
    assert len(queue._items) == FrameQueue.MAX_AUDIO and queue.audio_dropped == 500


def test_ended_tracks_leave_only_what_the_report_needs() -> None:
    """Per-track state of ended tracks is dropped (or slimmed), so a stream running for days
    holds its live tracks, not everyone it ever saw."""
    from stream.config import PerturbConfig
    from stream.frames import Tracks
    from stream.stages import AttributeStage, PerturbStage

    config = build_config()
    privacy = type("P", (), {"select": lambda self, t, p: None, "reset": lambda self: None})()
    attributes = AttributeStage(None, config.attributes, privacy)  # type: ignore[arg-type]
    perturb = PerturbStage(PerturbConfig(mode="noise"), None)
    from stream.algorithms.attributes import TrackAttributes

    for tid in range(1, 400):
        attributes.states[tid] = TrackAttributes(tid, estimates=1)
        perturb._pattern(tid)
        tracks = Tracks(np.array([[0, 0, 10, 10]], np.float32), np.array([tid], np.int64),
                        np.zeros(1, bool), np.full(1, -1, np.int64))  # fmt: skip
        packet = FramePacket(tid, np.zeros((H, W, 3), np.uint8), tid, Fraction(1, 25), tracks=tracks)
        attributes.process(packet)
        perturb.process(packet)
    assert list(attributes.states) == [399] and len(perturb.noise) == 1
    assert len(attributes.all_tracks()) == 399  # the report still lists everyone
    slim = sum(len(s.descriptor_sum) == 0 for s in attributes.ended.values())
    assert slim == 398 - AttributeStage.KEEP_DESCRIPTORS


def test_past_keep_ended_the_oldest_tracks_are_counted_not_listed(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stream running for days: the report lists the last ``KEEP_ENDED`` ended tracks and
    counts the others; PPAS's classes still count everyone."""
    from stream.algorithms.attributes import TrackAttributes
    from stream.algorithms.privacy import GlobalDistribution, StreamPrivacy
    from stream.frames import Tracks
    from stream.stages import AttributeStage, base

    monkeypatch.setattr(base, "KEEP_ENDED", 50)
    config = build_config()
    privacy = StreamPrivacy(config.privacy.policy(), GlobalDistribution.celeba(), seed=1)
    attributes = AttributeStage(None, config.attributes, privacy)  # type: ignore[arg-type]
    for tid in range(1, 301):
        attributes.states[tid] = TrackAttributes(tid, np.ones(40), np.full(40, 0.9), estimates=1)
        tracks = Tracks(np.array([[0, 0, 10, 10]], np.float32), np.array([tid], np.int64),
                        np.zeros(1, bool), np.full(1, -1, np.int64))  # fmt: skip
        attributes.process(
            FramePacket(tid, np.zeros((H, W, 3), np.uint8), tid, Fraction(1, 25), tracks=tracks)
        )
    assert len(attributes.ended) == 50 and min(attributes.ended) == 250
    assert len(privacy.tracks) == 50 and privacy.forgotten == 249  # the live one is not chosen yet
    assert sum(size for size, _ in privacy._classes.values()) == 299
