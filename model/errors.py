"""Errors the model package raises, importable without JAX (the CLI catches them)."""

from __future__ import annotations

__all__ = ["CheckpointError", "DataError"]


class CheckpointError(RuntimeError):
    """A checkpoint that cannot serve with this code. `kind` says which way, for metrics:
    "missing" (no such model directory or files), "corrupt" (unreadable, digest or values
    wrong) or "mismatch" (other format, config, features or shapes than expected)."""

    def __init__(self, message: str, kind: str = "corrupt") -> None:
        super().__init__(message)
        self.kind = kind


class DataError(ValueError):
    """A data file that cannot be used, with the reason (and the file and line)."""
