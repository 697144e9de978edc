"""Stage IV: the universal perturbation's algorithm, its file, and its drawing onto faces."""

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from skimage import data

from calibration import uap
from engines import zoo
from engines.base import create_backend
from engines.crops import crop_from_box
from engines.facemodels import FaceMesh, FaceRes
from stream.algorithms import facewarp
from stream.algorithms.perturbation import (
    MAX_LEVEL,
    Perturbation,
    build_manifest,
    noise,
    pattern_norm,
    track_generator,
)
from stream.errors import ConfigError, ModelError

SIZE = facewarp.SIZE


def masked_pattern(seed: int, peak: float = 10.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    pattern = rng.uniform(-peak, peak, (SIZE, SIZE, 3)) * facewarp.canonical().mask[..., None]
    return pattern.astype(np.float32)


def synthetic_mesh(dx: float = 40.0, dy: float = 30.0) -> np.ndarray:
    """The canonical layout itself, shrunk and moved into a frame: a mesh without a model."""
    points = facewarp.canonical().points * 0.8 + np.array([dx, dy], np.float32)
    return np.concatenate([points, np.zeros((len(points), 1), np.float32)], axis=1).astype(np.float32)


@pytest.mark.parametrize("norm", ["inf", "2"])
def test_projection_onto_the_ball_is_exact(norm: Any) -> None:
    v = torch.randn(8, 8, 3, generator=torch.Generator().manual_seed(0)) * 20
    p = uap.project(v, norm, 10.0)
    if norm == "inf":
        assert torch.equal(p, v.clamp(-10, 10))
    else:
        assert float(torch.linalg.vector_norm(p)) == pytest.approx(10.0, rel=1e-6)
        assert torch.allclose(p / p.norm(), v / v.norm(), atol=1e-6)  # the nearest point: same direction
    inside = v * (5.0 / pattern_norm(v.numpy(), norm))
    assert torch.equal(uap.project(inside, norm, 10.0), inside)


def test_deepfool_crosses_the_nearest_linear_boundary_with_the_minimal_step() -> None:
    g = torch.Generator().manual_seed(1)
    w, b, x = torch.randn(5, 48, generator=g), torch.randn(5, generator=g), torch.randn(48, generator=g)
    label = int((w @ x + b).argmax())
    step, iterations = uap.deepfool(lambda v: w @ (x + v) + b, torch.zeros(48), label, range(5))
    assert iterations == 1 and int((w @ (x + step) + b).argmax()) != label
    # For a point inside the convex decision region, the nearest exit is the nearest facet.
    f = w @ x + b
    lengths = (w - w[label]).norm(dim=1)
    others = [k for k in range(5) if k != label]
    k = min(others, key=lambda k: float((f[label] - f[k]) / lengths[k]))
    expected = 1.02 * (float(f[label] - f[k]) + 1e-4) / float(lengths[k])
    assert float(step.norm()) == pytest.approx(expected, rel=1e-4)
    assert int((w @ (x + step / 1.02 * 0.999) + b).argmax()) == label  # any shorter step falls short


def test_deepfool_flips_a_small_conv_net() -> None:
    torch.manual_seed(2)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 6, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(6 * 6 * 6, 4)
    )
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        label = int(net(x)[0].argmax())
    step, iterations = uap.deepfool(lambda v: net(x + v)[0], torch.zeros(1, 3, 8, 8), label, range(4))
    with torch.no_grad():
        assert int(net(x + step)[0].argmax()) != label
        assert int(net(x + 0.9 * step)[0].argmax()) == label  # close to the boundary, not far past it
    assert 0 < iterations < 50


