"""face-api's 68-point landmark net rebuilt as ONNX: the crop face-api makes, agreement with
face-api's own output and with the stream's MediaPipe mesh, and the mouth opening it measures."""

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from engines import zoo
from engines.base import create_backend
from engines.faceapi import LANDMARKS_SIZE, FaceLandmarks68, landmark_crop

D3 = Path("LivePortrait/assets/examples/driving/d3.mp4")  # 512 x 512, 354 frames


@pytest.fixture(scope="module")
def net() -> FaceLandmarks68:
    return FaceLandmarks68(create_backend("cpu", zoo.ensure("faceapi-landmarks68"), threads=2))


@pytest.fixture(scope="module")
def astronaut(detector: Any) -> tuple[NDArray[np.uint8], NDArray[np.float32]]:
    """The astronaut photo and CenterFace's box of her face."""
    from skimage import data

    image = np.asarray(data.astronaut(), np.uint8)
    (faces,) = detector.detect([image], 1.0, 0.5)
    assert len(faces.boxes) == 1
    return image, faces.boxes[0]


def mouth_opening(points: NDArray[np.float32]) -> float:
    """The inner lips' gap (62 to 66) over the face height (chin 8 to the brows' middle)."""
    height = float(np.linalg.norm(points[8] - (points[19] + points[24]) / 2))
    return float(np.linalg.norm(points[66] - points[62])) / height


def test_the_crop_is_the_box_padded_black_to_a_square() -> None:
    """A 40 x 80 box: the square is 80 px, the 40 px of padding black and split evenly,
    and ``to_image`` finds each crop pixel's source in the image."""
    rng = np.random.default_rng(0)
    image = rng.integers(1, 256, (120, 160, 3), dtype=np.uint8)
    crop = landmark_crop(image, np.array([60.0, 20.0, 100.0, 100.0]))
    assert crop.image.shape == (LANDMARKS_SIZE, LANDMARKS_SIZE, 3)
    scale = LANDMARKS_SIZE / 80
    assert (crop.image[:, : int(20 * scale) - 1] == 0).all()
    assert (crop.image[:, int(60 * scale) + 1 :] == 0).all()
    assert (crop.image[:, int(20 * scale) + 1 : int(60 * scale) - 1] > 0).all()
    corners = crop.to_image(np.array([[0.0, 0.0], [LANDMARKS_SIZE, LANDMARKS_SIZE]]))
    np.testing.assert_allclose(corners, [[40, 20], [120, 100]], atol=1e-4)
    # integer crop pixels sample the image exactly where to_image says (the scale is 1 here)
    same = landmark_crop(image, np.array([10.0, 5.0, 10.0 + LANDMARKS_SIZE, 5.0 + LANDMARKS_SIZE]))
    u, v = 37, 80
    x, y = np.rint(same.to_image(np.array([u, v], np.float64))).astype(int)
    assert (same.image[v, u] == image[y, x]).all()


def test_a_box_over_the_border_is_clipped_first_as_face_api_does() -> None:
    image = np.full((100, 100, 3), 200, np.uint8)
    crop = landmark_crop(image, np.array([-30.0, 10.0, 30.0, 90.0]))  # 30 x 80 px inside
    top_left, bottom_right = crop.to_image(np.array([[0.0, 0.0], [LANDMARKS_SIZE, LANDMARKS_SIZE]]))
    np.testing.assert_allclose(top_left, [-25, 10], atol=1e-4)  # the 30 px centred in 80
    np.testing.assert_allclose(bottom_right, [55, 90], atol=1e-4)


def test_the_net_checks_its_arguments(net: FaceLandmarks68) -> None:
    image = np.zeros((64, 64, 3), np.uint8)
    with pytest.raises(ValueError, match="enlarge: expected"):
        landmark_crop(image, np.array([0.0, 0.0, 10.0, 10.0]), enlarge=0)
    with pytest.raises(ValueError, match="box: expected at least 1 px"):
        landmark_crop(image, np.array([70.0, 0.0, 90.0, 10.0]))
    with pytest.raises(ValueError, match="boxes: expected shape"):
        net.locate(image, np.zeros(4, np.float32))
    with pytest.raises(ValueError, match="batch: expected"):
        FaceLandmarks68(net.backend, batch=0)
    assert net.predict([]).shape == (0, 68, 2)
    assert net.locate(image, np.zeros((0, 4), np.float32)).shape == (0, 68, 2)


