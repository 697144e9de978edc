"""The synth stage: a k-Same surrogate per track, checked against the person, drawn on the mesh.

The parts it calls: ``stream.algorithms.candidates`` (ranking the surrogates a
track may get), ``stream.algorithms.identity`` (the check that the drawn face
no longer singles the person out) and ``stream.algorithms.meshfollow``
(following the face from frame to frame). It reads the attribute stage through
``AttributeStage.released`` / ``identity`` / ``identities`` / ``read_identity``.

Over 400 lines: the per-track record and the fallback reasons live beside the stage's
one frame loop (choosing jobs, the mesh or landmark path, the check, drawing), which
reads as one sequence.
"""

from __future__ import annotations

import enum
import itertools
from dataclasses import dataclass, field

import cv2
import numpy as np
from numpy.typing import NDArray

from engines.crops import Crop
from engines.facemodels import FaceMesh
from stream.algorithms.candidates import Candidate, rank_candidates
from stream.algorithms.facewarp import MAX_TURN, to_canonical, turn
from stream.algorithms.identity import FaceToCheck, IdentityCheck
from stream.algorithms.meshfollow import FollowedMesh, mesh_from_landmarks
from stream.algorithms.synthesis import (
    AttributeStyler,
    Gallery,
    Strength,
    Surrogate,
    TexturePool,
    draw_surrogate,
    sample_lab,
    strengths,
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
    shared: int = 0  # tracks given a gallery entry another person on screen already wears
    from_landmarks: int = 0  # faces drawn on their five landmarks (no mesh fitted or run)

    def fell_back(self, reason: Fallback) -> None:
        self.fallback[reason] = self.fallback.get(reason, 0) + 1


Pick = tuple[int, Strength]  # a track's surrogate as a gallery index and strength, to carry elsewhere


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
    mesh: FollowedMesh = field(default_factory=FollowedMesh)  # followed and steadied
    # Its last detection's five landmarks, detected box and track box (frame index first),
    # carried with the track box over frames without a detection.
    five: tuple[int, NDArray[np.float32], NDArray[np.float32], NDArray[np.float32]] | None = None


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
    SMALL = 0.75  # tracks whose face box is under this share of ``synth.min_face`` are not drawn
    MESH_FACE = 32  # px: smaller face boxes are drawn on their five landmarks, no mesh run
    POOL_FACE = 40  # px: the stream's texture pool learns from faces at least this tall

    def __init__(self, gallery: Gallery | None, mesh: FaceMesh, config: SynthConfig,
                 attributes: AttributeStage, styler: AttributeStyler | None = None,
                 track: TrackConfig | None = None) -> None:  # fmt: skip
        self.gallery = gallery
        self.track = track or TrackConfig()
        self.styler = styler
        self.mesh = mesh
        self.config = config
        self.attributes = attributes
        self.identity = IdentityCheck(
            gallery, attributes.read_identity, config.max_likeness, config.max_lead, config.own_eyes
        )
        self.ladder = strengths(config.reshape, config.keep_tone, config.surround_blur)
        self.pool = TexturePool(config.k)
        self.tracks: dict[int, TrackSynthesis] = {}  # live tracks
        self.ended: dict[int, TrackSynthesis] = {}  # the last KEEP_ENDED, slimmed for the report
        # Surrogates chosen for these tracks before a segment border (``stream.run.segments``).
        self.pinned: dict[int, Pick] = {}
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

    def _surrogate(self, track_id: int, index: int, det: int) -> Surrogate | list[Candidate] | Fallback:
        """The track's surrogate; or, when it has none yet and this frame can check them, its
        candidates (best attribute match first); or why it has none (yet)."""
        held = self.tracks.get(track_id)
        if held is not None and held.surrogate is not None:
            return held.surrogate
        carried = self._carried(track_id)
        if carried is not None:
            return carried
        released = self.attributes.released(track_id)
        if released is None:
            return Fallback.NOT_DESCRIBED
        if held is not None and held.retry_at > index:
            return held.waiting
        if det < 0:
            return Fallback.NOT_CHECKED  # candidates are checked on a detected face
        taken = frozenset(r.pick[0] for t, r in self.tracks.items() if t != track_id and r.pick is not None)
        described = self.attributes.identities()
        ranked = rank_candidates(
            self.gallery, self.pool, track_id, released, described, self.CANDIDATES, taken
        )
        if not ranked:
            self._wait(track_id, index, Fallback.NO_SURROGATE)
            return Fallback.NO_SURROGATE
        return ranked

    def _wait(self, track_id: int, index: int, reason: Fallback) -> None:
        held = self._record(track_id)
        held.retry_at, held.waiting = index + self.RETRY_FRAMES, reason

    def _check(self, image: NDArray[np.uint8], track_id: int, index: int, candidates: list[Candidate],
               face: FaceToCheck,
               lab: NDArray[np.float32], lab_mask: NDArray[np.bool_]) -> Surrogate | None:  # fmt: skip
        """The candidate the identity check keeps, as the track's surrogate for life (styled
        towards the released attributes first, where a styler is loaded); None when every
        candidate at every strength still singles the person out (the track falls back for
        now and asks again after ``RETRY_FRAMES``)."""
        released = self.attributes.released(track_id)
        own = self.attributes.identity(track_id)
        if self.styler is not None and released is not None:
            styler = self.styler
            candidates = [
                Candidate(styler.style(c.entry, released), f"{c.origin}, StarGAN", c.index)
                for c in candidates
            ]
        if own is None or not self.identity.active:  # no person known, or no check asked
            return self._keep(
                track_id, Surrogate.of(candidates[0].entry, self.ladder[0]), candidates[0], None
            )
        known = [d for t, (_, d) in self.attributes.identities().items() if t != track_id]
        others = self.identity.others(own, known)
        checked = self.identity.choose(image, candidates, self.ladder, face, lab, lab_mask, own, others)
        if checked.surrogate is not None and checked.candidate is not None:
            return self._keep(track_id, checked.surrogate, checked.candidate, checked.likeness)
        held = self._record(track_id)
        held.likeness, held.checked = checked.likeness, True
        self._wait(track_id, index, Fallback.RECOGNISABLE)
        return None

    def _keep(
        self, track_id: int, surrogate: Surrogate, chosen: Candidate, likeness: float | None
    ) -> Surrogate:
        held = self._record(track_id)
        held.surrogate, held.origin, held.likeness, held.checked = surrogate, chosen.origin, likeness, True
        if chosen.index is not None:
            if any(r.pick is not None and r.pick[0] == chosen.index for r in self.tracks.values()):
                self.counts.shared += 1  # the gallery had no other face that fits
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
            released = self.attributes.released(track_id)
            if released is None:
                return None  # styled towards its attributes, once described
            entry, origin = self.styler.style(entry, released), f"{origin}, StarGAN"
        return self._keep(track_id, Surrogate.of(entry, strength), Candidate(entry, origin, index), None)

    def _forget(self, alive: set[int]) -> None:
        """Drop what is held for ended tracks (their ids never return), so a stream running
        for days holds only its live tracks' surrogates: one deletion a track, its record
        slimmed to what the report lists (the last ``KEEP_ENDED`` of them)."""
        for track_id in sorted(t for t in self.tracks if t not in alive):
            held = self.tracks.pop(track_id)
            if held.origin is not None or held.checked:
                held.surrogate, held.mesh, held.five = None, FollowedMesh(), None  # the report's stays
                self.ended[track_id] = held
        self.pool.forget(alive)
        for track_id in list(itertools.islice(self.ended, max(0, len(self.ended) - base.KEEP_ENDED))):
            del self.ended[track_id]
            self.counts.forgotten += 1

    def _crop(self, packet: FramePacket, row: int, track_id: int, det: int) -> Crop | None:
        d = packet.detections
        found = (d.xyxy[det], d.landmarks[det]) if det >= 0 and d is not None else None
        return self._record(track_id).mesh.crop(packet.image, packet.index, packet.tracks.xyxy[row], found)

    def _jobs(self, packet: FramePacket) -> list[_Job]:
        """The tracks to run the mesh model on this frame: those with a surrogate (or
        candidates) to draw, and those whose texture the stream's pool still wants."""
        tracks = packet.tracks
        jobs: list[_Job] = []
        rows = zip(tracks.track_id.tolist(), tracks.detection.tolist(), strict=True)
        for row, (tid, det) in enumerate(rows):
            inner = face_of(tracks.xyxy[row], self.track.margin, self.track.min_margin_px)
            height = inner[3] - inner[1]
            if height < self.SMALL * self.config.min_face:
                self._fall(packet, tid, Fallback.TOO_SMALL)
                continue
            chosen = self._surrogate(tid, packet.index, det)
            surrogate = None if isinstance(chosen, Fallback) else chosen
            if isinstance(chosen, Fallback):
                self._fall(packet, tid, chosen)
                if not (det >= 0 and self.pool.wants(tid) and height >= self.MESH_FACE):
                    continue  # nothing to draw, nothing to learn
            # Small faces are drawn on their five landmarks: no mesh run (crowds hold hundreds).
            crop = self._crop(packet, row, tid, det) if height >= self.MESH_FACE else None
            if crop is None and det < 0 and not self._carries_five(tid, packet.index):
                if surrogate is not None:
                    self._fall(packet, tid, Fallback.COASTING)
                continue
            jobs.append(_Job(row, tid, det, surrogate, crop))
        return jobs

    COAST_FIVE = 15  # frames a face drawn on its landmarks is carried without a detection

    def _carries_five(self, track_id: int, index: int) -> bool:
        held = self.tracks.get(track_id)
        return held is not None and held.five is not None and index - held.five[0] <= self.COAST_FIVE

    def _from_landmarks(self, packet: FramePacket, job: _Job) -> NDArray[np.float32] | None:
        """The mean face placed on the five landmarks, for a face the mesh model did not fit
        or was not run on (counted): this frame's detection's, or the last ones carried with
        the track's box (moved and scaled with it); None without either."""
        detections, held = packet.detections, self._record(job.track_id)
        box = packet.tracks.xyxy[job.row]
        if job.detection >= 0 and detections is not None:
            landmarks, found = detections.landmarks[job.detection], detections.xyxy[job.detection]
            held.five = (packet.index, landmarks, found, box.copy())
        elif self._carries_five(job.track_id, packet.index) and held.five is not None:
            _, last, last_found, last_box = held.five
            scale = (box[2:] - box[:2]) / np.maximum(last_box[2:] - last_box[:2], 1.0)
            shift = (box[:2] + box[2:]) / 2 - (last_box[:2] + last_box[2:]) / 2
            middle = (last_box[:2] + last_box[2:]) / 2
            landmarks = ((last - middle) * scale + middle + shift).astype(np.float32)
            found = (np.concatenate([(last_found[:2] - middle) * scale, (last_found[2:] - middle) * scale])
                     + np.tile(middle + shift, 2)).astype(np.float32)  # fmt: skip
        else:
            return None
        if job.surrogate is None:
            return None
        points = mesh_from_landmarks(landmarks, found)
        if points is not None:
            self.counts.from_landmarks += 1
        return points

    def _face_box(self, packet: FramePacket, job: _Job) -> NDArray[np.float32]:
        """The face a drawn mesh must cover: against a fresh detection the box it was found
        for; a followed face (no detection) the tracked box without its margin, so a mesh
        that drifted off the face leaves it to the fallback, never uncovered."""
        detections = packet.detections
        if job.detection >= 0 and detections is not None:
            return np.asarray(detections.xyxy[job.detection], np.float32)
        return face_of(packet.tracks.xyxy[job.row], self.track.margin, self.track.min_margin_px)

    def _ready(self, packet: FramePacket, job: _Job, points: NDArray[np.float32],
               steady: NDArray[np.float32], learn: bool) -> _Draw | None:  # fmt: skip
        """What to draw for one face whose mesh was found (``points`` as found, ``steady`` as
        drawn), or None (the fallback, counted); ``learn``: a mesh the model found, whose
        texture the stream's pool may take."""
        tracks, detections, cfg = packet.tracks, packet.detections, self.config
        tid, det, surrogate = job.track_id, job.detection, job.surrogate
        height = float(np.ptp(points[:, 1]))
        big = height >= cfg.min_face
        # A turned face would ghost the average; a small one would blur it.
        if (
            learn
            and det >= 0
            and height >= self.POOL_FACE
            and self.pool.wants(tid)
            and abs(turn(points)) <= MAX_TURN
        ):
            self.pool.add(tid, *to_canonical(packet.image, points))
        if surrogate is None:
            return None
        if not big:
            self._fall(packet, tid, Fallback.TOO_SMALL)
            return None
        # The mesh must cover the face: against a fresh detection the box it was found
        # for; a followed face (no detection) the tracked box without its margin, so a
        # mesh that drifted off the face leaves it to the fallback, never uncovered.
        box = detections.xyxy[det] if det >= 0 and detections is not None else None
        row_box = tracks.xyxy[job.row]
        if covered_share(points, self._face_box(packet, job)) < cfg.min_cover:
            self._fall(packet, tid, Fallback.NOT_COVERED)
            return None
        lab, lab_mask = sample_lab(packet.image, points)
        if isinstance(surrogate, list):
            if box is None or detections is None:  # candidates come with a detection
                raise InternalError(f"track {tid}: candidates without a detection")
            face = (box, detections.landmarks[det], steady, row_box)
            checked = self._check(packet.image, tid, packet.index, surrogate, face, lab, lab_mask)
            if checked is None:
                self._fall(packet, tid, Fallback.RECOGNISABLE)
                return None
            surrogate = checked
        return _Draw(job.row, surrogate, steady, lab, lab_mask)

    def process(self, packet: FramePacket) -> FramePacket:
        tracks = packet.tracks
        self.pool.seen_together(tracks.track_id[tracks.detection >= 0].tolist())
        self._forget(set(tracks.track_id.tolist()))
        jobs = self._jobs(packet)
        if not jobs:
            return packet
        meshed = [(job, job.crop) for job in jobs if job.crop is not None]
        mesh = self.mesh.predict([crop for _, crop in meshed]) if meshed else None
        found = {id(job): i for i, (job, _) in enumerate(meshed)}
        # Everything is read from the frame before any face is drawn on it (faces may overlap).
        draws: list[_Draw] = []
        for job in jobs:
            followed = self._record(job.track_id).mesh
            box = tracks.xyxy[job.row]
            steady = None
            if mesh is not None and id(job) in found:
                i = found[id(job)]
                points = mesh.points[i]
                steady = followed.update(packet.index, points, float(mesh.confidence[i]), box)
                if steady is not None and job.surrogate is not None and job.detection >= 0:
                    if covered_share(points, self._face_box(packet, job)) < self.config.min_cover:
                        followed.seen, steady = None, None  # a turned or lowered face: its landmarks
            if steady is None:  # no mesh: the five landmarks, where this frame detected the face
                points = self._from_landmarks(packet, job)
                if points is None:
                    if job.surrogate is not None:
                        self._fall(packet, job.track_id, Fallback.MESH_NOT_FOUND)
                    continue
                steady = followed.smoother(packet.index, points)
            ready = self._ready(
                packet, job, points, steady, learn=job.crop is not None and followed.seen is not None
            )
            if ready is not None:
                draws.append(ready)
        for d in draws:
            tid = int(tracks.track_id[d.row])
            drawn = draw_surrogate(
                packet.image,
                d.points,
                tracks.xyxy[d.row],
                d.surrogate,
                d.lab,
                d.lab_mask,
                self.config.own_eyes,
            )
            if drawn is None:
                self._fall(packet, tid, Fallback.NOT_COVERED)
                continue
            packet.replaced.add(tid)
            packet.drawn[tid] = drawn
            self.counts.replaced += 1
        return packet

    def _fall(self, packet: FramePacket, track_id: int, reason: Fallback) -> None:
        """Leaves the track's face in this frame to the obscuring stage: counted, and
        named on the packet (the review page shows each track's fallbacks)."""
        self.counts.fell_back(reason)
        packet.fallback[track_id] = reason.value

    def reset(self) -> None:
        self.pool.reset()
        self.tracks.clear()
        self.ended.clear()
        self.counts = SynthCounts()


@dataclass(frozen=True)
class _Job:
    """A face to run the mesh model on: its row in the frame's tracks, its track and
    detection (-1: none), its surrogate or candidates (None: its texture only), the crop."""

    row: int
    track_id: int
    detection: int
    surrogate: Surrogate | list[Candidate] | None
    crop: Crop | None  # None: no mesh run (a small face, drawn on its landmarks)


@dataclass(frozen=True)
class _Draw:
    row: int
    surrogate: Surrogate
    points: NDArray[np.float32]  # the steadied mesh
    lab: NDArray[np.float32]
    lab_mask: NDArray[np.bool_]


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
