"""StarGAN: the paper's generator, loading a checkpoint shaped like the official one, training steps."""

import io
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import ROOT  # noqa: E402

from engines.stargan import STARGAN_ATTRIBUTES, build_generator, export_onnx, load_generator  # noqa: E402
from stream.errors import ModelError  # noqa: E402


def official_like_state(generator: Any) -> Any:
    """The official 200000-G.ckpt's keys: ours plus old instance-norm running statistics."""
    state = dict(generator.state_dict())
    for key in list(state):
        if key.endswith(".bias") and state[key].ndim == 1 and key.replace(".bias", ".weight") in state:
            prefix = key[: -len(".bias")]
            if state[prefix + ".weight"].ndim == 1:  # an instance norm layer
                state[prefix + ".running_mean"] = torch.zeros_like(state[key])
                state[prefix + ".running_var"] = torch.ones_like(state[key])
    return state


def test_generator_architecture_matches_the_paper() -> None:
    g = build_generator()
    convs = [m for m in g.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.ConvTranspose2d)]
    assert all(m.bias is None for m in convs)
    assert convs[0].kernel_size == (7, 7) and convs[0].in_channels == 3 + 5
    assert [m.kernel_size for m in convs[1:3]] == [(4, 4), (4, 4)] and convs[1].stride == (2, 2)
    assert sum(isinstance(m, torch.nn.ConvTranspose2d) for m in convs) == 2
    assert len([n for n, _ in g.named_children()]) == 1 and isinstance(g.main[-1], torch.nn.Tanh)
    norms = [m for m in g.modules() if isinstance(m, torch.nn.InstanceNorm2d)]
    assert norms and all(m.affine and not m.track_running_stats for m in norms)
    assert len([m for m in g.main if type(m).__name__ == "ResidualBlock"]) == 6
    out = g(
        torch.rand(2, 3, 128, 128) * 2 - 1,
        torch.tensor([[1, 0, 0, 1, 1], [0, 1, 0, 0, 0]], dtype=torch.float32),
    )
    assert out.shape == (2, 3, 128, 128) and out.abs().max() <= 1


def test_loads_a_checkpoint_with_the_official_keys_and_shapes(tmp_path: Path) -> None:
    reference = build_generator()
    state = official_like_state(reference)
    assert "main.1.running_mean" in state and "main.9.main.1.weight" in state  # main.N keys, as published
    path = tmp_path / "200000-G.ckpt"
    torch.save(state, path)
    loaded = load_generator(path)
    x = torch.rand(1, 3, 128, 128) * 2 - 1
    c = torch.tensor([[0, 0, 1, 0, 1]], dtype=torch.float32)
    with torch.no_grad():
        assert torch.allclose(loaded(x, c), reference.eval()(x, c), atol=1e-6)
    torch.save({"main.0.weight": torch.zeros(3, 3)}, tmp_path / "bad.ckpt")
    with pytest.raises(ModelError, match="not a StarGAN generator"):
        load_generator(tmp_path / "bad.ckpt")


def test_official_download_fails_clearly_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import urllib.request

    from engines import stargan

    def offline(*args: Any, **kwargs: Any) -> None:
        raise OSError("network is unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(
        ModelError, match=r"cannot download the official StarGAN checkpoint .*Place 200000-G.ckpt"
    ):
        stargan.official_checkpoint(tmp_path)


class _Response:
    def __init__(self, body: bytes) -> None:
        self.body = io.BytesIO(body)

    def read(self, n: int = -1) -> bytes:
        return self.body.read(n)

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None


def test_the_official_download_is_bounded_in_size_and_checked_against_its_pin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import urllib.request
    import zipfile

    from engines import stargan

    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr(stargan.OFFICIAL_MEMBER, b"not really a checkpoint")
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: _Response(archive.getvalue()))
    monkeypatch.setattr(stargan, "OFFICIAL_MAX_BYTES", 64)
    with pytest.raises(ModelError, match="passed 64 bytes"):
        stargan.official_checkpoint(tmp_path)
    monkeypatch.setattr(stargan, "OFFICIAL_MAX_BYTES", 1 << 20)
    monkeypatch.setenv("ANONYMOUSNET_STARGAN_SHA256", "0" * 64)
    with pytest.raises(ModelError, match="pinned sha256"):
        stargan.official_checkpoint(tmp_path)
    assert not (tmp_path / "stargan" / "200000-G.ckpt").exists()  # nothing unverified kept


