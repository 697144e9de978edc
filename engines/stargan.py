"""StarGAN (Choi et al., CVPR 2018) as in AnonymousNet: the generator, its official checkpoint, ONNX export.

The generator: 7x7 conv, two stride-2 4x4 convs, six residual blocks, two
transposed 4x4 convs, 7x7 conv + tanh; instance norm with affine parameters
and no running statistics; no conv biases; the condition vector tiled over
the image and concatenated after RGB. It loads the official CelebA 128x128
checkpoint ``200000-G.ckpt`` (attributes Black_Hair, Blond_Hair, Brown_Hair,
Male, Young; keys ``main.N...``), whose running statistics are dropped.
torch is imported only when these are used.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import Any

from .errors import ModelError

STARGAN_ATTRIBUTES = ("Black_Hair", "Blond_Hair", "Brown_Hair", "Male", "Young")
# The address the StarGAN repository's download script uses for the pretrained CelebA model.
OFFICIAL_URL = "https://www.dropbox.com/s/7e966qq0nlxwte4/celeba-128x128-5attrs.zip?dl=1"
OFFICIAL_MEMBER = "celeba-128x128-5attrs/200000-G.ckpt"
# The archive's size is bounded while it downloads (it holds the generator and the
# discriminator, a few hundred MB); anything larger is not the file and is cut off.
OFFICIAL_MAX_BYTES = 1 << 30
# The generator's sha256 when known: no machine of the project reaches the address,
# so it is not pinned in the code; ANONYMOUSNET_STARGAN_SHA256 pins it, and without a
# pin the hash seen at the first download is recorded and checked from then on.
OFFICIAL_SHA256: str | None = None
IMAGE_SIZE = 128


def build_generator(conv_dim: int = 64, c_dim: int = 5, repeat_num: int = 6) -> Any:
    """The StarGAN generator as a ``torch.nn.Module`` (``forward(x, c)``, x in [-1, 1] NCHW)."""
    import torch
    from torch import nn

    def norm(dim: int) -> nn.Module:
        return nn.InstanceNorm2d(dim, affine=True, track_running_stats=False)

    class ResidualBlock(nn.Module):
        def __init__(self, dim: int) -> None:
            super().__init__()
            self.main = nn.Sequential(
                nn.Conv2d(dim, dim, 3, 1, 1, bias=False), norm(dim), nn.ReLU(inplace=True),
                nn.Conv2d(dim, dim, 3, 1, 1, bias=False), norm(dim),
            )  # fmt: skip

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.main(x)

    class Generator(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            layers: list[nn.Module] = [
                nn.Conv2d(3 + c_dim, conv_dim, 7, 1, 3, bias=False),
                norm(conv_dim),
                nn.ReLU(inplace=True),
            ]
            dim = conv_dim
            for _ in range(2):
                layers += [nn.Conv2d(dim, dim * 2, 4, 2, 1, bias=False), norm(dim * 2), nn.ReLU(inplace=True)]
                dim *= 2
            layers += [ResidualBlock(dim) for _ in range(repeat_num)]
            for _ in range(2):
                layers += [
                    nn.ConvTranspose2d(dim, dim // 2, 4, 2, 1, bias=False),
                    norm(dim // 2),
                    nn.ReLU(inplace=True),
                ]
                dim //= 2
            layers += [nn.Conv2d(dim, 3, 7, 1, 3, bias=False), nn.Tanh()]
            self.main = nn.Sequential(*layers)

        def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
            c = c.view(c.size(0), c.size(1), 1, 1).repeat(1, 1, x.size(2), x.size(3))
            return self.main(torch.cat([x, c], dim=1))

    return Generator()


def build_discriminator(
    image_size: int = IMAGE_SIZE, conv_dim: int = 64, c_dim: int = 5, repeat_num: int = 6
) -> Any:
    """The PatchGAN discriminator with an auxiliary attribute classifier (``forward(x) -> (src, cls)``)."""
    import torch
    from torch import nn

    class Discriminator(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            layers: list[nn.Module] = [nn.Conv2d(3, conv_dim, 4, 2, 1), nn.LeakyReLU(0.01)]
            dim = conv_dim
            for _ in range(1, repeat_num):
                layers += [nn.Conv2d(dim, dim * 2, 4, 2, 1), nn.LeakyReLU(0.01)]
                dim *= 2
            self.main = nn.Sequential(*layers)
            self.conv1 = nn.Conv2d(dim, 1, 3, 1, 1, bias=False)
            self.conv2 = nn.Conv2d(dim, c_dim, image_size // 2**repeat_num, bias=False)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            h = self.main(x)
            return self.conv1(h), self.conv2(h).view(x.size(0), -1)

    return Discriminator()


def load_generator(checkpoint: Path) -> Any:
    """A generator with the weights of a StarGAN checkpoint (official or ours); running
    statistics of the old instance-norm layers are dropped. Loads tensors only."""
    import torch

    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError) as exc:
        raise ModelError(f"StarGAN checkpoint {checkpoint}: cannot read ({exc})") from None
    if isinstance(state, dict) and "generator" in state:  # our training checkpoints
        state = state["generator"]
    state = {
        k: v
        for k, v in state.items()
        if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))
    }
    c_dim = int(state["main.0.weight"].shape[1]) - 3
    conv_dim = int(state["main.0.weight"].shape[0])
    generator = build_generator(conv_dim=conv_dim, c_dim=c_dim)
    try:
        generator.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelError(
            f"StarGAN checkpoint {checkpoint}: not a StarGAN generator ({str(exc)[:200]})"
        ) from None
    generator.eval()
    return generator


OFFICIAL_FILE = "200000-G.ckpt"  # under the model cache's stargan/


def official_checkpoint(cache: Path, timeout_s: float = 30.0) -> Path:
    """The official CelebA 128x128 generator, downloaded from its public address on first use.

    The address is outside the package registries: offline (as on the project's
    own machines) this raises ModelError saying so and how to place the file by hand.
    The checkpoint's sha256 is recorded on first download and checked afterwards.
    """
    from .zoo import sha256_file

    target = cache / "stargan" / OFFICIAL_FILE
    record = target.with_suffix(".json")
    if target.exists():
        if record.exists() and json.loads(record.read_text())["sha256"] != sha256_file(target):
            raise ModelError(
                f"{target}: sha256 differs from the one recorded at download; delete it to fetch again"
            )
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with urllib.request.urlopen(OFFICIAL_URL, timeout=timeout_s) as response:  # fixed https address
            payload = _read_bounded(response, OFFICIAL_MAX_BYTES)
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        raise ModelError(
            f"cannot download the official StarGAN checkpoint ({exc}); this machine may be offline. "
            f"Place 200000-G.ckpt from celeba-128x128-5attrs.zip (StarGAN's download.sh) at {target}"
        ) from None
    try:
        with zipfile.ZipFile(io.BytesIO(payload)) as archive:
            data = archive.read(OFFICIAL_MEMBER)
    except (zipfile.BadZipFile, KeyError) as exc:
        raise ModelError(f"the StarGAN download is not the expected archive ({exc})") from None
    pinned = os.environ.get("ANONYMOUSNET_STARGAN_SHA256") or OFFICIAL_SHA256
    if pinned and hashlib.sha256(data).hexdigest() != pinned.lower():
        raise ModelError(f"the StarGAN checkpoint downloaded does not have the pinned sha256 {pinned}")
    tmp = target.with_suffix(".part")
    tmp.write_bytes(data)
    os.replace(tmp, target)
    record.write_text(json.dumps({"url": OFFICIAL_URL, "sha256": sha256_file(target)}, indent=2) + "\n")
    return target


def _read_bounded(response: Any, limit: int) -> bytes:
    """The response's body, refused once it passes ``limit`` bytes."""
    chunks, size = [], 0
    while chunk := response.read(1 << 20):
        size += len(chunk)
        if size > limit:
            raise ModelError(f"the StarGAN download passed {limit:,} bytes; it is not the expected archive")
        chunks.append(chunk)
    return b"".join(chunks)


