"""The review page: gathered from the output only, rendered in a real browser, written
for finished and live runs."""

from __future__ import annotations

import base64
import html as html_text
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from conftest import FACENET, HAMILTON, ROOT, decode_frames

SCREENSHOTS = ROOT / "out" / "review-screenshots"  # for people to look at (git ignores out/)
CHROMIUM = Path("/usr/bin/chromium")


def _run(clip: Path, folder: Path, overrides: dict[str, dict[str, Any]]) -> dict[str, Any]:
    from stream.config import build_config
    from stream.run.job import RegionLog, Review, run_job

    config = build_config(None, overrides)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "regions.jsonl", "w") as regions:
        run_job(str(clip), str(folder / "out.mp4"), config, regions=RegionLog(regions),
                report=folder / "report.json", review=Review.for_config(folder / "review", config))  # fmt: skip
    return {
        "folder": folder,
        "report": json.loads((folder / "report.json").read_text()),
        "html": (folder / "review" / "index.html").read_text(),
        "clip": clip,
        "tracks": {t for line in open(folder / "regions.jsonl") for t in json.loads(line)["track_ids"]},
    }


@pytest.fixture(scope="session")
def hamilton_synth(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The hamilton clip in synth mode (the default), with its report, regions and page."""
    return _run(HAMILTON, tmp_path_factory.mktemp("hamilton"), {})


@pytest.fixture(scope="session")
def facenet_blur(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The 1080p facenet street clip in blur mode."""
    return _run(FACENET, tmp_path_factory.mktemp("facenet"), {"obscure": {"mode": "blur"}})


@pytest.fixture(scope="session")
def demo_blur(tmp_path_factory: pytest.TempPathFactory, demo_clip: Path) -> dict[str, Any]:
    return _run(demo_clip, tmp_path_factory.mktemp("demo"), {"obscure": {"mode": "blur"}})


def _images(html: str, css_class: str) -> list[dict[str, Any]]:
    """The page's <img> tags of a class, with their attributes and decoded pixels (RGB)."""
    found = []
    for tag in re.findall(r"<img [^>]*>", html):
        attrs = {k: html_text.unescape(v) for k, v in re.findall(r'([\w-]+)="([^"]*)"', tag)}
        if css_class not in attrs.get("class", "").split():
            continue
        data = base64.b64decode(attrs["src"].split(",", 1)[1])
        decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        assert decoded is not None, f"a thumbnail that is not a JPEG: {tag[:80]}"
        pixels = cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)
        found.append(attrs | {"pixels": pixels})
    return found


@pytest.mark.parametrize("run", ["demo_blur", "hamilton_synth"])
def test_every_thumbnail_is_cut_from_the_output(run: str, request: pytest.FixtureRequest) -> None:
    """Each face thumbnail on the default page matches the output at its frame and box,
    not the input: the page holds no pixel region of an original face."""
    from stream.review.record import cut_box

    data = request.getfixturevalue(run)
    html = data["html"]
    assert 'class="original"' not in html and "ORIGINAL FACES" not in html
    output = decode_frames(data["folder"] / "out.mp4")
    source = decode_frames(data["clip"])
    cuts = _images(html, "cut")
    assert len(cuts) >= 10
    telling = 0  # thumbnails where the input and the output differ enough to tell them apart
    for cut in cuts:
        frame, box = int(cut["data-frame"]), json.loads(cut["data-box"])
        height, context = int(cut["data-height"]), float(cut["data-context"])
        shown = cut["pixels"].astype(np.float32)
        as_output = cut_box(output[frame], box, height, context).astype(np.float32)
        as_input = cut_box(source[frame], box, height, context).astype(np.float32)
        assert shown.shape == as_output.shape, (frame, box)
        to_output, to_input = np.abs(shown - as_output).mean(), np.abs(shown - as_input).mean()
        assert to_output <= to_input + 1.0, (frame, box, to_output, to_input)
        if to_input > 2 * to_output + 4:
            telling += 1
    assert telling >= len(cuts) // 4, f"only {telling} of {len(cuts)} thumbnails differ from the input"


