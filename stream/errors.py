"""One error hierarchy for the project.

Library code raises these; only the command line turns them into messages and
exit codes. Each class also inherits the builtin it refines, so callers that
catch ``ValueError`` or ``OSError`` keep working.
"""

from __future__ import annotations


class AnonError(Exception):
    """Base class of every error the project raises on purpose."""

    exit_code = 1


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


class ModelError(AnonError, RuntimeError):
    """A model cannot be fetched, verified, converted or loaded."""

    exit_code = 6


class BackendUnavailableError(ModelError):
    """The requested inference backend is not available on this machine."""


class StageError(AnonError, RuntimeError):
    """A pipeline stage failed on a frame and the fail policy is ``stop``."""

    exit_code = 7


class Interrupted(AnonError):
    """The run was interrupted (Ctrl-C); the output was finalized."""

    exit_code = 130