def export_onnx(generator: Any, path: Path) -> None:
    """Export to ONNX (batch symbolic). Instance norm is exported as its own FP32 op; for
    TensorRT FP16 engines keep it in FP32 (``trt_layer_norm_fp32_fallback``) since half
    precision variance overflows on large activations."""
    import torch

    x = torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE)
    c = torch.zeros(1, len(STARGAN_ATTRIBUTES))
    batch = {0: "batch"}
    torch.onnx.export(
        generator,
        (x, c),
        str(path),
        input_names=["image", "condition"],
        output_names=["output"],
        dynamic_axes={"image": batch, "condition": batch, "output": batch},
        opset_version=17,
        dynamo=False,
    )


def onnx_path(checkpoint: Path, cache: Path) -> Path:
    """Where ``prepare`` puts the ONNX export of ``checkpoint`` (keyed by its sha256)."""
    from .zoo import sha256_file

    return cache / "stargan" / f"{sha256_file(checkpoint)[:16]}.onnx"


def prepare(checkpoint: str, cache: Path) -> Path:
    """The ONNX export of a checkpoint (``official``: downloaded first), made once: what
    ``run_stream.py models --stargan`` runs, so a stream only loads it."""
    path = official_checkpoint(cache) if checkpoint == "official" else Path(checkpoint)
    if not path.exists():
        raise ModelError(f"StarGAN checkpoint {path}: not found")
    onnx = onnx_path(path, cache)
    if not onnx.exists():
        onnx.parent.mkdir(parents=True, exist_ok=True)
        partial = onnx.with_suffix(".part.onnx")
        export_onnx(load_generator(path), partial)
        partial.replace(onnx)
    return onnx
