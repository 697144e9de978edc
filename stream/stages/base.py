"""What every stage is, and what bounds the state they keep."""

from __future__ import annotations

from typing import Protocol

from stream.frames import FramePacket


class Stage(Protocol):
    """``parallel`` stages keep no state between frames, so the runner may run
    them on several frames at once; the others see frames in input order."""

    name: str
    parallel: bool

    def process(self, packet: FramePacket) -> FramePacket: ...

    def reset(self) -> None: ...


# Ended tracks whose per-track entries (attributes, release, surrogate, likeness) the report
# still lists; older ones are counted only, so a stream running for days holds a bounded
# amount (about 2.7 KB a track).
KEEP_ENDED = 10_000