class SharedMargin:
    """Inputs all of class 0, near one point: one shared step can move them all."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(3)
        self.w = torch.randn(3, 48, generator=g)
        centre = 0.2 * (self.w[0] - self.w[1:].mean(0))  # class 0 by a wide margin
        self.x = centre + 0.3 * torch.randn(40, 48, generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def logits(self, indices: Any, v: Any) -> Any:
        return (self.x[list(indices)] + v) @ self.w.T


@pytest.mark.parametrize("method", uap.METHODS)
@pytest.mark.parametrize(("norm", "xi"), [("inf", 0.5), ("2", 3.0)])
def test_the_uap_loop_reaches_the_requested_fooling_rate_within_the_ball(
    norm: Any, xi: Any, method: Any
) -> None:
    problem = SharedMargin()
    clean = problem.logits(range(40), torch.zeros(48)).argmax(1)
    assert (clean == 0).float().mean() > 0.9
    settings = uap.Settings(norm=norm, xi=xi, delta=0.1, max_passes=10, candidates=3, method=method)
    fit = uap.fit_universal(problem, (48,), settings, np.random.default_rng(0), progress=False)
    fooled = (problem.logits(range(40), torch.from_numpy(fit.perturbation)).argmax(1) != clean).float().mean()
    assert fit.fooling_rate >= 0.9 and float(fooled) == pytest.approx(fit.fooling_rate)
    assert pattern_norm(fit.perturbation, norm) <= xi * (1 + 1e-6)
    assert fit.passes == len(fit.history) <= 10


class SpreadMargins:
    """Linear logits over 64 values whose class-0 margins all lie along one direction ``u``,
    each input's margin ``m_i`` from 1 to 8 (in ``u`` units); everything else is noise the
    classifier ignores. The best l_inf pattern of radius xi is ``-xi * sign(u)``: it fools the
    inputs with ``m_i < xi * |u|_1``."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(5)
        self.u = torch.randn(64, generator=g)
        self.u = self.u / self.u.norm()
        margins = torch.linspace(1.0, 8.0, 40)
        noise = torch.randn(40, 64, generator=g)
        noise = noise - (noise @ self.u)[:, None] * self.u
        self.x = margins[:, None] * self.u + noise

    def __len__(self) -> int:
        return len(self.x)

    def logits(self, indices: Any, v: Any) -> Any:
        score = (self.x[list(indices)] + v) @ self.u
        return torch.stack([score, torch.zeros_like(score)], dim=1)


def test_sgd_reaches_the_best_corner_of_the_l_inf_ball() -> None:
    """The signed gradient walks to ``-xi * sign(u)``: exactly the inputs the best pattern can
    fool are fooled, none more, and the pattern stays within the ball."""
    problem = SpreadMargins()
    xi = 0.6  # xi * |u|_1 is about 4.6: about half of the margins can be crossed
    settings = uap.Settings(xi=xi, delta=0.0, max_passes=3, method="sgd")
    fit = uap.fit_universal(problem, (64,), settings, np.random.default_rng(0), progress=False)
    assert pattern_norm(fit.perturbation, "inf") <= xi * (1 + 1e-6)
    best = float((problem.x @ problem.u < xi * problem.u.abs().sum()).float().mean())
    assert 0.3 < best < 0.7
    assert fit.fooling_rate == pytest.approx(best, abs=0.03)
    assert np.array_equal(np.sign(fit.perturbation), -np.sign(problem.u.numpy()))


class OnePixel:
    """Class 0 until the first value passes ``-margin``; the gradient lies on that value alone."""

    def __init__(self, margin: float) -> None:
        self.x = torch.zeros(6, 16)
        self.x[:, 0] = margin

    def __len__(self) -> int:
        return len(self.x)

    def logits(self, indices: Any, v: Any) -> Any:
        score = (self.x[list(indices)] + v)[:, 0]
        return torch.stack([score, torch.zeros_like(score)], dim=1)


@pytest.mark.parametrize("method", uap.METHODS)
@pytest.mark.parametrize(("margin", "fooled"), [(100.0, 1.0), (200.0, 0.0)])
def test_an_l2_pattern_never_holds_more_than_the_stream_can_draw(
    method: Any, margin: Any, fooled: Any
) -> None:
    """The l_2 ball of radius 1000 would let one value reach 1000; the stream draws at most 127."""
    settings = uap.Settings(norm="2", xi=1000.0, delta=0.0, max_passes=3, candidates=2, method=method)
    fit = uap.fit_universal(OnePixel(margin), (16,), settings, np.random.default_rng(0), progress=False)
    assert pattern_norm(fit.perturbation, "inf") <= MAX_LEVEL
    assert fit.fooling_rate == fooled


