"""The command line: one clear line and a non-zero exit for bad input; reports; the demo."""

import functools
import json
import operator
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from conftest import ROOT, audio_packets, decode_frames, noise_frames, video_pts, write_clip


def cli(*args: Any, cwd: Any = None, timeout: Any = 120) -> Any:
    return subprocess.run([sys.executable, str(ROOT / "run_stream.py"), *args], capture_output=True,
                          text=True, cwd=cwd, timeout=timeout)  # fmt: skip


def one_line_error(result: Any, code: Any, *fragments: Any) -> None:
    assert result.returncode == code, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_missing_file(tmp_path: Path) -> None:
    one_line_error(cli(str(tmp_path / "nope.mp4"), "-o", str(tmp_path / "o.mp4")), 3, "no such file")


def test_corrupt_container(tmp_path: Path) -> None:
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 500)
    one_line_error(cli(str(bad), "-o", str(tmp_path / "o.mp4")), 3, "not a readable video")


def test_url_that_does_not_answer(tmp_path: Path) -> None:
    result = cli("rtsp://127.0.0.1:9/cam", "-o", str(tmp_path / "o.mp4"), "--timeout", "2")
    one_line_error(result, 3, "rtsp://127.0.0.1:9/cam")


def test_unknown_option_and_bad_value(tmp_path: Path) -> None:
    one_line_error(
        cli("x.mp4", "-o", "y.mp4", "--blurriness", "3"), 2, "unrecognized arguments: --blurriness"
    )
    one_line_error(cli("x.mp4", "-o", "y.mp4", "--mode", "smudge"), 2, "invalid choice: 'smudge'")
    clip = write_clip(tmp_path / "c.mp4", noise_frames(3))
    one_line_error(cli(str(clip), "-o", str(tmp_path / "o.mp4"), "--min-face", "1"), 2, "detect.min_face")
    config = tmp_path / "c.toml"
    config.write_text("[obscure]\nmode = 'blur'\nsigma = 3\n")
    one_line_error(cli(str(clip), "-o", str(tmp_path / "o.mp4"), "--config", str(config)), 2, "obscure.sigma")


def test_bad_output(tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "c.mp4", noise_frames(3))
    one_line_error(cli(str(clip), "-o", str(tmp_path / "o.xyz")), 5, "unknown container .xyz")
    one_line_error(cli(str(clip), "-o", str(tmp_path / "no" / "such" / "o.mp4")), 5, "does not exist")


def test_damaged_input_exits_non_zero_with_a_playable_output(tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "c.mp4", noise_frames(40, 96, 64))
    data = bytearray(clip.read_bytes())
    # Overwrite the middle of the media data: packets there no longer decode.
    start = data.find(b"mdat") + len(data) // 3
    data[start : start + 4000] = b"\xff" * 4000
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(bytes(data))
    out = tmp_path / "o.mp4"
    result = cli(str(bad), "-o", str(out), "-q")
    assert result.returncode in (0, 4), result.stderr
    assert "Traceback" not in result.stderr
    if result.returncode == 4:
        assert "could not be decoded" in result.stderr
    assert len(decode_frames(out)) > 0


def test_report_and_regions(tmp_path: Path, demo_clip: Path) -> None:
    out, report, regions = tmp_path / "o.mkv", tmp_path / "r.json", tmp_path / "regions.jsonl"
    result = cli(str(demo_clip), "-o", str(out), "--mode", "pixelate", "--report", str(report),
                 "--regions", str(regions))  # fmt: skip
    assert result.returncode == 0, result.stderr
    data = json.loads(report.read_text())
    summary = data["summary"]
    assert summary["frames_in"] == summary["frames_out"] == 100
    assert summary["audio_packets_copied"] > 100 and summary["tracks"] >= 1
    assert data["config"]["obscure"]["mode"] == "pixelate"
    lines = regions.read_text().splitlines()
    assert len(lines) == 100 and all(json.loads(line)["boxes"] for line in lines)
    assert "frames     100 in, 100 out" in result.stderr


