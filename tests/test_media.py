"""Real footage from ../shared/media: whole outputs and the leak rate in every mode.

The reference faces (the media carries no ground-truth boxes) are those of
``stream.measure.leak.ReferenceDetector``: CenterFace at full resolution and upscaled,
united with face-api's SSD MobileNet v1, faces at least 12 px tall; a face
leaks when the run leaves it uncovered or covered but still sharp. The
reference of each clip is kept in the model cache after its first run.
"""

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import FACENET, HAMILTON, MEDIA, audio_packets, digest, video_pts

from stream.config import build_config
from stream.measure.leak import measure_leak

pytestmark = pytest.mark.media

CLIPS = {"hamilton": HAMILTON, "facenet": FACENET}


@pytest.mark.parametrize("name", CLIPS)
def test_output_keeps_every_frame_the_duration_and_the_audio_bytes(
    tmp_path: Path, media: Any, detector: Any, name: Any
) -> None:
    from stream.run.job import run_job

    clip = CLIPS[name]
    out = tmp_path / f"{name}.mp4"
    # Blur: the container is what is checked here; synth's frame counts are checked by the
    # leak test below on the same clips (synth on 1080p would add a minute to the suite).
    config = build_config(None, {"obscure": {"mode": "blur"}})
    result = run_job(str(clip), str(out), config, detector=detector)
    assert result.damage is None
    src_pts, out_pts = video_pts(clip), video_pts(out)
    assert len(out_pts) == len(src_pts) == result.stats.frames_out
    assert out_pts == pytest.approx(src_pts, abs=1e-6)  # so duration and frame rate too
    src_audio, out_audio = audio_packets(clip), audio_packets(out)
    assert len(src_audio[0]) > 100
    assert [digest(a) for a in out_audio] == [digest(a) for a in src_audio]


MOT20 = MEDIA / "dlib" / "dlib" / "test" / "ffmpeg_data" / "MOT20-08-raw_shorter.remux.mp4"
LEAK_CLIPS = {"mot20-08": MOT20, **CLIPS}
# MOT20-08: a street crowd, faces of 10-23 px; hamilton: a stage, 640 x 360; facenet: 1080p.
MIN_FACES = {"mot20-08": 400, "hamilton": 600, "facenet": 700}


@pytest.mark.parametrize("name", LEAK_CLIPS)
def test_leak_rate_is_below_one_percent_in_every_mode(media: Any, detector: Any, name: Any) -> None:
    results = measure_leak(
        str(LEAK_CLIPS[name]),
        ["blur", "pixelate", "mask", "synth"],
        lambda mode: build_config(None, {"obscure": {"mode": mode}}),
        cache=True,
    )
    for r in results:
        assert r["reference_faces"] > MIN_FACES[name], r  # the measurement has substance
        assert r["frames"] == r["reference_frames"]
        assert r["leak_rate"] < 0.01, (r["mode"], r["leak_rate"], r["leaks"], r["sharp_leaks"])


def test_a_scene_cut_on_a_frame_with_only_the_cheap_pass_is_detected_in_full(
    tmp_path: Path, media: Any, detector: Any
) -> None:
    """Looping the clip puts a hard cut (crowd -> pianist and conductor) on frame 275, a
    frame of the reduced-resolution pass (detect.every = 2); the pianist's small face
    there must still be found and hidden, not carried in one frame late."""
    import av

    from stream.run.job import run_job

    out = tmp_path / "loop.mkv"
    config = build_config(
        None,
        {"source": {"loop": True}, "obscure": {"mode": "mask"}, "runner": {"max_frames": 278},
         "detect": {"every": 2}},  # the auto schedule runs hamilton in full on every frame
    )  # fmt: skip
    result = run_job(str(HAMILTON), str(out), config, detector=detector)
    assert result.stats.frames_out == 278
    with av.open(str(out)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 278 and config.detect.every == 2
    with av.open(str(HAMILTON)) as container:
        first = next(container.decode(video=0)).to_ndarray(format="rgb24")
    (original,) = detector.detect([first], 1.0, 0.5, 0.3)
    assert len(original.boxes) >= 2  # the clip's first frame: the pianist and the conductor
    (after_cut,) = detector.detect([frames[275]], 1.0, 0.5, 0.3)
    assert len(after_cut.boxes) == 0


def test_the_first_frame_a_live_run_keeps_gets_a_full_detection_pass(media: Any, detector: Any) -> None:
    """A live input can drop frame 0: frame 1, a reduced-resolution frame, is then
    the first the tracker sees, with nothing to carry; it must be detected in full."""
    from fractions import Fraction

    import av

    from stream.frames import FramePacket
    from stream.stages import DetectStage, TrackStage

    config = build_config(None, {"detect": {"every": 2}})
    with av.open(str(HAMILTON)) as container:
        image = np.asarray(next(container.decode(video=0)).to_ndarray(format="rgb24"), np.uint8)
    detect = DetectStage(detector, config.detect)
    track = TrackStage(config.track, detect)
    first = FramePacket(index=1, image=image.copy(), pts=1, time_base=Fraction(1, 30))
    first.processed = 1  # as the runner counts it: from the first frame's index
    cheap = detect.process(first)
    assert not cheap.full_detection
    packet = track.process(cheap)
    assert packet.full_detection and track.cuts_redetected == 1
    assert len(packet.tracks) >= 2  # the pianist's small face too, not only the conductor's
