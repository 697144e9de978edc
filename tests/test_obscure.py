from typing import Any

import numpy as np
import pytest

from stream.algorithms.obscure import Obscurer
from stream.config import ObscureConfig


def textured(h: Any = 200, w: Any = 300, seed: Any = 1) -> Any:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


BOX = np.array([[100, 40, 180, 160]], np.float32)  # 80 x 120


@pytest.mark.parametrize("shape", ["box", "ellipse"])
def test_mask_fills_the_region_with_the_colour_and_nothing_else(shape: Any) -> None:
    image = textured()
    before = image.copy()
    Obscurer(ObscureConfig(mode="mask", shape=shape, colour=(10, 200, 30))).apply(image, BOX)
    assert (image[100, 140] == [10, 200, 30]).all()  # centre
    corner_changed = (image[41, 101] == [10, 200, 30]).all()
    assert corner_changed == (shape == "box")
    outside = np.ones(image.shape[:2], bool)
    outside[40:160, 100:180] = False
    assert (image[outside] == before[outside]).all()


@pytest.mark.parametrize("mode", ["blur", "pixelate"])
def test_blur_and_pixelate_remove_detail_inside_only(mode: Any) -> None:
    image = textured()
    before = image.copy()
    Obscurer(ObscureConfig(mode=mode, shape="box")).apply(image, BOX)
    inside = image[40:160, 100:180].astype(float)
    # Texture is gone: neighbouring pixels are far more alike than in noise.
    detail = np.abs(np.diff(inside, axis=1)).mean()
    assert detail < 0.35 * np.abs(np.diff(before[40:160, 100:180].astype(float), axis=1)).mean()
    assert (image[:40] == before[:40]).all() and (image[:, :100] == before[:, :100]).all()


def test_pixel_blocks_scale_with_face_width() -> None:
    for width in (40, 160):
        image = textured(300, 400)
        box = np.array([[10, 10, 10 + width, 10 + width]], np.float32)
        Obscurer(ObscureConfig(mode="pixelate", shape="box", strength=0.125)).apply(image, box)
        row = image[10 + width // 2, 10 : 10 + width, 0].astype(int)
        # Block edges are softened, so each block of random texture is one hill or valley.
        slope = np.sign(np.diff(row))
        turns = np.count_nonzero(np.diff(slope[slope != 0]))
        assert 3 <= turns <= 9  # about 1 / strength blocks across, whatever the size


def test_pixelate_defaults_to_blocks_of_a_third_and_blur_to_an_eighth() -> None:
    config = ObscureConfig()
    assert config.strength_of("pixelate") == pytest.approx(1 / 3)
    assert config.strength_of("blur") == 0.125
    assert ObscureConfig(strength=0.2).strength_of("pixelate") == 0.2


def test_boxes_at_and_beyond_the_frame_edge() -> None:
    image = textured()
    boxes = np.array([[-50, -50, 30, 30], [280, 180, 400, 400], [500, 500, 600, 600]], np.float32)
    Obscurer(ObscureConfig(mode="mask", shape="box")).apply(image, boxes)
    assert (image[0, 0] == 0).all() and (image[199, 299] == 0).all()


def test_mask_whole() -> None:
    image = textured()
    Obscurer(ObscureConfig(colour=(1, 2, 3))).mask_whole(image)
    assert (image == [1, 2, 3]).all()


@pytest.mark.parametrize("mode", ["blur", "pixelate"])
def test_small_faces_get_a_floor_in_pixels_not_just_a_fraction_of_their_width(mode: Any) -> None:
    """A 16 px face blurred at an eighth of its width keeps its edges (2 px); the floor
    leaves it no more detail than a face four times its size gets."""
    import cv2

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    box = np.array([[24, 24, 40, 44]], np.float32)
    detail = lambda im: float(cv2.Laplacian(im[26:42, 26:38].mean(axis=2), cv2.CV_64F).var())  # noqa: E731
    weak, floored = image.copy(), image.copy()
    Obscurer(ObscureConfig(mode=mode, shape="box", strength=0.125, min_px=0)).apply(weak, box)
    Obscurer(ObscureConfig(mode=mode, shape="box", strength=0.125)).apply(floored, box)
    assert detail(floored) < 0.05 * detail(image)
    assert detail(floored) < 0.5 * detail(weak)


@pytest.mark.parametrize("mode", ["blur", "pixelate"])  # pixelate: one face at a time still
@pytest.mark.parametrize("shape", ["ellipse", "box"])
def test_a_crowd_is_blurred_together_as_strongly_as_one_face_at_a_time(shape: Any, mode: Any) -> None:
    """From ``MANY`` regions blur runs once per strength over their span: every region is as
    unreadable as when blurred alone, and nothing outside the regions changes."""
    import cv2

    from stream.algorithms.obscure import MANY, region_mask

    image = textured(240, 320)
    boxes = np.array([[10 + 30 * i, 20 + 50 * (i % 3), 30 + 30 * i, 44 + 50 * (i % 3)]
                      for i in range(MANY + 2)] + [[200, 150, 300, 240]], np.float32)  # fmt: skip
    together, alone = image.copy(), image.copy()
    Obscurer(ObscureConfig(mode=mode, shape=shape)).apply(together, boxes)
    for box in boxes:
        Obscurer(ObscureConfig(mode=mode, shape=shape)).apply(alone, box[None])
    inside = np.zeros(image.shape[:2], bool)
    for box in boxes:
        x1, y1, x2, y2 = (int(v) for v in box)
        inside[y1:y2, x1:x2] |= region_mask(box, (x1, y1, x2, y2), shape) > 0
    assert (together[~inside] == image[~inside]).all()

    def detail(im: Any, b: Any) -> Any:  # over the middle half of the box, inside the ellipse too
        qx, qy = (b[2] - b[0]) // 4, (b[3] - b[1]) // 4
        return float(
            cv2.Laplacian(im[b[1] + qy : b[3] - qy, b[0] + qx : b[2] - qx].mean(axis=2), cv2.CV_64F).var()
        )

    for box in boxes.astype(int):
        assert detail(together, box) < 1.2 * detail(alone, box) + 1.0
        assert detail(together, box) < 0.05 * detail(image, box)
