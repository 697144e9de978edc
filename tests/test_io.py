"""Sources and sinks: formats, stream time, rotation, audio copy, partial outputs."""

import itertools
import subprocess
import sys
from fractions import Fraction
from pathlib import Path
from typing import Any, cast

import av
import numpy as np
import pytest
from conftest import ROOT, audio_packets, decode_frames, digest, noise_frames, video_pts, write_clip

from stream.config import SinkConfig, SourceConfig, build_config
from stream.errors import SinkError, SourceError
from stream.frames import FramePacket, PassthroughPacket
from stream.io.sinks import open_sink
from stream.io.sources import MediaSource, open_source
from stream.run.job import run_job


def read_all(path: Path, with_source: bool = False) -> Any:
    source = open_source(str(path), SourceConfig())
    try:
        items = list(source.packets())
    finally:
        source.close()
    frames = [i for i in items if isinstance(i, FramePacket)]
    passthrough = [i for i in items if isinstance(i, PassthroughPacket)]
    return (frames, passthrough, source) if with_source else (frames, passthrough)


@pytest.mark.parametrize(
    ("name", "codec", "fmt"),
    [
        ("clip.mp4", "libx264", None),
        ("clip.mkv", "libx264", None),
        ("clip.mov", "libx264", None),
        ("clip.avi", "mpeg4", None),
        ("clip.webm", "libvpx", None),
        ("clip.h264", "libx264", "h264"),
        ("clip.hevc", "libx265", "hevc"),
        ("clip.gif", "gif", None),
    ],
)
def test_every_container_is_read_whole_with_increasing_stream_time(
    tmp_path: Path, name: Any, codec: Any, fmt: Any
) -> None:
    frames = noise_frames(12, 64, 48)
    path = write_clip(tmp_path / name, frames, codec=codec, fmt=fmt, rate=10)
    packets, _, source = read_all(path, with_source=True)
    assert len(packets) == 12
    times = [p.time for p in packets]
    assert all(b > a for a, b in itertools.pairwise(times))
    assert packets[0].image.shape == (48, 64, 3) and packets[0].image.dtype == np.uint8
    # Raw elementary streams carry no timing: FFmpeg assumes its default rate there.
    rate = 10 if fmt is None else float(source.info.rate)
    assert abs((times[-1] - times[0]) - 11 / rate) < 0.02


@pytest.mark.parametrize("rotation", [90, -90, 180])
def test_rotation_metadata_is_applied(tmp_path: Path, rotation: Any) -> None:
    image = np.zeros((48, 64, 3), np.uint8)
    image[:8, :8] = 255  # a white mark at the stored top-left
    path = write_clip(tmp_path / "rot.mp4", [image] * 3, rotation=rotation)
    packets, _ = read_all(path)
    shown = packets[0].image
    expected = np.rot90(image, round(rotation / 90) % 4)  # counter-clockwise by the matrix angle
    assert shown.shape == expected.shape
    corner = np.unravel_index(np.argmax(shown[..., 0] > 128), shown.shape[:2])
    expected_corner = np.unravel_index(np.argmax(expected[..., 0] > 128), expected.shape[:2])
    assert corner == expected_corner


def test_variable_frame_rate_and_audio_survive_the_pipeline(tmp_path: Path, detector: Any) -> None:
    pts = [0, 40, 80, 200, 220, 240, 400, 410, 420, 430]  # ms, irregular
    frames = noise_frames(len(pts), 96, 64)
    src = write_clip(tmp_path / "vfr.mkv", frames, pts=pts, time_base=Fraction(1, 1000), audio_streams=2)
    out = tmp_path / "out.mkv"
    run_job(str(src), str(out), build_config(), detector=detector)
    assert video_pts(out) == pytest.approx(video_pts(src))
    ins, outs = audio_packets(src), audio_packets(out)
    assert len(outs) == 2 and [digest(a) for a in outs] == [digest(a) for a in ins]
    assert all(len(a) > 5 for a in outs)


def test_demo_clip_keeps_frames_duration_and_audio(tmp_path: Path, demo_clip: Path, detector: Any) -> None:
    out = tmp_path / "demo.mp4"
    result = run_job(str(demo_clip), str(out), build_config(), detector=detector)
    assert result.stats.frames_out == len(decode_frames(out)) == 100
    assert video_pts(out) == pytest.approx(video_pts(demo_clip))
    with av.open(str(out)) as a, av.open(str(demo_clip)) as b:
        assert a.duration == pytest.approx(b.duration, rel=0.01)
    assert digest(audio_packets(out)[0]) == digest(audio_packets(demo_clip)[0])
    assert result.stats.max_track_id >= 1


def test_image_sequence_and_null_sinks(tmp_path: Path, detector: Any) -> None:
    src = write_clip(tmp_path / "c.mp4", noise_frames(5, 64, 48))
    run_job(str(src), str(tmp_path / "frames") + "/", build_config(), detector=detector)
    assert sorted(p.name for p in (tmp_path / "frames").iterdir())[:2] == [
        "frame_000000.png",
        "frame_000001.png",
    ]
    assert len(list((tmp_path / "frames").iterdir())) == 5
    result = run_job(str(src), "null", build_config(), detector=detector)
    assert result.stats.frames_out == 5


