"""The GPU frame path (``detect.device_frames``), run on the CPU through the torch-cpu backend:
the same code as on CUDA, held to the numpy path's results."""

from __future__ import annotations

import subprocess
import sys
import threading
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import HAMILTON, ROOT, decode_frames

torch = pytest.importorskip("torch")


def iou(a: np.ndarray, b: np.ndarray) -> float:
    x1, y1 = max(a[0], b[0]), max(a[1], b[1])
    x2, y2 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    area = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / area)


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    if not HAMILTON.exists():
        pytest.fail(f"shared media not found at {HAMILTON}: tests need ../shared/media beside the checkout")
    return decode_frames(HAMILTON)[::40][:4]


CUDA = pytest.param(
    "cuda",
    marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")],
)
DEVICES = ["cpu", CUDA]  # on a GPU machine (bench/gpu_check.sh) the same checks run on CUDA in FP16


def torch_centerface(device: str) -> Any:
    from engines import zoo
    from engines.base import create_backend
    from engines.centerface import CenterFace

    return CenterFace(create_backend(f"torch-{device}", zoo.ensure("centerface")))


@pytest.fixture(scope="module")
def torch_detector() -> Any:
    return torch_centerface("cpu")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("scale", [1.0, 0.5, 1.6])
def test_detection_on_device_frames_matches_numpy_frames(
    frames: list[np.ndarray], detector: Any, torch_detector: Any, scale: float, device: str
) -> None:
    """Resizing, padding and thresholding on the device find the faces the OpenCV path finds:
    every face scored 0.3 or more by one has a match (IoU >= 0.85, score within 0.05) in the
    other. (Fainter cells differ: area resizing rounds differently.)"""
    on_device = torch_detector if device == "cpu" else torch_centerface(device)
    for image in frames:
        (numpy_faces,) = detector.detect([image], scale, 0.08, 0.3)
        (device_faces,) = on_device.detect([torch.from_numpy(image).to(device)], scale, 0.08, 0.3)
        for ours, theirs in ((numpy_faces, device_faces), (device_faces, numpy_faces)):
            for box, score in zip(ours.boxes, ours.scores, strict=True):
                if score < 0.3:
                    continue
                best = max(range(len(theirs.boxes)), key=lambda j: iou(box, theirs.boxes[j]), default=None)
                assert best is not None, f"a face scored {score:.2f} at {box} has no match"
                assert iou(box, theirs.boxes[best]) >= 0.85
                assert abs(float(theirs.scores[best]) - float(score)) < 0.05
        assert len(numpy_faces.boxes) > 0


def test_a_batch_of_device_frames_is_each_frame_alone(frames: list[np.ndarray], torch_detector: Any) -> None:
    batch = torch_detector.detect([torch.from_numpy(f) for f in frames], 0.5, 0.08, 0.3)
    for image, faces in zip(frames, batch, strict=True):
        (alone,) = torch_detector.detect([torch.from_numpy(image)], 0.5, 0.08, 0.3)
        np.testing.assert_allclose(faces.boxes, alone.boxes, atol=0.05)
        np.testing.assert_allclose(faces.landmarks, alone.landmarks, atol=0.05)


def test_the_batched_detector_takes_device_frames_from_many_threads(
    frames: list[np.ndarray], torch_detector: Any
) -> None:
    from stream.run.multi import BatchedDetector

    shared = BatchedDetector(torch_detector, max_batch=4, wait_s=0.05)
    results: dict[int, Any] = {}

    def call(i: int) -> None:
        (results[i],) = shared.detect([torch.from_numpy(frames[i])], 0.5, 0.08, 0.3)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(frames))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    shared.close()
    assert shared.batches < len(frames)  # some calls shared a batch
    for i, image in enumerate(frames):
        (alone,) = torch_detector.detect([torch.from_numpy(image)], 0.5, 0.08, 0.3)
        np.testing.assert_allclose(results[i].boxes, alone.boxes, atol=0.05)


def test_a_backend_without_a_device_refuses_device_frames(frames: list[np.ndarray], detector: Any) -> None:
    with pytest.raises(TypeError, match="numpy frames"):
        detector.detect([torch.from_numpy(frames[0])], 1.0)


def random_boxes(rng: np.random.Generator, n: int) -> np.ndarray:
    xy = rng.uniform(0, [600, 330], (n, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(8, 120, (n, 2))], axis=1).astype(np.float32)
    boxes[0] = [-10, -5, 50, 60]  # over the frame's corner
    return boxes


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", ["blur", "pixelate", "mask"])
@pytest.mark.parametrize("shape", ["ellipse", "box"])
@pytest.mark.parametrize("count", [3, 12])  # 12: blur's all-at-once path for crowds
def test_device_obscuring_matches_the_cpu_obscurer(
    frames: list[np.ndarray], mode: str, shape: str, count: int, device: str
) -> None:
    from stream.algorithms.obscure import Obscurer
    from stream.algorithms.obscure_device import DeviceObscurer
    from stream.config import ObscureConfig

    config = ObscureConfig(mode=mode, shape=shape)  # type: ignore[arg-type]
    boxes = random_boxes(np.random.default_rng(count), count)
    image = frames[1]
    cpu = image.copy()
    Obscurer(config).apply(cpu, boxes)
    on_device = torch.from_numpy(image.copy()).to(device)
    DeviceObscurer(config).apply(on_device, boxes)
    gpu = on_device.cpu().numpy()
    changed = np.abs(cpu.astype(int) - image).sum(axis=2) > 0
    assert changed.mean() > 0.01
    difference = np.abs(cpu.astype(int) - gpu.astype(int))
    assert difference[changed].mean() < 1.0, "obscured pixels differ by more than a grey level on average"
    # The regions agree but for the ellipses' outline (OpenCV's is a polygon): under 2% of the
    # region's pixels off by more than 8 levels, and nothing outside every region touched.
    assert (difference.max(axis=2) > 8)[changed].mean() < 0.02
    outside = np.ones(changed.shape, bool)
    for x1, y1, x2, y2 in boxes:
        outside[max(0, int(y1)) : int(np.ceil(y2)), max(0, int(x1)) : int(np.ceil(x2))] = False
    assert np.array_equal(gpu[outside], image[outside])


