"""The review page: one self-contained HTML file (charts inline as SVG, thumbnails as
data URIs, no external asset, no server) from a run's report and its recorder.

The page is rendered by Jinja2 from ``templates/review.html``; the charts come from
``plots``. Thumbnails are cut from the output (``record``); only with
``review.originals`` are original faces cut, from the input read again, and the
page says so in large type.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import platform
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import jinja2
import numpy as np

from stream.algorithms.privacy import ATTRIBUTES, GlobalDistribution
from stream.config import ReviewConfig, SourceConfig
from stream.errors import AnonError, ConfigError
from stream.frames import FramePacket
from stream.review import plots
from stream.review.record import ReviewRecorder, cut_box, jpeg, track_state

MAX_ROWS = 250  # tracks drawn as timeline bars (the longest); every track still has its card
MAX_FILMSTRIPS = 400  # track cards with pictures
PACKAGES = (
    "anonymousnet",
    "numpy",
    "av",
    "onnxruntime",
    "opencv-python-headless",
    "scikit-learn",
    "jinja2",
    "matplotlib",
)


def data_uri(image: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(image).decode("ascii")


@dataclass
class TrackSummary:
    """One track over the run, from the frame records."""

    track: int
    first: int
    last: int
    first_time: float
    last_time: float
    frames: int = 0
    states: dict[str, int] = field(default_factory=dict)
    fallbacks: dict[str, int] = field(default_factory=dict)
    runs: list[tuple[int, int, str]] = field(default_factory=list)  # (start, length, state)
    smallest: float = float("inf")


def summarize(records: list[dict[str, Any]]) -> dict[int, TrackSummary]:
    """Each track's life, states by frame count, fallbacks by reason and runs of one state."""
    tracks: dict[int, TrackSummary] = {}
    for record in records:
        index, fallback = record["index"], record.get("fallback", {})
        for row, tid in enumerate(record["track_ids"]):
            summary = tracks.get(tid)
            if summary is None:
                summary = tracks[tid] = TrackSummary(tid, index, index, record["time"], record["time"])
            summary.last, summary.last_time = index, record["time"]
            summary.frames += 1
            state = track_state(record, row)
            summary.states[state] = summary.states.get(state, 0) + 1
            reason = fallback.get(str(tid))
            if reason is not None:
                summary.fallbacks[reason] = summary.fallbacks.get(reason, 0) + 1
            box = record["boxes"][row]
            summary.smallest = min(summary.smallest, box[3] - box[1])
            runs = summary.runs
            if runs and runs[-1][2] == state and runs[-1][0] + runs[-1][1] == index:
                runs[-1] = (runs[-1][0], runs[-1][1] + 1, state)
            else:
                runs.append((index, 1, state))
    return tracks


def _marks(records: list[dict[str, Any]], key: str) -> list[int]:
    """Frames where a cumulative counter of the source (``corrupt``, ``reconnects``) rose."""
    marks, last = [], 0
    for record in records:
        value = record.get(key, 0)
        if value > last:
            marks.append(record["index"])
        last = value
    return marks


def _versions() -> list[tuple[str, str]]:
    found = [("python", platform.python_version()), ("platform", platform.platform())]
    for name in PACKAGES:
        try:
            found.append((name, metadata.version(name)))
        except metadata.PackageNotFoundError:
            found.append((name, "not installed"))
    return found


def _models() -> list[dict[str, str]]:
    from engines import zoo

    return [
        {
            "name": name,
            "source": spec.source.describe(),
            "archive_sha256": spec.source.archive_sha256,
            "onnx_sha256": spec.onnx_sha256,
            "license": spec.license,
        }
        for name, spec in zoo.REGISTRY.items()
    ]


# One original thumbnail: frame index, box, context and height (as its output one is cut).
Cut = tuple[int, tuple[float, ...], float, int]
SHOT: tuple[float, int] = (1.0, ReviewRecorder.FACE_HEIGHT)  # a filmstrip shot's context and height
ZOOM: tuple[float, int] = (2.0, ReviewRecorder.ZOOM_HEIGHT)  # a frame to check's zoom


def originals(input_spec: str, wanted: set[Cut]) -> dict[Cut, bytes]:
    """Original thumbnails, cut from the input read again: each wanted box of a frame,
    grown by its context. A live input cannot be read again: an error."""
    from stream.io.sources import open_source

    by_frame: dict[int, list[Cut]] = {}
    for key in wanted:
        by_frame.setdefault(key[0], []).append(key)
    source = open_source(input_spec, SourceConfig(realtime=False))
    cut: dict[Cut, bytes] = {}
    try:
        if source.live:
            raise ValueError(f"{input_spec} is live and cannot be read again for its originals")
        last = max(by_frame, default=-1)
        for packet in source.packets():
            if not isinstance(packet, FramePacket):
                continue  # audio
            if packet.index > last:
                break
            for key in by_frame.get(packet.index, []):
                cut[key] = jpeg(cut_box(packet.image, list(key[1]), key[3], key[2]), 80)
    finally:
        source.close()
    return cut


