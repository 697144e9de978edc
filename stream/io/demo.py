"""The built-in default input: a short clip made at run time from public-domain pictures.

``skimage.data.astronaut()`` (Eileen Collins, NASA, public domain) pans and
zooms across a 640x360 frame for four seconds at 25 fps, with a 440 Hz tone
as an AAC audio track so the audio path is exercised too.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from numpy.typing import NDArray

WIDTH, HEIGHT, FPS, SECONDS = 640, 360, 25, 4
SAMPLE_RATE = 44100


def demo_frames(count: int = FPS * SECONDS) -> list[NDArray[np.uint8]]:
    """``count`` RGB frames ``(360, 640, 3)`` uint8 of the astronaut moving across a gradient."""
    from skimage import data

    portrait = data.astronaut()
    ramp = np.linspace(40, 200, WIDTH, dtype=np.float32)[None, :, None]
    background = np.broadcast_to(ramp, (HEIGHT, WIDTH, 3)).astype(np.uint8)
    frames = []
    for i in range(count):
        t = i / max(count - 1, 1)
        size = int(200 + 120 * np.sin(np.pi * t))  # zoom in then out
        small = cv2.resize(portrait, (size, size), interpolation=cv2.INTER_AREA)
        x = int((WIDTH - size) * t)
        y = (HEIGHT - size) // 2 if size <= HEIGHT else 0
        frame = background.copy()
        visible = small[: HEIGHT - y, : WIDTH - x]
        frame[y : y + visible.shape[0], x : x + visible.shape[1]] = visible
        frames.append(frame)
    return frames


def write_demo_clip(path: Path) -> Path:
    """Write the demo clip (H.264 + AAC in MP4) to ``path`` and return it."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".part.mp4")
    with av.open(str(tmp), "w") as container:
        video = container.add_stream("libx264", rate=FPS, options={"crf": "18", "preset": "veryfast"})
        video.width, video.height, video.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        audio = container.add_stream("aac", rate=SAMPLE_RATE)
        audio.layout = "mono"
        for i, image in enumerate(demo_frames()):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = i
            for packet in video.encode(frame):
                container.mux(packet)
        samples = SAMPLE_RATE * SECONDS
        tone = (0.2 * np.sin(2 * np.pi * 440 * np.arange(samples) / SAMPLE_RATE)).astype(np.float32)
        chunk = 1024
        for start in range(0, samples, chunk):
            chunk_frame = av.AudioFrame.from_ndarray(
                tone[None, start : start + chunk], format="fltp", layout="mono"
            )
            chunk_frame.sample_rate = SAMPLE_RATE
            chunk_frame.pts = start
            for packet in audio.encode(chunk_frame):
                container.mux(packet)
        for stream in (video, audio):
            for packet in stream.encode(None):
                container.mux(packet)
    tmp.replace(path)
    return path