def _browser() -> Any:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed: rerun ./setup.sh")
    if not CHROMIUM.exists():
        pytest.skip(
            "Debian's chromium is missing: `apt-get install chromium` (tests/servers/install.sh does)"
        )
    return sync_playwright


@pytest.mark.parametrize("run", ["hamilton_synth", "facenet_blur"])
def test_the_page_renders_in_chromium(run: str, request: pytest.FixtureRequest) -> None:
    data = request.getfixturevalue(run)
    sync_playwright = _browser()
    page_path = data["folder"] / "review" / "index.html"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])  # fmt: skip
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            problems: list[str] = []
            page.on("console", lambda m: problems.append(m.text) if m.type in ("error", "warning") else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.goto(page_path.as_uri())
            page.wait_for_selector("body[data-ready='1']", timeout=30_000)
            assert problems == []
            timeline = page.locator("#timeline svg").bounding_box()
            assert timeline is not None and timeline["height"] > 80 and timeline["width"] > 600
            cards = page.locator(".card")
            assert cards.count() == len(data["tracks"])
            broken = page.evaluate(
                "Array.from(document.images).filter(i => !i.complete || i.naturalWidth === 0).length"
            )
            assert broken == 0
            fallbacks = sum(
                ((data["report"]["summary"].get("synthesis") or {}).get("fallback") or {}).values()
            )
            if fallbacks:
                assert page.locator(".check").count() > 0
                assert "fallback" in page.locator("#checks").inner_text()
            # A click on the timeline shows the output frame nearest to it.
            before = page.locator("#viewer-caption").inner_text()
            page.locator("#timeline svg").click(
                position={"x": timeline["width"] * 0.6, "y": timeline["height"] / 2}
            )
            assert page.locator("#viewer-caption").inner_text() != before
            assert page.evaluate("document.body.dataset.errors") is None
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            page.evaluate("window.scrollTo(0, 0)")
            page.screenshot(path=str(SCREENSHOTS / f"{run}.png"))
            print(f"screenshot: {SCREENSHOTS / f'{run}.png'}")
        finally:
            browser.close()


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "run_stream.py"), *args], capture_output=True, text=True,
                          timeout=600)  # fmt: skip


def test_review_command_for_a_finished_run(tmp_path: Path, demo_blur: dict[str, Any]) -> None:
    folder = demo_blur["folder"]
    result = _cli("review", str(folder / "report.json"), "-o", str(tmp_path / "page"))
    assert result.returncode == 0, result.stderr
    assert "review page:" in result.stdout
    html = (tmp_path / "page" / "index.html").read_text()
    assert html.count('class="card"') == len(demo_blur["tracks"]) >= 1
    assert len(_images(html, "cut")) >= 5
    # Bad input: one line naming it, exit code 2.
    for args, words in (
        (["review", str(tmp_path / "missing.json"), "-o", str(tmp_path / "x")], "not a run report"),
        (["review", str(folder / "regions.jsonl"), "-o", str(tmp_path / "x")], "not a run report"),
    ):
        bad = _cli(*args)
        lines = [line for line in bad.stderr.splitlines() if line.strip()]
        assert bad.returncode == 2 and len(lines) == 1 and words in lines[0], bad.stderr
    without = json.loads((folder / "report.json").read_text()) | {"regions": None}
    (tmp_path / "no-regions.json").write_text(json.dumps(without))
    bad = _cli("review", str(tmp_path / "no-regions.json"), "-o", str(tmp_path / "x"))
    assert bad.returncode == 2 and "names no regions file" in bad.stderr, bad.stderr


