"""The synth stage: a k-Same surrogate per track, checked against the person, drawn on the mesh.

Over 400 lines: the stage still holds candidate ranking, the identity check and
mesh following as methods (to become parts of their own, issue 16 item 3).
"""

from __future__ import annotations

import enum
import itertools
from dataclasses import dataclass, field

import cv2
import numpy as np
from numpy.typing import NDArray

from engines.crops import Crop, crop_from_box, eye_angle, face_crop
from engines.facemodels import FaceMesh
from stream.algorithms.attributes import FaceInput
from stream.algorithms.facewarp import MAX_TURN, to_canonical, turn
from stream.algorithms.synthesis import (
    OWN_IDENTITY_COSINE,
    AttributeStyler,
    Gallery,
    GalleryEntry,
    MeshSmoother,
    Strength,
    Surrogate,
    TexturePool,
    draw_surrogate,
    match_score,
    rank_entries,
    sample_lab,
    strengths,
    unit,
)
from stream.config import SynthConfig, TrackConfig
from stream.errors import InternalError
from stream.frames import FramePacket
from stream.stages import base
from stream.stages.attributes import AttributeStage


class Fallback(enum.StrEnum):
    """Why a face was left to the fallback (obscuring) instead of its surrogate; the report
    counts them by these names."""

    NOT_DESCRIBED = "not described yet"  # PPAS has not chosen its attributes
    NOT_CHECKED = "not checked yet"  # candidates are checked on a detected face only
    NO_SURROGATE = "no surrogate"  # no gallery entry, nor k people of the stream, match
    RECOGNISABLE = "recognisable"  # every candidate still singles the person out
    COASTING = "coasting"  # no detection and no mesh to follow
    TOO_SMALL = "too small"  # under synth.min_face
    MESH_NOT_FOUND = "mesh not found"  # the mesh model saw no face there
    NOT_COVERED = "not covered"  # the mesh (or the drawn face) misses part of the face


@dataclass
class SynthCounts:
    """Faces replaced by a surrogate, and those that fell back to obscuring, by reason."""

    replaced: int = 0
    fallback: dict[str, int] = field(default_factory=dict)
    forgotten: int = 0  # ended tracks no longer listed in the report (``KEEP_ENDED``)

    def fell_back(self, reason: Fallback) -> None:
        self.fallback[reason] = self.fallback.get(reason, 0) + 1


@dataclass(frozen=True)
class _MeshSeen:
    index: int
    points: NDArray[np.float32]
    centre: NDArray[np.float32]


def _centre(box: NDArray[np.float32]) -> NDArray[np.float32]:
    return np.asarray((box[:2] + box[2:]) / 2, np.float32)


def crop_from_mesh(image: NDArray[np.uint8], points: NDArray[np.float32], shift: NDArray[np.float32]) -> Crop:
    """The mesh model's crop around last frame's mesh moved by ``shift`` (MediaPipe's
    landmark ROI: the points' square box enlarged 1.5 times, eyes level)."""
    lo, hi = points[:, :2].min(axis=0), points[:, :2].max(axis=0)
    centre = (lo + hi) / 2 + shift
    eyes = sorted([points[33, :2].tolist(), points[263, :2].tolist()])
    angle = eye_angle(np.array(eyes[0]), np.array(eyes[1]))
    return face_crop(
        image, (float(centre[0]), float(centre[1])), 1.5 * float((hi - lo).max()), FaceMesh.size, angle
    )


@dataclass(frozen=True)
class Candidate:
    """A possible surrogate, where it comes from, and its gallery index (None: this stream's)."""

    entry: GalleryEntry
    origin: str
    index: int | None = None


Pick = tuple[int, Strength]  # a track's surrogate as a gallery index and strength, to carry elsewhere
# A detection's box and landmarks, the mesh points, and the track's box.
FaceToCheck = tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.float32], NDArray[np.float32]]


@dataclass
class TrackSynthesis:
    """All the synth stage holds for one track: forgetting the track is one deletion."""

    surrogate: Surrogate | None = None  # its face for life, once chosen
    origin: str | None = None  # where the surrogate came from (the report)
    pick: Pick | None = None  # its gallery entry and strength (carried across segment borders)
    likeness: float | None = None  # the identity check's cosine to the person
    checked: bool = False  # whether the check ran (``likeness`` None: passed unchecked)
    retry_at: int = -1  # the frame from which a track without a surrogate asks again
    waiting: Fallback = Fallback.NOT_DESCRIBED  # why it has none yet
    seen: _MeshSeen | None = None  # its last mesh, followed on frames without a detection


