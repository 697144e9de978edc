"""The global attribute distribution S from any attribute table in CelebA format.

    python -m calibration.global_distribution DATA/list_attr_celeba.txt -o freq.csv

Writes the counts CSV that ``[privacy] distribution`` reads (the default is
CelebA's own, shipped in stream/data/celeba_attr_freq.csv).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from calibration.command import command
from stream.algorithms.privacy import ATTRIBUTES, GlobalDistribution


def from_attribute_file(path: Path) -> tuple[GlobalDistribution, int]:
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    names = lines[1].split()
    if tuple(names) != ATTRIBUTES:
        raise ValueError(f"{path}: expected the 40 CelebA attribute names in order")
    table = np.array([[v == "1" for v in line.split()[1:]] for line in lines[2:]], bool)
    return GlobalDistribution.from_table(table, str(path)), len(table)


@command
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m calibration.global_distribution", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("table", type=Path)
    p.add_argument("-o", "--out", type=Path, required=True)
    args = p.parse_args(argv)
    distribution, count = from_attribute_file(args.table)
    distribution.write_csv(args.out, count)
    print(f"wrote {args.out} from {count} faces", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