def test_originals_only_when_asked(tmp_path: Path, demo_blur: dict[str, Any]) -> None:
    from stream.review.record import cut_box

    folder = demo_blur["folder"]
    result = _cli("review", str(folder / "report.json"), "-o", str(tmp_path / "page"), "--review-originals")
    assert result.returncode == 0, result.stderr
    html = (tmp_path / "page" / "index.html").read_text()
    assert "THIS PAGE SHOWS ORIGINAL FACES" in html
    originals = _images(html, "original")
    assert originals, "no original thumbnail beside the anonymized ones"
    # They are the input's pixels at their frame and box, not the output's.
    source, output = decode_frames(demo_blur["clip"]), decode_frames(folder / "out.mp4")
    for image in originals:
        frame, box = int(image["data-frame"]), json.loads(image["data-box"])
        shown = image["pixels"].astype(np.float32)
        height, context = int(image["data-height"]), float(image["data-context"])
        as_input = cut_box(source[frame], box, height, context).astype(np.float32)
        as_output = cut_box(output[frame], box, height, context).astype(np.float32)
        assert np.abs(shown - as_input).mean() + 4 < np.abs(shown - as_output).mean()


def test_a_live_run_page_is_rewritten_while_it_runs(tmp_path: Path) -> None:
    from stream.config import build_config
    from stream.run.job import Review, _LivePage

    review = Review.for_config(tmp_path / "live", build_config())
    image = np.full((90, 160, 3), 90, np.uint8)
    for index in range(30):
        record = {"index": index, "pts": index, "time": index / 30, "masked_whole": False,
                  "boxes": [[40.0, 20.0, 80.0, 70.0]], "untracked": [], "track_ids": [1], "coasting": [False],
                  "scores": [0.9], "replaced": [], "fallback": {}, "cut": index == 0}  # fmt: skip
        review.recorder.add(record, image)
    document = {"summary": {"input": "rtsp://camera/live", "frames_out": 30}, "config": {}}
    rewriting = _LivePage(review, lambda: document, every_s=0.2)
    try:
        deadline = time.monotonic() + 20
        while not (tmp_path / "live" / "index.html").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        html = (tmp_path / "live" / "index.html").read_text()
        assert "The run is still going" in html and "Assessed when the run ends" in html
        assert html.count('class="card"') == 1
    finally:
        rewriting.stop()


def test_recorder_memory_is_bounded_and_checks_ranked() -> None:
    from stream.config import ReviewConfig
    from stream.review.record import ReviewRecorder

    recorder = ReviewRecorder(ReviewConfig(checks=10, filmstrip=4), min_face=16)
    image = np.random.default_rng(0).integers(0, 255, (72, 128, 3), dtype=np.uint8)
    for index in range(3000):
        coasting = index % 50 >= 45
        record = {"index": index, "pts": index, "time": index / 25, "masked_whole": index == 2000,
                  "boxes": [[10.0, 10.0, 40.0, 50.0]], "untracked": [], "track_ids": [1], "coasting": [coasting],
                  "scores": [None if coasting else 0.2 + 0.5 * (index % 7 == 0)], "replaced": [1],
                  "fallback": {"1": "not covered"} if index % 300 == 0 else {}, "cut": index % 500 == 0}  # fmt: skip
        recorder.add(record, image)
    assert len(recorder.frames) < 2 * ReviewRecorder.TIMELINE_FRAMES
    assert len(recorder.strips[1].shots) < 2 * 4
    ranked = recorder.ranked()
    assert len(ranked) == 10
    assert [c.priority for c in ranked] == sorted((c.priority for c in ranked), reverse=True)
    assert ranked[0].index == 2000 and ranked[0].reasons[0]["kind"] == "masked whole"
    assert {r["kind"] for c in ranked for r in c.reasons} >= {"fallback", "scene cut"}
    assert recorder.check_counts["coasting"] == 60 and recorder.check_counts["fallback"] == 10


def test_report_names_the_page_and_regions(demo_blur: dict[str, Any]) -> None:
    report = demo_blur["report"]
    assert report["regions"].endswith("regions.jsonl")
    assert report["review"]["page"].endswith("index.html") and report["review"]["seconds"] < 30
