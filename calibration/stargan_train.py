"""Train StarGAN (generator + PatchGAN discriminator) with WGAN-GP on a CelebA-format dataset.

Losses as in the paper: adversarial (Wasserstein with gradient penalty,
lambda_gp 10), attribute classification (lambda_cls 1), reconstruction
(lambda_rec 10); the discriminator takes n_critic = 5 steps per generator
step; Adam 1e-4, betas (0.5, 0.999). Checkpoints hold both networks and
both optimizers, so a run resumes where it stopped.

    python -m calibration.stargan_train DATA -o CKPT_DIR [--steps 200000] [--resume]
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from calibration.command import command
from engines.stargan import IMAGE_SIZE, STARGAN_ATTRIBUTES, build_discriminator, build_generator


@dataclass(frozen=True)
class TrainConfig:
    lambda_cls: float = 1.0
    lambda_rec: float = 10.0
    lambda_gp: float = 10.0
    n_critic: int = 5
    lr: float = 1e-4
    beta1: float = 0.5
    beta2: float = 0.999
    batch: int = 16
    image_size: int = IMAGE_SIZE
    conv_dim: int = 64


class Trainer:
    """One StarGAN training run; ``step(images, labels)`` with images in [-1, 1] NCHW and 0/1 labels."""

    def __init__(self, config: TrainConfig, c_dim: int = len(STARGAN_ATTRIBUTES), seed: int = 0) -> None:
        import torch

        torch.manual_seed(seed)
        self.torch = torch
        self.config = config
        self.generator = build_generator(conv_dim=config.conv_dim, c_dim=c_dim)
        self.discriminator = build_discriminator(config.image_size, config.conv_dim, c_dim)
        betas = (config.beta1, config.beta2)
        self.g_opt = torch.optim.Adam(self.generator.parameters(), config.lr, betas=betas)
        self.d_opt = torch.optim.Adam(self.discriminator.parameters(), config.lr, betas=betas)
        self.steps = 0
        self.generator_rng = torch.Generator().manual_seed(seed)

    def _gradient_penalty(self, real: Any, fake: Any) -> Any:
        torch = self.torch
        alpha = torch.rand(real.size(0), 1, 1, 1, generator=self.generator_rng)
        mixed = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
        out, _ = self.discriminator(mixed)
        grad = torch.autograd.grad(out, mixed, torch.ones_like(out), create_graph=True, retain_graph=True)[0]
        return ((grad.view(grad.size(0), -1).norm(2, dim=1) - 1) ** 2).mean()

    def step(self, images: Any, labels: Any) -> dict[str, float]:
        torch, F, cfg = self.torch, self.torch.nn.functional, self.config
        target = labels[torch.randperm(labels.size(0), generator=self.generator_rng)]
        # Discriminator: real vs fake, real attributes, gradient penalty.
        src_real, cls_real = self.discriminator(images)
        d_cls = F.binary_cross_entropy_with_logits(cls_real, labels, reduction="sum") / images.size(0)
        fake = self.generator(images, target).detach()
        src_fake, _ = self.discriminator(fake)
        gp = self._gradient_penalty(images, fake)
        d_loss = -src_real.mean() + src_fake.mean() + cfg.lambda_cls * d_cls + cfg.lambda_gp * gp
        self.d_opt.zero_grad()
        d_loss.backward()
        self.d_opt.step()
        losses = {"D/real": -float(src_real.mean()), "D/fake": float(src_fake.mean()), "D/cls": float(d_cls),
                  "D/gp": float(gp)}  # fmt: skip
        self.steps += 1
        if self.steps % cfg.n_critic == 0:  # generator: fool D, show the target, come back to the original
            fake = self.generator(images, target)
            src, cls = self.discriminator(fake)
            g_cls = F.binary_cross_entropy_with_logits(cls, target, reduction="sum") / images.size(0)
            g_rec = (images - self.generator(fake, labels)).abs().mean()
            g_loss = -src.mean() + cfg.lambda_cls * g_cls + cfg.lambda_rec * g_rec
            self.g_opt.zero_grad()
            g_loss.backward()
            self.g_opt.step()
            losses.update({"G/fake": -float(src.mean()), "G/cls": float(g_cls), "G/rec": float(g_rec)})
        return losses

    def save(self, path: Path) -> None:
        state = {
            "generator": self.generator.state_dict(),
            "discriminator": self.discriminator.state_dict(),
            "g_opt": self.g_opt.state_dict(),
            "d_opt": self.d_opt.state_dict(),
            "steps": self.steps,
            "config": self.config.__dict__,
        }
        self.torch.save(state, path)

    def load(self, path: Path) -> None:
        state = self.torch.load(path, map_location="cpu", weights_only=True)
        self.generator.load_state_dict(state["generator"])
        self.discriminator.load_state_dict(state["discriminator"])
        self.g_opt.load_state_dict(state["g_opt"])
        self.d_opt.load_state_dict(state["d_opt"])
        self.steps = int(state["steps"])


def load_batch(paths: list[Path], labels: np.ndarray, size: int) -> tuple[Any, Any]:
    """CelebA framing: the centre 178x178 square of each aligned image, resized, in [-1, 1]."""
    import cv2
    import torch

    images = []
    for path in paths:
        bgr = cv2.imread(str(path))
        if bgr is None:
            raise OSError(f"cannot read {path}")
        h, w = bgr.shape[:2]
        side = min(h, w, 178)
        y, x = (h - side) // 2, (w - side) // 2
        rgb = cv2.cvtColor(cv2.resize(bgr[y : y + side, x : x + side], (size, size)), cv2.COLOR_BGR2RGB)
        images.append(rgb.transpose(2, 0, 1))
    batch = torch.from_numpy(np.array(images, np.float32) / 127.5 - 1)
    return batch, torch.from_numpy(labels.astype(np.float32))


@command
def main(argv: list[str] | None = None) -> int:
    from calibration.attribute_forest import read_dataset
    from stream.algorithms.privacy import INDEX

    p = argparse.ArgumentParser(prog="python -m calibration.stargan_train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("data", type=Path)
    p.add_argument("-o", "--out", type=Path, required=True)
    p.add_argument("--steps", type=int, default=200000)
    p.add_argument("--save-every", type=int, default=10000)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    data = read_dataset(args.data)
    columns = [INDEX[a] for a in STARGAN_ATTRIBUTES]
    train = np.flatnonzero(data.partition == 0)
    cfg = TrainConfig()
    trainer = Trainer(cfg, seed=args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    latest = args.out / "latest.ckpt"
    if args.resume and latest.exists():
        trainer.load(latest)
    rng = np.random.default_rng(args.seed + trainer.steps)
    while trainer.steps < args.steps:
        rows = rng.choice(train, size=min(cfg.batch, len(train)), replace=False)
        images, labels = load_batch(
            [data.images[i] for i in rows], data.labels[rows][:, columns], cfg.image_size
        )
        losses = trainer.step(images, labels)
        if trainer.steps % 100 == 0:
            print(trainer.steps, " ".join(f"{k} {v:.3f}" for k, v in losses.items()), flush=True)
        if trainer.steps % args.save_every == 0 or trainer.steps == args.steps:
            trainer.save(latest)
            trainer.save(args.out / f"{trainer.steps}-G.ckpt")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