@dataclass
class Page:
    path: Path
    seconds: float
    size: int


def write_page(
    directory: Path, document: dict[str, Any], recorder: ReviewRecorder, final: bool = True
) -> Page:
    """Render the page for ``document`` (the run report's dict) into ``directory/index.html``,
    atomically (a page being rewritten is never seen half written)."""
    start = time.perf_counter()
    context = _context(document, recorder, final)
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("stream.review", "templates"),
        autoescape=jinja2.select_autoescape(["html"]),
        undefined=jinja2.StrictUndefined,
    )
    html = environment.get_template("review.html").render(**context)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "index.html"
    partial = directory / "index.html.partial"
    partial.write_text(html, encoding="utf-8")
    partial.replace(path)
    return Page(path, time.perf_counter() - start, len(html))


def _context(document: dict[str, Any], recorder: ReviewRecorder, final: bool) -> dict[str, Any]:
    records = list(recorder.records)
    strips = dict(recorder.strips)
    checks = recorder.ranked()
    summary = document.get("summary", {})
    config = document.get("config", {})
    tracks = summarize(records)
    show_originals = bool(config.get("review", {}).get("originals"))
    cut_originals, originals_note = _originals(document, strips, checks, show_originals)

    frames = records[-1]["index"] + 1 if records else 0
    times = [r["time"] for r in records]
    count = {
        s: [sum(1 for row in range(len(r["track_ids"])) if track_state(r, row) == s) for r in records]
        for s in ("replaced", "fallback", "coasting")
    }
    activity = plots.activity(
        times,
        [len(r["track_ids"]) + len(r["untracked"]) for r in records],
        count["replaced"],
        count["fallback"],
        count["coasting"],
    )
    walls = [r["wall_s"] for r in records if r.get("wall_s") is not None]
    performance = (
        plots.performance(
            walls,
            [r.get("latency_ms") for r in records if r.get("wall_s") is not None],
            [r.get("dropped", 0) for r in records if r.get("wall_s") is not None],
        )
        if walls
        else None
    )
    rows = sorted(tracks.values(), key=lambda t: -t.frames)[:MAX_ROWS]
    rows.sort(key=lambda t: (t.first, t.track))
    chart = plots.timeline(
        frames,
        [(t.track, t.runs) for t in rows],
        [r["index"] for r in records if r.get("cut") and r["index"] > 0],
        _marks(records, "corrupt"),
        _marks(records, "reconnects"),
    )
    synthesis = summary.get("synthesis") or {}
    privacy = document.get("privacy") or {}
    released = {t["track"]: t for t in privacy.get("tracks", [])}
    # Pictures for the tracks a reviewer most needs (fallbacks first, then the longest);
    # the others' cards keep their words, so a crowd's page stays a page.
    ranked = sorted(tracks.values(), key=lambda t: (-sum(t.fallbacks.values()), -t.frames))
    pictured = {t.track for t in ranked[:MAX_FILMSTRIPS]}
    cards = [
        _card(
            t,
            strips.get(t.track) if t.track in pictured else None,
            released.get(t.track),
            synthesis,
            cut_originals,
            recorder.config.filmstrip,
        )
        for t in sorted(tracks.values(), key=lambda t: t.track)
    ]
    check_cards = [
        {
            "rank": rank + 1,
            "index": c.index,
            "time": c.time,
            "priority": round(c.priority, 1),
            "reasons": _grouped(c.reasons),
            "frame": data_uri(c.frame),
            "zooms": [
                {"src": data_uri(z), "box": box}
                for z, box in zip(
                    c.zooms, [r["box"] for r in c.reasons if r["box"] is not None], strict=False
                )
            ],
            "originals": [
                {"src": data_uri(cut_originals[key]), "box": list(key[1])}
                for key in [(c.index, tuple(r["box"]), *ZOOM) for r in c.reasons if r["box"] is not None][:4]
                if key in cut_originals
            ],
        }
        for rank, c in enumerate(checks)
    ]
    viewer = [
        {"index": records[p]["index"], "time": records[p]["time"], "src": data_uri(image)}
        for p, image in list(recorder.frames)
        if p < len(records)  # a live run goes on writing while its page is made
    ]
    script = {
        "timeline": {
            "x0": chart.x0,
            "x1": chart.x1,
            "y0": chart.y0,
            "y1": chart.y1,
            "frames": chart.frames,
            "rows": chart.rows,
        },
        "frames": [{"index": v["index"], "time": v["time"]} for v in viewer],
        "checks": [c["index"] for c in check_cards],
    }
    return {
        "title": f"Review: {summary.get('input', 'run')}",
        "final": final,
        "document": document,
        "summary": summary,
        "mode": config.get("obscure", {}).get("mode", "?"),
        "glance": _glance(summary, tracks, frames),
        "activity": activity,
        "performance": performance,
        "timeline": chart,
        "rows_left_out": max(0, len(tracks) - len(rows)),
        "viewer": viewer,
        "cards": cards,
        "checks": check_cards,
        "check_counts": sorted(dict(recorder.check_counts).items(), key=lambda kv: -kv[1]),
        "checks_kept": recorder.config.checks,
        "privacy": _privacy(privacy, final),
        "show_originals": show_originals,
        "originals_note": originals_note,
        "config_json": json.dumps(config, indent=2, sort_keys=True, default=str),
        "models": _models(),
        "versions": _versions(),
        "colours": plots.STATE_COLOURS,
        "recorder_seconds": round(recorder.seconds, 2),
        "script": script,
    }