class SynthStage:
    """Stage III: replaces each described track's face with its k-Same surrogate.

    A track's surrogate is chosen once, when PPAS has selected its attributes:
    the best match among the gallery's entries and the average of k other
    people of the same stream (their textures pooled from good frames), never
    one holding the track's own identity; it is kept for the track's life. The
    mesh follows a face from frame to frame (the next crop is placed on the
    last mesh), so frames without a fresh detection are replaced too. Faces
    without a surrogate, too small, too turned or not covered well enough are
    left to the obscuring stage (the fallback), and counted.
    """

    name = "synth"
    parallel = False
    RETRY_FRAMES = 25  # a track with no surrogate yet asks again after this many frames
    CANDIDATES = 3  # surrogates checked per track, best attribute match first
    FOLLOW_FRAMES = 2  # a mesh older than this is not followed
    FIND_CONFIDENCE, KEEP_CONFIDENCE = 0.5, 0.2  # the mesh model's face flag
    SMALL = 0.75  # tracks whose face box is under this share of ``synth.min_face`` get no mesh

    def __init__(self, gallery: Gallery | None, mesh: FaceMesh, config: SynthConfig,
                 attributes: AttributeStage, styler: AttributeStyler | None = None,
                 track: TrackConfig | None = None) -> None:  # fmt: skip
        self.gallery = gallery
        self.track = track or TrackConfig()
        self.styler = styler
        self.mesh = mesh
        self.config = config
        self.attributes = attributes
        self.pool = TexturePool(config.k)
        self.tracks: dict[int, TrackSynthesis] = {}  # live tracks
        self.ended: dict[int, TrackSynthesis] = {}  # the last KEEP_ENDED, slimmed for the report
        # Surrogates chosen for these tracks before a segment border (``stream.run.segments``).
        self.pinned: dict[int, Pick] = {}
        self.smoother = MeshSmoother()
        self.counts = SynthCounts()

    def _record(self, track_id: int) -> TrackSynthesis:
        return self.tracks.setdefault(track_id, TrackSynthesis())

    def _listed(self) -> dict[int, TrackSynthesis]:
        return self.ended | self.tracks

    @property
    def origins(self) -> dict[int, str]:
        """Per track listed, where its surrogate came from (the report)."""
        return {t: r.origin for t, r in self._listed().items() if r.origin is not None}

    @property
    def likeness(self) -> dict[int, float | None]:
        """Per track checked, its surrogate's cosine to the person (None: not checked)."""
        return {t: r.likeness for t, r in self._listed().items() if r.checked}

    @property
    def picks(self) -> dict[int, Pick]:
        """Per track whose surrogate is a gallery entry: that entry and strength."""
        return {t: r.pick for t, r in self._listed().items() if r.pick is not None}

    def _described(self) -> dict[int, tuple[NDArray[np.float32], NDArray[np.float32]]]:
        return {
            t: (s.probability, unit(s.descriptor_sum))
            for t, s in self.attributes.with_descriptors().items()
            if s.estimates
        }

    def _surrogate(self, track_id: int, index: int, det: int) -> Surrogate | list[Candidate] | Fallback:
        """The track's surrogate; or, when it has none yet and this frame can check them, its
        candidates (best attribute match first); or why it has none (yet)."""
        held = self.tracks.get(track_id)
        if held is not None and held.surrogate is not None:
            return held.surrogate
        carried = self._carried(track_id)
        if carried is not None:
            return carried
        record = self.attributes.privacy.tracks.get(track_id)
        if record is None:
            return Fallback.NOT_DESCRIBED
        if held is not None and held.retry_at > index:
            return held.waiting
        if det < 0:
            return Fallback.NOT_CHECKED  # candidates are checked on a detected face
        described = self._described()
        own = described[track_id][1] if track_id in described else None
        scored: list[tuple[float, Candidate]] = []
        if self.gallery is not None:
            for i in rank_entries(self.gallery, record.released, own):
                entry = self.gallery.entries[i]
                score = match_score(entry.attributes, record.released)
                scored.append((score, Candidate(entry, f"gallery entry {i}", i)))
        pooled = self.pool.entry(track_id, record.released, described)
        if pooled is not None and pooled[1] > -np.inf:
            scored.append((pooled[1], Candidate(pooled[0], f"{pooled[0].k} people of this stream")))
        if not scored:
            self._wait(track_id, index, Fallback.NO_SURROGATE)
            return Fallback.NO_SURROGATE
        scored.sort(key=lambda s: -s[0])  # stable: on a tie the gallery's entries first
        return [candidate for _, candidate in scored[: self.CANDIDATES]]

    def _wait(self, track_id: int, index: int, reason: Fallback) -> None:
        held = self._record(track_id)
        held.retry_at, held.waiting = index + self.RETRY_FRAMES, reason

    def _check(self, image: NDArray[np.uint8], track_id: int, index: int, candidates: list[Candidate],
               face: FaceToCheck,
               lab: NDArray[np.float32], lab_mask: NDArray[np.bool_]) -> Surrogate | None:  # fmt: skip
        """At the weakest strength where any does, the candidate whose drawn face the
        attribute estimator's identity descriptor matches least to the person, provided it
        passes: a cosine to them of at most ``max_likeness``, and no more than ``max_lead``
        above the closest other person known (the gallery's members, the stream's other
        tracks). A recognizer ranks people, so a face is safe when someone else scores
        about as well as the person. The one kept is the track's surrogate for life. None
        when every candidate at every strength still singles them out (the track falls
        back for now).

        face: the detection's box and five landmarks (where the descriptor is read, as a
        recognizer finding the face would), the mesh points, and the track's box the frame
        is drawn with (how far the surroundings are softened), in ``image``.
        """
        cfg = self.config
        record = self.attributes.privacy.tracks[track_id]
        state = self.attributes.states.get(track_id)
        own = unit(state.descriptor_sum) if state is not None and state.estimates else None
        box, landmarks, points, track_box = face
        # Drawn on a copy of the face's surroundings (three box widths), not the frame.
        h, w = image.shape[:2]
        size = track_box[2:] - track_box[:2]
        x1, y1 = (int(v) for v in np.maximum(track_box[:2] - size, 0))
        x2, y2 = int(min(w, track_box[2] + size[0])), int(min(h, track_box[3] + size[1]))
        shift = np.array([x1, y1], np.float32)
        local_box, local_landmarks = box - np.tile(shift, 2), landmarks - shift
        local_track_box = track_box - np.tile(shift, 2)
        local_points = points - np.array([x1, y1, 0], np.float32)
        if self.styler is not None:
            styler = self.styler
            candidates = [
                Candidate(styler.style(c.entry, record.released), f"{c.origin}, StarGAN", c.index)
                for c in candidates
            ]
        ladder = strengths(cfg.reshape, cfg.keep_tone, cfg.surround_blur)
        if own is None or (cfg.max_likeness >= 1.0 and cfg.max_lead >= 2.0):  # no person or no check
            return self._keep(track_id, Surrogate.of(candidates[0].entry, ladder[0]), candidates[0], None)
        others = self._others(track_id, own)
        closest: float | None = None
        for strength in ladder:
            passing: list[tuple[float, int]] = []
            drawn: list[tuple[Surrogate, Candidate]] = []
            for candidate in candidates:
                surrogate = Surrogate.of(candidate.entry, strength)
                canvas = image[y1:y2, x1:x2].copy()
                if draw_surrogate(canvas, local_points, local_track_box, surrogate, lab, lab_mask,
                                  cfg.own_eyes) is None:  # fmt: skip
                    continue
                estimate = self.attributes.estimator.estimate([FaceInput(canvas, local_box, local_landmarks)])
                descriptor = unit(estimate.descriptor[0])
                likeness = float(descriptor @ own)
                rival = float((others @ descriptor).max()) if len(others) else -1.0
                closest = likeness if closest is None else min(closest, likeness)
                if likeness <= cfg.max_likeness and likeness - rival <= cfg.max_lead:
                    passing.append((likeness, len(drawn)))
                drawn.append((surrogate, candidate))
            if passing:
                likeness, best = min(passing)
                surrogate, chosen = drawn[best]
                surrogate.light = None  # lit afresh by the first frame it is drawn on
                return self._keep(track_id, surrogate, chosen, likeness)
        held = self._record(track_id)
        held.likeness, held.checked = closest, True
        self._wait(track_id, index, Fallback.RECOGNISABLE)
        return None

    def _others(self, track_id: int, own: NDArray[np.float32]) -> NDArray[np.float32]:
        """Unit identity descriptors of the other people known: the gallery's members and the
        stream's other described tracks, less any that are the person (a gallery built from
        photos of them)."""
        known = [d for t, (_, d) in self._described().items() if t != track_id]
        if self.gallery is not None:
            known += [unit(m) for e in self.gallery.entries for m in e.members]
        if not known:
            return np.zeros((0, len(own)), np.float32)
        others = np.array(known, np.float32)
        return others[others @ own <= OWN_IDENTITY_COSINE]

    def _keep(
        self, track_id: int, surrogate: Surrogate, chosen: Candidate, likeness: float | None
    ) -> Surrogate:
        held = self._record(track_id)
        held.surrogate, held.origin, held.likeness, held.checked = surrogate, chosen.origin, likeness, True
        if chosen.index is not None:
            held.pick = (chosen.index, surrogate.strength)
        return surrogate

    def _carried(self, track_id: int) -> Surrogate | None:
        """The surrogate ``pinned`` for the track (chosen for the same person elsewhere, before
        a segment border), kept unchecked: it passed the check for them there."""
        if track_id not in self.pinned or self.gallery is None:
            return None
        index, strength = self.pinned[track_id]
        entry = self.gallery.entries[index]
        origin = f"gallery entry {index}, carried over a segment border"
        if self.styler is not None:
            record = self.attributes.privacy.tracks.get(track_id)
            if record is None:
                return None  # styled towards its attributes, once described
            entry, origin = self.styler.style(entry, record.released), f"{origin}, StarGAN"
        return self._keep(track_id, Surrogate.of(entry, strength), Candidate(entry, origin, index), None)

    def _forget(self, alive: set[int]) -> None:
        """Drop what is held for ended tracks (their ids never return), so a stream running
        for days holds only its live tracks' surrogates: one deletion a track, its record
        slimmed to what the report lists (the last ``KEEP_ENDED`` of them)."""
        for track_id in sorted(t for t in self.tracks if t not in alive):
            held = self.tracks.pop(track_id)
            if held.origin is not None or held.checked:
                held.surrogate, held.seen = None, None  # what the report lists stays
                self.ended[track_id] = held
        for track_id in [t for t in self.smoother.state if t not in alive]:
            del self.smoother.state[track_id]
        self.pool.forget(alive)
        for track_id in list(itertools.islice(self.ended, max(0, len(self.ended) - base.KEEP_ENDED))):
            del self.ended[track_id]
            self.counts.forgotten += 1

    def _crop(self, packet: FramePacket, row: int, track_id: int, det: int) -> Crop | None:
        held = self.tracks.get(track_id)
        seen = held.seen if held is not None else None
        box = packet.tracks.xyxy[row]
        if seen is not None and packet.index - seen.index <= self.FOLLOW_FRAMES:
            return crop_from_mesh(packet.image, seen.points, _centre(box) - seen.centre)
        if det >= 0 and packet.detections is not None:
            d = packet.detections
            return crop_from_box(packet.image, d.xyxy[det], d.landmarks[det], FaceMesh.size)
        return None

    def process(self, packet: FramePacket) -> FramePacket:  # noqa: C901 - mesh following, candidates and drawing in one loop; to split
        tracks, detections = packet.tracks, packet.detections
        self.pool.seen_together(tracks.track_id[tracks.detection >= 0].tolist())
        self._forget(set(tracks.track_id.tolist()))
        jobs: list[tuple[int, int, int, Surrogate | list[Candidate] | None, Crop]] = []
        rows = zip(tracks.track_id.tolist(), tracks.detection.tolist(), strict=True)
        for row, (tid, det) in enumerate(rows):
            inner = face_of(tracks.xyxy[row], self.track.margin, self.track.min_margin_px)
            if inner[3] - inner[1] < self.SMALL * self.config.min_face:
                self.counts.fell_back(Fallback.TOO_SMALL)  # no mesh run for it (crowds hold hundreds)
                continue
            chosen = self._surrogate(tid, packet.index, det)
            surrogate = None if isinstance(chosen, Fallback) else chosen
            if isinstance(chosen, Fallback):
                self.counts.fell_back(chosen)
                if not (det >= 0 and self.pool.wants(tid)):
                    continue  # nothing to draw, nothing to learn
            crop = self._crop(packet, row, tid, det)
            if crop is None:
                if surrogate is not None:
                    self.counts.fell_back(Fallback.COASTING)
                continue
            jobs.append((row, tid, det, surrogate, crop))
        if not jobs:
            return packet
        mesh = self.mesh.predict([job[4] for job in jobs])
        draws: list[tuple[int, Surrogate, NDArray[np.float32], NDArray[np.float32], NDArray[np.bool_]]] = []
        cfg = self.config
        # Everything is read from the frame before any face is drawn on it (faces may overlap).
        for i, (row, tid, det, surrogate, _) in enumerate(jobs):
            points = mesh.points[i]
            # A face being followed is kept down to a lower confidence than one found anew,
            # so a track does not flicker between its surrogate and the fallback.
            held = self._record(tid)
            if mesh.confidence[i] < (self.KEEP_CONFIDENCE if held.seen is not None else self.FIND_CONFIDENCE):
                held.seen = None
                if surrogate is not None:
                    self.counts.fell_back(Fallback.MESH_NOT_FOUND)
                continue
            held.seen = _MeshSeen(packet.index, points, _centre(tracks.xyxy[row]))
            steady = self.smoother(tid, packet.index, points)  # what is drawn; the raw mesh is followed
            big = float(np.ptp(points[:, 1])) >= cfg.min_face
            # A turned face would ghost the average.
            if det >= 0 and big and self.pool.wants(tid) and abs(turn(points)) <= MAX_TURN:
                self.pool.add(tid, *to_canonical(packet.image, points))
            if surrogate is None:
                continue
            if not big:
                self.counts.fell_back(Fallback.TOO_SMALL)
                continue
            # The mesh must cover the face: against a fresh detection the box it was found
            # for; a followed face (no detection) the tracked box without its margin, so a
            # mesh that drifted off the face leaves it to the fallback, never uncovered.
            box = detections.xyxy[det] if det >= 0 and detections is not None else None
            track = self.track
            face_box = face_of(tracks.xyxy[row], track.margin, track.min_margin_px) if box is None else box
            if covered_share(points, face_box) < cfg.min_cover:
                self.counts.fell_back(Fallback.NOT_COVERED)
                continue
            lab, lab_mask = sample_lab(packet.image, points)
            if isinstance(surrogate, list):
                if box is None or detections is None:  # candidates come with a detection
                    raise InternalError(f"track {tid}: candidates without a detection")
                face = (box, detections.landmarks[det], steady, tracks.xyxy[row])
                checked = self._check(packet.image, tid, packet.index, surrogate, face, lab, lab_mask)
                if checked is None:
                    self.counts.fell_back(Fallback.RECOGNISABLE)
                    continue
                surrogate = checked
            draws.append((row, surrogate, steady, lab, lab_mask))
        for row, surrogate, points, lab, lab_mask in draws:
            tid = int(tracks.track_id[row])
            drawn = draw_surrogate(
                packet.image, points, tracks.xyxy[row], surrogate, lab, lab_mask, cfg.own_eyes
            )
            if drawn is None:
                self.counts.fell_back(Fallback.NOT_COVERED)
                continue
            packet.replaced.add(tid)
            packet.drawn[tid] = drawn
            self.counts.replaced += 1
        return packet

    def reset(self) -> None:
        self.pool.reset()
        self.tracks.clear()
        self.ended.clear()
        self.smoother = MeshSmoother()
        self.counts = SynthCounts()


