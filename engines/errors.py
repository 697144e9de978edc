"""The errors inference raises: the root of the project's error hierarchy.

Engines know nothing of the pipeline, so the hierarchy starts here;
``stream.errors`` adds the pipeline's own errors beneath the same root and
re-exports these, so callers import every error from one place.
"""

from __future__ import annotations


class AnonError(Exception):
    """Base class of every error the project raises on purpose."""

    exit_code = 1


class ModelError(AnonError, RuntimeError):
    """A model cannot be fetched, verified, converted or loaded."""

    exit_code = 6


class BackendUnavailableError(ModelError):
    """The requested inference backend is not available on this machine."""
