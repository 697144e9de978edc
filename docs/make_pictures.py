#!/usr/bin/env python3
"""The README's pictures, from the public-domain demo input only.

    .venv/bin/python docs/make_pictures.py      # writes docs/modes.png and docs/review.png

Runs the pipeline on the built-in demo clip (``skimage.data.astronaut()``,
public domain) in each mode and puts one frame of each beside the input; the
synth run's review page (``--review``) is photographed in Debian's Chromium.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import av
import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from stream.config import build_config  # noqa: E402
from stream.io.demo import write_demo_clip  # noqa: E402
from stream.run.job import Review, run_job  # noqa: E402

MODES = ["synth", "blur", "pixelate", "mask"]
FRAME = 40  # the face still, in the middle of the clip
HEIGHT = 300  # of each panel


def frame_of(path: Path, index: int) -> np.ndarray:
    with av.open(str(path)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i == index:
                return frame.to_ndarray(format="rgb24")
    raise SystemExit(f"{path}: fewer than {index + 1} frames")


def panel(image: np.ndarray, label: str) -> np.ndarray:
    """The photo's upper half (the face and shoulders; the clip pads it with a gradient)."""
    h, w = image.shape[:2]
    side = h // 2
    x = (w - side) // 2
    image = image[:side, x : x + side]
    width = HEIGHT
    out = cv2.resize(image, (width, HEIGHT), interpolation=cv2.INTER_AREA)
    cv2.rectangle(out, (0, 0), (width, 26), (0, 0, 0), -1)
    cv2.putText(out, label, (8, 19), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def review_picture(page: Path, target: Path) -> None:
    """The review page as a reviewer first sees it, and its timeline and track card below."""
    from PIL import Image
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        flags = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=flags)
        page_view = browser.new_page(viewport={"width": 1300, "height": 900})
        page_view.goto(page.as_uri())
        page_view.wait_for_selector("body[data-ready='1']")
        shot = Path(str(target) + ".full.png")
        page_view.screenshot(path=str(shot), full_page=True)
        browser.close()
    full = Image.open(shot).convert("RGB")
    shot.unlink()
    full.crop((0, 0, full.width, min(full.height, 2600))).quantize(256, dither=Image.Dither.NONE).save(
        target, optimize=True
    )
    print(f"{target}: {full.width}x{min(full.height, 2600)}, {target.stat().st_size // 1024} KB")


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        clip = write_demo_clip(Path(tmp) / "astronaut.mp4")
        panels = [panel(frame_of(clip, FRAME), "input")]
        for mode in MODES:
            out = Path(tmp) / f"{mode}.mp4"
            config = build_config(None, {"obscure": {"mode": mode}})
            review = Review.for_config(Path(tmp) / "review", config) if mode == "synth" else None
            run_job(str(clip), str(out), config, review=review)
            panels.append(panel(frame_of(out, FRAME), mode))
        review_picture(Path(tmp) / "review" / "index.html", ROOT / "docs" / "review.png")
    picture = np.hstack(panels)
    target = ROOT / "docs" / "modes.png"
    from PIL import Image

    # 256 colours keep the faces and the blur smooth at a third of the size.
    Image.fromarray(picture).quantize(256, dither=Image.Dither.NONE).save(target, optimize=True)
    print(f"{target}: {picture.shape[1]}x{picture.shape[0]}, {target.stat().st_size // 1024} KB")


if __name__ == "__main__":
    main()
