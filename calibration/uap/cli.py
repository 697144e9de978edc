"""``python -m calibration.uap fit|report``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import calibration.uap
from calibration.command import command
from calibration.uap.data import fit_artifact, load_faces
from calibration.uap.evaluation import report
from calibration.uap.settings import MEDIA_DEFAULT, METHODS, TARGETS, Settings
from stream.algorithms.perturbation import (
    NORMS,
)


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--media", type=Path, default=MEDIA_DEFAULT, help="the shared media folder")
    p.add_argument("--target", choices=TARGETS, default="identity")
    p.add_argument("--norm", choices=NORMS, default="inf")
    p.add_argument("--xi", type=float, help="radius in pixel levels (default 10 for inf, 2000 for 2)")
    p.add_argument("--delta", type=float, default=Settings.delta, help="stop at fooling rate 1 - delta")
    p.add_argument("--method", choices=METHODS, default=Settings.method, help="DeepFool passes or SGD epochs")
    p.add_argument("--max-passes", type=int, default=Settings.max_passes, help="passes (sgd: epochs)")
    p.add_argument("--candidates", type=int, default=Settings.candidates, help="DeepFool's candidate classes")
    p.add_argument("--overshoot", type=float, default=Settings.overshoot)
    p.add_argument("--max-iter", type=int, default=Settings.max_iter, help="DeepFool iterations per face")
    p.add_argument("--batch", type=int, default=Settings.batch, help="sgd: faces per step")
    p.add_argument("--step", type=float, default=Settings.step, help="sgd: step length, a fraction of xi")
    p.add_argument(
        "--clip", type=float, default=Settings.clip, help="sgd: margin (logits) past which a face stops"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--threads", type=int, default=0, help="torch CPU threads (0: all cores; 1 on a busy machine)"
    )


@command
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m calibration.uap", description=calibration.uap.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    sub = p.add_subparsers(dest="command", required=True)
    fit = sub.add_parser("fit", help="fit on every labelled identity and write the perturbation file")
    _arguments(fit)
    fit.add_argument("-o", "--out", type=Path, required=True)
    rep = sub.add_parser("report", help="fit on half the identities, measure on the other half")
    _arguments(rep)
    rep.add_argument("-o", "--out", type=Path, help="also write the half's perturbation file")
    rep.add_argument("--picture", type=Path, help="write clean | change | perturbed faces (PNG)")
    args = p.parse_args(argv)
    xi = args.xi if args.xi is not None else (10.0 if args.norm == "inf" else 2000.0)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    settings = Settings(args.norm, xi, args.delta, args.max_passes, args.candidates, args.overshoot,
                        args.max_iter, args.method, args.batch, args.step, args.clip)  # fmt: skip
    if args.command == "report":
        report(args, settings)
        return 0
    faces = load_faces(args.media)
    perturbation, result = fit_artifact(faces, args.media, args.target, settings, args.seed)
    perturbation.save(args.out)
    print(f"wrote {args.out}: fooling rate {result.fooling_rate:.3f} on {len(faces)} faces after "
          f"{result.passes} passes ({result.seconds:.0f} s)", file=sys.stderr)  # fmt: skip
    return 0
