"""Stage III, k-Same-Select: dense warps, gallery building, surrogate choice, the synth mode."""

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import MEDIA, decode_frames

from engines import zoo
from engines.base import create_backend
from engines.facemodels import FaceMesh
from stream.algorithms import facewarp
from stream.algorithms.synthesis import Gallery, GalleryEntry, average_textures, rank_entries
from stream.config import SynthConfig


def test_warp_to_the_canonical_frame_and_back_is_faithful(astronaut_mesh: Any) -> None:
    image, points = astronaut_mesh
    texture, mask = facewarp.to_canonical(image, points)
    assert texture.shape == (facewarp.SIZE, facewarp.SIZE, 3) and mask.mean() > 0.4
    drawn = facewarp.from_canonical(texture, points, image.shape[:2])
    assert drawn is not None
    window = image[drawn.y1 : drawn.y1 + drawn.pixels.shape[0], drawn.x1 : drawn.x1 + drawn.pixels.shape[1]]
    error = np.abs(drawn.pixels.astype(int) - window.astype(int))[drawn.coverage].mean()
    assert error < 6  # interpolation only
    assert drawn.coverage.sum() > 0.5 * (np.ptp(points[:, 0]) * np.ptp(points[:, 1]))


def test_average_textures_and_surrogate_choice_exclude_the_own_identity() -> None:
    size = facewarp.SIZE
    textures = [np.full((size, size, 3), v, np.uint8) for v in (0, 90, 180)]
    masks = [np.ones((size, size), bool)] * 3
    mean, valid = average_textures(textures, masks)
    assert int(mean[128, 128, 0]) == 90 and valid.sum() == facewarp.canonical().mask.sum()
    rng = np.random.default_rng(0)
    members = rng.normal(size=(9, 1024)).astype(np.float32)
    members /= np.linalg.norm(members, axis=1, keepdims=True)
    young_male = np.full(40, np.nan, np.float32)
    young_male[[20, 39]] = 0.9
    old_male = young_male.copy()
    old_male[39] = 0.1
    female = young_male.copy()
    female[20] = 0.1
    gallery = Gallery([GalleryEntry(mean, valid, young_male, members[:3]), GalleryEntry(mean, valid, old_male, members[3:6]),
                       GalleryEntry(mean, valid, female, members[6:])], 3, "test")  # fmt: skip
    selected = np.zeros(40, bool)
    selected[[20, 39]] = True  # a young man
    assert rank_entries(gallery, selected, None) == [0, 1]
    # The track is member 1 of the best entry: it must never get its own face back, and
    # never a surrogate of the other gender.
    assert rank_entries(gallery, selected, members[1]) == [1]
    assert rank_entries(Gallery([gallery.entries[0], gallery.entries[2]], 3, "t"), selected, members[1]) == []


