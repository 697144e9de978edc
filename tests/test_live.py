"""Live operation against real servers on loopback: GStreamer's RTSP server as the
source, FFmpeg's RTSP listener (through PyAV) as the receiver of what is
published, a silent TCP server as the frozen peer, and HLS over HTTP.

The GStreamer server runs under Debian's ``/usr/bin/python3`` (python3-gi,
gir1.2-gst-rtsp-server-1.0; ``setup.sh`` installs them when run as root).
``.ci/run`` starts one for the whole suite and names it in
``ANONYMOUSNET_TEST_RTSP``; the fault tests start and kill their own.

Runs whose output is checked for faces use the mask mode, so that "the
reference detector finds no face" is exact: a blurred face can still look
like a face-shaped blob to a detector (blur's coverage of every face is
what tests/test_media.py measures).
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import HAMILTON, ROOT, audio_packets, free_port, video_pts

pytestmark = pytest.mark.media

SYSTEM_PYTHON = "/usr/bin/python3"
SERVER = ROOT / "tests" / "servers" / "rtsp_server.py"
RECORDER = ROOT / "tests" / "servers" / "rtsp_recorder.py"


def gstreamer_missing() -> str | None:
    probe = [SYSTEM_PYTHON, "-c", "import gi; gi.require_version('GstRtspServer', '1.0')"]
    if not os.path.exists(SYSTEM_PYTHON) or subprocess.run(probe, capture_output=True).returncode:
        return (
            "GStreamer's RTSP server is not installed: run setup.sh as root, or apt-get install "
            "python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-{base,good,bad,ugly} gstreamer1.0-libav"
        )
    return None


def start_server(port: int) -> subprocess.Popen:
    """The GStreamer RTSP server serving /live and /clip (hamilton) on ``port``; ready when it returns."""
    why = gstreamer_missing()
    if why:
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    proc = subprocess.Popen(
        [SYSTEM_PYTHON, str(SERVER), "--port", str(port), "--clip", str(HAMILTON)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, sig)
    proc.wait(10)


def start_recorder(url: str, out: Path, timeout: float = 60) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, str(RECORDER), url, str(out), "--timeout", str(timeout)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "listening"
    return proc


def anonymize(*args: str, timeout: float = 120) -> tuple[subprocess.CompletedProcess, dict, float]:
    """run_stream.py with ``args`` and a report; returns the process, the report's summary, wall seconds."""
    report = (
        Path(os.environ.get("PYTEST_TMP", "/tmp")) / f"live-report-{os.getpid()}-{time.monotonic_ns()}.json"
    )
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "run_stream.py", *args, "--report", str(report), "-q"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    elapsed = time.monotonic() - started
    document = json.loads(report.read_text())
    report.unlink()
    return done, document["summary"] | {"error": document["error"]}, elapsed


def start_anonymizing(*args: str, report: Path) -> subprocess.Popen:
    """run_stream.py with ``args`` in the background, its report to ``report``, stderr captured."""
    return subprocess.Popen([sys.executable, "run_stream.py", *args, "--report", str(report), "-q"],
                            cwd=ROOT, stderr=subprocess.PIPE, text=True)  # fmt: skip


