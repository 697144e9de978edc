"""Stage I: fusion, the attribute stage end to end, the forest job, the global distribution job."""

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from stream.algorithms.attributes import AttributeFusion, TrackAttributes
from stream.algorithms.privacy import ATTRIBUTES, INDEX, GlobalDistribution, Policy, StreamPrivacy
from stream.config import build_config

MALE, SMILING = INDEX["Male"], INDEX["Smiling"]


def estimate(male: Any = np.nan, smiling: Any = np.nan) -> Any:
    p = np.full(len(ATTRIBUTES), np.nan, np.float32)
    p[MALE], p[SMILING] = male, smiling
    return p


def test_fusion_weights_by_quality_and_holds_decisions_with_hysteresis() -> None:
    fusion = AttributeFusion(hysteresis=0.1, freeze_confidence=0.99, min_estimates=100, max_estimates=1000)
    track = TrackAttributes(1)
    fusion.update(track, estimate(male=0.9, smiling=0.55), 1.0, np.zeros(1024, np.float32))
    assert track.decided[MALE] and track.decided[SMILING]
    fusion.update(track, estimate(male=0.0, smiling=0.4), 0.1, np.zeros(1024, np.float32))
    assert track.probability[MALE] == pytest.approx(0.9 / 1.1)  # the poor face counts little
    # Smiling's mean is now 0.536: inside the band, the decision stays.
    assert track.decided[SMILING]
    fusion.update(track, estimate(smiling=0.1), 1.0, np.zeros(1024, np.float32))
    assert not track.decided[SMILING]  # far enough below 0.5 - 0.1 to change
    assert np.isnan(track.probability[INDEX["Bald"]]) and not track.known[INDEX["Bald"]]


def test_a_frozen_track_never_changes() -> None:
    fusion = AttributeFusion(hysteresis=0.1, freeze_confidence=0.6, min_estimates=2, max_estimates=10)
    track = TrackAttributes(7)
    assert not fusion.update(track, estimate(male=0.95, smiling=0.9), 1.0, np.zeros(1024, np.float32))
    assert fusion.update(track, estimate(male=0.9, smiling=0.95), 1.0, np.zeros(1024, np.float32))
    before = (track.probability.copy(), track.decided.copy())
    assert not fusion.update(track, estimate(male=0.0, smiling=0.0), 1.0, np.zeros(1024, np.float32))
    np.testing.assert_array_equal(track.probability, before[0])
    np.testing.assert_array_equal(track.decided, before[1])


def test_stream_privacy_chooses_once_and_reproducibly() -> None:
    policy = Policy(quasi_identifiers=("Male",), t=0.1, epsilon=1.0)
    probs = np.random.default_rng(0).random((20, len(ATTRIBUTES))).astype(np.float32)
    a = StreamPrivacy(policy, GlobalDistribution.celeba(), seed=5)
    b = StreamPrivacy(policy, GlobalDistribution.celeba(), seed=5)
    first = [a.select(i, probs[i]).released.copy() for i in range(20)]
    assert all((a.select(i, 1 - probs[i]).released == first[i]).all() for i in range(20))  # never re-chosen
    assert all((b.select(i, probs[i]).released == first[i]).all() for i in range(20))  # same seed, same draw
    other = StreamPrivacy(policy, GlobalDistribution.celeba(), seed=6)
    assert any((other.select(i, probs[i]).released != first[i]).any() for i in range(20))
    verdict = a.assessment()
    assert verdict is not None and verdict.figures.classes <= 2


def test_online_ppas_moves_a_class_toward_the_global_distribution() -> None:
    # Twenty men who all smile: the class's smiling rate is pulled toward CelebA's ~48%.
    policy = Policy(quasi_identifiers=("Male",), t=0.1, epsilon=float("inf"))
    privacy = StreamPrivacy(policy, GlobalDistribution.celeba(), seed=0)
    for i in range(20):
        privacy.select(i, estimate(male=0.9, smiling=0.95))
    chosen = np.array([r.chosen[SMILING] for r in privacy.tracks.values()])
    p = GlobalDistribution.celeba().positive[SMILING]
    assert abs(chosen.mean() - p) <= 0.1