def packet_with_a_drawn_face(image: np.ndarray, drawn: bool = True) -> Any:
    """A frame whose track 1 the synth stage replaced (a window painted in ``image``) and
    whose track 2 is left to the obscure stage, as the detect stage leaves it on the device."""
    from stream.algorithms.facewarp import Rendered
    from stream.frames import FramePacket, Tracks
    from stream.stages.detect import upload

    raw = image.copy()
    packet = FramePacket(0, image.copy(), 0, Fraction(1, 30))
    packet.device_image = upload(raw, torch.device("cpu"))
    packet.tracks = Tracks(
        np.array([[100, 50, 200, 170], [400, 60, 480, 160]], np.float32),
        np.array([1, 2], np.int64),
        np.zeros(2, bool),
        np.array([0, 1], np.int64),
    )
    packet.image[60:150, 110:190] = [10, 200, 30]  # the surrogate, drawn on the host
    packet.image[50:170, 100:110] //= 2  # its head softened, within the track's box
    packet.replaced.add(1)
    if drawn:
        coverage = np.ones((90, 80), bool)
        packet.drawn[1] = Rendered(packet.image[60:150, 110:190].copy(), coverage, 110, 60,
                                   np.zeros((90, 80, 2), np.float32))  # fmt: skip
    return packet, raw


@pytest.mark.parametrize("drawn", [True, False])
def test_the_obscure_stage_on_device_keeps_what_synthesis_drew(frames: list[np.ndarray], drawn: bool) -> None:
    """The windows drawn on the host come in, the other face is obscured there, and the
    frame comes back once; without the drawing's window the whole host frame comes in."""
    from stream.algorithms.obscure import Obscurer
    from stream.config import ObscureConfig
    from stream.stages.obscure import ObscureStage

    packet, raw = packet_with_a_drawn_face(frames[0], drawn)
    host = packet.image.copy()
    out = ObscureStage(ObscureConfig(mode="blur")).process(packet)
    assert out.anonymized and out.device_image is None
    assert isinstance(out.image, np.ndarray) and out.image.dtype == np.uint8
    np.testing.assert_array_equal(out.image[50:170, 100:200], host[50:170, 100:200])  # the replaced face
    expected = host.copy()
    Obscurer(ObscureConfig(mode="blur")).apply(expected, packet.tracks.xyxy[1:])
    region = (slice(60, 160), slice(400, 480))
    assert np.abs(out.image[region].astype(int) - expected[region]).mean() < 1.0  # the other face
    assert np.abs(out.image[region].astype(int) - raw[region]).mean() > 3.0
    np.testing.assert_array_equal(out.image[200:], raw[200:])  # untouched elsewhere


def test_device_frames_on_need_a_torch_backend(detector: Any) -> None:
    from stream.config import DetectConfig
    from stream.errors import ConfigError
    from stream.stages.detect import DetectStage

    with pytest.raises(ConfigError, match="device_frames: 'on' needs a torch backend"):
        DetectStage(detector, DetectConfig(device_frames="on"))
    assert DetectStage(detector, DetectConfig()).device is None  # auto: numpy frames on the CPU


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "run_stream.py"), *args], capture_output=True,
                          text=True, timeout=600)  # fmt: skip


@pytest.mark.parametrize("device", DEVICES)
def test_a_blur_job_on_device_frames_writes_what_the_cpu_path_writes(
    media: Path, tmp_path: Path, device: str
) -> None:
    """The whole job (capture, detect on the device, track, obscure on the device, one download,
    encode) against the numpy path: every frame, every face hidden alike. (torch-cuda takes
    the device path by itself: ``auto``.)"""
    outputs = {}
    on = "on" if device == "cpu" else "auto"
    for backend, device_frames in (("cpu", "off"), (f"torch-{device}", on)):
        out = tmp_path / f"{backend}.mp4"
        result = run(str(HAMILTON), "-o", str(out), "--mode", "blur", "--backend", backend,
                     "--device-frames", device_frames, "--max-frames", "12", "-q")  # fmt: skip
        assert result.returncode == 0, result.stderr
        outputs[backend] = decode_frames(out)
    raw = decode_frames(HAMILTON)[:12]
    assert len(outputs["cpu"]) == len(outputs[f"torch-{device}"]) == 12
    for cpu, gpu, source in zip(outputs["cpu"], outputs[f"torch-{device}"], raw, strict=True):
        blurred = np.abs(cpu.astype(int) - source).max(axis=2) > 24
        assert blurred.mean() > 0.005  # faces were hidden
        assert np.abs(gpu.astype(int) - cpu)[blurred].mean() < 6.0, (
            "a face hidden on the CPU is not on the device"
        )
