"""One error hierarchy for the project.

Library code raises these; only the command line turns them into messages and
exit codes. Each class also inherits the builtin it refines, so callers that
catch ``ValueError`` or ``OSError`` keep working.
"""

from __future__ import annotations

from engines.errors import AnonError, BackendUnavailableError, ModelError

__all__ = [
    "AnonError",
    "BackendUnavailableError",
    "ConfigError",
    "InputDamagedError",
    "InternalError",
    "Interrupted",
    "ModelError",
    "Signalled",
    "SinkError",
    "SourceError",
    "StageError",
    "signal_number",
]


class ConfigError(AnonError, ValueError):
    """An option or config file value is invalid; the message names the field."""

    exit_code = 2


class SourceError(AnonError, OSError):
    """An input cannot be opened or read (missing file, corrupt container, dead URL)."""

    exit_code = 3


class InputDamagedError(SourceError):
    """The input broke off or held undecodable data after some frames were written."""

    exit_code = 4


class SinkError(AnonError, OSError):
    """An output cannot be opened or written."""

    exit_code = 5


class StageError(AnonError, RuntimeError):
    """A pipeline stage failed on a frame and the fail policy is ``stop``."""

    exit_code = 7


class Interrupted(AnonError):
    """The run was stopped by a signal (Ctrl-C, SIGTERM, SIGHUP); the output was finalized.

    Its exit code is the shell's 128 + signal number: 130 for SIGINT, 143 for
    SIGTERM, 129 for SIGHUP.
    """

    def __init__(self, message: str, signum: int = 2) -> None:
        super().__init__(message)
        self.signum = signum

    @property
    def exit_code(self) -> int:  # type: ignore[override]
        return 128 + self.signum


class Signalled(KeyboardInterrupt):
    """Raised in the main thread by the command line's SIGTERM/SIGHUP handler, so a
    stop asked by ``docker stop``, systemd or a closed terminal finalizes the
    output exactly as Ctrl-C does."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def signal_number(interrupt: KeyboardInterrupt) -> int:
    """The signal behind a KeyboardInterrupt: its own for ``Signalled``, else SIGINT."""
    return interrupt.signum if isinstance(interrupt, Signalled) else 2


class InternalError(AnonError, RuntimeError):
    """A bug: an exception the project did not raise on purpose, caught at a boundary
    (a stream's thread) so that it still ends the run with a non-zero code."""

    exit_code = 70
