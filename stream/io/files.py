"""Array files the stream loads but did not write (galleries, perturbations): bounded.

An ``.npz`` names each array's shape in its header, and numpy allocates that
much before reading a byte of data: a crafted or damaged file could ask for
any amount of memory. ``check_npz`` reads only the headers and refuses a file
whose arrays would exceed ``max_bytes`` together, before anything is loaded.
"""

from __future__ import annotations

import math
import zipfile
from pathlib import Path

import numpy as np

DEFAULT_MAX_BYTES = 1 << 30  # 1 GiB: the largest gallery made here is about 60 MB


def check_npz(path: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
    """Raise ValueError if ``path`` is not an .npz of plain arrays within ``max_bytes``."""
    total = 0
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                with archive.open(info) as member:
                    version = np.lib.format.read_magic(member)
                    read_header = (
                        np.lib.format.read_array_header_1_0
                        if version == (1, 0)
                        else np.lib.format.read_array_header_2_0
                    )
                    shape, _, dtype = read_header(member)
                if dtype.hasobject:
                    raise ValueError(f"array {info.filename} holds Python objects")
                total += math.prod(shape) * dtype.itemsize
                if total > max_bytes:
                    raise ValueError(f"its arrays need over {max_bytes:,} bytes, more than allowed")
    except zipfile.BadZipFile as exc:
        raise ValueError(f"not an .npz archive ({exc})") from None
