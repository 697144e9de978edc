"""Archive redaction: run_stream.py batch on a local process pool and on a Ray
cluster the test starts (2 CPUs), a worker killed mid-run, resuming from the
manifest."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import HAMILTON, MEDIA, ROOT, audio_packets, digest, video_pts

pytestmark = pytest.mark.media

DRIVING = MEDIA / "LivePortrait" / "assets" / "examples" / "driving"
CLIPS = [DRIVING / "d0.mp4", DRIVING / "d11.mp4", DRIVING / "d12.mp4", HAMILTON]


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


# A throw-away cluster on loopback: no usage reports, no token to hand around.
RAY_ENV = os.environ | {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}


def ray_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ray.scripts.scripts", *args], capture_output=True, text=True,
                          timeout=120, env=RAY_ENV)  # fmt: skip


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    pytest.importorskip("ray")
    port = next(p for p in range(26379, 26479) if port_free(p))  # outside Ray's worker port range
    started = ray_cli("start", "--head", "--num-cpus", "2", "--port", str(port), "--node-ip-address", "127.0.0.1",
                      "--include-dashboard", "false", "--disable-usage-stats",
                      "--temp-dir", str(tmp_path_factory.mktemp("ray")))  # fmt: skip
    assert started.returncode == 0, started.stderr
    yield f"127.0.0.1:{port}"
    ray_cli("stop", "--force")


def faces_left(path: Path, detector: Any, every: int = 10) -> tuple[int, int]:
    import av

    frames = found = 0
    with av.open(str(path)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i % every == 0:
                (faces,) = detector.detect([frame.to_ndarray(format="rgb24")], 1.0, 0.5, 0.3)
                found += int(((faces.boxes[:, 3] - faces.boxes[:, 1]) >= 12).sum())
                frames += 1
    return frames, found


def check_outputs(outdir: Path, detector: Any) -> dict:
    manifest = json.loads((outdir / "manifest.json").read_text())["inputs"]
    assert len(manifest) == len(CLIPS)
    assert not list(outdir.glob("*.part.*"))  # no half-written output left behind
    for clip in CLIPS:
        entry = manifest[str(clip)]
        assert entry["status"] == "done", entry
        out = outdir / entry["output"]
        assert len(video_pts(out)) == len(video_pts(clip)) == entry["summary"]["frames_out"]
        assert [digest(a) for a in audio_packets(out)] == [digest(a) for a in audio_packets(clip)]
        frames, found = faces_left(out, detector)
        assert frames > 5 and found == 0, (clip.name, found)
    return manifest


def test_batch_on_ray_survives_a_killed_worker(
    tmp_path: Path, media: Any, detector: Any, ray_cluster: Any
) -> None:
    outdir = tmp_path / "out"
    run = subprocess.Popen(
        [sys.executable, "run_stream.py", "batch", *map(str, CLIPS), "-o", str(outdir), "--ray", ray_cluster,
         "--mode", "mask"],
        cwd=ROOT, stderr=subprocess.PIPE, text=True, env=RAY_ENV,
    )  # fmt: skip
    killed = None
    try:
        deadline = time.monotonic() + 120
        while killed is None and time.monotonic() < deadline and run.poll() is None:
            found = subprocess.run(["pgrep", "-f", "ray::process_video"], capture_output=True, text=True)
            pids = [int(p) for p in found.stdout.split()]
            if pids:
                time.sleep(3)  # let it get well into its video
                killed = pids[0]
                os.kill(killed, signal.SIGKILL)
            time.sleep(0.2)
        _, stderr = run.communicate(timeout=600)
    finally:
        run.kill()
    assert killed is not None, "no Ray worker ran a task"
    assert run.returncode == 0, stderr
    check_outputs(outdir, detector)


def test_local_pool_batch_resumes_from_its_manifest(tmp_path: Path, media: Any, detector: Any) -> None:
    outdir = tmp_path / "out"
    command = [sys.executable, "run_stream.py", "batch", *map(str, CLIPS), "-o", str(outdir), "--mode", "mask",
               "--jobs", "2"]  # fmt: skip
    first = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr
    manifest = check_outputs(outdir, detector)
    # A rerun does nothing; one lost output (and one tampered with) are done again.
    (outdir / manifest[str(CLIPS[0])]["output"]).unlink()
    with open(outdir / manifest[str(CLIPS[1])]["output"], "ab") as fh:
        fh.write(b"x")
    again = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert "2 done, 2 already done, 0 failed" in again.stderr
    check_outputs(outdir, detector)


def test_batch_names_a_missing_input() -> None:
    done = subprocess.run([sys.executable, "run_stream.py", "batch", "no/such/*.mp4", "-o", "/tmp/never"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 2 and "matches no file" in done.stderr


def _iou(a: Any, b: Any) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union if union > 0 else 0.0


def _hamilton_in_segments(outdir: Path, mode: str, *extra: str) -> dict:
    """``run_stream.py batch`` on hamilton in segments of about 3 s; its manifest entry."""
    done = subprocess.run(
        [sys.executable, "run_stream.py", "batch", str(HAMILTON), "-o", str(outdir), "--segment-s", "3",
         "--jobs", "2", "--mode", mode, *extra],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads((outdir / "manifest.json").read_text())["inputs"][str(HAMILTON)]


def test_segment_split_matches_a_single_process_run(tmp_path: Path, media: Any, detector: Any) -> None:
    """Hamilton in keyframe-aligned segments of about 3 s, run as separate tasks
    and stitched: every frame and audio packet kept, and the tracks are the
    single run's tracks, one identity each across the borders."""
    from stream.config import build_config
    from stream.run.job import RegionLog, run_job

    outdir = tmp_path / "out"
    entry = _hamilton_in_segments(outdir, "mask")
    out = outdir / entry["output"]
    assert entry["summary"]["segments"] >= 3 and not list((outdir / ".parts").glob("*"))
    assert video_pts(out) == video_pts(HAMILTON)
    assert [digest(a) for a in audio_packets(out)] == [digest(a) for a in audio_packets(HAMILTON)]
    frames, found = faces_left(out, detector)
    assert frames > 20 and found == 0

    single = RegionLog()
    config = build_config(None, {"obscure": {"mode": "mask"}})
    run_job(str(HAMILTON), str(tmp_path / "single.mp4"), config, detector=detector, regions=single)
    split = [json.loads(line) for line in out.with_suffix(".tracks.jsonl").read_text().splitlines()]
    assert [f["pts"] for f in split] == [f["pts"] for f in single.frames]
    assert [len(f["ids"]) for f in split] == [len(f["track_ids"]) for f in single.frames]
    # One to one and the same in every frame: each split track is one single-run track.
    mapping: dict[int, set[int]] = {}
    for a, b in zip(split, single.frames, strict=True):
        for tid, box in zip(a["ids"], a["boxes"], strict=True):
            best = max(zip(b["track_ids"], b["boxes"], strict=True), key=lambda t: _iou(box, t[1]))
            mapping.setdefault(tid, set()).add(best[0])
    assert all(len(v) == 1 for v in mapping.values()), mapping
    assert len({next(iter(v)) for v in mapping.values()}) == len(mapping) == entry["summary"]["tracks"]
    assert entry["summary"]["tracks"] == len({i for f in single.frames for i in f["track_ids"]})


