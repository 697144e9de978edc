"""One way for every calibration job's command line to end: a project error becomes one line
on stderr and its documented exit code (``stream.errors``), Ctrl-C exits 130, a bug keeps its
traceback.

    @command
    def main(argv: list[str] | None = None) -> int: ...
"""

from __future__ import annotations

import functools
import sys
from typing import Protocol

from stream.errors import AnonError


class Main(Protocol):
    def __call__(self, argv: list[str] | None = None) -> int: ...


def command(main: Main) -> Main:
    """``main`` with project errors turned into a message and the error's exit code."""

    @functools.wraps(main)
    def run(argv: list[str] | None = None) -> int:
        try:
            return main(argv)
        except AnonError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return exc.exit_code
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130

    return run