def test_the_clipped_margin_stops_at_clip() -> None:
    logits = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0], [0.0, 0.2, 0.1]], requires_grad=True)
    margin = uap.clipped_margin(logits, torch.tensor([0, 0, 0]), clip=0.5)
    assert margin.tolist() == pytest.approx([2.0, -0.5, -0.2])
    (grad,) = torch.autograd.grad(margin.sum(), logits)
    assert not grad[1].any() and grad[2].tolist() == [1.0, -1.0, 0.0]  # past -clip: no pull


def test_settings_name_the_field_and_its_range() -> None:
    with pytest.raises(ConfigError, match=r"uap delta: expected in \[0, 1\), got 1.5"):
        uap.Settings(delta=1.5)
    with pytest.raises(ConfigError, match="uap method: expected one of \\('deepfool', 'sgd'\\), got 'adam'"):
        uap.Settings(method="adam")


def write_raw(path: Any, pattern: Any, manifest: Any) -> None:
    with open(path, "wb") as fh:
        np.savez(fh, perturbation=pattern, manifest=np.array(json.dumps(manifest)))


def test_the_file_round_trips_and_a_tampered_or_oversized_one_is_refused(tmp_path: Path) -> None:
    pattern = masked_pattern(0)
    manifest = build_manifest(pattern, "faceres", uap.DESCRIPTOR, "inf", 10.0, seed=0, fooling_rate=0.8)
    path = tmp_path / "uap.npz"
    Perturbation(pattern, manifest).save(path)
    loaded = Perturbation.load(path)
    assert np.array_equal(loaded.pattern, pattern) and loaded.manifest == manifest and loaded.xi == 10.0

    other = json.loads(json.dumps(manifest))
    other["target"]["sha256"] = "0" * 64
    write_raw(path, pattern, other)
    with pytest.raises(ModelError, match=f"{path}: fitted against faceres .* pins .*calibration.uap fit"):
        Perturbation.load(path)

    big = pattern * np.float32(1.5)
    write_raw(path, big, build_manifest(big, "faceres", uap.DESCRIPTOR, "inf", 10.0))
    with pytest.raises(ModelError, match="l_inf norm 15 exceeds the stated bound 10"):
        Perturbation.load(path)
    with pytest.raises(ModelError, match="exceeds"):
        Perturbation(big, build_manifest(big, "faceres", uap.DESCRIPTOR, "inf", 10.0)).save(
            tmp_path / "b.npz"
        )

    write_raw(path, pattern, manifest | {"perturbation_sha256": "f" * 64})
    with pytest.raises(ModelError, match="does not match the sha256"):
        Perturbation.load(path)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ModelError, match=r"junk.npz: not a readable perturbation file"):
        Perturbation.load(tmp_path / "junk.npz")


def test_apply_changes_only_covered_pixels_and_never_more_than_epsilon_xi() -> None:
    pattern = masked_pattern(1)
    perturbation = Perturbation(pattern, build_manifest(pattern, "faceres", uap.DESCRIPTOR, "inf", 10.0))
    points = synthetic_mesh()
    frame = np.random.default_rng(2).integers(0, 256, (260, 300, 3), dtype=np.uint8)
    drawn = facewarp.from_canonical(np.zeros((SIZE, SIZE, 3), np.uint8), points, frame.shape[:2])
    assert drawn is not None
    covered = np.zeros(frame.shape[:2], bool)
    h, w = drawn.coverage.shape
    covered[drawn.y1 : drawn.y1 + h, drawn.x1 : drawn.x1 + w] = drawn.coverage
    for epsilon in (1.0, 0.35):
        out = frame.copy()
        assert perturbation.apply(out, points, epsilon)
        change = np.abs(out.astype(int) - frame)
        assert not change[~covered].any()
        assert change.max() <= epsilon * 10
        assert (change.max(axis=2) > 0)[covered].mean() > 0.6
    out = frame.copy()
    perturbation.apply(out, points, 0.0)
    assert np.array_equal(out, frame)
    assert not perturbation.apply(out, synthetic_mesh(dx=1000), 1.0) and np.array_equal(out, frame)
    with pytest.raises(ValueError, match="epsilon must be in"):
        perturbation.apply(out, points, 20.0)


