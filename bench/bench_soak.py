#!/usr/bin/env python3
"""Soak: a simulated camera with people coming and going, to show whether memory stays flat.

    .venv/bin/python bench/bench_soak.py [--minutes 30] [--mode blur|synth] [--size 640x360]
        [--people 5] [--life 2 6] [--every-minutes M] [--warmup-minutes M] [--realtime]

A synthetic source composites real face crops onto a static background: the
crops are cut from the photos of ../shared/media with the project's CenterFace
detector (kept only if CenterFace finds them again on the background). People
arrive at random (``--people`` on screen on average), each with one face at
one size, and either walk across the frame (entering and leaving through an
edge) or appear, drift and vanish, after ``--life`` seconds; so track ids
climb into the thousands over a long run. The real pipeline (build_stages)
runs in-process through the real Runner into a NullSink, as fast as it can
(a file-like source) unless ``--realtime`` paces it as a live camera.

A probe stage after the last stage (it runs on the runner's processing thread,
in frame order, so it reads the stages' state without racing them) prints at
every interval: stream time, frames, tracks started (the highest track id),
people spawned, people on screen (drawn, if only in part) and live tracks
(means over the interval), RSS, the deep size of the stages' state, ms per
frame (wall, and the process's CPU time over all threads, which other load on
the machine does not inflate; the probe's own time left out), and the length
of every dict/list/set/deque the stages hold (found by walking their
attributes, so renamed fields still show). At the end: RSS after warm-up and
at the end, slopes in MB per 1000 tracks, per container the bytes it holds per
track (slope over the second half of the run), the object types that grew,
and the verdict lines. Exits 0 whatever the figures say.

In synth mode, put the warm-up past the bounded caches' filling: the texture
pool holds 64 people and the last 128 ended tracks keep their descriptor, so
with the default crowd ``--warmup-minutes 2`` or more.
"""

from __future__ import annotations

import argparse
import collections
import csv
import functools
import gc
import math
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
MEDIA = ROOT.parent / "shared" / "media"

from stream.algorithms.obscure import Obscurer  # noqa: E402
from stream.config import Config, build_config  # noqa: E402
from stream.frames import FramePacket  # noqa: E402
from stream.io.sinks import NullSink  # noqa: E402
from stream.io.sources import SourceStats, VideoInfo  # noqa: E402
from stream.run.runner import Runner  # noqa: E402

PAD = 0.3  # context around the detected face box in a sprite, per side, as a share of its size


# --- face sprites ------------------------------------------------------------------


@dataclass(frozen=True)
class Sprite:
    """A face cut from a photo: ``rgb`` ``(h, w, 3)`` uint8 RGB, ``alpha`` ``(h, w)`` float32
    0-1 (a feathered ellipse); the face box sits at ``PAD`` of its size inside each side."""

    rgb: NDArray[np.uint8]
    alpha: NDArray[np.float32]
    origin: str