def _originals(
    document: dict[str, Any], strips: dict[int, Any], checks: list[Any], show: bool
) -> tuple[dict[Cut, bytes], str | None]:
    """With ``review.originals``: the original thumbnails beside the filmstrips' shots and
    the frames to check's zooms, and a note where they could not be had."""
    if not show:
        return {}, None
    wanted: set[Cut] = {(i, tuple(box), *SHOT) for strip in strips.values() for i, _, _, box in strip.shots}
    wanted |= {(c.index, tuple(r["box"]), *ZOOM) for c in checks for r in c.reasons if r["box"] is not None}
    try:
        return originals(document.get("summary", {}).get("input", ""), wanted), None
    except (AnonError, ValueError, OSError) as exc:
        return {}, f"the originals could not be shown: {exc}"


def _spread(items: list[Any], count: int) -> list[Any]:
    """At most ``count`` of ``items``, spread evenly from the first to the last."""
    if len(items) <= count:
        return items
    return (
        [items[round(i * (len(items) - 1) / (count - 1))] for i in range(count)] if count > 1 else items[:1]
    )


def _grouped(reasons: list[dict[str, Any]]) -> list[dict[str, str]]:
    """A frame's reasons, one line a kind: its own words when alone, else the tracks it
    concerns."""
    kinds: dict[str, list[dict[str, Any]]] = {}
    for reason in reasons:
        kinds.setdefault(reason["kind"], []).append(reason)
    lines = []
    for kind, group in kinds.items():
        if len(group) == 1:
            lines.append({"kind": kind, "text": group[0]["text"]})
            continue
        tracks = [str(r["track"]) for r in group if r["track"] is not None]
        shown = ", ".join(tracks[:10]) + (f" and {len(tracks) - 10} more" if len(tracks) > 10 else "")
        lines.append({"kind": kind, "text": f"{len(group)} faces" + (f" (tracks {shown})" if tracks else "")})
    return lines


def _card(
    track: TrackSummary,
    strip: Any,
    released: dict[str, Any] | None,
    synthesis: dict[str, Any],
    cut: dict[Cut, bytes],
    shown: int,
) -> dict[str, Any]:
    selected = (released or {}).get("selected", {})
    positives = [a for a in ATTRIBUTES if selected.get(a)]
    likeness = synthesis.get("likeness", {}).get(str(track.track))
    return {
        "id": track.track,
        "first": track.first,
        "last": track.last,
        "span": f"{track.first_time:.2f}-{track.last_time:.2f} s",
        "frames": track.frames,
        "states": [
            (s, n, plots.STATE_COLOURS[s]) for s, n in sorted(track.states.items(), key=lambda kv: -kv[1])
        ],
        "fallbacks": sorted(track.fallbacks.items(), key=lambda kv: -kv[1]),
        "smallest": round(track.smallest),
        "surrogate": synthesis.get("surrogates", {}).get(str(track.track)),
        "likeness": likeness,
        "released": {"Male": selected.get("Male"), "Young": selected.get("Young")} if selected else None,
        "positives": positives,
        "class_size": (released or {}).get("class_size"),
        "estimates": (released or {}).get("estimates"),
        "pictured": strip is not None,
        "shots": [
            {
                "index": index,
                "state": state,
                "src": data_uri(image),
                "colour": plots.STATE_COLOURS[state],
                "box": box,
                "original": data_uri(cut[(index, tuple(box), *SHOT)])
                if (index, tuple(box), *SHOT) in cut
                else None,
            }
            for index, state, image, box in _spread(strip.shots if strip is not None else [], shown)
        ],
    }