def test_attribute_stage_in_a_run_reports_without_original_values(
    tmp_path: Path, demo_clip: Path, detector: Any
) -> None:
    from stream.run.job import run_job

    config = build_config(None, {"attributes": {"enabled": True, "every": 2}})
    report = tmp_path / "report.json"
    result = run_job(str(demo_clip), str(tmp_path / "o.mp4"), config, detector=detector, report=report)
    data = json.loads(report.read_text())["privacy"]
    assert data["figures"]["k"] >= 1 and "private" in data["figures"]
    (track,) = [t for t in data["tracks"] if t["estimates"] >= 3]
    assert set(track["selected"]) == set(ATTRIBUTES)
    assert track["confidence"]["Male"] >= 0 and "original" not in track
    assert result.stats.frames_out == 100
    # With the opt-in flag the original values are written too.
    config = build_config(None, {"attributes": {"enabled": True}, "privacy": {"report_original": True}})
    run_job(str(demo_clip), "null", config, detector=detector, report=report)
    tracks = json.loads(report.read_text())["privacy"]["tracks"]
    assert any("original" in t and t["original"]["Male"] < 0.5 for t in tracks)  # Eileen Collins


def test_global_distribution_job(tmp_path: Path) -> None:
    from calibration.global_distribution import from_attribute_file

    rows = ["3", " ".join(ATTRIBUTES)]
    for i in range(3):
        values = ["1" if (a == MALE and i < 2) else "-1" for a in range(len(ATTRIBUTES))]
        rows.append(f"{i:06d}.jpg " + " ".join(values))
    table = tmp_path / "list_attr_celeba.txt"
    table.write_text("\n".join(rows) + "\n")
    distribution, count = from_attribute_file(table)
    out = tmp_path / "freq.csv"
    distribution.write_csv(out, count)
    again = GlobalDistribution.from_csv(out)
    assert count == 3 and again.positive[MALE] == pytest.approx(2 / 3) and again.positive[SMILING] == 0


@pytest.mark.media
def test_forest_job_end_to_end_on_a_celeba_format_set_made_from_shared_media(
    tmp_path: Path, detector: Any
) -> None:
    """Faces of ../shared/media, aligned by our crops and labelled by the built-in estimators,
    written in CelebA format; the job trains, saves with skops, and the forests load and predict."""
    from conftest import MEDIA

    from calibration.attribute_forest import describe, read_dataset, save_forests, train
    from engines.crops import crop_from_box
    from engines.evaluation import labelled_photos, main_face, read_rgb
    from stream.algorithms.attributes import FaceInput, load_forests
    from stream.run.job import load_estimator

    estimator = load_estimator(build_config())
    images = tmp_path / "img_align_celeba"
    images.mkdir()
    rows, parts = [], []
    photos = labelled_photos(MEDIA)
    identities = sorted({p.identity for p in photos})
    test_ids = set(identities[::3])  # a third of the identities are held out
    for n, photo in enumerate(photos):
        found = main_face(detector, read_rgb(photo.path))
        if found is None:
            continue
        padded, face = found
        probability = estimator.estimate([FaceInput(padded, face.boxes[0], face.landmarks[0])]).probability[0]
        crop = crop_from_box(padded, face.boxes[0], face.landmarks[0], 178, enlarge=1.6)
        name = f"{n:06d}.jpg"
        cv2.imwrite(str(images / name), cv2.cvtColor(crop.image, cv2.COLOR_RGB2BGR))
        rows.append(name + " " + " ".join("1" if p > 0.5 else "-1" for p in np.nan_to_num(probability)))
        parts.append(f"{name} {2 if photo.identity in test_ids else 0}")
    (tmp_path / "list_attr_celeba.txt").write_text(
        f"{len(rows)}\n{' '.join(ATTRIBUTES)}\n" + "\n".join(rows) + "\n"
    )
    (tmp_path / "list_eval_partition.txt").write_text("\n".join(parts) + "\n")

    data = read_dataset(tmp_path)
    features = describe(data.images)
    forests, accuracy = train(data, features, trees=50)
    assert "Male" in forests and accuracy["Male"] >= 0.8, accuracy
    assert "Eyeglasses" not in forests  # never estimated by the built-ins: one value only
    path = tmp_path / "forests.skops"
    save_forests(path, forests, {"test_accuracy": accuracy})
    loaded = load_forests(path)
    assert set(loaded) == set(forests)
    np.testing.assert_allclose(
        loaded["Male"].predict_proba(features[:5]), forests["Male"].predict_proba(features[:5])
    )


