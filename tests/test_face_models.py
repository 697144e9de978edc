"""The zoo's face models wired to their pre- and post-processing, checked on real photos."""

from typing import Any

import numpy as np
import pytest
from skimage import data

from engines import zoo
from engines.base import create_backend
from engines.crops import crop_from_box, eye_angle
from engines.evaluation import GENDER_LABELS, evaluate_faceres, labelled_photos, landmark_errors
from engines.facemodels import BlazeFaceFull, Emotion, FaceMesh, FaceRes, Gear


def model(cls: type[Any], name: Any, **kwargs: Any) -> Any:
    return cls(create_backend("cpu", zoo.ensure(name), threads=2), **kwargs)


@pytest.fixture(scope="module")
def astronaut(detector: Any) -> Any:
    image = data.astronaut()
    (faces,) = detector.detect([image], 1.0, 0.5)
    return image, faces


def test_crops_level_the_eyes_and_map_back(astronaut: Any) -> None:
    image, faces = astronaut
    crop = crop_from_box(image, faces.boxes[0], faces.landmarks[0], 192)
    eyes = np.c_[faces.landmarks[0, :2], np.ones(2)] @ crop.to_crop.T
    assert abs(eye_angle(eyes[0], eyes[1])) < 0.5  # level in the crop
    np.testing.assert_allclose(crop.to_image(eyes), faces.landmarks[0, :2], atol=1e-3)


def test_mesh_lands_on_the_face_and_batches(astronaut: Any) -> None:
    image, faces = astronaut
    mesh = model(FaceMesh, "facemesh")
    crop = crop_from_box(image, faces.boxes[0], faces.landmarks[0], 192)
    single = mesh.predict([crop])
    batch = mesh.predict([crop, crop, crop])
    assert single.points.shape == (1, 468, 3) and single.confidence[0] > 0.9
    np.testing.assert_allclose(batch.points[2], single.points[0], atol=1e-3)
    size = faces.boxes[0, 3] - faces.boxes[0, 1]
    five = single.five_points()[0]
    nearest = [np.min(np.hypot(*(five - point).T)) for point in faces.landmarks[0]]
    assert np.mean(nearest) < 0.05 * size


def test_blazeface_full_range_finds_the_astronaut(astronaut: Any) -> None:
    image, faces = astronaut
    found = model(BlazeFaceFull, "facemesh-detection-full", pad=0.5).detect(image)
    assert len(found.boxes) == 1 and found.scores[0] > 0.8
    cx, cy = found.boxes[0, [0, 2]].mean(), found.boxes[0, [1, 3]].mean()
    assert abs(cx - faces.boxes[0, [0, 2]].mean()) < 15 and abs(cy - faces.boxes[0, [1, 3]].mean()) < 15


def test_emotion_gear_and_faceres_read_the_astronaut(astronaut: Any) -> None:
    image, faces = astronaut
    box, points = faces.boxes[0], faces.landmarks[0]
    emotions = model(Emotion, "emotion").predict([crop_from_box(image, box, points, 64)])
    assert emotions.shape == (1, 7) and abs(emotions.sum() - 1) < 1e-4
    assert emotions[0].argmax() == 3  # happy: she smiles
    gear = model(Gear, "gear").predict([crop_from_box(image, box, points, 198)] * 2)
    assert gear.race.shape == (2, 5) and 10 < gear.age[0] < 70
    faceres = model(FaceRes, "faceres").predict([crop_from_box(image, box, points, 224)])
    assert faceres.male[0] < 0.5  # Eileen Collins
    assert abs(np.linalg.norm(faceres.descriptor[0]) - 1) < 1e-5 and 20 < faceres.age[0] < 60


@pytest.fixture(scope="module")
def photos(media_dir: Any) -> Any:
    return labelled_photos(media_dir)


@pytest.fixture(scope="module")
def media_dir() -> Any:
    from conftest import MEDIA

    if not MEDIA.exists():
        pytest.fail(f"shared media not found at {MEDIA}")
    return MEDIA


@pytest.mark.media
def test_descriptor_separates_identities_and_gender_is_right(detector: Any, photos: Any) -> None:
    figures = evaluate_faceres(detector, model(FaceRes, "faceres"), photos)
    assert figures.identities >= 20 and figures.photos >= 95
    assert figures.auc >= 0.95, figures
    assert figures.same_mean > figures.different_mean + 0.15
    assert set(figures.gender) == set(GENDER_LABELS)
    for identity, (predicted, _) in figures.gender.items():
        assert predicted == GENDER_LABELS[identity], (identity, figures.gender[identity])


def test_dlib_descriptor_from_face_api_separates_identities(detector: Any, photos: Any) -> None:
    """The attacker the measurements use besides faceres, rebuilt from face-api's weights."""
    from engines.evaluation import photo_faces, roc_auc
    from engines.faceapi import FaceApiRecognition

    net = model(FaceApiRecognition, "faceapi-recognition")
    crops, identities = [], []
    for photo, padded, face in photo_faces(detector, photos):
        crops.append(crop_from_box(padded, face.boxes[0], face.landmarks[0], net.size, net.enlarge))
        identities.append(photo.identity)
    d = net.describe(crops)
    np.testing.assert_allclose(net.describe(crops[:1])[0], d[0], atol=1e-4)  # batching changes nothing
    upper = np.triu_indices(len(d), k=1)
    ids = np.array(identities)
    same = ids[upper[0]] == ids[upper[1]]
    scores = (d @ d.T)[upper]
    assert len(d) >= 95 and roc_auc(scores.astype(np.float64), same) >= 0.97
    # Most photos' nearest other photo is of the same person.
    similarity = d @ d.T
    np.fill_diagonal(similarity, -1)
    assert np.mean(ids[similarity.argmax(axis=1)] == ids) >= 0.85


@pytest.mark.media
def test_mesh_landmarks_land_on_the_detector_landmarks(detector: Any, photos: Any) -> None:
    errors = landmark_errors(detector, model(FaceMesh, "facemesh"), photos)
    assert len(errors) >= 95
    assert errors.mean() < 0.05 and np.percentile(errors, 90) < 0.05, np.percentile(errors, [50, 90, 100])