def faces_in(path: Path, detector: Any, every: int = 3) -> tuple[int, int]:
    """(frames looked at, faces at least 12 px tall found at full resolution, score >= 0.5)."""
    import av

    frames = found = 0
    with av.open(str(path)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i % every:
                continue
            (faces,) = detector.detect([frame.to_ndarray(format="rgb24")], 1.0, 0.5, 0.3)
            found += int(((faces.boxes[:, 3] - faces.boxes[:, 1]) >= 12).sum())
            frames += 1
    return frames, found


def frame_count(path: Path) -> int:
    return len(video_pts(path))


@pytest.fixture(scope="module")
def rtsp_server() -> Iterator[Any]:
    """rtsp://host:port of a GStreamer server with /live and /clip: the CI's, or one of our own."""
    url = os.environ.get("ANONYMOUSNET_TEST_RTSP")
    if url:
        yield url.rstrip("/")
        return
    port = free_port()
    proc = start_server(port)
    yield f"rtsp://127.0.0.1:{port}"
    stop(proc)


def test_reference_clip_really_has_faces(media: Any, detector: Any) -> None:
    frames, found = faces_in(HAMILTON, detector, every=5)
    assert found > frames  # so "no face found" in the outputs below means something


def test_rtsp_in_rtsp_out_is_anonymized_with_audio(
    tmp_path: Path, media: Any, detector: Any, rtsp_server: Any
) -> None:
    received = tmp_path / "received.mkv"
    recorder = start_recorder(f"rtsp://127.0.0.1:{(port := free_port())}/out", received)
    done, summary, _ = anonymize(
        f"{rtsp_server}/clip", "-o", f"rtsp://127.0.0.1:{port}/out", "--max-frames", "150", "--mode", "mask"
    )
    assert done.returncode == 0, done.stderr
    recorder.wait(30)
    publish = summary["publish"]
    assert summary["frames_in"] == 150
    assert publish["frames_published"] + publish["frames_dropped"] == summary["frames_out"]
    assert publish["frames_published"] >= 30  # what a loaded 2-core machine still sends
    assert frame_count(received) == publish["frames_published"]
    frames, found = faces_in(received, detector)
    assert frames >= 10 and found == 0
    # Audio went through bit for bit: every received packet is one of the clip's own.
    sent = set(audio_packets(HAMILTON)[0])
    got = audio_packets(received)[0]
    assert len(got) > 100 and all(packet in sent for packet in got)
    lat = summary["latency_ms"]
    assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"]


def test_live_pattern_over_udp_to_a_file(tmp_path: Path, media: Any, rtsp_server: Any) -> None:
    out = tmp_path / "live.mkv"
    done, summary, _ = anonymize(
        f"{rtsp_server}/live", "-o", str(out), "--rtsp-transport", "udp", "--max-frames", "90"
    )
    assert done.returncode == 0, done.stderr
    assert summary["live"] and summary["frames_in"] == 90
    assert summary["frames_out"] + summary["frames_dropped"] == 90
    pts = video_pts(out)
    assert len(pts) == summary["frames_out"] and all(b > a for a, b in itertools.pairwise(pts))
    assert len(audio_packets(out)[0]) > 50  # 3 s of the tone


def test_source_server_killed_and_restarted_mid_stream(tmp_path: Path, media: Any, detector: Any) -> None:
    port = free_port()
    server = start_server(port)
    out = tmp_path / "resumed.mkv"
    run = start_anonymizing(f"rtsp://127.0.0.1:{port}/clip", "-o", str(out), "--max-frames", "210", "--mode",
                            "mask", "--set", "source.reconnect_backoff_s=0.3", report=tmp_path / "r.json")  # fmt: skip
    try:
        time.sleep(4)
        stop(server, signal.SIGKILL)
        time.sleep(1.5)
        server = start_server(port)
        _, stderr = run.communicate(timeout=90)
    finally:
        run.kill()
        stop(server)
    assert run.returncode == 0, stderr
    summary = json.loads((tmp_path / "r.json").read_text())["summary"]
    assert summary["input_reconnects"] >= 1
    assert "reconnected" in stderr
    pts = video_pts(out)
    assert len(pts) == summary["frames_out"] and all(b > a for a, b in itertools.pairwise(pts))
    # The clip starts again after the restart: its faces are there, and hidden.
    assert summary["frames_in"] == 210 and summary["faces_detected"] > 200
    frames, found = faces_in(out, detector)
    assert frames >= 20 and found == 0


def test_sink_server_killed_run_goes_on_and_publishes_again(
    tmp_path: Path, media: Any, detector: Any
) -> None:
    port = free_port()
    url = f"rtsp://127.0.0.1:{port}/out"
    first, second = tmp_path / "first.mkv", tmp_path / "second.mkv"
    recorder = start_recorder(url, first)
    report = tmp_path / "r.json"
    run = start_anonymizing(str(HAMILTON), "--realtime", "--loop", "-o", url, "--max-frames", "300", "--mode", "mask",
                            "--set", "sink.reconnect_backoff_s=0.3", report=report)  # fmt: skip
    try:
        time.sleep(4)
        stop(recorder, signal.SIGKILL)
        time.sleep(1)
        recorder = start_recorder(url, second)
        _, stderr = run.communicate(timeout=90)
        recorder.wait(30)
    finally:
        run.kill()
        stop(recorder)
    assert run.returncode == 0, stderr
    summary = json.loads(report.read_text())["summary"]
    publish = summary["publish"]
    assert summary["frames_in"] == 300  # capture went on at its pace throughout
    assert publish["reconnects"] >= 1 and publish["frames_dropped"] > 0
    assert frame_count(second) >= 30
    frames, found = faces_in(second, detector)
    assert frames >= 10 and found == 0


class SilentServer:
    """Accepts TCP connections and never answers (a frozen server)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                self.held.append(self.sock.accept()[0])
            except OSError:
                return

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


def test_publishing_to_a_frozen_server_does_not_stall_capture(tmp_path: Path) -> None:
    server = SilentServer()
    try:
        done, summary, elapsed = anonymize(
            "lavfi:testsrc2=size=640x360:rate=30", "--realtime", "-o", f"rtsp://127.0.0.1:{server.port}/out",
            "--max-frames", "150", "--set", "sink.timeout_s=1",
        )  # fmt: skip
    finally:
        server.close()
    # Capture kept its pace, and a run that published nothing says so (exit 5, not 0).
    assert done.returncode == 5 and "nothing was published" in done.stderr, done.stderr
    publish = summary["publish"]
    assert summary["frames_in"] == 150 and elapsed < 25  # 5 s of input, plus start-up and shutdown
    # The pipeline went on handing frames over (and dropping them) instead of waiting.
    assert publish["frames_published"] == 0 and summary["frames_out"] >= 100, summary
    assert publish["last_error"]


def test_reading_from_a_frozen_server_fails_in_time_with_a_clear_error() -> None:
    server = SilentServer()
    try:
        done, _summary, elapsed = anonymize(
            f"rtsp://127.0.0.1:{server.port}/x", "-o", "null", "--timeout", "1"
        )
    finally:
        server.close()
    assert done.returncode != 0 and elapsed < 20
    assert "no answer within 1 s" in done.stderr


def test_hls_over_http(tmp_path: Path, media: Any) -> None:
    import functools
    import http.server

    import av

    from stream.config import SourceConfig
    from stream.io.sources import open_source

    hls = tmp_path / "hls"
    hls.mkdir()
    with av.open(str(HAMILTON)) as src, av.open(str(hls / "index.m3u8"), "w", format="hls",
                                                 options={"hls_time": "2", "hls_list_size": "0"}) as dst:  # fmt: skip
        streams = {s.index: dst.add_stream_from_template(s) for s in src.streams}
        for packet in src.demux():
            if packet.dts is not None:
                packet.stream = streams[packet.stream.index]
                dst.mux(packet)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(hls))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    handler.log_message = lambda *a: None  # type: ignore[attr-defined]
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        source = open_source(f"http://127.0.0.1:{httpd.server_address[1]}/index.m3u8", SourceConfig())
        frames = sum(1 for p in source.packets() if hasattr(p, "image"))
        source.close()
    finally:
        httpd.shutdown()
    assert frames == frame_count(HAMILTON)


PASSWORD = "p@ss/w:rd"


def test_passwords_reach_no_message_report_log_or_metric(
    tmp_path: Path, media: Any, rtsp_server: Any
) -> None:
    """Camera and server passwords (holding '@', '/' and ':') never leave the process."""
    host = rtsp_server.split("//", 1)[1]
    source = f"rtsp://admin:{urllib.parse.quote(PASSWORD, safe='')}@{host}/clip"
    out, report, regions, port = tmp_path / "o.mp4", tmp_path / "r.json", tmp_path / "g.jsonl", free_port()
    run = subprocess.Popen([sys.executable, "run_stream.py", source, "-o", str(out), "--mode", "blur",
                            "--max-frames", "100", "--metrics-port", str(port), "--report", str(report),
                            "--regions", str(regions)], cwd=ROOT, stderr=subprocess.PIPE, text=True)  # fmt: skip
    scraped = ""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and "frames_total" not in scraped and run.poll() is None:
        try:
            scraped = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
        except OSError:
            time.sleep(0.2)
    _, stderr = run.communicate(timeout=60)
    assert run.returncode == 0, stderr
    assert "frames_total" in scraped
    unreachable = f"rtsp://admin:{PASSWORD}@127.0.0.1:{free_port()}/out"
    failed = subprocess.run([sys.executable, "run_stream.py", str(out), "-o", unreachable, "--mode", "blur",
                             "--set", "sink.connect_attempts=2", "--set", "sink.reconnect_backoff_s=0.1",
                             "--report", str(tmp_path / "f.json")], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)  # fmt: skip
    assert failed.returncode == 5, failed.stderr  # an output that never connects is an error, in bounded time
    assert "could not connect in 2 attempts" in failed.stderr
    batch = subprocess.run([sys.executable, "run_stream.py", "batch", str(out), "-o", str(tmp_path / "b"),
                            "--retries", "0", "--backend", f"triton://admin:{PASSWORD}@127.0.0.1:9"],
                           cwd=ROOT, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert batch.returncode != 0
    seen = {
        "stderr": stderr + failed.stderr + batch.stderr,
        "report": report.read_text() + (tmp_path / "f.json").read_text(),
        "regions": regions.read_text(),
        "manifest": (tmp_path / "b" / "manifest.json").read_text(),
        "metrics": scraped,
    }
    for where, text in seen.items():
        for form in (PASSWORD, urllib.parse.quote(PASSWORD, safe=""), "p@ss", "w:rd"):
            assert form not in text, f"the password shows in the {where}"
    assert "***@" in seen["report"] and "***@" in failed.stderr


def test_a_file_published_to_rtsp_is_paced_at_its_own_rate(tmp_path: Path, media: Any) -> None:
    """Read as fast as possible, a file outruns the server and loses frames on the way; an
    rtsp:// output paces it at its own rate unless --no-realtime says otherwise."""
    received = tmp_path / "received.mkv"
    recorder = start_recorder(f"rtsp://127.0.0.1:{(port := free_port())}/out", received)
    started = time.monotonic()
    done, summary, _ = anonymize(str(HAMILTON), "-o", f"rtsp://127.0.0.1:{port}/out", "--max-frames", "100",
                                 "--mode", "blur")  # fmt: skip
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    recorder.wait(30)
    assert summary["live"] and elapsed >= 100 / 30 - 0.5  # the clip's 4 s, not faster
    # Every frame written is accounted for: handed to the server, or dropped by the publisher
    # while it connects (about half a second); none lost on the way. (How many the run writes
    # depends on the machine: a 2-core one at 27 frames/s drops a third at capture.)
    publish = summary["publish"]
    assert publish["frames_published"] == publish["frames_handed"] > 0, publish
    assert publish["frames_handed"] + publish["frames_dropped"] == summary["frames_out"], (publish, summary)
    assert publish["frames_dropped"] <= 20, publish


def test_a_live_run_rewrites_its_review_page_while_it_runs(tmp_path: Path, rtsp_server: Any) -> None:
    from stream.config import build_config
    from stream.run.job import Review, run_job

    config = build_config(None, {"obscure": {"mode": "blur"}, "runner": {"max_frames": 270},
                                 "review": {"every_min": 0.05}})  # fmt: skip
    page = tmp_path / "review" / "index.html"
    seen: list[str] = []
    done = threading.Event()

    def watch() -> None:  # what a reviewer opening the page mid-run would see
        while not done.wait(0.2):
            if page.exists() and not seen:
                seen.append(page.read_text())

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        result = run_job(f"{rtsp_server}/live", str(tmp_path / "live.mkv"), config,
                         review=Review.for_config(tmp_path / "review", config))  # fmt: skip
    finally:
        done.set()
        watcher.join()
    assert result.live and result.review is not None
    assert seen and "The run is still going" in seen[0]
    final = page.read_text()
    assert "The run is still going" not in final and "frames in / out" in final