def test_forest_files_with_unexpected_types_are_refused(tmp_path: Path) -> None:
    import skops.io as sio
    from sklearn.linear_model import LogisticRegression

    from stream.algorithms.attributes import load_forests
    from stream.errors import ModelError

    path = tmp_path / "bad.skops"
    sio.dump({"attributes": ["Male"], "forests": [LogisticRegression()], "meta": "{}"}, path)
    with pytest.raises(ModelError, match="holds more than random forests"):
        load_forests(path)


def test_a_crafted_forest_file_naming_a_numpy_function_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """skops calls what a file names: a file naming numpy.savetxt must not even be loaded."""
    import skops.io as sio

    from stream.algorithms.attributes import load_forests
    from stream.errors import ModelError

    path = tmp_path / "crafted.skops"
    sio.dump({"attributes": ["Male"], "forests": [np.savetxt], "meta": "{}"}, path)
    assert "numpy.savetxt" in " ".join(sio.get_untrusted_types(file=path))
    monkeypatch.chdir(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(ModelError, match="unexpected types"):
        load_forests(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


def _released(report: Any) -> Any:
    data = json.loads(report.read_text())
    return data, [t["selected"] for t in data["privacy"]["tracks"] if "selected" in t]


def test_a_report_alone_cannot_undo_the_randomized_response(tmp_path: Path, demo_clip: Path) -> None:
    """The draw comes from a secret seed recorded nowhere: two runs release differently, and
    the report holds no seed. A user seed reproduces the draw and the report says it weakens
    the guarantee."""
    import subprocess
    import sys

    from conftest import ROOT

    def run(name: Any, *extra: Any) -> Any:
        report = tmp_path / f"{name}.json"
        result = subprocess.run([sys.executable, str(ROOT / "run_stream.py"), str(demo_clip), "-o", "null", "-q",
                                 "--mode", "blur", "--attributes", "--max-frames", "40", "--report", str(report),
                                 *extra], capture_output=True, text=True, timeout=300)  # fmt: skip
        assert result.returncode == 0, result.stderr
        return _released(report)

    (first, a), (_, b) = run("a"), run("b")
    assert a and b and a != b
    assert first["config"]["privacy"]["seed"] is None
    assert "secret seed" in first["privacy"]["policy"]["randomness"]
    (seeded, c), (_, d) = run("c", "--set", "privacy.seed=7"), run("d", "--set", "privacy.seed=7")
    assert c == d
    assert "weakened" in seeded["privacy"]["policy"]["randomness"]


def test_the_secret_seed_is_not_in_the_privacy_object_repr() -> None:
    privacy = StreamPrivacy(Policy(), GlobalDistribution.celeba())
    assert not privacy.seeded and "seed" in repr(privacy) and str(privacy._seed) not in repr(privacy)


def test_runs_of_one_videos_segments_share_a_secret_and_draw_alike() -> None:
    """batch gives a video's segment runs one secret: a segment run again (surrogates pinned)
    releases what its first run did for every other track, and still counts as unseeded."""
    import secrets

    secret = secrets.randbits(128)
    probability = np.random.default_rng(0).uniform(0, 1, 40).astype(np.float32)
    runs = [StreamPrivacy(Policy(), GlobalDistribution.celeba(), secret=secret) for _ in range(2)]
    released = [[tuple(p.select(t, probability).released) for t in range(1, 30)] for p in runs]
    assert released[0] == released[1] and not runs[0].seeded
    other = StreamPrivacy(Policy(), GlobalDistribution.celeba())
    assert [tuple(other.select(t, probability).released) for t in range(1, 30)] != released[0]
