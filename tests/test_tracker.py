from typing import Any

import numpy as np

from stream.algorithms.tracker import FaceTracker, iou_matrix
from stream.config import TrackConfig
from stream.frames import Detections


def dets(*rows: Any) -> Any:
    """Detections from (x1, y1, x2, y2, score) rows."""
    a = np.array(rows, np.float32).reshape(-1, 5)
    return Detections(a[:, :4].copy(), a[:, 4].copy(), np.zeros((len(a), 5, 2), np.float32))


def test_iou_matrix() -> None:
    a = np.array([[0, 0, 10, 10]], np.float32)
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]], np.float32)
    np.testing.assert_allclose(iou_matrix(a, b), [[1.0, 1 / 3, 0.0]], atol=1e-6)
    assert iou_matrix(a, np.zeros((0, 4), np.float32)).shape == (1, 0)


def test_ids_persist_through_a_short_occlusion_and_coast_is_reported() -> None:
    tracker = FaceTracker(TrackConfig(coast_frames=5, margin=0.0, coast_growth=0.0))
    ids = []
    for x in range(0, 40, 4):  # a face moving right at 4 px/frame
        out = tracker.update(dets((100 + x, 50, 140 + x, 100, 0.9)))
        ids.append(int(out.track_id[0]))
    # Three frames without a detection: still reported, as coasting, moving on.
    for _ in range(3):
        out = tracker.update(Detections.empty())
        assert len(out) == 1 and out.coasting[0]
    assert out.xyxy[0, 0] > 136 + 4  # the prediction kept the motion
    out = tracker.update(dets((100 + 52, 50, 140 + 52, 100, 0.9)))
    assert set(ids) == {1} and int(out.track_id[0]) == 1 and not out.coasting[0]


def test_track_ends_after_coast_frames() -> None:
    tracker = FaceTracker(TrackConfig(coast_frames=2))
    tracker.update(dets((0, 0, 20, 20, 0.9)))
    assert len(tracker.update(None)) == 1
    assert len(tracker.update(None)) == 1
    assert len(tracker.update(None)) == 0


def test_margin_dilates_and_grows_while_coasting() -> None:
    tracker = FaceTracker(TrackConfig(margin=0.25, coast_growth=0.1))
    out = tracker.update(dets((100, 100, 140, 180, 0.9)))
    np.testing.assert_allclose(out.xyxy[0], [90, 80, 150, 200])
    coasted = tracker.update(None).xyxy[0]
    assert coasted[2] - coasted[0] > 60 and coasted[3] - coasted[1] > 120


def test_low_score_detection_extends_but_does_not_start_a_track() -> None:
    tracker = FaceTracker(TrackConfig(high_threshold=0.5, new_track_threshold=0.5, coast_frames=0))
    assert len(tracker.update(dets((0, 0, 20, 20, 0.3)))) == 0  # low alone: no track
    tracker.update(dets((50, 50, 80, 90, 0.9)))
    out = tracker.update(dets((51, 50, 81, 90, 0.25)))  # second stage keeps it
    assert len(out) == 1 and not out.coasting[0] and out.track_id[0] == 1


def test_two_faces_keep_their_ids_when_crossing_order_in_the_list() -> None:
    tracker = FaceTracker(TrackConfig())
    first = tracker.update(dets((0, 0, 30, 30, 0.9), (100, 0, 130, 30, 0.9)))
    second = tracker.update(dets((102, 0, 132, 30, 0.9), (2, 0, 32, 30, 0.9)))
    by_x = dict(zip(first.xyxy[:, 0].round(), first.track_id))
    again = dict(zip(second.xyxy[:, 0].round(), second.track_id))
    assert by_x[min(by_x)] == again[min(again)] and by_x[max(by_x)] == again[max(again)]


def test_imprecise_match_reports_the_box_enclosing_detection_and_prediction() -> None:
    tracker = FaceTracker(TrackConfig(margin=0.0))
    tracker.update(dets((100, 100, 140, 150, 0.9)))
    out = tracker.update(dets((95, 105, 130, 150, 0.9)), precise=False)
    x1, y1, x2, y2 = out.xyxy[0]
    assert x1 <= 95 and y1 <= 100.5 and x2 >= 139.5 and y2 >= 150


def test_reset_restarts_ids() -> None:
    tracker = FaceTracker(TrackConfig())
    tracker.update(dets((0, 0, 20, 20, 0.9)))
    tracker.reset()
    assert tracker.update(dets((300, 300, 320, 320, 0.9))).track_id[0] == 1


def test_tracks_say_which_detection_they_matched() -> None:
    tracker = FaceTracker(TrackConfig(coast_frames=3))
    first = tracker.update(dets((0, 0, 20, 20, 0.9), (100, 100, 130, 140, 0.8)))
    assert sorted(first.detection.tolist()) == [0, 1]
    second = tracker.update(dets((101, 100, 131, 140, 0.8)))
    by_id = dict(zip(second.track_id.tolist(), second.detection.tolist()))
    assert by_id[2] == 0 and by_id[1] == -1  # the first face coasts: no detection


def test_a_small_face_gets_a_margin_of_at_least_the_floor_and_face_of_undoes_either() -> None:
    from stream.algorithms.tracker import dilate
    from stream.stages import face_of

    small, large = np.array([100, 100, 112, 114], np.float32), np.array([0, 0, 200, 240], np.float32)
    grown = dilate(small, 0.25, 4.0)
    assert np.allclose(grown, [96, 96, 116, 118])  # 4 px, not a quarter (3 and 3.5 px)
    assert np.allclose(dilate(large, 0.25, 4.0), [-50, -60, 250, 300])  # a quarter, over the floor
    assert np.allclose(face_of(grown, 0.25, 4.0), small)
    assert np.allclose(face_of(dilate(large, 0.25, 4.0), 0.25, 4.0), large)


def test_the_filters_run_together_as_each_would_alone() -> None:
    from stream.algorithms.tracker import KalmanBoxFilter, predict_all, update_all

    rng = np.random.default_rng(3)
    boxes = [np.array([x, y, x + w, y + w * 1.2], np.float32)
             for x, y, w in rng.uniform([0, 0, 8], [900, 300, 120], (50, 3))]  # fmt: skip
    alone, together = [KalmanBoxFilter(b) for b in boxes], [KalmanBoxFilter(b) for b in boxes]
    for step in range(5):
        moved = [b + rng.normal(0, 2, 4).astype(np.float32) + step for b in boxes]
        for f, b in zip(alone, moved, strict=True):
            f.predict()
            f.update(b)
        predict_all(together)
        update_all(together, moved)
    for a, t in zip(alone, together, strict=True):
        assert np.allclose(a.x, t.x) and np.allclose(a.p, t.p)
