from typing import Any

import cv2
import numpy as np
import pytest

from engines.centerface import STRIDE, decode, input_size, nms, preprocess
from stream.config import DetectConfig, build_config
from stream.stages import detection_scale


def test_input_is_padded_to_multiples_of_32() -> None:
    assert input_size(1280, 720, 1.0) == (1280, 720, 1280, 736)
    batch = preprocess([np.full((720, 1280, 3), 7, np.uint8)], 1.0)
    assert batch.shape == (1, 3, 736, 1280) and batch.dtype == np.float32
    assert batch[0, :, 719, 0].tolist() == [7, 7, 7] and batch[0, :, 720:, :].max() == 0


def test_decode_places_a_box_from_the_maps() -> None:
    h, w = 8, 8
    heat = np.zeros((1, 1, h, w), np.float32)
    heat[0, 0, 3, 5] = 0.9
    size = np.zeros((1, 2, h, w), np.float32)
    size[0, :, 3, 5] = np.log([20 / STRIDE, 10 / STRIDE])  # height 20, width 10
    offset = np.zeros((1, 2, h, w), np.float32)
    landmarks = np.zeros((1, 10, h, w), np.float32)
    landmarks[0, 0::2, 3, 5] = 0.5  # y at the middle of the box
    landmarks[0, 1::2, 3, 5] = 0.25  # x at a quarter
    faces = decode([heat, size, offset, landmarks], 0, 0.5, 0.3)
    cx, cy = (5 + 0.5) * STRIDE, (3 + 0.5) * STRIDE
    np.testing.assert_allclose(faces.boxes[0], [cx - 5, cy - 10, cx + 5, cy + 10], atol=1e-4)
    np.testing.assert_allclose(faces.landmarks[0, 0], [cx - 5 + 2.5, cy], atol=1e-4)
    assert decode([heat, size, offset, landmarks], 0, 0.95, 0.3).boxes.shape == (0, 4)


def test_nms_keeps_the_best_of_overlapping_boxes() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], np.float32)
    keep = nms(boxes, np.array([0.5, 0.9, 0.7], np.float32), 0.3)
    assert keep.tolist() == [1, 2]


def test_finds_the_astronaut(detector: Any) -> None:
    from skimage import data

    (faces,) = detector.detect([data.astronaut()], 1.0, 0.5)
    assert len(faces.boxes) == 1
    x1, y1, x2, y2 = faces.boxes[0]
    assert 170 < x1 < 195 and 45 < y1 < 75 and 255 < x2 < 285 and 165 < y2 < 190


def _small_faces(height_px: int, count: int = 6, seed: int = 0) -> Any:
    """A 1280x720 frame with ``count`` astronaut pictures whose faces are ``height_px`` tall,
    and the face centres."""
    from skimage import data

    picture = data.astronaut()  # face box about (181, 58)-(270, 178): 120 px tall
    scale = height_px / 120
    small = cv2.resize(picture, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    rng = np.random.default_rng(seed)
    frame = rng.integers(100, 120, (720, 1280, 3), dtype=np.uint8)
    centres = []
    for k in range(count):
        x, y = 60 + k * 200, 150 + (k % 2) * 300
        frame[y : y + small.shape[0], x : x + small.shape[1]] = small
        centres.append((x + 225.5 * scale, y + 118 * scale))
    return frame, centres


def _found(
    detector: Any, frame: Any, centres: Any, config: DetectConfig, threshold: float | None = None
) -> int:
    """How many of ``centres`` a face box found at the config's detection scale lies on
    (scored at least ``threshold``, by default the track-start one)."""
    scale = detection_scale(frame.shape[1], frame.shape[0], config)
    (faces,) = detector.detect([frame], scale, threshold or build_config().track.new_track_threshold)
    bx = (faces.boxes[:, 0] + faces.boxes[:, 2]) / 2
    by = (faces.boxes[:, 1] + faces.boxes[:, 3]) / 2
    return sum(bool(np.any((np.abs(bx - cx) < 6) & (np.abs(by - cy) < 6))) for cx, cy in centres)


def test_default_settings_find_16px_faces_in_720p(detector: Any) -> None:
    frame, centres = _small_faces(16)
    assert _found(detector, frame, centres, build_config().detect) >= 5


def test_min_face_10_finds_10px_faces(detector: Any) -> None:
    frame, centres = _small_faces(10)
    config = build_config(None, {"detect": {"min_face": 10}}).detect
    assert _found(detector, frame, centres, config) >= 5
    # ... surer than at native resolution: at the old track-start score (0.3) the default
    # finds fewer (the low default thresholds find them there too, less surely).
    default = build_config().detect
    assert _found(detector, frame, centres, default, 0.3) < _found(detector, frame, centres, config, 0.3)


@pytest.mark.parametrize("batch", [1, 3])
def test_batches_give_the_same_faces(detector: Any, batch: Any) -> None:
    from skimage import data

    image = data.astronaut()
    results = detector.detect([image] * batch, 1.0, 0.5)
    assert len(results) == batch
    for faces in results:
        np.testing.assert_allclose(faces.boxes, results[0].boxes, atol=1e-3)