def feathered_ellipse(h: int, w: int) -> NDArray[np.float32]:
    mask = np.zeros((h, w), np.float32)
    cv2.ellipse(mask, (w // 2, h // 2), (max(1, int(w * 0.46)), max(1, int(h * 0.48))), 0, 0, 360, 1.0, -1)
    k = max(3, (min(h, w) // 8) | 1)
    return np.asarray(cv2.GaussianBlur(mask, (k, k), 0), np.float32)


def cut_sprites(detector: Any, count: int, per_photo: int, min_height: int) -> list[Sprite]:
    """Up to ``count`` confident faces at least ``min_height`` px tall from the media photos."""
    rows = list(csv.DictReader((MEDIA / "MANIFEST.csv").open()))
    sprites: list[Sprite] = []
    for row in sorted(rows, key=lambda r: r["path"]):
        if row["kind"] != "photo":
            continue
        bgr = cv2.imread(str(MEDIA / row["path"]))
        if bgr is None:
            continue
        scale = min(1.0, 1024 / max(bgr.shape[:2]))
        if scale < 1.0:
            bgr = cv2.resize(bgr, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        rgb = np.ascontiguousarray(bgr[:, :, ::-1])
        (faces,) = detector.detect([rgb], 1.0, 0.5, 0.3)
        order = np.argsort(-faces.scores)
        taken = 0
        for i in order:
            if faces.scores[i] < 0.8 or taken >= per_photo:
                break
            x1, y1, x2, y2 = faces.boxes[i]
            w, h = x2 - x1, y2 - y1
            if h < min_height or w < 0.5 * h:
                continue
            cx1, cy1, cx2, cy2 = int(x1 - PAD * w), int(y1 - PAD * h), int(x2 + PAD * w), int(y2 + PAD * h)
            if cx1 < 0 or cy1 < 0 or cx2 > rgb.shape[1] or cy2 > rgb.shape[0]:
                continue  # a face at the photo's border would be cut off
            crop = np.ascontiguousarray(rgb[cy1:cy2, cx1:cx2], np.uint8)
            sprites.append(Sprite(crop, feathered_ellipse(*crop.shape[:2]), row["path"]))
            taken += 1
        if len(sprites) >= count:
            break
    return sprites


def sized(sprite: Sprite, face_height: int) -> tuple[NDArray[np.uint8], NDArray[np.float32]]:
    """The sprite resized so its face box is ``face_height`` px tall; alpha as ``(h, w, 1)``."""
    f = face_height / (sprite.rgb.shape[0] / (1 + 2 * PAD))
    size = (max(2, round(sprite.rgb.shape[1] * f)), max(2, round(sprite.rgb.shape[0] * f)))
    rgb = cv2.resize(sprite.rgb, size, interpolation=cv2.INTER_AREA)
    alpha = cv2.resize(sprite.alpha, size, interpolation=cv2.INTER_LINEAR)
    return np.asarray(rgb, np.uint8), np.asarray(alpha, np.float32)[..., None]


def paste(
    frame: NDArray[np.uint8], rgb: NDArray[np.uint8], alpha: NDArray[np.float32], x: int, y: int
) -> bool:
    """Alpha-blend ``rgb`` with its top-left corner at (x, y), clipped; False if wholly outside."""
    fh, fw = frame.shape[:2]
    h, w = rgb.shape[:2]
    x1, y1, x2, y2 = max(0, x), max(0, y), min(fw, x + w), min(fh, y + h)
    if x1 >= x2 or y1 >= y2:
        return False
    region = frame[y1:y2, x1:x2].astype(np.float32)
    a = alpha[y1 - y : y2 - y, x1 - x : x2 - x]
    s = rgb[y1 - y : y2 - y, x1 - x : x2 - x]
    frame[y1:y2, x1:x2] = (s * a + region * (1 - a)).astype(np.uint8)
    return True


def background(width: int, height: int, rng: np.random.Generator) -> NDArray[np.uint8]:
    """A static scene: a vertical gradient, some blocks (walls, doors), faint texture."""
    g = np.linspace(0, 1, height, dtype=np.float32)[:, None, None]
    top, bottom = rng.uniform(90, 200, 3), rng.uniform(40, 140, 3)
    image = np.broadcast_to(top * (1 - g) + bottom * g, (height, width, 3)).copy()
    for _ in range(8):
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        w, h = int(rng.integers(width // 12, width // 3)), int(rng.integers(height // 8, height // 2))
        image[y : y + h, x : x + w] = rng.uniform(30, 220, 3)
    image += rng.normal(0, 4, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def keep_detectable(
    detector: Any, sprites: list[Sprite], scene: NDArray[np.uint8], face_height: int
) -> list[Sprite]:
    """The sprites CenterFace finds on the background at ``face_height`` (IoU >= 0.3, score >= 0.5)."""
    kept = []
    for sprite in sprites:
        rgb, alpha = sized(sprite, face_height)
        frame = scene.copy()
        x, y = (scene.shape[1] - rgb.shape[1]) // 2, (scene.shape[0] - rgb.shape[0]) // 2
        paste(frame, rgb, alpha, x, y)
        fw = rgb.shape[1] / (1 + 2 * PAD)
        box = np.array([x + PAD * fw, y + PAD * face_height, x + (1 + PAD) * fw, y + (1 + PAD) * face_height])
        (faces,) = detector.detect([frame], 1.0, 0.5, 0.3)
        if any(iou(box, b) >= 0.3 for b in faces.boxes):
            kept.append(sprite)
    return kept


def iou(a: NDArray[Any], b: NDArray[Any]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


# --- the simulated camera ------------------------------------------------------------


@dataclass
class Person:
    rgb: NDArray[np.uint8]
    alpha: NDArray[np.float32]
    start: int  # first frame
    frames: int  # frames on screen
    p0: NDArray[np.float64]  # top-left corner at start and at the end (pixels)
    p1: NDArray[np.float64]
    bob: float  # vertical sway amplitude (px), as a walk

    def at(self, index: int) -> tuple[int, int]:
        u = (index - self.start) / max(1, self.frames - 1)
        x, y = self.p0 + (self.p1 - self.p0) * u
        return round(x), round(y + self.bob * math.sin(u * self.frames / 6.0))


@dataclass
class Crowd:
    """Counters the source keeps for the report: people spawned, person-frames shown."""

    spawned: int = 0
    shown: int = 0  # sum over frames of the people drawn in them


class SoakSource:
    """Frames of people coming and going (the ``Source`` protocol); file-like unless ``live``."""

    def __init__(self, sprites: list[Sprite], scene: NDArray[np.uint8], frames: int, fps: int,
                 people: float, life: tuple[float, float], face: tuple[int, int],
                 rng: np.random.Generator, live: bool) -> None:  # fmt: skip
        height, width = scene.shape[:2]
        self.description = "soak (synthetic camera)"
        self.live = live
        self.audio_templates: list[Any] = []
        self.stats = SourceStats()
        self.info = VideoInfo(
            width, height, Fraction(fps), Fraction(1, fps), frames, frames / fps, "synthetic"
        )
        self.sprites, self.scene, self.frames, self.fps = sprites, scene, frames, fps
        self.life, self.face, self.rng = life, face, rng
        # Arrivals: Poisson, at the rate that keeps ``people`` on screen on average.
        self.rate = people / (fps * (life[0] + life[1]) / 2)  # per frame
        self.crowd = Crowd()

    def _spawn(self, index: int) -> Person:
        rng = self.rng
        height, width = self.scene.shape[:2]
        rgb, alpha = sized(self.sprites[int(rng.integers(len(self.sprites)))], int(rng.integers(*self.face)))
        h, w = rgb.shape[:2]
        frames = max(2, int(rng.uniform(*self.life) * self.fps))
        y = rng.uniform(0, height - h)
        if rng.random() < 0.7:  # walks across: in through one side edge, out through the other
            left = rng.random() < 0.5
            xa, xb = -0.6 * w, width - 0.4 * w
            p0 = np.array([xa if left else xb, y])
            p1 = np.array([xb if left else xa, np.clip(y + rng.uniform(-0.2, 0.2) * height, 0, height - h)])
            bob = rng.uniform(0, 3)
        else:  # steps into view, lingers, drifts, and is gone
            x = rng.uniform(0, width - w)
            p0 = np.array([x, y])
            p1 = p0 + rng.uniform(-1.5, 1.5, 2) * np.array([w, h * 0.3])
            bob = 0.0
        self.crowd.spawned += 1
        return Person(rgb, alpha, index, frames, p0, p1, bob)

    def packets(self) -> Iterator[FramePacket]:
        time_base = Fraction(1, self.fps)
        on_screen: list[Person] = []
        start = time.monotonic()
        for index in range(self.frames):
            on_screen = [p for p in on_screen if index < p.start + p.frames]
            for _ in range(int(self.rng.poisson(self.rate))):
                on_screen.append(self._spawn(index))
            frame = self.scene.copy()
            for person in on_screen:
                x, y = person.at(index)
                self.crowd.shown += paste(frame, person.rgb, person.alpha, x, y)
            if self.live:  # a camera delivers frames at its rate, whatever the reader does
                time.sleep(max(0.0, start + index / self.fps - time.monotonic()))
            yield FramePacket(index, frame, index, time_base, capture_time=time.monotonic())
            self.stats.frames += 1

    def damage(self) -> None:
        return None

    def close(self) -> None:
        return None


# --- what the stages hold ----------------------------------------------------------

Container = dict | list | set | collections.deque


def containers(stages: list[Any]) -> dict[str, Any]:
    """Every dict/list/set/deque held by the stages, up to two objects deep within
    ``stream.*`` objects (``synth.pool.textures``), each object once."""
    found: dict[str, Any] = {}
    visited: set[int] = {id(s) for s in stages}

    def walk(prefix: str, obj: Any, depth: int) -> None:
        for name, value in sorted(vars(obj).items()):
            path = f"{prefix}.{name}"
            if isinstance(value, Container):
                if id(value) not in visited:
                    visited.add(id(value))
                    found[path] = value
            elif depth < 2 and type(value).__module__.startswith("stream.") and hasattr(value, "__dict__"):
                if id(value) not in visited:
                    visited.add(id(value))
                    walk(path, value, depth + 1)

    for stage in stages:
        walk(stage.name, stage, 0)
    return found


def deep_bytes(obj: Any, seen: set[int] | None = None) -> int:
    """Bytes held by ``obj`` and what it refers to (containers, numpy arrays, stream.* objects),
    each object once; functions, classes and other modules' objects count only themselves."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    size = sys.getsizeof(obj)  # an ndarray owning its data includes the buffer
    if isinstance(obj, np.ndarray):
        return size if obj.base is None else size + deep_bytes(obj.base, seen)
    if isinstance(obj, dict):
        return size + sum(deep_bytes(k, seen) + deep_bytes(v, seen) for k, v in list(obj.items()))
    if isinstance(obj, list | tuple | set | frozenset | collections.deque):
        return size + sum(deep_bytes(v, seen) for v in list(obj))
    module = type(obj).__module__
    if module.startswith("stream.") or module.startswith("engines."):
        if hasattr(obj, "__dict__"):
            size += deep_bytes(vars(obj), seen)
        for name in getattr(type(obj), "__slots__", ()):
            if hasattr(obj, name):
                size += deep_bytes(getattr(obj, name), seen)
    return size


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


# --- the probe ---------------------------------------------------------------------


@dataclass
class Sample:
    stream_s: float
    frames: int
    tracks: int
    rss_mb: float
    lengths: dict[str, int]
    bytes: dict[str, int]
    held: int  # bytes of all the containers together, each object once (they share some)
    objects: collections.Counter[str]  # objects the garbage collector tracks, by type


@dataclass
class Probe:
    """The last stage: tallies each frame, and at every interval prints and keeps a Sample.

    Runs on the runner's processing thread after the stateful stages, so what it reads
    of them is consistent; its own time (walking the state) is left out of ms/frame.
    """

    stages: list[Any]
    source: SoakSource
    every: int  # frames per interval
    total: int
    name: str = "soak-probe"
    parallel: bool = False
    samples: list[Sample] = field(default_factory=list)
    max_track: int = 0
    _live: int = 0
    _coasting: int = 0
    _frames: int = 0
    _shown_at: int = 0
    _spawned_at: int = 0
    _t: float = 0.0
    _own_s: float = 0.0
    _cpu: float = 0.0  # process CPU time (all threads) at the last sample
    _own_cpu: float = 0.0

    def reset(self) -> None:
        self._t = time.perf_counter()
        self._cpu = time.process_time()

    def process(self, packet: FramePacket) -> FramePacket:
        tracks = packet.tracks
        if len(tracks):
            self.max_track = max(self.max_track, int(tracks.track_id.max()))
        self._live += int((~tracks.coasting).sum())
        self._coasting += int(tracks.coasting.sum())
        self._frames += 1
        n = packet.index + 1
        if n % self.every == 0 or n == self.total:
            self.sample(n, packet.time_base)
        return packet

    def sample(self, frames: int, time_base: Fraction) -> None:
        now, cpu_now = time.perf_counter(), time.process_time()
        wall = now - self._t - self._own_s
        cpu = cpu_now - self._cpu - self._own_cpu
        crowd = self.source.crowd
        found = containers(self.stages)
        lengths = {k: len(v) for k, v in found.items()}
        sizes = {k: deep_bytes(v) for k, v in found.items()}
        shared: set[int] = set()
        held = sum(deep_bytes(v, shared) for v in found.values())
        rss = rss_mb()
        objects = collections.Counter(type(o).__qualname__ for o in gc.get_objects())
        s = Sample(float(frames * time_base), frames, self.max_track, rss, lengths, sizes, held, objects)
        self.samples.append(s)
        f = max(1, self._frames)
        print(f"{s.stream_s / 60:6.2f} min  frames {frames:6d}  tracks {s.tracks:6d}  people {crowd.spawned:6d}  "
              f"on-screen {(crowd.shown - self._shown_at) / f:4.2f}  live {self._live / f:4.2f} "
              f"(+{self._coasting / f:4.2f} coasting)  RSS {rss:7.1f} MB  held {held / 2**20:6.2f} MB  "
              f"{1000 * wall / f:6.2f} ms/frame (CPU {1000 * cpu / f:6.2f})  "
              f"objects {objects.total()}", flush=True)  # fmt: skip
        print("    " + "  ".join(f"{k}={n}" for k, n in lengths.items()), flush=True)
        self._shown_at = crowd.shown
        self._live = self._coasting = self._frames = 0
        self._t, self._cpu = now, cpu_now
        self._own_s, self._own_cpu = time.perf_counter() - now, time.process_time() - cpu_now


# --- the run -----------------------------------------------------------------------


def soak_config(args: argparse.Namespace) -> Config:
    overrides: dict[str, dict[str, Any]] = {
        "obscure": {"mode": args.mode},
        "runner": {"workers": args.workers},
    }
    if args.mode == "synth" and args.perturb != "none":
        overrides["perturb"] = {"mode": args.perturb}
    return build_config(None, overrides)


def fit(samples: list[Sample], value: Callable[[Sample], float]) -> float | None:
    """Least-squares slope of ``value`` on tracks started, over ``samples`` (None: under 3)."""
    x = np.array([s.tracks for s in samples], np.float64)
    if len(samples) < 3 or np.ptp(x) == 0:
        return None
    return float(np.polyfit(x, np.array([value(s) for s in samples], np.float64), 1)[0])


def _length(name: str, sample: Sample) -> float:
    return sample.lengths.get(name, 0)


def _bytes(name: str, sample: Sample) -> float:
    return sample.bytes.get(name, 0)


def report(samples: list[Sample], warmup_s: float, bound_mb: float, wall_s: float) -> None:
    """The end-of-run figures. ``late``: the second half of the samples after warm-up, where
    bounded state has settled (slopes there are the steady-state rates)."""
    warm = next((s for s in samples if s.stream_s >= warmup_s), samples[0])
    end = samples[-1]
    after = [s for s in samples if s.stream_s >= warm.stream_s]
    late = after[len(after) // 2 :]
    tracks = end.tracks - warm.tracks
    growth = end.rss_mb - warm.rss_mb

    def per_1000(value: float | None) -> str:
        return "n/a" if value is None else f"{1000 * value:+.2f}"

    print()
    print(f"run: {end.stream_s / 60:.1f} stream-minutes, {end.frames} frames in {wall_s / 60:.1f} min wall "
          f"({end.frames / wall_s:.1f} frames/s, {end.stream_s / wall_s:.2f}x real time)")  # fmt: skip
    print(f"RSS after warm-up ({warm.stream_s / 60:.2f} min, {warm.tracks} tracks): {warm.rss_mb:.1f} MB; "
          f"at the end ({end.tracks} tracks): {end.rss_mb:.1f} MB; "
          f"peak of the samples {max(s.rss_mb for s in samples):.1f} MB")  # fmt: skip
    print(f"growth after warm-up: {growth:+.1f} MB over {tracks} tracks; slope "
          f"{per_1000(fit(after, lambda s: s.rss_mb))} MB per 1000 tracks ({len(after)} samples), "
          f"{per_1000(fit(late, lambda s: s.rss_mb))} over the second half ({len(late)} samples)")  # fmt: skip
    growing = []
    print("state held by the stages, after warm-up -> end (entries; deep bytes; "
          "B/track: slope over the second half):")  # fmt: skip
    for name in end.lengths:
        n0, n1 = warm.lengths.get(name, 0), end.lengths[name]
        b0, b1 = warm.bytes.get(name, 0), end.bytes[name]
        entries = fit(late, functools.partial(_length, name)) or 0.0
        per_track = fit(late, functools.partial(_bytes, name)) or 0.0
        # Growing with tracks: at least one entry kept per 20 tracks started, steadily (the
        # slope over the second half), not a crowd that happens to be bigger at the end.
        grows = tracks > 0 and n1 - n0 >= max(20, tracks / 20) and entries >= 0.05
        if grows:
            growing.append((name, per_track, entries))
        print(f"    {name:38s} {n0:7d} -> {n1:7d}   {b0 / 1024:9.1f} -> {b1 / 1024:9.1f} KB"
              + (f"   GROWS: {entries:.2f} entries, {per_track:.0f} B per track" if grows else ""))  # fmt: skip
    held = fit(late, lambda s: s.held)
    print(f"    {'all of them, each object once':38s} {'':18s}   {warm.held / 1024:9.1f} -> {end.held / 1024:9.1f} KB"
          + ("" if held is None else f"   {held:.0f} B per track"))  # fmt: skip
    more = end.objects - warm.objects  # positive differences only
    print(f"objects tracked by the GC: {warm.objects.total()} -> {end.objects.total()}; grown most: "
          + (", ".join(f"{k} +{n}" for k, n in more.most_common(6)) or "none"))  # fmt: skip
    print(f"memory flat: {'yes' if growth < bound_mb else 'no'} (bound: RSS growth after warm-up "
          f"< {bound_mb:g} MB; measured {growth:+.1f} MB)")  # fmt: skip
    for name, b, n in growing:
        print(f"state growing with tracks: {name}: {n:.2f} entries, {b:.0f} B per track "
              f"({b * 1e6 / 2**20:.0f} MB per million tracks)")  # fmt: skip
    if not growing:
        print("state growing with tracks: none found")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=30.0, help="stream time to simulate (default 30)")
    p.add_argument("--mode", choices=["blur", "pixelate", "mask", "synth"], default="blur")
    p.add_argument("--perturb", choices=["none", "noise"], default="none", help="synth only: Stage IV")
    p.add_argument("--size", default="640x360", help="frame WxH (default 640x360)")
    p.add_argument("--fps", type=int, default=25)
    p.add_argument("--people", type=float, default=5.0, help="people on screen on average (default 5)")
    p.add_argument("--life", type=float, nargs=2, default=(2.0, 6.0), metavar=("MIN", "MAX"),
                   help="seconds each person stays (uniform; default 2 6)")  # fmt: skip
    p.add_argument("--face", type=int, nargs=2, default=None, metavar=("MIN", "MAX"),
                   help="face box height range in px (default 11%%-28%% of the frame height)")  # fmt: skip
    p.add_argument("--sprites", type=int, default=48, help="distinct faces cut from the photos (default 48)")
    p.add_argument(
        "--every-minutes", type=float, help="print interval in stream minutes (default minutes/30, >= 0.25)"
    )
    p.add_argument("--warmup-minutes", type=float, help="warm-up in stream minutes (default minutes/6, <= 5)")
    p.add_argument(
        "--bound-mb", type=float, default=20.0, help="RSS growth after warm-up counted flat (default 20)"
    )
    p.add_argument("--workers", type=int, default=0, help="runner.workers (0: one per core, at most 4)")
    p.add_argument(
        "--realtime", action="store_true", help="pace frames at --fps as a live camera (drops allowed)"
    )
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    from stream.run.job import build_stages, load_detector

    width, height = (int(v) for v in args.size.lower().split("x"))
    face = tuple(args.face) if args.face else (int(0.11 * height), int(0.28 * height))
    frames = round(args.minutes * 60 * args.fps)
    every = round(60 * args.fps * (args.every_minutes or max(0.25, args.minutes / 30)))
    warmup_s = 60 * (args.warmup_minutes if args.warmup_minutes is not None else min(5.0, args.minutes / 6))
    rng = np.random.default_rng(args.seed)

    config = soak_config(args)
    # A detector of its own cuts the crops: photos of many sizes grow a session's memory
    # arena to the largest, which would inflate the pipeline's detector for the whole run.
    cutter = load_detector(config)
    t0 = time.perf_counter()
    sprites = cut_sprites(cutter, 2 * args.sprites, per_photo=2, min_height=max(48, face[1] // 2))
    scene = background(width, height, rng)
    sprites = keep_detectable(cutter, sprites, scene, (face[0] + face[1]) // 2)[: args.sprites]
    del cutter
    gc.collect()
    detector = load_detector(config)
    if not sprites:
        raise SystemExit("no face crop from ../shared/media was detected again on the background")
    print(f"{len(sprites)} face crops from {len({s.origin for s in sprites})} photos "
          f"({time.perf_counter() - t0:.1f} s); {width}x{height} @ {args.fps} fps, {args.minutes:g} stream-minutes, "
          f"{args.people:g} people on screen on average, {args.life[0]:g}-{args.life[1]:g} s each, "
          f"faces {face[0]}-{face[1]} px; mode {args.mode}{'' if args.mode != 'synth' else f', perturb {args.perturb}'}; "
          f"{'real time (live)' if args.realtime else 'as fast as possible (file-like)'}", flush=True)  # fmt: skip

    source = SoakSource(
        sprites, scene, frames, args.fps, args.people, tuple(args.life), face, rng, args.realtime
    )
    stages = build_stages(config, detector)
    probe = Probe(stages, source, every, frames)
    runner = Runner(source, [*stages, probe], NullSink(), Obscurer(config.obscure), config.runner)
    print(f"runner: {runner.workers} detection workers; stages {', '.join(s.name for s in stages)}; "
          f"RSS before the run {rss_mb():.1f} MB", flush=True)  # fmt: skip
    start = time.perf_counter()
    stats = runner.run()
    wall = time.perf_counter() - start
    print(f"frames out {stats.frames_out}, dropped {stats.frames_dropped}, masked whole {stats.frames_masked_whole}, "
          f"failures {len(stats.failures)}{': ' + stats.failures[0] if stats.failures else ''}; "
          f"latency p50 {stats.latency_ms(0.5) or 0:.0f} ms (recent); tracks {stats.max_track_id}, "
          f"people {source.crowd.spawned}")  # fmt: skip
    if not probe.samples:
        print("no sample taken (run shorter than one interval)")
        return
    report(probe.samples, warmup_s, args.bound_mb, wall)


if __name__ == "__main__":
    main()
