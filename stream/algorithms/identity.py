"""The identity check: a surrogate is kept only when a recognizer no longer singles the
person out of the face it draws.

A recognizer ranks people, so a face is safe when someone else known (the
gallery's members, the stream's other tracks) scores about as well as the
person: the drawn face's cosine to the person must be at most ``max_likeness``
and no more than ``max_lead`` above the closest other person.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from stream.algorithms.candidates import Candidate
from stream.algorithms.synthesis import (
    OWN_IDENTITY_COSINE,
    Gallery,
    Strength,
    Surrogate,
    draw_surrogate,
    unit,
)

# The unit identity descriptor of the face at a box and five landmarks of an image.
ReadIdentity = Callable[[NDArray[np.uint8], NDArray[np.float32], NDArray[np.float32]], NDArray[np.float32]]
# A detection's box and landmarks, the mesh points, and the track's box.
FaceToCheck = tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.float32], NDArray[np.float32]]


@dataclass(frozen=True)
class Checked:
    """The check's outcome: the surrogate kept and its candidate, with its cosine to the
    person; or no surrogate, with the closest cosine any candidate reached (None: none drawn)."""

    surrogate: Surrogate | None
    candidate: Candidate | None
    likeness: float | None


class IdentityCheck:
    def __init__(self, gallery: Gallery | None, read: ReadIdentity, max_likeness: float, max_lead: float,
                 own_eyes: bool) -> None:  # fmt: skip
        self.gallery, self.read = gallery, read
        self.max_likeness, self.max_lead, self.own_eyes = max_likeness, max_lead, own_eyes

    @property
    def active(self) -> bool:
        """Off when both limits let anything pass."""
        return self.max_likeness < 1.0 or self.max_lead < 2.0

    def others(self, own: NDArray[np.float32], known: Iterable[NDArray[np.float32]]) -> NDArray[np.float32]:
        """Unit identity descriptors of the other people known: ``known`` (the stream's other
        tracks) and the gallery's members, less any that are the person (a gallery built from
        photos of them)."""
        rows = list(known)
        if self.gallery is not None:
            rows += [unit(m) for e in self.gallery.entries for m in e.members]
        if not rows:
            return np.zeros((0, len(own)), np.float32)
        others = np.array(rows, np.float32)
        return others[others @ own <= OWN_IDENTITY_COSINE]

    def choose(self, image: NDArray[np.uint8], candidates: list[Candidate], ladder: list[Strength],
               face: FaceToCheck, lab: NDArray[np.float32], lab_mask: NDArray[np.bool_],
               own: NDArray[np.float32], others: NDArray[np.float32]) -> Checked:  # fmt: skip
        """At the weakest strength of ``ladder`` where any does, the candidate whose drawn face
        matches the person ``own`` least, provided it passes.

        face: the detection's box and five landmarks (where the descriptor is read, as a
        recognizer finding the face would), the mesh points, and the track's box the face
        is drawn with, in ``image``. Each candidate is drawn on a copy of the face's
        surroundings (three box widths), never on ``image``.
        """
        box, landmarks, points, track_box = face
        h, w = image.shape[:2]
        size = track_box[2:] - track_box[:2]
        x1, y1 = (int(v) for v in np.maximum(track_box[:2] - size, 0))
        x2, y2 = int(min(w, track_box[2] + size[0])), int(min(h, track_box[3] + size[1]))
        shift = np.array([x1, y1], np.float32)
        local_box, local_landmarks = box - np.tile(shift, 2), landmarks - shift
        local_track_box = track_box - np.tile(shift, 2)
        local_points = points - np.array([x1, y1, 0], np.float32)
        closest: float | None = None
        for strength in ladder:
            passing: list[tuple[float, int]] = []
            drawn: list[tuple[Surrogate, Candidate]] = []
            for candidate in candidates:
                surrogate = Surrogate.of(candidate.entry, strength)
                canvas = image[y1:y2, x1:x2].copy()
                if draw_surrogate(canvas, local_points, local_track_box, surrogate, lab, lab_mask,
                                  self.own_eyes) is None:  # fmt: skip
                    continue
                descriptor = self.read(canvas, local_box, local_landmarks)
                likeness = float(descriptor @ own)
                # The surrogate's own members resemble it by construction: no rivals.
                rivals = others[_not_members(others, candidate.entry.members)]
                rival = float((rivals @ descriptor).max()) if len(rivals) else -1.0
                closest = likeness if closest is None else min(closest, likeness)
                if likeness <= self.max_likeness and likeness - rival <= self.max_lead:
                    passing.append((likeness, len(drawn)))
                drawn.append((surrogate, candidate))
            if passing:
                likeness, best = min(passing)
                surrogate, chosen = drawn[best]
                surrogate.light = None  # lit afresh by the first frame it is drawn on
                return Checked(surrogate, chosen, likeness)
        return Checked(None, None, closest)


def _not_members(rows: NDArray[np.float32], members: NDArray[np.float32]) -> NDArray[np.bool_]:
    """Which of the unit descriptors ``rows`` are none of ``members`` (the same vectors)."""
    if len(rows) == 0 or len(members) == 0:
        return np.ones(len(rows), bool)
    return np.asarray((rows @ unit(members).T).max(axis=1) < 0.999)