def _privacy(privacy: dict[str, Any], final: bool) -> dict[str, Any] | None:
    """The privacy assessment's figures and its charts, or None where the run had none
    (no attributes) or is still running (assessed once its tracks are final)."""
    if not privacy or not final:
        return None
    policy, figures, tracks = privacy.get("policy", {}), privacy.get("figures"), privacy.get("tracks", [])
    selected = [t["selected"] for t in tracks if "selected" in t]
    names = [a for a in policy.get("quasi_identifiers", []) + policy.get("sensitive", []) if a in ATTRIBUTES]
    attributes = None
    if selected and names:
        distribution = GlobalDistribution.celeba() if policy.get("distribution") in (None, "CelebA") else None
        shares = {"released (this run)": [float(np.mean([bool(s.get(a)) for s in selected])) for a in names]}
        if distribution is not None:
            shares["global (CelebA)"] = [float(distribution.positive[ATTRIBUTES.index(a)]) for a in names]
        attributes = plots.bars(names, shares, "share of faces with it")
    sizes = [t["class_size"] for t in tracks if t.get("class_size")]
    classes = (
        plots.histogram(
            sizes, "equivalence class size (tracks)", "tracks", policy.get("k"), f"k = {policy.get('k')}"
        )
        if sizes
        else None
    )
    targets = None
    if figures:
        achieved = {n: float(figures.get(n) or 0) for n in ("k", "l", "t")}
        targets = plots.targets(achieved, {n: float(policy.get(n) or 0) for n in ("k", "l", "t")})
    changes = (figures or {}).get("changes") or {}
    return {
        "policy": policy,
        "figures": figures,
        "attributes": attributes,
        "classes": classes,
        "targets": targets,
        "changes_k": changes.get("k"),
        "changes_t": changes.get("t") or [],
        "tracks_not_listed": privacy.get("tracks_not_listed"),
    }


def _glance(summary: dict[str, Any], tracks: dict[int, TrackSummary], frames: int) -> list[tuple[str, Any]]:
    latency = summary.get("latency_ms") or {}
    synthesis = summary.get("synthesis") or {}
    glance: list[tuple[str, Any]] = [
        ("input", summary.get("input")),
        ("output", summary.get("output")),
        ("frames in / out", f"{summary.get('frames_in')} / {summary.get('frames_out')}"),
        ("frames dropped", summary.get("frames_dropped")),
        ("frames masked whole", summary.get("frames_masked_whole")),
        ("faces (detections)", summary.get("faces_detected")),
        ("tracks", len(tracks)),
        ("throughput", f"{summary.get('fps')} frames/s over {summary.get('seconds')} s"),
        ("latency p50 / p95 / p99", f"{latency.get('p50')} / {latency.get('p95')} / {latency.get('p99')} ms"),
        ("input damage", summary.get("input_damage") or "none"),
        ("input reconnects", summary.get("input_reconnects")),
    ]
    if synthesis:
        fallback = sum((synthesis.get("fallback") or {}).values())
        glance.append(("faces replaced / fell back", f"{synthesis.get('replaced')} / {fallback}"))
    return glance


def records_from(lines: Iterable[str]) -> list[dict[str, Any]]:
    """The regions file's records (JSON lines), blank lines skipped."""
    return [json.loads(line) for line in lines if line.strip()]


def review_finished(
    report: Path, directory: Path, regions: Path | None = None, originals: bool = False
) -> Page:
    """The page of a finished run: its report, its regions file (the one the report names
    unless given) and its output video read again, each frame paired with its record."""
    from stream.io.sources import open_source

    try:
        document = json.loads(report.read_text())
        summary = document["summary"]
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"review: {report} is not a run report ({exc}); write one with --report") from None
    path = regions or (Path(document["regions"]) if document.get("regions") else None)
    if path is None:
        raise ConfigError(
            f"review: {report} names no regions file; pass --regions FILE "
            "(or run with --review DIR, which needs none)"
        )
    try:
        with open(path) as lines:
            records = records_from(lines)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"review: cannot read the regions file {path} ({exc})") from None
    config = document.get("config", {})
    review = dict(config.get("review", {}))
    if originals:
        review["originals"] = True
        document["config"] = config | {"review": review}
    names = {f.name for f in dataclasses.fields(ReviewConfig)}
    recorder = ReviewRecorder(
        ReviewConfig(**{k: v for k, v in review.items() if k in names}),
        float(config.get("detect", {}).get("min_face", 16)),
    )
    output = summary.get("output", "")
    source = open_source(output, SourceConfig(realtime=False))
    try:
        if source.live:
            raise ConfigError(f"review: the output {output} is a stream; review a live run with --review DIR")
        frames = (p for p in source.packets() if isinstance(p, FramePacket))
        for record, packet in zip(records, frames, strict=False):
            recorder.add(record, packet.image)
    finally:
        source.close()
    return write_page(directory, document, recorder)