def test_sinks_refuse_frames_that_were_not_anonymized(tmp_path: Path) -> None:
    packet = FramePacket(0, np.zeros((16, 16, 3), np.uint8), 0, Fraction(1, 25))
    for target in ("null", str(tmp_path / "x.mp4"), str(tmp_path / "imgs") + "/"):
        sink = open_sink(target, SinkConfig(), Fraction(25), [])
        with pytest.raises(SinkError, match="without being anonymized"):
            sink.write_frame(packet)
        sink.close()
    assert not (tmp_path / "x.mp4").exists() or (tmp_path / "x.mp4").stat().st_size == 0


def test_truncated_stream_gives_a_playable_partial_output(tmp_path: Path, detector: Any) -> None:
    src = write_clip(tmp_path / "full.mkv", noise_frames(60, 96, 64), audio_streams=1)
    data = src.read_bytes()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(data[: len(data) // 2])
    out = tmp_path / "out.mp4"
    result = run_job(str(cut), str(out), build_config(), detector=detector)
    written = decode_frames(out)
    assert 10 < len(written) < 60 and len(written) == result.stats.frames_out


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: str(d / "missing.mp4"), "no such file"),
        (lambda d: str(d), "is a folder"),
        (lambda d: (d / "bad.mp4").write_bytes(b"\0" * 5000) and str(d / "bad.mp4"), "not a readable video"),
        (lambda d: "rtsp://127.0.0.1:9/stream", "input rtsp://127.0.0.1:9/stream"),
    ],
)
def test_unreadable_inputs_raise_source_errors(tmp_path: Path, make: Any, message: Any) -> None:
    with pytest.raises(SourceError, match=message):
        open_source(make(tmp_path), SourceConfig(timeout_s=2))


def test_audio_only_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "a.m4a"
    with av.open(str(path), "w") as c:
        s = c.add_stream("aac", rate=22050)
        s.layout = "mono"
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate, frame.pts = 22050, 0
        for p in [*s.encode(frame), *s.encode(None)]:
            c.mux(p)
    with pytest.raises(SourceError, match="no video stream"):
        open_source(str(path), SourceConfig())


def test_http_input_is_read_like_a_file(tmp_path: Path, detector: Any) -> None:
    import functools
    import http.server
    import threading

    clip = write_clip(tmp_path / "served.mp4", noise_frames(20, 64, 48), audio_streams=1)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/served.mp4"
        source = open_source(url, SourceConfig(timeout_s=5))
        assert not source.live  # a file served over HTTP has a duration: every frame is processed
        source.close()
        out = tmp_path / "out.mp4"
        result = run_job(url, str(out), build_config(), detector=detector)
        assert result.stats.frames_out == 20 == len(decode_frames(out))
        assert digest(audio_packets(out)[0]) == digest(audio_packets(clip)[0])
    finally:
        server.shutdown()
        thread.join()


def test_missing_camera_is_a_clear_error() -> None:
    with pytest.raises(SourceError, match="camera 9: cannot open"):
        open_source("9", SourceConfig())


def test_hardware_decoding_is_never_required(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A hardware decoder that cannot open the input (here: CUDA in FFmpeg, no NVIDIA device;
    on a GPU machine: it decodes) leaves the input decoded on the CPU, said once; every frame
    arrives either way."""
    import os

    frames = noise_frames(6)
    path = write_clip(tmp_path / "clip.mp4", frames)
    expected = [p.image for p in read_all(path)[0]]
    for choice in ("cuda", "vaapi", "auto"):
        caplog.clear()
        source = cast(MediaSource, open_source(str(path), SourceConfig(hw_decode=choice)))
        try:
            got = [p.image for p in source.packets() if isinstance(p, FramePacket)]
        finally:
            source.close()
        assert len(got) == len(expected)
        for a, b in zip(got, expected, strict=True):
            assert np.abs(a.astype(int) - b).mean() < 2.0  # a hardware decoder may round differently
        warned = [r for r in caplog.records if "decoding on the CPU" in r.getMessage()]
        if source.hw_device is None:  # on the CPU: said once, unless nothing was asked for
            assert len(warned) == (0 if choice == "auto" else 1), [r.getMessage() for r in warned]
        else:
            assert not warned
        if choice == "auto" and not os.path.exists("/dev/nvidiactl"):
            assert source.hw_device is None and not warned


def test_a_sink_opened_after_the_source_looped_copies_its_audio(tmp_path: Path) -> None:
    """The sink's audio templates are the first session's streams: a sink opened after the
    source looped (or reconnected), as a writer far behind or a new segment does, once
    crashed the process (PyAV read the closed container). Run in a child: a crash fails
    this test alone."""
    clip = write_clip(tmp_path / "clip.mp4", noise_frames(10), audio_streams=1)
    out = tmp_path / "out.mp4"
    script = f"""
import sys
sys.path.insert(0, {str(ROOT)!r})
from stream.config import SinkConfig, SourceConfig
from stream.frames import FramePacket
from stream.io.sinks import open_sink
from stream.io.sources import open_source
source = open_source({str(clip)!r}, SourceConfig(loop=True))
frames = []
for item in source.packets():
    if isinstance(item, FramePacket):
        frames.append(item)
        if len(frames) == 15:  # into the second session: the first container is done with
            break
sink = open_sink({str(out)!r}, SinkConfig(), source.info.rate, source.audio_templates)
for frame in frames:
    frame.anonymized = True
    sink.write_frame(frame)
sink.close()
source.close()
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(decode_frames(out)) == 15
    with av.open(str(out)) as container:
        assert len(container.streams.audio) == 1
