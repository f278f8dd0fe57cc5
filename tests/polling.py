"""Waiting in tests: poll for a condition with a deadline, never sleep for a guessed time.

- `wait_until` (threads, subprocesses) and `until` (inside an event loop) poll a predicate
  and return its first truthy value; past the deadline they raise `AssertionError` naming
  what they waited for, so a slow machine fails with a reason instead of a flaky assert.
- `negative_window` is the one sanctioned sleep: a bounded window in which something that
  must *not* happen (a duplicate, an excess delivery) would show up. The caller asserts
  afterwards; the sleep itself waits for nothing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    """Call `predicate` every `interval` s until it returns something truthy, and return it.

    Raises AssertionError("... waiting for {what}") after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


async def until(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    """`wait_until` for coroutines: the event loop runs between polls."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(interval)


async def negative_window(seconds: float, what: str) -> None:
    """Give `what` (something that must not happen) `seconds` to show up before the caller
    asserts that it did not. A bounded negative check, not a wait for an event."""
    await asyncio.sleep(seconds)
