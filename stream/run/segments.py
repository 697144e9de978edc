"""Long videos in keyframe-aligned segments, processed apart and stitched back.

A video is cut at key frames about every ``segment_s`` seconds. Each segment
is a task of its own: it starts decoding at the key frame before its start
(warm-up, so the tracker already follows the faces at the border and faces
coasting across it stay hidden), writes only its own frames, encoded
without B-frames so that the parts join by stream copy, and logs its tracks.
Stitching copies the parts' video packets in order and the input's audio
packets byte for byte, so every frame is kept; track identities are carried
across each border by matching the tracks of the frames both neighbouring
segments processed (the warm-up), box to box.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from stream.algorithms.tracker import iou_matrix
from stream.config import Config
from stream.errors import AnonError, SourceError
from stream.frames import FramePacket, PassthroughPacket
from stream.io.sources import MediaSource, upright

if TYPE_CHECKING:
    from stream.stages import Pick


@dataclass(frozen=True)
class Segment:
    """Frames with ``start_pts <= pts < end_pts`` (None: to the end) are this
    segment's; decoding starts at the key frame ``warm_pts``, whose frame is
    number ``warm_index`` of the video."""

    number: int
    warm_pts: int
    warm_index: int
    start_pts: int
    end_pts: int | None


def plan(path: str, segment_s: float) -> list[Segment]:
    """Cut points at the first key frame at or after each multiple of ``segment_s``."""
    import av

    with av.open(path) as container:
        video = container.streams.video[0]
        tb = Fraction(video.time_base or Fraction(1, 90000))
        stamps, keys = [], []
        for packet in container.demux(video):
            if packet.pts is None or not packet.size:
                continue
            stamps.append(packet.pts)
            if packet.is_keyframe:
                keys.append(packet.pts)
    if not stamps:
        raise SourceError(f"input {path}: no video packet")
    stamps.sort()
    keys.sort()
    first = stamps[0]
    cuts = [first]
    for key in keys:
        if (key - first) * tb >= segment_s * len(cuts) and key > cuts[-1]:
            cuts.append(key)
    segments = []
    for number, start in enumerate(cuts):
        warm = max((k for k in keys if k < start), default=start) if number else start
        end = cuts[number + 1] if number + 1 < len(cuts) else None
        segments.append(Segment(number, warm, int(np.searchsorted(stamps, warm)), start, end))
    return segments


class SegmentSource(MediaSource):
    """A file read from a segment's warm-up key frame to its end; video only
    (the input's audio is copied whole when the parts are stitched)."""

    def __init__(self, path: str, config: Any, segment: Segment) -> None:
        super().__init__(path, config)
        self.segment = segment
        self.audio_templates = []

    def packets(self) -> Iterator[FramePacket | PassthroughPacket]:
        seg = self.segment
        video = self._container.streams.video[0]
        if seg.number:
            self._container.seek(seg.warm_pts, stream=video, backward=True, any_frame=False)
        index = seg.warm_index
        for frame in self._container.decode(video):
            if frame.pts is None or frame.pts < seg.warm_pts:
                continue
            if seg.end_pts is not None and frame.pts >= seg.end_pts:
                return
            yield FramePacket(
                index=index,
                image=upright(frame.to_ndarray(format="rgb24"), frame.rotation),
                pts=frame.pts,
                time_base=self.info.time_base,
                duration=frame.duration or None,
            )
            index += 1
            self.stats.frames += 1


class WriteFrom:
    """A sink that writes only the frames from ``start_pts`` on (the warm-up is not this segment's)."""

    def __init__(self, sink: Any, start_pts: int) -> None:
        self.sink, self.start_pts = sink, start_pts
        self.description = sink.description
        self.frames_written = 0

    def write_frame(self, packet: FramePacket) -> None:
        if packet.pts >= self.start_pts:
            self.sink.write_frame(packet)
            self.frames_written += 1

    def write_passthrough(self, packet: PassthroughPacket) -> None:
        return None

    def close(self) -> None:
        self.sink.close()


def process_segment(
    path: str,
    segment: Segment,
    output: str,
    config: Config,
    pinned: dict[int, Pick] | None = None,
    secret_seed: int | None = None,
) -> dict[str, Any]:
    """One segment: its frames anonymized into ``output`` (video only), its track log, and
    the gallery surrogate each track got (``surrogates``). ``pinned``: surrogates to give
    these tracks (``carried_surrogates``), chosen for the same people before the border.
    ``secret_seed``: the video's randomized-response secret, the same for each run of a
    segment, so one run again with pins draws for its other tracks as the first did."""
    from stream.algorithms.obscure import Obscurer
    from stream.io.sinks import VideoFileSink
    from stream.run.job import RegionLog, build_stages, load_detector
    from stream.run.runner import Runner
    from stream.stages import SynthStage

    # Parts are joined by stream copy: no B-frames, so each part's decode order ends
    # where the next one's begins.
    sink_config = dataclasses.replace(config.sink, codec="libx264", x264_params="bframes=0")
    source = SegmentSource(path, config.source, segment)
    sink = WriteFrom(VideoFileSink(Path(output), sink_config, source.info.rate, []), segment.start_pts)
    regions = RegionLog()
    stages = build_stages(config, load_detector(config), secret_seed=secret_seed)
    synth = next((s for s in stages if isinstance(s, SynthStage)), None)
    if synth is not None:
        synth.pinned = dict(pinned or {})
    runner = Runner(source, stages, sink, Obscurer(config.obscure), config.runner, on_frame=regions)
    stats = runner.run()
    return {
        "segment": segment.number,
        "frames_written": sink.frames_written,
        "frames_processed": stats.frames_out,
        "masked_whole": stats.frames_masked_whole,
        "tracks": [{"pts": r["pts"], "ids": r["track_ids"], "boxes": r["boxes"]} for r in regions.frames],
        "surrogates": dict(synth.picks) if synth is not None else {},
    }


def link_tracks(results: list[dict[str, Any]], segments: list[Segment]) -> list[dict[str, Any]]:
    """Per written frame (in order): pts and global track ids, identities carried across
    each border by the mean box overlap over the frames both segments processed."""
    return _linked(results, segments)[0]


def carried_surrogates(results: list[dict[str, Any]], segments: list[Segment]) -> dict[int, dict[int, Pick]]:
    """Per segment number, the tracks whose person got another surrogate in an earlier
    segment than here, with that one: run those segments again with them ``pinned``, so a
    person keeps one face across borders. Empty when every linked track already agrees."""
    first: dict[int, Pick] = {}  # global track -> the surrogate its earliest segment chose
    pins: dict[int, dict[int, Pick]] = {}
    for result, segment, mapping in zip(results, segments, _linked(results, segments)[1], strict=True):
        chosen = result.get("surrogates", {})
        for local, global_id in mapping.items():
            if global_id not in first:
                if local in chosen:
                    first[global_id] = chosen[local]
            elif chosen.get(local) != first[global_id]:
                pins.setdefault(segment.number, {})[local] = first[global_id]
    return pins


def _linked(
    results: list[dict[str, Any]], segments: list[Segment]
) -> tuple[list[dict[str, Any]], list[dict[int, int]]]:
    """``link_tracks``'s frames, and per segment its local to global track ids."""
    frames: list[dict[str, Any]] = []
    mappings: list[dict[int, int]] = []
    next_id = 1
    previous: dict[int, dict[str, Any]] = {}  # pts -> the last segment's frame record (global ids)
    for result, segment in zip(results, segments, strict=True):
        mapping: dict[int, int] = {}
        overlap = [r for r in result["tracks"] if r["pts"] in previous]
        scores: dict[tuple[int, int], list[float]] = {}
        for record in overlap:
            before = previous[record["pts"]]
            overlaps = iou_matrix(np.array(record["boxes"], np.float32).reshape(-1, 4),
                                  np.array(before["boxes"], np.float32).reshape(-1, 4))  # fmt: skip
            for (i, tid), (j, gid) in itertools.product(enumerate(record["ids"]), enumerate(before["ids"])):
                scores.setdefault((tid, gid), []).append(float(overlaps[i, j]))
        for (tid, gid), values in sorted(scores.items(), key=lambda kv: -float(np.mean(kv[1]))):
            if np.mean(values) >= 0.5 and tid not in mapping and gid not in mapping.values():
                mapping[tid] = gid
        current: dict[int, dict[str, Any]] = {}
        for record in result["tracks"]:
            ids = []
            for tid in record["ids"]:
                if tid not in mapping:
                    mapping[tid] = next_id
                    next_id += 1
                ids.append(mapping[tid])
            entry = {"pts": record["pts"], "ids": ids, "boxes": record["boxes"]}
            current[record["pts"]] = entry
            if record["pts"] >= segment.start_pts:
                frames.append(entry)
        next_id = max([next_id, *(i + 1 for e in current.values() for i in e["ids"])])
        previous = current
        mappings.append(mapping)
    return frames, mappings


def stitch(path: str, parts: list[Path], output: Path, stamps: list[list[int]]) -> int:
    """The parts' video packets in order and the input's audio packets, into ``output``;
    returns the number of video packets. ``stamps``: per part, the input pts of the
    frames it wrote, in order (a container can round a part's own time stamps; with
    no B-frames, packet i of a part is its frame i)."""
    import av

    opened = [av.open(str(p)) for p in parts]
    try:
        extradata = {bytes(c.streams.video[0].codec_context.extradata or b"") for c in opened}
        if len(extradata) != 1:
            raise AnonError(
                f"output {output}: the segments were encoded with different settings; cannot join them"
            )
        with av.open(path) as source, av.open(str(output), "w") as out:
            time_base = Fraction(source.streams.video[0].time_base or Fraction(1, 90000))
            video = out.add_stream_from_template(opened[0].streams.video[0])
            video.time_base = time_base
            audio = {s.index: out.add_stream_from_template(s) for s in source.streams.audio}

            def video_packets() -> Iterator[tuple[Fraction, int, Any]]:
                for container, pts in zip(opened, stamps, strict=True):
                    packets = [p for p in container.demux(container.streams.video[0]) if p.size]
                    if len(packets) != len(pts):
                        raise AnonError(f"output {output}: a segment holds {len(packets)} frames, "
                                        f"its log {len(pts)}")  # fmt: skip
                    for packet, stamp in zip(packets, pts, strict=True):
                        packet.pts = packet.dts = stamp
                        packet.time_base = time_base
                        yield stamp * time_base, 0, packet

            def audio_packets() -> Iterator[tuple[Fraction, int, Any]]:
                if not audio:  # demux() of no stream would read them all
                    return
                for packet in source.demux(*source.streams.audio):
                    if packet.size and packet.dts is not None:
                        yield packet.dts * Fraction(packet.time_base), 1, packet

            count = 0
            for _, kind, packet in heapq.merge(video_packets(), audio_packets(), key=lambda t: (t[0], t[1])):
                packet.stream = video if kind == 0 else audio[packet.stream.index]
                out.mux(packet)
                count += kind == 0
            return count
    finally:
        for container in opened:
            container.close()


def write_tracks(frames: list[dict[str, Any]], path: Path) -> None:
    path.write_text("\n".join(json.dumps(f) for f in frames) + "\n")
