"""The asyncio event loop tickcast runs on: uvloop when asked for and installed.

A ground-floor module: it imports only the standard library (and uvloop, lazily), so the
serving shell and the tools can both use it without importing each other.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

__all__ = ["new_event_loop", "new_event_loop_factory"]

log = logging.getLogger(__name__)


def new_event_loop_factory(use_uvloop: bool) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """`uvloop.new_event_loop` when `use_uvloop` and uvloop is installed (lower fan-out
    latency), else None: asyncio's own loop, which is what `asyncio.Runner(loop_factory=None)`
    and `asyncio.run` create."""
    if not use_uvloop:
        return None
    try:
        import uvloop
    except ImportError:
        log.info("uvloop is not installed; using asyncio's event loop")
        return None
    return uvloop.new_event_loop


def new_event_loop(use_uvloop: bool = True) -> asyncio.AbstractEventLoop:
    """A new event loop from `new_event_loop_factory(use_uvloop)`, or asyncio's."""
    factory = new_event_loop_factory(use_uvloop)
    return factory() if factory is not None else asyncio.new_event_loop()
