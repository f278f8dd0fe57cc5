"""Epoch milliseconds as UTC text: the one formatter the CLI and the jobs share.

A ground-floor module: standard library only.
"""

from __future__ import annotations

from datetime import UTC, datetime

__all__ = ["ISO_SECONDS", "MINUTES", "format_ms"]

ISO_SECONDS = "%Y-%m-%dT%H:%M:%SZ"  # 2024-05-01T13:45:00Z: messages
MINUTES = "%Y-%m-%d %H:%M"  # 2024-05-01 13:45: table cells


def format_ms(ms: float, fmt: str = ISO_SECONDS) -> str:
    """`ms` (milliseconds since the epoch) as UTC time in `fmt` (a `strftime` format)."""
    return datetime.fromtimestamp(ms / 1000, UTC).strftime(fmt)
