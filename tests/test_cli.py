"""The command line: one clear line and a non-zero exit for bad input; reports; the demo."""

import json
import signal
import subprocess
import sys
import time

import pytest
from conftest import ROOT, decode_frames, noise_frames, write_clip


def cli(*args, cwd=None, timeout=120):
    return subprocess.run([sys.executable, str(ROOT / "run_stream.py"), *args], capture_output=True,
                          text=True, cwd=cwd, timeout=timeout)  # fmt: skip


def one_line_error(result, code, *fragments):
    assert result.returncode == code, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_missing_file(tmp_path):
    one_line_error(cli(str(tmp_path / "nope.mp4"), "-o", str(tmp_path / "o.mp4")), 3, "no such file")


def test_corrupt_container(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 500)
    one_line_error(cli(str(bad), "-o", str(tmp_path / "o.mp4")), 3, "not a readable video")


def test_url_that_does_not_answer(tmp_path):
    result = cli("rtsp://127.0.0.1:9/cam", "-o", str(tmp_path / "o.mp4"), "--timeout", "2")
    one_line_error(result, 3, "rtsp://127.0.0.1:9/cam")


def test_unknown_option_and_bad_value(tmp_path):
    one_line_error(
        cli("x.mp4", "-o", "y.mp4", "--blurriness", "3"), 2, "unrecognized arguments: --blurriness"
    )
    one_line_error(cli("x.mp4", "-o", "y.mp4", "--mode", "smudge"), 2, "invalid choice: 'smudge'")
    clip = write_clip(tmp_path / "c.mp4", noise_frames(3))
    one_line_error(cli(str(clip), "-o", str(tmp_path / "o.mp4"), "--min-face", "1"), 2, "detect.min_face")
    config = tmp_path / "c.toml"
    config.write_text("[obscure]\nmode = 'blur'\nsigma = 3\n")
    one_line_error(cli(str(clip), "-o", str(tmp_path / "o.mp4"), "--config", str(config)), 2, "obscure.sigma")


def test_bad_output(tmp_path):
    clip = write_clip(tmp_path / "c.mp4", noise_frames(3))
    one_line_error(cli(str(clip), "-o", str(tmp_path / "o.xyz")), 5, "unknown container .xyz")
    one_line_error(cli(str(clip), "-o", str(tmp_path / "no" / "such" / "o.mp4")), 5, "does not exist")


def test_damaged_input_exits_non_zero_with_a_playable_output(tmp_path):
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


def test_report_and_regions(tmp_path, demo_clip):
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


def test_demo_runs_from_any_folder(tmp_path):
    result = cli("--demo", "-o", str(tmp_path / "demo.mp4"), "-q", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert len(decode_frames(tmp_path / "demo.mp4")) == 100


def test_models_verify():
    result = cli("models", "--verify")
    assert result.returncode == 0 and "centerface" in result.stdout and " ok " in result.stdout


@pytest.mark.parametrize("mode", ["blur", "pixelate", "mask"])
def test_modes_change_the_face_and_only_around_it(tmp_path, demo_clip, detector, mode):
    out = tmp_path / f"{mode}.mp4"
    assert cli(str(demo_clip), "-o", str(out), "--mode", mode, "-q").returncode == 0
    original, anonymized = decode_frames(demo_clip)[50], decode_frames(out)[50]
    (faces,) = detector.detect([original], 1.0, 0.5)
    x1, y1, x2, y2 = faces.boxes[0].astype(int)

    face_change = abs(original[y1:y2, x1:x2].astype(int) - anonymized[y1:y2, x1:x2].astype(int)).mean()
    assert face_change > 10  # codec noise alone is about 1
    far = abs(original[:, :40].astype(int) - anonymized[:, :40].astype(int))
    assert far.mean() < 4  # far from the face nothing changed but codec noise


def test_interrupt_leaves_a_playable_file(tmp_path):
    clip = write_clip(tmp_path / "long.mp4", noise_frames(400, 320, 240))
    out = tmp_path / "o.mp4"
    report = tmp_path / "report.json"
    proc = subprocess.Popen([sys.executable, str(ROOT / "run_stream.py"), str(clip), "-o", str(out), "-q",
                             "--report", str(report)], stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.time() + 60
    while (not out.exists() or out.stat().st_size < 2000) and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    frames = decode_frames(out)
    assert 0 < len(frames) < 400
    data = json.loads(report.read_text())
    assert "interrupted" in data["error"] and data["summary"]["frames_out"] == len(frames)


@pytest.mark.media
def test_privacy_over_a_folder_of_faces(tmp_path):
    from conftest import MEDIA

    out = tmp_path / "p.json"
    result = cli("privacy", str(MEDIA / "face-api.js" / "examples" / "images" / "penny"), "--json", str(out))
    assert result.returncode == 0, result.stderr
    data = json.loads(out.read_text())
    assert len(data["faces"]) == 5 and data["figures"]["k"] >= 1
    assert "faces, " in result.stdout and "changes to reach" in result.stdout
    (tmp_path / "empty").mkdir()
    one_line_error(cli("privacy", str(tmp_path / "empty")), 2, "no photos")