def face_of(box: NDArray[np.float32], margin: float, min_px: float = 0.0) -> NDArray[np.float32]:
    """The face inside a tracked box (xyxy) that ``tracker.dilate`` grew by ``margin`` of
    its size per side, and at least ``min_px``."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    size = box[2:] - box[:2]
    half_w, half_h = np.minimum(size / (1 + 2 * margin), size - 2 * min_px) / 2
    return np.array([cx - half_w, cy - half_h, cx + half_w, cy + half_h], np.float32)


def covered_share(points: NDArray[np.float32], box: NDArray[np.float32]) -> float:
    """The share of the ellipse inscribed in ``box`` (xyxy) that the hull of the mesh
    ``points`` ``(468, 2+)`` covers: how well the mesh found the detected face."""
    x1, y1 = int(np.floor(box[0])), int(np.floor(box[1]))
    w, h = int(np.ceil(box[2])) - x1 + 1, int(np.ceil(box[3])) - y1 + 1
    if w < 2 or h < 2:
        return 0.0
    hull = cv2.convexHull(np.round((points[:, :2] - [x1, y1]) * 16).astype(np.int32))
    covered = np.zeros((h, w), np.uint8)
    cv2.fillConvexPoly(covered, hull, 1, shift=4)
    ellipse = np.zeros((h, w), np.uint8)
    centre = ((box[0] + box[2]) / 2 - x1, (box[1] + box[3]) / 2 - y1)
    axes = (max(float(box[2] - box[0]) / 2, 1.0), max(float(box[3] - box[1]) / 2, 1.0))
    cv2.ellipse(ellipse, (centre, (2 * axes[0], 2 * axes[1]), 0.0), 1, -1)
    inside = int(ellipse.sum())
    return float((covered & ellipse).sum() / inside) if inside else 0.0