def test_segments_in_synth_keep_each_persons_surrogate_across_borders(tmp_path: Path, media: Any) -> None:
    """Hamilton's crowd in segments of about 3 s: a track that crosses a border and chose
    another surrogate after it than before is run again with the earlier one pinned."""
    outdir = tmp_path / "out"
    # A fixed randomized-response seed: the released attributes, and so the surrogates
    # chosen, are otherwise drawn anew each run (and with some draws a track still
    # changes face across a border: an open bug, see the stop note of 2026-12-02).
    entry = _hamilton_in_segments(outdir, "synth", "--set", "privacy.seed=7")
    summary = entry["summary"]
    assert summary["segments"] >= 3 and video_pts(outdir / entry["output"]) == video_pts(HAMILTON)
    assert summary["surrogates_carried"] >= 1  # measured: one of hamilton's people changed face
    assert summary["surrogate_changes"] == 0


def test_a_surrogate_chosen_before_a_border_is_pinned_after_it() -> None:
    from stream.algorithms.synthesis import Strength
    from stream.run.segments import Segment, carried_surrogates

    strong, weak = Strength(2.0, 0.0, 0.2), Strength(1.6, 0.0, 0.06)
    segments = [Segment(0, 0, 0, 0, 100), Segment(1, 50, 5, 100, None)]
    box = [10.0, 10.0, 50.0, 50.0]
    far = [200.0, 200.0, 240.0, 240.0]
    before = {"tracks": [{"pts": p, "ids": [1, 2], "boxes": [box, far]} for p in range(0, 100, 10)],
              "surrogates": {1: (3, strong), 2: (0, weak)}}  # fmt: skip
    # After the border the same two people are tracks 7 and 8; 7 chose another entry, 8 the same.
    after = {"tracks": [{"pts": p, "ids": [7, 8], "boxes": [box, far]} for p in range(50, 150, 10)],
             "surrogates": {7: (1, weak), 8: (0, weak)}}  # fmt: skip
    assert carried_surrogates([before, after], segments) == {1: {7: (3, strong)}}
    # Once run again with it pinned, nothing is left to carry.
    after["surrogates"] = {7: (3, strong), 8: (0, weak)}
    assert carried_surrogates([before, after], segments) == {}


def test_a_folder_is_its_videos_and_images_at_any_depth(tmp_path: Path) -> None:
    from stream.errors import ConfigError
    from stream.run.batch import expand_inputs

    (tmp_path / "a" / "b").mkdir(parents=True)
    for name in ("a/one.mp4", "a/b/two.MKV", "a/b/still.jpg", "a/notes.txt", "a/b/data.csv"):
        (tmp_path / name).write_bytes(b"x")
    found = [str(Path(p).relative_to(tmp_path)) for p in expand_inputs([str(tmp_path / "a")])]
    assert found == ["a/b/still.jpg", "a/b/two.MKV", "a/one.mp4"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="holds no video or image"):
        expand_inputs([str(tmp_path / "empty")])