def test_demo_runs_from_any_folder(tmp_path: Path) -> None:
    result = cli("--demo", "-o", str(tmp_path / "demo.mp4"), "-q", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert len(decode_frames(tmp_path / "demo.mp4")) == 100


def test_models_verify() -> None:
    result = cli("models", "--verify")
    assert result.returncode == 0 and "centerface" in result.stdout and " ok " in result.stdout


@pytest.mark.parametrize("mode", ["blur", "pixelate", "mask"])
def test_modes_change_the_face_and_only_around_it(
    tmp_path: Path, demo_clip: Path, detector: Any, mode: Any
) -> None:
    out = tmp_path / f"{mode}.mp4"
    assert cli(str(demo_clip), "-o", str(out), "--mode", mode, "-q").returncode == 0
    original, anonymized = decode_frames(demo_clip)[50], decode_frames(out)[50]
    (faces,) = detector.detect([original], 1.0, 0.5)
    x1, y1, x2, y2 = faces.boxes[0].astype(int)

    face_change = abs(original[y1:y2, x1:x2].astype(int) - anonymized[y1:y2, x1:x2].astype(int)).mean()
    assert face_change > 10  # codec noise alone is about 1
    far = abs(original[:, :40].astype(int) - anonymized[:, :40].astype(int))
    assert far.mean() < 4  # far from the face nothing changed but codec noise


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_a_stop_signal_leaves_a_playable_file(tmp_path: Path, sig: Any, code: Any) -> None:
    """Ctrl-C, docker stop (SIGTERM) and a closed terminal (SIGHUP) all finalize the output."""
    clip = write_clip(tmp_path / "long.mp4", noise_frames(400, 320, 240))
    out = tmp_path / "o.mp4"
    report = tmp_path / "report.json"
    proc = subprocess.Popen([sys.executable, str(ROOT / "run_stream.py"), str(clip), "-o", str(out), "-q",
                             "--mode", "blur", "--report", str(report)], stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.time() + 60
    while (not out.exists() or out.stat().st_size < 2000) and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert "interrupted" in err and "Traceback" not in err
    frames = decode_frames(out)
    assert 0 < len(frames) < 400
    data = json.loads(report.read_text())
    assert "interrupted" in data["error"] and data["summary"]["frames_out"] == len(frames)


def test_a_killed_run_leaves_every_frame_but_the_last_second(tmp_path: Path) -> None:
    """SIGKILL (or an out-of-memory kill, or a power cut) cannot be handled: the file is
    written in fragments, so it still opens and holds all but its last second."""
    clip = write_clip(tmp_path / "long.mp4", noise_frames(500, 320, 240))
    out, regions = tmp_path / "o.mp4", tmp_path / "regions.jsonl"
    proc = subprocess.Popen([sys.executable, str(ROOT / "run_stream.py"), str(clip), "-o", str(out), "-q",
                             "--mode", "blur", "--realtime", "--regions", str(regions)],
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.time() + 90
    while time.time() < deadline and (not regions.exists() or regions.read_text().count("\n") < 100):
        time.sleep(0.05)
    written = [json.loads(line) for line in regions.read_text().splitlines()]
    proc.kill()
    proc.communicate(timeout=30)
    assert len(written) >= 100, "the run did not get going"
    frames = decode_frames(out)
    second = 25  # frames: the clip runs at 25 fps
    assert len(frames) >= len(written) - second, (
        f"{len(frames)} decoded, {len(written)} written before the kill"
    )
    assert len(frames) <= len(written)


def test_fragmented_output_holds_the_same_frames_and_audio(tmp_path: Path, demo_clip: Path) -> None:
    """A normal run's fragmented MP4 equals a plain one in frames, timing and audio packets."""
    fragmented, plain = tmp_path / "frag.mp4", tmp_path / "plain.mp4"
    assert cli(str(demo_clip), "-o", str(fragmented), "-q", "--mode", "blur").returncode == 0
    assert (
        cli(str(demo_clip), "-o", str(plain), "-q", "--mode", "blur", "--set", "sink.fragment_s=0").returncode
        == 0
    )
    assert video_pts(fragmented) == video_pts(plain)
    assert audio_packets(fragmented) == audio_packets(plain) and audio_packets(plain)[0]
    a, b = decode_frames(fragmented), decode_frames(plain)
    assert len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    with av.open(str(fragmented)) as f, av.open(str(plain)) as p:
        assert f.duration is not None and p.duration is not None
        assert abs(f.duration - p.duration) < 50_000  # microseconds


def test_segment_time_rotates_files_like_a_recorder(tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "long.mp4", noise_frames(130, 160, 96), audio_streams=1)
    out = tmp_path / "rec.mp4"
    result = cli(str(clip), "-o", str(out), "-q", "--mode", "blur", "--segment-time", "2")
    assert result.returncode == 0, result.stderr
    files = sorted(tmp_path.glob("rec_*.mp4"))
    assert [f.name for f in files] == ["rec_000.mp4", "rec_001.mp4", "rec_002.mp4"]
    pts = [video_pts(f) for f in files]
    assert [len(p) for p in pts] == [50, 50, 30]
    assert functools.reduce(operator.iadd, pts, []) == video_pts(
        clip
    )  # one clock across the files, nothing lost
    assert sum(len(audio_packets(f)[0]) for f in files) == len(audio_packets(clip)[0])


def test_a_full_disk_is_an_output_error(tmp_path: Path, demo_clip: Path) -> None:
    """The trailer (or any write) failing, as on a full disk, exits 5, not 70."""
    full = tmp_path / "full.mp4"
    full.symlink_to("/dev/full")
    for fragment in ("1", "0"):
        result = cli(
            str(demo_clip), "-o", str(full), "-q", "--mode", "blur", "--set", f"sink.fragment_s={fragment}"
        )
        one_line_error(result, 5, "full.mp4")


@pytest.mark.media
def test_privacy_over_a_folder_of_faces(tmp_path: Path) -> None:
    from conftest import MEDIA

    out = tmp_path / "p.json"
    result = cli("privacy", str(MEDIA / "face-api.js" / "examples" / "images" / "penny"), "--json", str(out))
    assert result.returncode == 0, result.stderr
    data = json.loads(out.read_text())
    assert len(data["faces"]) == 5 and data["figures"]["k"] >= 1
    assert "faces, " in result.stdout and "changes to reach" in result.stdout
    (tmp_path / "empty").mkdir()
    one_line_error(cli("privacy", str(tmp_path / "empty")), 2, "no photos")


def test_aac_from_mpeg_ts_goes_into_a_fragmented_mp4_as_raw_aac(tmp_path: Path, demo_clip: Path) -> None:
    """MPEG-TS carries AAC in ADTS frames, without the codec header MP4 needs: the header is
    read from the first frame, the ADTS headers come off, and the output stays fragmented
    (it survives a kill) with every audio frame in it, decodable."""
    ts = tmp_path / "in.ts"
    with av.open(str(demo_clip)) as src, av.open(str(ts), "w") as dst:
        streams = {
            s.index: dst.add_stream_from_template(s) for s in src.streams if s.type in ("video", "audio")
        }
        for packet in src.demux():
            if packet.dts is not None and packet.stream.index in streams:
                packet.stream = streams[packet.stream.index]
                dst.mux(packet)
    with av.open(str(ts)) as container:
        assert not container.streams.audio[0].codec_context.extradata  # ADTS, no header
        frames_in = sum(1 for _ in container.decode(audio=0))
    out = tmp_path / "out.mp4"
    result = cli(str(ts), "-o", str(out), "-q", "--mode", "blur")
    assert result.returncode == 0 and "unfragmented" not in result.stderr, result.stderr
    with open(out, "rb") as fh:
        assert b"moof" in fh.read()  # fragmented
    with av.open(str(out)) as container:
        assert sum(1 for _ in container.decode(audio=0)) == frames_in


def test_set_up_installs_the_anonymousnet_command() -> None:
    """``pip install .`` (set-up installs the project so) gives the same command line."""
    import shutil

    from conftest import ROOT

    local = ROOT / ".venv" / "bin" / "anonymousnet"
    command = local if local.exists() else shutil.which("anonymousnet")
    assert command, "no anonymousnet command: run ./setup.sh"
    result = subprocess.run([str(command), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "--mode" in result.stdout, result.stderr
