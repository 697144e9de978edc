"""How consistently the built-in estimators describe one identity across its photos.

For each identity of ``../shared/media`` with several photos (deepface's
clusters, face-api.js's people), each estimated attribute is decided per
photo (p > 0.5); the agreement of an attribute is the fraction of photos
that match their identity's majority decision, over all identities. No
gender or other label is taken from names: this measures self-consistency.

    python -m calibration.attribute_agreement [MEDIA]
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import numpy as np

from calibration.command import command
from engines.centerface import CenterFace
from engines.evaluation import LabelledPhoto, labelled_photos, photo_faces
from stream.algorithms.attributes import BuiltinEstimator, FaceInput
from stream.algorithms.privacy import ATTRIBUTES
from stream.errors import ConfigError


def agreement(
    photos: list[LabelledPhoto], detector: CenterFace, estimator: BuiltinEstimator
) -> dict[str, float]:
    by_identity: dict[str, list[np.ndarray]] = defaultdict(list)
    for photo, padded, face in photo_faces(detector, photos):
        estimate = estimator.estimate([FaceInput(padded, face.boxes[0], face.landmarks[0])])
        by_identity[photo.identity].append(estimate.probability[0])
    result = {}
    for a, name in enumerate(ATTRIBUTES):
        agree = total = 0
        for rows in by_identity.values():
            values = [r[a] for r in rows if not np.isnan(r[a])]
            if len(values) < 2:
                continue
            decided = np.array(values) > 0.5
            majority = decided.mean() >= 0.5
            agree += int((decided == majority).sum())
            total += len(decided)
        if total:
            result[name] = agree / total
    return result


@command
def main(argv: list[str] | None = None) -> int:
    from stream.config import build_config
    from stream.run.job import load_detector, load_estimator

    p = argparse.ArgumentParser(prog="python -m calibration.attribute_agreement", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument(
        "media", type=Path, nargs="?", default=Path(__file__).resolve().parents[2] / "shared" / "media"
    )
    args = p.parse_args(argv)
    config = build_config()
    estimator = load_estimator(config)
    if not isinstance(estimator, BuiltinEstimator):
        raise ConfigError("the agreement measures the built-in estimators; unset attributes.forest")
    photos = labelled_photos(args.media)
    figures = agreement(photos, load_detector(config), estimator)
    print(f"{len({ph.identity for ph in photos})} identities, {len(photos)} photos")
    for name, value in figures.items():
        print(f"{name:22s} {100 * value:5.1f}% of photos agree with their identity's majority")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
