"""Candidate ranking: the surrogates a track may get, best attribute match first.

The gallery's entries (never one holding the track's own identity) and the
average of k other people of the same stream, scored by how well their
attributes match the ones PPAS released for the track.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from stream.algorithms.synthesis import Gallery, GalleryEntry, TexturePool, match_score, rank_entries

# Per described track: its fused attribute probabilities and unit identity descriptor.
Described = dict[int, tuple[NDArray[np.float32], NDArray[np.float32]]]


@dataclass(frozen=True)
class Candidate:
    """A possible surrogate, where it comes from, and its gallery index (None: this stream's)."""

    entry: GalleryEntry
    origin: str
    index: int | None = None


def rank_candidates(gallery: Gallery | None, pool: TexturePool, track_id: int, released: NDArray[np.bool_],
                    described: Described, count: int,
                    taken: frozenset[int] = frozenset()) -> list[Candidate]:  # fmt: skip
    """Up to ``count`` candidates for the track, best match to ``released`` first (on a tie
    the gallery's entries first), gallery entries ``taken`` by people on screen now after
    every other (two people are given one face only when nothing else fits); empty when
    neither the gallery nor the stream offers one."""
    own = described[track_id][1] if track_id in described else None
    scored: list[tuple[float, Candidate]] = []
    if gallery is not None:
        for i in rank_entries(gallery, released, own):
            entry = gallery.entries[i]
            scored.append(
                (match_score(entry.attributes, released), Candidate(entry, f"gallery entry {i}", i))
            )
    pooled = pool.entry(track_id, released, described)
    if pooled is not None and pooled[1] > -np.inf:
        scored.append((pooled[1], Candidate(pooled[0], f"{pooled[0].k} people of this stream")))
    scored.sort(key=lambda s: (s[1].index in taken, -s[0]))  # stable
    return [candidate for _, candidate in scored[:count]]
