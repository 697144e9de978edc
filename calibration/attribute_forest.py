"""The paper's trainable attribute estimator: random forests over deep face features.

Trains one scikit-learn random forest per CelebA attribute on the faceres
identity descriptor of each aligned face, from any dataset in CelebA format:

    DATA/list_attr_celeba.txt      count, then the 40 names, then "image.jpg 1 -1 ..."
    DATA/list_eval_partition.txt   "image.jpg 0|1|2" (train / validation / test)
    DATA/img_align_celeba/*.jpg    aligned face images (or the folder given)

Models are saved with skops, never pickle, and loaded only when every type
in the file is one this module expects.

    python -m calibration.attribute_forest DATA -o forests.skops [--images DIR] [--trees 100]
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from calibration.command import command
from stream.algorithms.privacy import ATTRIBUTES


@dataclass(frozen=True)
class CelebAFormat:
    """Images with 40 binary labels each and their split (0 train, 1 validation, 2 test)."""

    images: list[Path]
    labels: NDArray[np.bool_]
    partition: NDArray[np.int64]


def read_dataset(root: Path, images: Path | None = None) -> CelebAFormat:
    attr_file, part_file = root / "list_attr_celeba.txt", root / "list_eval_partition.txt"
    for path in (attr_file, part_file):
        if not path.exists():
            raise FileNotFoundError(f"{path}: missing (a CelebA-format dataset needs it)")
    lines = attr_file.read_text().split("\n")
    names = lines[1].split()
    if tuple(names) != ATTRIBUTES:
        raise ValueError(f"{attr_file}: expected the 40 CelebA attribute names in order, got {names[:3]}...")
    rows = [line.split() for line in lines[2:] if line.strip()]
    partition = dict(line.split() for line in part_file.read_text().splitlines() if line.strip())
    folder = images or root / "img_align_celeba"
    files = [folder / r[0] for r in rows]
    labels = np.array([[v == "1" for v in r[1:]] for r in rows], bool)
    parts = np.array([int(partition.get(r[0], 0)) for r in rows], np.int64)
    return CelebAFormat(files, labels, parts)


def describe(images: list[Path]) -> NDArray[np.float32]:
    """The faceres descriptor of each aligned face image (the centre square, as CelebA aligns)."""
    import cv2

    from engines import zoo
    from engines.base import create_backend
    from engines.crops import face_crop
    from engines.facemodels import FaceRes

    faceres = FaceRes(create_backend("cpu", zoo.ensure("faceres")))
    out = []
    for path in images:
        bgr = cv2.imread(str(path))
        if bgr is None:
            raise OSError(f"cannot read {path}")
        rgb = np.asarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), np.uint8)
        h, w = rgb.shape[:2]
        side = min(h, w)
        crop = face_crop(rgb, (w / 2, h / 2), side, FaceRes.size)
        out.append(faceres.predict([crop]).descriptor[0])
    return np.array(out, np.float32)


def train(
    data: CelebAFormat, features: NDArray[np.float32], trees: int = 100, seed: int = 0
) -> tuple[dict[str, Any], dict[str, float]]:
    """One forest per attribute that has both values in the training split; test accuracy per attribute."""
    from sklearn.ensemble import RandomForestClassifier

    train_rows = data.partition == 0
    test_rows = data.partition == 2
    forests: dict[str, Any] = {}
    accuracy: dict[str, float] = {}
    for a, name in enumerate(ATTRIBUTES):
        y = data.labels[train_rows, a]
        if y.all() or not y.any():
            continue  # one value only: the attribute cannot be learnt from this data
        forest = RandomForestClassifier(n_estimators=trees, random_state=seed, n_jobs=1, min_samples_leaf=2)
        forest.fit(features[train_rows], y)
        forests[name] = forest
        if test_rows.any():
            accuracy[name] = float((forest.predict(features[test_rows]) == data.labels[test_rows, a]).mean())
    return forests, accuracy


def save_forests(path: Path, forests: dict[str, Any], meta: dict[str, Any]) -> None:
    import skops.io as sio

    sio.dump({"attributes": list(forests), "forests": list(forests.values()), "meta": json.dumps(meta)}, path)


@command
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m calibration.attribute_forest", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("data", type=Path)
    p.add_argument("-o", "--out", type=Path, required=True)
    p.add_argument("--images", type=Path)
    p.add_argument("--trees", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    data = read_dataset(args.data, args.images)
    features = describe(data.images)
    forests, accuracy = train(data, features, args.trees, args.seed)
    meta = {
        "data": str(args.data),
        "images": len(data.images),
        "trees": args.trees,
        "test_accuracy": accuracy,
    }
    save_forests(args.out, forests, meta)
    for name, value in accuracy.items():
        print(f"{name:22s} test accuracy {value:.3f}")
    print(f"wrote {args.out} ({len(forests)} attributes)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
