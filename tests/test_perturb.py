"""Stage IV in the stream: the perturbation stage on replaced faces, and its config rules."""

from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from stream.errors import ConfigError


def test_perturbation_needs_replaced_faces() -> None:
    from stream.config import build_config

    with pytest.raises(ConfigError, match=r"needs obscure.mode = synth"):
        build_config(None, {"obscure": {"mode": "blur"}, "perturb": {"mode": "noise"}})
    with pytest.raises(ConfigError, match="perturbation file"):
        build_config(None, {"obscure": {"mode": "synth"}, "perturb": {"mode": "uap"}})


def test_noise_is_added_only_to_replaced_faces_and_is_the_same_for_a_track(
    demo_clip: Path, detector: Any
) -> None:
    from conftest import decode_frames

    from stream.config import build_config
    from stream.frames import FramePacket
    from stream.run.job import build_stages
    from stream.stages import PerturbStage, SynthStage

    frames = decode_frames(demo_clip)[:40]
    config = build_config(None, {"obscure": {"mode": "synth"}, "perturb": {"mode": "noise", "sigma": 6.0}})
    stages = build_stages(config, detector)
    perturb = next(s for s in stages if isinstance(s, PerturbStage))
    assert isinstance(stages[stages.index(perturb) - 1], SynthStage)  # right after the surrogate
    seen = {}
    for i, frame in enumerate(frames):
        packet = FramePacket(i, frame.copy(), i, Fraction(1, 25))
        for stage in stages[: stages.index(perturb)]:
            packet = stage.process(packet)
        before = packet.image.copy()
        packet = perturb.process(packet)
        change = packet.image.astype(int) - before.astype(int)
        if not packet.replaced:
            assert not change.any()
            continue
        (track,) = packet.replaced
        drawn = packet.drawn[track]
        (h, w), x1, y1 = drawn.coverage.shape, drawn.x1, drawn.y1
        x2, y2 = x1 + w, y1 + h
        outside = np.ones(change.shape[:2], bool)
        outside[max(y1, 0) : y2, max(x1, 0) : x2] = False
        # Never more than the pattern's own largest level (a few samples of a 6-level Gaussian
        # pattern exceed 4 sigma, so the bound is the pattern's, not a multiple of sigma).
        assert not change[outside].any() and np.abs(change).max() <= perturb._pattern(track).bound <= 6 * 6
        assert change[~outside].std() > 3
        seen[track] = perturb._pattern(track)
    assert seen and all(np.array_equal(p.texture, perturb._pattern(t).texture) for t, p in seen.items())
    assert perturb.perturbed > 20


def test_array_files_asking_for_too_much_memory_are_refused_before_loading(tmp_path: Path) -> None:
    """An .npz header names its arrays' shapes; one asking for terabytes is refused unread."""
    import io
    import zipfile

    from stream.algorithms.perturbation import Perturbation
    from stream.errors import ModelError
    from stream.io.files import check_npz

    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": (1 << 20, 1 << 20)}
    )
    path = tmp_path / "huge.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("perturbation.npy", b"\x93NUMPY\x01\x00" + header.getvalue()[8:] + b"\x00" * 64)
    with pytest.raises(ValueError, match="more than allowed"):
        check_npz(path)
    with pytest.raises(ModelError, match="more than allowed"):
        Perturbation.load(path)
    small = tmp_path / "small.npz"
    np.savez(small, a=np.zeros(10))
    check_npz(small)