# face-api 1.7.15's own faceLandmark68Net (TFJS, CPU backend) on the astronaut, box
# (181.1, 72.9, 264.4, 174.6): its extractFaceTensors cuts the 83 x 101 px at (181, 72),
# pads 9 px each side and maps back; image pixels. Where the padding is odd, face-api
# puts the larger half after the face but subtracts half of it: its points then sit
# 0.5 px before where ours (mapped back from where the pixels were put) do.
FACEAPI_ASTRONAUT = {
    0: (175.29, 98.62),
    8: (220.91, 173.67),
    16: (267.98, 105.06),
    19: (199.46, 85.82),
    24: (248.83, 88.74),
    30: (222.57, 127.91),
    36: (194.50, 99.18),
    39: (210.33, 101.38),
    42: (236.09, 102.68),
    45: (251.78, 102.54),
    48: (201.28, 140.23),
    54: (243.55, 141.55),
    62: (222.27, 141.77),
    66: (222.39, 148.49),
}


def test_the_onnx_rebuild_matches_face_api_itself(net: FaceLandmarks68) -> None:
    from skimage import data

    image = np.asarray(data.astronaut(), np.uint8)
    points = net.locate(image, np.array([[181.1, 72.9, 264.4, 174.6]], np.float32))[0]
    index = list(FACEAPI_ASTRONAUT)
    np.testing.assert_allclose(points[index], np.array(list(FACEAPI_ASTRONAUT.values())), atol=0.1)


def test_the_points_lie_on_the_face_in_their_order(
    net: FaceLandmarks68, astronaut: tuple[NDArray[np.uint8], NDArray[np.float32]]
) -> None:
    image, box = astronaut
    points = net.locate(image, box[None])[0]
    width, height = box[2] - box[0], box[3] - box[1]
    # CenterFace's box is a little narrower than the jaw line: 10 % of slack each side
    grown = box + np.array([-width, -height, width, height]) * 0.1
    assert ((points >= grown[:2]) & (points <= grown[2:])).all()
    assert points[36:48, 1].max() < points[48:68, 1].min()  # eyes above the mouth
    assert points[17:27, 1].mean() < points[36:48, 1].mean()  # brows above the eyes
    assert (points[16, 0] - points[0, 0]) > 0.8 * width  # the jaw spans the face
    assert points[0, 0] < points[8, 0] < points[16, 0]  # jaw from the image's left to its right
    assert points[36, 0] < points[45, 0] and points[48, 0] < points[54, 0]


# face-api point -> MediaPipe mesh index at the same place of the face
SAME_PLACE = {
    36: 33,  # eye outer corners
    45: 263,
    39: 133,  # eye inner corners
    42: 362,
    48: 61,  # mouth corners
    54: 291,
    30: 1,  # nose tip
    8: 152,  # chin
    62: 13,  # inner lips, middle
    66: 14,
}


def test_the_points_agree_with_the_stream_mesh(
    net: FaceLandmarks68,
    astronaut: tuple[NDArray[np.uint8], NDArray[np.float32]],
    astronaut_mesh: tuple[NDArray[np.uint8], NDArray[np.float32]],
) -> None:
    image, box = astronaut
    _, mesh = astronaut_mesh
    points = net.locate(image, box[None])[0]
    width = float(box[2] - box[0])
    for ours, theirs in SAME_PLACE.items():
        distance = float(np.linalg.norm(points[ours] - mesh[theirs, :2]))
        assert distance < 0.08 * width, (ours, theirs, distance / width)


def video_frames(path: Path, wanted: set[int]) -> dict[int, NDArray[np.uint8]]:
    import av

    frames = {}
    with av.open(str(path)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i in wanted:
                frames[i] = np.asarray(frame.to_ndarray(format="rgb24"), np.uint8)
            if i >= max(wanted):
                break
    assert set(frames) == wanted
    return frames


@pytest.mark.media
def test_an_open_mouth_measures_wider_than_a_closed_one(
    media: Path, net: FaceLandmarks68, detector: Any
) -> None:
    """d3.mp4: closed lips through the middle of the clip, a wide-open "oh" from frame 300."""
    closed, opened = [120, 150, 180], [305, 315, 325]
    frames = video_frames(media / D3, set(closed + opened))
    opening = {}
    for i, frame in frames.items():
        (faces,) = detector.detect([frame], 1.0, 0.5)
        assert len(faces.boxes) == 1, i
        opening[i] = mouth_opening(net.locate(frame, faces.boxes)[0])
    assert max(opening[i] for i in closed) < 0.03, opening
    assert min(opening[i] for i in opened) > 0.1, opening
