"""The review page's charts, drawn with Matplotlib's object API into inline SVG.

No pyplot and no global style: each chart is its own ``Figure``, rendered under an
``rc_context`` (text kept as text, a fixed hash salt so the same run draws the same
SVG), and handed back as the ``<svg>`` element alone.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import matplotlib
import numpy as np
from matplotlib.artist import Artist
from matplotlib.collections import PolyCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

# Colours of the track states (the same names as record.track_state), as CSS hex.
STATE_COLOURS = {
    "replaced": "#2ea043",
    "obscured": "#3478f6",
    "coasting": "#f0a01e",
    "fallback": "#dc322f",
}
RC: Any = {
    "svg.fonttype": "none",
    "svg.hashsalt": "anonymousnet-review",
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
}


def svg(figure: Figure) -> str:
    """The figure as an inline ``<svg>`` element (no XML prolog)."""
    buffer = io.StringIO()
    with matplotlib.rc_context(RC):
        figure.savefig(buffer, format="svg", bbox_inches=None)
    text = buffer.getvalue()
    return text[text.index("<svg") :]


def _figure(width: float, height: float) -> Figure:
    with matplotlib.rc_context(RC):
        return Figure(figsize=(width, height), dpi=96, layout="constrained")


def activity(
    time_s: Sequence[float],
    faces: Sequence[int],
    replaced: Sequence[int],
    fallback: Sequence[int],
    coasting: Sequence[int],
) -> str:
    """Faces per frame over stream time, by what was done to them."""
    figure = _figure(9.5, 2.2)
    ax = figure.add_subplot()
    ax.plot(time_s, faces, color="#333333", linewidth=1, label="faces (tracked)")
    if any(replaced):
        ax.plot(time_s, replaced, color=STATE_COLOURS["replaced"], linewidth=1, label="replaced")
    if any(fallback):
        ax.plot(time_s, fallback, color=STATE_COLOURS["fallback"], linewidth=1, label="fallback (blurred)")
    if any(coasting):
        ax.plot(time_s, coasting, color=STATE_COLOURS["coasting"], linewidth=1, label="coasting")
    ax.set_xlabel("stream time (s)")
    ax.set_ylabel("faces per frame")
    ax.set_ylim(bottom=0)
    ax.legend(loc="upper right", fontsize=8, frameon=False, ncols=4)
    return svg(figure)


def performance(wall_s: Sequence[float], latency_ms: Sequence[float | None], dropped: Sequence[int]) -> str:
    """Throughput (frames written per second of the run), latency and dropped frames over the run."""
    figure = _figure(9.5, 3.0)
    speed, lag = figure.subplots(1, 2)
    wall = np.asarray(wall_s, np.float64)
    if len(wall) > 1 and wall[-1] > 0:
        edges = np.arange(0.0, wall[-1] + 1.0, 1.0)
        counts, _ = np.histogram(wall, bins=edges)
        speed.step(edges[:-1], counts, where="post", color="#3478f6", linewidth=1, label="frames written")
        drops = np.interp(edges[:-1], wall, np.asarray(dropped, np.float64))
        extra = np.diff(np.concatenate([[0.0], drops]))
        if extra.any():
            speed.step(edges[:-1], extra, where="post", color="#dc322f", linewidth=1, label="frames dropped")
        speed.legend(loc="lower right", fontsize=8, frameon=False)
    speed.set_xlabel("time into the run (s)")
    speed.set_ylabel("frames per second")
    speed.set_ylim(bottom=0)
    points = [(w, v) for w, v in zip(wall_s, latency_ms, strict=True) if v is not None]
    if points:
        x, y = zip(*points, strict=True)
        lag.plot(x, y, ".", markersize=2, color="#6a3d9a")
        lag.axhline(
            float(np.percentile(y, 95)),
            color="#6a3d9a",
            linewidth=0.8,
            linestyle="--",
            label=f"p95 {np.percentile(y, 95):.0f} ms",
        )
        lag.legend(loc="upper right", fontsize=8, frameon=False)
    lag.set_xlabel("time into the run (s)")
    lag.set_ylabel("latency (ms)")
    lag.set_ylim(bottom=0)
    return svg(figure)


@dataclass(frozen=True)
class Timeline:
    """The timeline chart and where its plot area lies (fractions of the figure), so the
    page can turn a click into a frame and a track."""

    svg: str
    x0: float
    x1: float
    y0: float
    y1: float
    frames: int
    rows: list[int]  # track ids, top row first


def timeline(
    frames: int,
    tracks: list[tuple[int, list[tuple[int, int, str]]]],
    cuts: Sequence[int],
    damage: Sequence[int],
    reconnects: Sequence[int],
) -> Timeline:
    """Each track as a bar over frame numbers, coloured by state (runs of
    ``(start, length, state)``), scene cuts as dashed lines, damaged input and
    reconnects as marks on top."""
    rows = len(tracks)
    figure = _figure(9.5, min(1.6 + 0.07 * rows, 14.0))
    ax = figure.add_subplot()
    # One collection of rectangles for every run of every track: fast for thousands.
    boxes, colours, seen = [], [], set()
    for row, (_, runs) in enumerate(tracks):
        y = rows - 1 - row
        for start, length, state in runs:
            boxes.append(
                [(start, y - 0.4), (start + length, y - 0.4), (start + length, y + 0.4), (start, y + 0.4)]
            )
            colours.append(STATE_COLOURS[state])
            seen.add(state)
    ax.add_collection(PolyCollection(boxes, facecolors=colours, edgecolors="none"))
    for cut in cuts:
        ax.axvline(cut, color="#888888", linewidth=0.7, linestyle="--")
    top = rows - 0.4
    if damage:
        ax.plot(damage, [top + 0.6] * len(damage), "v", color="#dc322f", markersize=5, label="input damage")
    if reconnects:
        ax.plot(
            reconnects, [top + 0.6] * len(reconnects), "D", color="#6a3d9a", markersize=5, label="reconnect"
        )
    handles: list[Artist] = [Patch(color=c, label=s) for s, c in STATE_COLOURS.items() if s in seen]
    handles.append(Line2D([], [], color="#888888", linestyle="--", label="scene cut"))
    ax.legend(
        handles=handles, loc="lower left", bbox_to_anchor=(0.0, 1.0), ncols=6, fontsize=8, frameon=False
    )
    ax.set_xlim(0, max(frames, 1))
    ax.set_ylim(-0.6, max(rows, 1) + 0.6)
    ax.set_yticks([rows - 1 - r for r in range(rows)] if rows <= 60 else [])
    if rows <= 60:
        ax.set_yticklabels([f"track {tid}" for tid, _ in tracks], fontsize=7)
    ax.set_xlabel("frame")
    text = svg(figure)  # drawing fixes the layout: the axes' place is known only now
    box = ax.get_position()
    return Timeline(text, box.x0, box.x1, box.y0, box.y1, frames, [tid for tid, _ in tracks])


def bars(
    labels: Sequence[str],
    series: Mapping[str, Sequence[float]],
    ylabel: str,
    colours: Sequence[str] = ("#3478f6", "#aaaaaa"),
) -> str:
    """Grouped bars: one group a label, one bar a series."""
    figure = _figure(max(4.0, 0.5 * len(labels) + 2.0), 2.6)
    ax = figure.add_subplot()
    x = np.arange(len(labels), dtype=np.float64)
    width = 0.8 / max(len(series), 1)
    for i, (name, values) in enumerate(series.items()):
        ax.bar(
            x + (i - (len(series) - 1) / 2) * width,
            values,
            width,
            label=name,
            color=colours[i % len(colours)],
        )
    ax.set_xticks(x)
    ax.set_xticklabels(
        labels, rotation=30 if len(labels) > 4 else 0, ha="right" if len(labels) > 4 else "center"
    )
    ax.set_ylabel(ylabel)
    if len(series) > 1:
        ax.legend(fontsize=8, frameon=False)
    return svg(figure)


def targets(achieved: Mapping[str, float], wanted: Mapping[str, float]) -> str:
    """Each privacy figure beside its policy value, one panel a figure (their scales differ)."""
    figure = _figure(4.5, 2.6)
    panels = figure.subplots(1, len(achieved))
    for ax, name in zip(np.atleast_1d(panels), achieved, strict=True):
        ax.bar([0, 1], [achieved[name], wanted.get(name, 0.0)], color=["#3478f6", "#aaaaaa"])
        ax.set_xticks([0, 1])
        ax.set_xticklabels(["run", "policy"])
        ax.set_title(name + (" (lower: closer)" if name == "t" else ""), fontsize=9)
    return svg(figure)


def histogram(
    values: Sequence[int], xlabel: str, ylabel: str, line: float | None = None, line_label: str = ""
) -> str:
    """Counts of integer values, with an optional vertical line (a target)."""
    figure = _figure(4.5, 2.6)
    ax = figure.add_subplot()
    if values:
        top = max(values)
        ax.hist(values, bins=[b + 0.5 for b in range(top + 1)], color="#3478f6", rwidth=0.85)
    if line is not None:
        ax.axvline(line, color="#dc322f", linestyle="--", linewidth=1, label=line_label)
        ax.legend(fontsize=8, frameon=False)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    return svg(figure)
