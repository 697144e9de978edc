"""The synth stage's parts on their own: candidate ranking, the identity check, mesh following."""

from typing import Any

import cv2
import numpy as np
import pytest

from stream.algorithms import facewarp, meshfollow
from stream.algorithms.candidates import Candidate, rank_candidates
from stream.algorithms.identity import IdentityCheck
from stream.algorithms.synthesis import Gallery, GalleryEntry, TexturePool, strengths
from stream.config import SynthConfig

SIZE = facewarp.SIZE


def _people(count: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rows = rng.normal(size=(count, 1024)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def _attributes(male: bool, young: bool) -> np.ndarray:
    values = np.full(40, np.nan, np.float32)
    values[20], values[39] = (0.9 if male else 0.1), (0.9 if young else 0.1)
    return values


def _gallery(members: np.ndarray) -> Gallery:
    mask = facewarp.canonical().mask
    entries = [
        GalleryEntry(np.full((SIZE, SIZE, 3), 60 + 40 * i, np.uint8), mask, _attributes(male, young), group)
        for i, ((male, young), group) in enumerate(
            zip([(True, True), (True, False), (False, True)], np.split(members, 3), strict=True)
        )
    ]
    return Gallery(entries, 3, "test")


def test_candidates_are_ranked_by_attribute_match_and_never_hold_the_person() -> None:
    members = _people(9)
    gallery = _gallery(members)
    young_man = np.zeros(40, bool)
    young_man[[20, 39]] = True
    pool = TexturePool(k=3)
    ranked = rank_candidates(gallery, pool, 1, young_man, {}, 3)
    assert [c.index for c in ranked] == [0, 1]  # the young man first, never the woman
    assert ranked[0].origin == "gallery entry 0"
    assert [c.index for c in rank_candidates(gallery, pool, 1, young_man, {}, 1)] == [0]
    # Track 1 is member 0 of entry 0: it never gets its own average back.
    own = {1: (_attributes(True, True), members[0])}
    assert [c.index for c in rank_candidates(gallery, pool, 1, young_man, own, 3)] == [1]
    assert rank_candidates(None, pool, 1, young_man, own, 3) == []


def _face(points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    lo, hi = points[:, :2].min(axis=0), points[:, :2].max(axis=0)
    box = np.concatenate([lo, hi]).astype(np.float32)
    landmarks = np.stack([points[33, :2], points[263, :2], points[1, :2], points[61, :2], points[291, :2]])
    return box, landmarks.astype(np.float32), points, box


def test_the_identity_check_keeps_the_least_alike_passing_candidate_and_never_draws_on_the_frame(
    astronaut_mesh: Any,
) -> None:
    from stream.algorithms.synthesis import sample_lab

    image, points = astronaut_mesh
    people = _people(12, seed=3)
    own, gallery = people[0], _gallery(people[3:])
    seen: list[np.ndarray] = []
    # The recognizer's answers, candidate by candidate: the first drawn face is still the
    # person, the second is not.
    answers = iter([own, people[1], own, people[1]])

    def read(canvas: Any, box: Any, landmarks: Any) -> Any:
        seen.append(canvas)
        return next(answers)

    check = IdentityCheck(gallery, read, SynthConfig.max_likeness, SynthConfig.max_lead, False)
    assert check.active
    others = check.others(own, [people[2]])
    assert len(others) == 1 + 9  # the other track and the gallery's members
    candidates = [Candidate(e, f"gallery entry {i}", i) for i, e in enumerate(gallery.entries[:2])]
    lab, lab_mask = sample_lab(image, points)
    before = image.copy()
    ladder = strengths(SynthConfig.reshape, SynthConfig.keep_tone, SynthConfig.surround_blur)
    checked = check.choose(image, candidates, ladder, _face(points), lab, lab_mask, own, others)
    assert np.array_equal(image, before)  # drawn on copies only
    assert checked.candidate is candidates[1] and checked.surrogate is not None
    assert checked.likeness == pytest.approx(float(people[1] @ own))
    assert len(seen) == 2 and seen[0].shape[0] < image.shape[0]  # a copy of the surroundings
    # Every candidate at every strength still the person: none kept, the closest reported.
    check = IdentityCheck(gallery, lambda *_: own, SynthConfig.max_likeness, SynthConfig.max_lead, False)
    refused = check.choose(image, candidates, ladder, _face(points), lab, lab_mask, own, others)
    assert refused.surrogate is None and refused.likeness == pytest.approx(1.0)
    # A gallery member who is the person does not count as someone else.
    assert len(check.others(people[3], [])) == 8
    assert not IdentityCheck(None, read, 1.0, 2.0, False).active


def test_a_followed_mesh_is_kept_at_lower_confidence_and_found_anew_when_lost(astronaut_mesh: Any) -> None:
    image, points = astronaut_mesh
    box = np.concatenate([points[:, :2].min(axis=0), points[:, :2].max(axis=0)]).astype(np.float32)
    found = (box, _face(points)[1])
    followed = meshfollow.FollowedMesh()
    assert followed.crop(image, 0, box, None) is None  # nothing seen, nothing detected
    assert followed.crop(image, 0, box, found) is not None  # from the detection
    # Found anew it needs the find confidence; once followed the keep confidence.
    between = (meshfollow.KEEP_CONFIDENCE + meshfollow.FIND_CONFIDENCE) / 2
    assert followed.update(0, points, between, box) is None and followed.seen is None
    assert followed.update(0, points, 0.9, box) is not None
    assert followed.update(1, points, between, box) is not None
    # Followed without a detection: the crop sits on the last mesh moved with the track.
    moved = box + np.array([10, 0, 10, 0], np.float32)
    a = followed.crop(image, 2, box, None)
    b = followed.crop(image, 2, moved, None)
    assert a is not None and b is not None
    shift = np.asarray(b.to_image(np.zeros((1, 2), np.float32)) - a.to_image(np.zeros((1, 2), np.float32)))
    assert shift[0, 0] == pytest.approx(10, abs=0.5) and shift[0, 1] == pytest.approx(0, abs=0.5)
    # Too old a mesh is not followed.
    assert followed.crop(image, 1 + meshfollow.FOLLOW_FRAMES + 1, box, None) is None
    assert followed.update(5, points, 0.1, box) is None and followed.seen is None


def test_data_computed_once_and_shared_cannot_be_changed_by_a_caller() -> None:
    from stream.algorithms import synthesis

    shared: list[np.ndarray] = [
        facewarp.canonical().points,
        facewarp.canonical().tri_map,
        facewarp.canonical().bary,
    ]
    shared += [synthesis._rim(), synthesis._full_basis(), synthesis._smoothing()]
    for array in shared:
        with pytest.raises(ValueError, match="read-only"):
            array.flat[0] = 0


def test_a_least_squares_recovery_from_the_gallery_gives_back_group_averages_never_a_member() -> None:
    """An attacker holding the gallery file and knowing who is in which entry (the members'
    descriptors are stored) solves for each member's face by least squares: every member of
    a group gets the same answer, the group's average, never their own face."""
    from calibration.gallery import Identity, from_identities

    rng = np.random.default_rng(5)
    people = _people(10, seed=9)
    identities = []
    for i in range(10):
        texture = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
        attributes = _attributes(male=i < 5, young=i % 2 == 0)
        identities.append(Identity(f"p{i}", texture, np.ones((SIZE, SIZE), bool), attributes, people[i]))
    gallery = from_identities(identities, 4, "test")
    assert len(gallery.entries) == 2 and all(e.k >= 4 for e in gallery.entries)
    membership = np.zeros((len(gallery.entries), len(identities)))
    for j, entry in enumerate(gallery.entries):
        for member in entry.members:
            membership[j, int(np.argmax(people @ member))] = 1.0 / entry.k
    faces = np.array([p.texture.reshape(-1) for p in identities], np.float64)
    stored = np.array([e.texture.reshape(-1) for e in gallery.entries], np.float64)
    recovered = np.linalg.pinv(membership) @ stored
    spread = np.linalg.norm(faces - faces.mean(axis=0), axis=1)
    error = np.linalg.norm(recovered - faces, axis=1) / spread
    assert error.min() > 0.5  # nobody's face comes back
    for j in range(len(gallery.entries)):
        group = np.nonzero(membership[j])[0]
        assert np.allclose(recovered[group], stored[j], atol=1.0)  # each member: the average


def test_a_mesh_placed_whole_is_mapped_as_the_rasterized_triangles_would_be() -> None:
    """The landmark path's mesh (the mean layout under one affine map) takes a fast map that
    draws what painting its 897 triangles draws; a mesh with a shape of its own does not."""
    layout = facewarp.canonical().points
    affine = np.array([[0.31, 0.05, 402.3], [-0.04, 0.33, 151.6]])
    placed = np.concatenate([layout @ affine[:, :2].T + affine[:, 2], np.zeros((468, 1))], axis=1)
    points = placed.astype(np.float32)
    assert facewarp.placed_whole(points)
    fast = facewarp.canonical_map(points, (720, 1280))
    assert fast is not None
    local = points[:, :2] - np.array(fast[2:], np.float32)
    triangles = facewarp.rasterize(local, facewarp.canonical().triangles, *fast[1].shape)
    coords, covered = fast[0], fast[1]
    painted = triangles >= 0
    assert (covered == painted).mean() > 0.97
    ys, xs = np.nonzero(painted & covered)
    back = np.stack([xs, ys], axis=1) + np.array(fast[2:])
    expected = cv2.invertAffineTransform(affine)
    assert np.allclose(coords[ys, xs], back @ expected[:, :2].T + expected[:, 2], atol=0.01)
    bent = points.copy()
    bent[13, 1] += 3.0  # a lip moved: a face of its own
    assert not facewarp.placed_whole(bent)


def test_a_crowd_new_tracks_are_described_at_once_refinements_are_capped() -> None:
    from fractions import Fraction

    from stream.algorithms.attributes import TrackAttributes, tracks_to_describe
    from stream.frames import Detections, FramePacket, Tracks

    n = 8
    boxes = np.array([[10 + 40 * i, 10, 40 + 40 * i, 50] for i in range(n)], np.float32)
    detections = Detections(boxes, np.full(n, 0.9, np.float32), np.zeros((n, 5, 2), np.float32))
    tracks = Tracks(boxes, np.arange(n, dtype=np.int64), np.zeros(n, bool), np.arange(n, dtype=np.int64))
    packet = FramePacket(0, np.zeros((64, 400, 3), np.uint8), 0, Fraction(1, 25),
                         detections=detections, tracks=tracks)  # fmt: skip
    states = {t: TrackAttributes(t, estimates=5 - t) for t in range(2, n)}  # 0 and 1 are new
    due = tracks_to_describe(packet, 1, states, 0.0, refine=2)
    assert [t for t, _ in due] == [0, 1, 7, 6]  # the new ones, then the least described
    assert len(tracks_to_describe(packet, 1, states, 0.0)) == n


def test_a_large_face_mapped_at_half_resolution_matches_the_full_map(monkeypatch: pytest.MonkeyPatch) -> None:
    layout = facewarp.canonical().points
    bent = layout * [1.8, 2.0] + [300, 90] + 6 * np.sin(layout[:, ::-1] / 40)  # a shape of its own
    points = np.concatenate([bent, np.zeros((468, 1))], axis=1).astype(np.float32)
    assert not facewarp.placed_whole(points)
    coarse = facewarp.canonical_map(points, (720, 1280))
    assert coarse is not None and coarse[1].shape[0] > facewarp.COARSE_FACE  # the coarse path ran
    monkeypatch.setattr(facewarp, "COARSE_FACE", 10**6)
    fine = facewarp.canonical_map(points, (720, 1280))
    assert coarse is not None and fine is not None and coarse[2:] == fine[2:]
    assert (coarse[1] == fine[1]).mean() > 0.99
    both = coarse[1] & fine[1]
    error = np.abs(coarse[0][both] - fine[0][both]).max(axis=1)
    assert np.percentile(error, 99) < 0.25 and np.median(error) < 0.01