def test_noise_is_one_pattern_per_track_that_moves_with_the_face() -> None:
    frame = np.full((300, 320, 3), 128, np.uint8)
    points = synthetic_mesh()

    def noisy(track: int, shift: tuple[int, int] = (0, 0)) -> np.ndarray:
        out = frame.copy()
        moved = points + np.array([*shift, 0], np.float32)
        assert noise(out, moved, 6.0, track_generator(7, track))
        return out.astype(int) - frame

    first, again, other = noisy(3), noisy(3), noisy(4)
    assert np.array_equal(first, again) and np.abs(first).max() > 0
    assert not np.array_equal(first, other)
    moved = noisy(3, (15, 9))[9:, 15:] - first[:-9, :-15]  # the same pattern, up to float rounding
    assert np.abs(moved).max() <= 1 and (moved != 0).mean() < 0.05


@pytest.fixture(scope="module")
def astronaut_face(detector: Any) -> Any:
    mesh = FaceMesh(create_backend("cpu", zoo.ensure("facemesh")))
    face = uap.find_face(data.astronaut(), "astronaut", detector, mesh)
    assert face is not None
    return face


def test_the_fitting_path_sees_what_the_stream_draws(astronaut_face: Any) -> None:
    face = astronaut_face
    path = uap.face_path(face)
    for pattern in (masked_pattern(3), masked_pattern(4, peak=40.0)):
        drawn = face.image.copy()
        Perturbation(pattern, {}).apply(drawn, face.points)
        stream = crop_from_box(drawn, face.box, face.landmarks, 224).image.astype(np.float32)
        fitted = uap.perturbed_crops([path], torch.from_numpy(pattern))[0].numpy()
        change = np.abs(stream - path.clean.numpy())
        difference = np.abs(stream - fitted)
        assert change.mean() > 0.3  # the pattern reaches the crop
        assert difference.mean() < 0.2 and difference.max() <= 2.0  # rounding only


def test_the_torch_targets_agree_with_the_runtime_faceres(astronaut_face: Any) -> None:
    face = astronaut_face
    crop = crop_from_box(face.image, face.box, face.landmarks, 224)
    runtime = FaceRes(create_backend("cpu", zoo.ensure("faceres"))).predict([crop])
    module = uap.load_faceres()
    batch = torch.from_numpy(crop.image.astype(np.float32))[None]
    descriptor = uap.descriptors(module, batch)[0]
    assert float(descriptor @ runtime.descriptor[0]) > 0.999
    gender = uap.gender_target(module, zoo.ensure("faceres"))
    with torch.no_grad():
        male_logit = float(gender(batch)[0, 0])
    assert male_logit == pytest.approx(float(np.log(runtime.male[0] / (1 - runtime.male[0]))), abs=1e-2)


def test_every_calibration_command_turns_project_errors_into_one_line_and_the_exit_code(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    import importlib
    import pkgutil

    import calibration
    from calibration.uap import cli

    commands = []
    for info in pkgutil.walk_packages(calibration.__path__, "calibration."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        if callable(getattr(module, "main", None)) and module.__name__ == module.main.__module__:
            commands.append(module)
    assert len(commands) == 10
    unwrapped = [m.__name__ for m in commands if not hasattr(m.main, "__wrapped__")]
    assert unwrapped == [], "calibration commands without calibration.command.command"
    code = cli.main(["fit", "-o", str(tmp_path / "u.npz"), "--delta", "5", "--media", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert code == ConfigError.exit_code
    assert err == "error: uap delta: expected in [0, 1), got 5.0"