@pytest.fixture(scope="module")
def gallery_file(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A gallery built by the job from six face-api.js people (k = 3)."""
    from calibration.gallery import build

    folder = tmp_path_factory.mktemp("people")
    for name in ("amy", "bernadette", "penny", "howard", "leonard", "raj"):
        (folder / name).symlink_to(MEDIA / "face-api.js" / "examples" / "images" / name)
    gallery = build(folder, k=3)
    path = tmp_path_factory.mktemp("gallery") / "gallery.npz"
    gallery.save(path)
    return path, folder


@pytest.mark.media
def test_gallery_holds_only_averages_of_k_identities(gallery_file: Any) -> None:
    from calibration.gallery import describe_identity
    from stream.config import build_config
    from stream.run.job import load_detector, load_estimator

    path, folder = gallery_file
    gallery = Gallery.load(path)
    assert (
        gallery.k == 3 and len(gallery.entries) == 2 and all(e.k >= 3 for e in gallery.entries)
    )  # women, men
    config = build_config()
    mesh = FaceMesh(create_backend("cpu", zoo.ensure("facemesh")))
    person = describe_identity("amy", sorted((folder / "amy").iterdir()), load_detector(config),
                               load_estimator(config), mesh)  # fmt: skip
    assert person is not None
    for entry in gallery.entries:  # no entry is any one person's texture
        both = entry.mask & person.mask
        assert np.abs(entry.texture[both].astype(int) - person.texture[both].astype(int)).mean() > 3


@pytest.mark.media
def test_synth_mode_replaces_a_talking_head_and_keeps_every_frame(tmp_path: Path, gallery_file: Any) -> None:
    from run_stream import main

    clip = MEDIA / "LivePortrait" / "assets" / "examples" / "driving" / "d0.mp4"
    out, report = tmp_path / "synth.mp4", tmp_path / "r.json"
    code = main([str(clip), "-o", str(out), "--mode", "synth", "--gallery", str(gallery_file[0]),
                 "--report", str(report), "-q"])  # fmt: skip
    assert code == 0
    summary = json.loads(report.read_text())["summary"]
    synthesis = summary["synthesis"]
    assert synthesis["replaced"] > 0.5 * summary["frames_out"]
    assert sum(synthesis["fallback"].values()) + synthesis["replaced"] >= summary["frames_out"]
    original, replaced = decode_frames(clip), decode_frames(out)
    assert len(replaced) == len(original) == 78
    face = (slice(150, 330), slice(170, 340))
    change = np.abs(original[-1][face].astype(int) - replaced[-1][face].astype(int)).mean()
    assert change > 8  # the face is another one
    assert np.abs(original[-1][:60].astype(int) - replaced[-1][:60].astype(int)).mean() < 4  # the rest is not


def test_synth_without_any_surrogate_falls_back_for_every_face(
    tmp_path: Path, demo_clip: Path, detector: Any
) -> None:
    from stream.config import build_config
    from stream.run.job import run_job

    # No gallery and one person in the stream: fewer than k identities to average.
    config = build_config(None, {"obscure": {"mode": "synth"}, "synth": {"gallery": ""}})
    result = run_job(str(demo_clip), "null", config, detector=detector)
    assert result.synthesis is not None
    assert result.synthesis["replaced"] == 0 and result.synthesis["fallback"]["no surrogate"] >= 50
    assert result.stats.frames_out == result.stats.frames_in


def test_the_builtin_gallery_replaces_the_demo_face(demo_clip: Path, detector: Any) -> None:
    from stream.config import build_config
    from stream.run.job import run_job

    result = run_job(
        str(demo_clip), "null", build_config(None, {"obscure": {"mode": "synth"}}), detector=detector
    )
    assert result.synthesis is not None
    assert result.synthesis["replaced"] >= 0.8 * result.stats.frames_out
    assert set(result.synthesis["surrogates"].values()) <= {f"gallery entry {i}" for i in range(10)}
    # Each surrogate passed the identity check: its face no longer matches the person.
    likeness = result.synthesis["likeness"]
    assert likeness and all(v is not None and v <= SynthConfig.max_likeness for v in likeness.values())


def test_a_surrogate_that_still_looks_like_the_person_is_not_drawn(demo_clip: Path, detector: Any) -> None:
    from stream.config import build_config
    from stream.run.job import run_job

    # No surrogate can pass a check this strict: every face falls back, none is left as it was.
    config = build_config(None, {"obscure": {"mode": "synth"}, "synth": {"max_likeness": -1.0}})
    result = run_job(str(demo_clip), "null", config, detector=detector)
    assert result.synthesis is not None
    assert result.synthesis["replaced"] == 0 and result.synthesis["fallback"]["recognisable"] >= 1
    assert result.stats.frames_out == result.stats.frames_in


def test_stream_surrogates_average_k_other_people_never_the_track_itself() -> None:
    from stream.algorithms.synthesis import TexturePool

    size = facewarp.SIZE
    rng = np.random.default_rng(1)
    people = rng.normal(size=(6, 1024)).astype(np.float32)
    people /= np.linalg.norm(people, axis=1, keepdims=True)
    male = np.full(40, np.nan, np.float32)
    male[20] = 0.9
    # Track 5 is person 0 again (a broken track); tracks 0..4 were seen together.
    described = {t: (male, people[t % 5]) for t in range(6)}
    pool = TexturePool(k=3, frames=4, min_frames=2)
    pool.seen_together([0, 1, 2, 3, 4])
    for t in range(6):
        for _ in range(4):
            pool.add(t, np.full((size, size, 3), 40 * t, np.uint8), np.ones((size, size), bool))
    assert not pool.wants(0)
    selected = np.zeros(40, bool)
    selected[20] = True
    made = pool.entry(0, selected, described)
    assert made is not None
    entry, _ = made
    assert entry.k == 3
    members = {int(np.argmax(people @ m)) for m in entry.members}
    assert 0 not in members and len(members) == 3  # not the track's own person, three distinct people
    female = selected.copy()
    female[20] = False
    assert pool.entry(0, female, described) is None  # nobody of that gender
    assert TexturePool(k=3).entry(0, selected, described) is None  # nothing learnt yet
    small = TexturePool(k=2, capacity=3)
    for t in range(5):
        small.add(t, np.zeros((size, size, 3), np.uint8), np.ones((size, size), bool))
    assert list(small.textures) == [2, 3, 4]  # a long stream holds only its latest people


@pytest.mark.media
def test_replaced_faces_stay_faces_and_are_recognised_no_better_than_one_in_k() -> None:
    """Faceres and dlib as attackers on one in three of the media's probe photos (built-in
    gallery): a synthesized face is still a face to the detector, and matches its owner at
    most 1/k."""
    from calibration.synth_report import evaluate

    results = evaluate(MEDIA, ["original", "synth"], "builtin", every=3)
    original, synth = results["modes"]["original"], results["modes"]["synth"]
    assert results["probes"] >= 40 and original["top1"] > 0.8
    # Faces the identity check refuses fall back to blur (no longer replaced with their head
    # blurred, issue 17, and the surrogate's own members no longer count as rivals), so some
    # of the 45 probes are no face to CenterFace: privacy first (max_lead 0.1 would find
    # 96% but let faceres re-identify 6.7% of the full set).
    assert synth["face_found"] >= 0.85
    assert synth["top1"] <= 1 / 4 and synth["top1"] < original["top1"] / 4
    # dlib's network, which the stream never uses, does no better.
    assert original["dlib_top1"] > 0.8 and synth["dlib_top1"] < original["dlib_top1"] / 4


def _still_through_synth(detector: Any, synth_options: Any) -> Any:
    """A media photo through fresh synth stages: the packet, the synth stage, the estimator."""
    from engines.evaluation import frame_sized, main_face, read_rgb
    from stream.algorithms.obscure import Obscurer
    from stream.config import build_config
    from stream.run.job import anonymize_still, build_stages, load_estimator
    from stream.stages import SynthStage

    overrides = {"every": 1, "min_estimates": 1, "max_estimates": 1}
    config = build_config(
        None, {"obscure": {"mode": "synth"}, "attributes": overrides, "synth": synth_options}
    )
    estimator = load_estimator(config)
    stages = build_stages(config, detector, estimator)
    synth = next(s for s in stages if isinstance(s, SynthStage))
    photo = main_face(detector, frame_sized(read_rgb(MEDIA / "deepface/tests/unit/dataset/img48.jpg")))
    assert photo is not None
    return photo[0], anonymize_still(photo[0], stages, Obscurer(config.obscure)), synth, estimator


def test_the_identity_check_scores_the_face_as_it_is_drawn(detector: Any) -> None:
    from stream.algorithms.attributes import FaceInput
    from stream.algorithms.synthesis import unit

    # At the defaults this photo's person stays at the edge of max_likeness (0.60-0.61 by
    # the run's random release): a little more room, so the face is drawn and checked.
    _, packet, synth, estimator = _still_through_synth(detector, {"max_likeness": 0.65})
    ((track_id, likeness),) = synth.likeness.items()
    assert likeness is not None and track_id in packet.replaced
    # The cosine the check kept is the one of the face the frame carries, read where the
    # face was found (the soft surroundings the check drew reach as far as the frame's).
    found = packet.detections
    assert found is not None
    drawn = unit(
        estimator.estimate([FaceInput(packet.image, found.xyxy[0], found.landmarks[0])]).descriptor[0]
    )
    own = synth.attributes.identity(track_id)
    assert own is not None
    assert float(drawn @ own) == pytest.approx(likeness, abs=0.01)
    # And someone else known scores about as well: the person does not lead by more than max_lead.
    known = [d for t, (_, d) in synth.attributes.identities().items() if t != track_id]
    others = synth.identity.others(own, known)
    assert len(others) >= synth.config.k and float((others @ own).max()) <= 0.55
    assert likeness - float((others @ drawn).max()) <= SynthConfig.max_lead + 0.01


def test_a_face_that_still_leads_every_other_person_is_not_drawn(detector: Any) -> None:
    original, packet, synth, _ = _still_through_synth(detector, {"max_lead": -2.0})
    assert not packet.replaced and synth.counts.fallback["recognisable"] == 1
    assert packet.anonymized and not np.array_equal(packet.image, original)  # obscured, not left


def test_the_drawn_mesh_is_steadied_when_still_and_follows_when_moving(astronaut_mesh: Any) -> None:
    from stream.algorithms.meshfollow import MeshSmoother

    _, points = astronaut_mesh
    height = float(np.ptp(points[:, 1]))
    rng = np.random.default_rng(0)
    smoother, mover = MeshSmoother(), MeshSmoother()
    # A still face whose mesh jitters by 0.5% of its height: the drawn mesh jitters a third less.
    jitter = [points + rng.normal(0, 0.005 * height, points.shape).astype(np.float32) for _ in range(60)]
    still = [smoother(i, p) for i, p in enumerate(jitter)]
    left = np.std(np.array(still[20:]) - points, axis=0).mean()
    assert left < 0.7 * np.std(np.array(jitter[20:]) - points, axis=0).mean()
    # A face moving 3% of its height per frame is followed within a quarter of a frame's step.
    step = np.array([0.03 * height, 0, 0], np.float32)
    moving = [mover(i, points + i * step) for i in range(30)]
    assert np.abs(moving[-1] - (points + 29 * step)).max() < 0.25 * 0.03 * height
    # A gap starts afresh: the first frame after it is drawn as found.
    assert np.array_equal(mover(40, points), points)