def test_onnx_export_runs_like_torch(tmp_path: Path) -> None:
    import onnxruntime as ort

    g = build_generator(conv_dim=16).eval()
    path = tmp_path / "g.onnx"
    export_onnx(g, path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random((2, 3, 128, 128)).astype(np.float32) * 2 - 1
    c = np.eye(5, dtype=np.float32)[:2]
    (out,) = session.run(None, {"image": x, "condition": c})
    with torch.no_grad():
        expected = g(torch.from_numpy(x), torch.from_numpy(c)).numpy()
    assert np.abs(out - expected).max() < 1e-4
    ops = {n.op_type for n in __import__("onnx").load(str(path)).graph.node}
    assert "InstanceNormalization" in ops


def test_a_few_training_steps_move_the_losses_as_they_should(tmp_path: Path) -> None:
    from calibration.stargan_train import TrainConfig, Trainer

    rng = np.random.default_rng(0)
    labels = (rng.random((16, len(STARGAN_ATTRIBUTES))) < 0.5).astype(np.float32)
    # Tiny generated data whose colour encodes the labels, so attributes are learnable.
    images = np.zeros((16, 3, 64, 64), np.float32)
    images[:, 0] = labels[:, 0, None, None] * 2 - 1
    images[:, 1] = labels[:, 3, None, None] * 2 - 1
    images += rng.normal(scale=0.1, size=images.shape).astype(np.float32)
    trainer = Trainer(TrainConfig(image_size=64, conv_dim=8, batch=16), seed=0)
    x, y = torch.from_numpy(images), torch.from_numpy(labels)
    history = [trainer.step(x, y) for _ in range(40)]
    d_cls = [h["D/cls"] for h in history]
    g_rec = [h["G/rec"] for h in history if "G/rec" in h]  # generator steps: every 5th
    assert len(g_rec) == 8
    assert np.mean(d_cls[-5:]) < np.mean(d_cls[:5])  # the classifier learns the real attributes
    assert np.mean(g_rec[-3:]) < np.mean(g_rec[:3])  # reconstruction improves
    assert all(np.isfinite(list(h.values())).all() for h in history)
    trainer.save(tmp_path / "latest.ckpt")
    again = Trainer(TrainConfig(image_size=64, conv_dim=8, batch=16), seed=1)
    again.load(tmp_path / "latest.ckpt")
    assert again.steps == 40
    for a, b in zip(again.generator.state_dict().values(), trainer.generator.state_dict().values()):
        assert torch.equal(a, b)
    loaded = load_generator(tmp_path / "latest.ckpt")  # our checkpoints load for inference too
    assert loaded(x[:1], y[:1]).shape == (1, 3, 64, 64)


def test_stargan_directs_the_surrogate_in_the_stream(tmp_path: Path, demo_clip: Path, detector: Any) -> None:
    """A checkpoint the test makes (official keys, random weights) runs once per track on
    the k-Same surrogate: the drawn surrogate changes inside the face only."""
    from stream.algorithms.synthesis import Gallery, GalleryEntry
    from stream.config import build_config
    from stream.run.job import load_styler, run_job

    torch.manual_seed(0)
    checkpoint = tmp_path / "G.ckpt"
    torch.save(official_like_state(build_generator(conv_dim=8)), checkpoint)
    from engines import zoo
    from engines.stargan import onnx_path

    onnx_path(checkpoint, zoo.cache_dir()).unlink(missing_ok=True)  # made by an earlier run
    with pytest.raises(ModelError, match=r"run_stream.py models --stargan"):
        load_styler(str(checkpoint), "cpu")  # the stream only loads: the export is a set-up step
    made = subprocess.run([sys.executable, str(ROOT / "run_stream.py"), "models", "--stargan", str(checkpoint)],
                          capture_output=True, text=True)  # fmt: skip
    assert made.returncode == 0, made.stderr
    styler = load_styler(str(checkpoint), "cpu")
    from calibration.gallery import ensure_builtin

    entry = Gallery.load(ensure_builtin()).entries[0]
    selected = np.zeros(40, bool)
    styled = styler.style(entry, selected)
    assert isinstance(styled, GalleryEntry) and styled.texture.shape == entry.texture.shape
    change = np.abs(styled.texture.astype(int) - entry.texture.astype(int)).mean(axis=2)
    assert change[entry.mask].mean() > 5 and change[~entry.mask].max() == 0

    config = build_config(None, {"obscure": {"mode": "synth"}, "synth": {"stargan": str(checkpoint)}})
    result = run_job(str(demo_clip), "null", config, detector=detector)
    assert result.synthesis is not None
    assert result.synthesis["replaced"] > 0
    assert all(origin.endswith("StarGAN") for origin in result.synthesis["surrogates"].values())


def test_tensorrt_keeps_instance_norm_in_fp32(tmp_path: Path) -> None:
    from engines.tensorrt import provider_options

    options = provider_options(tmp_path, "fp16", {}, fp32_ops=("InstanceNormalization",))
    assert options["trt_fp16_enable"] and options["trt_op_types_to_exclude"] == "InstanceNormalization"
