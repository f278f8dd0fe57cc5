"""Run a Kafka session again after each failure, with exponential backoff (tenacity).

The serving processor and the model follower both hold one long session with Kafka; when
it fails (broker down, rebalance error), they log, wait, and start a new session, which
restores from Kafka. A session that ends without an error (its `stop` event is set) ends
the loop, and a new failure after a healthy session starts again from the shortest wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from aiokafka.errors import KafkaError
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential

__all__ = ["reconnecting"]


async def reconnecting(
    session: Callable[[], Awaitable[None]],
    stop: asyncio.Event,
    *,
    what: str,
    log: logging.Logger,
    first_wait_s: float = 0.5,
    max_wait_s: float = 5.0,
) -> None:
    """Await `session()` until `stop` is set, again after every exception (waiting
    `first_wait_s`, doubling up to `max_wait_s`; the wait ends early when `stop` is set).
    Kafka and OS errors are logged in one line, anything else with its traceback."""

    async def sleep(seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), seconds)

    def before_sleep(state: RetryCallState) -> None:
        e = state.outcome.exception() if state.outcome is not None else None
        log.warning(
            "%s failed (%s: %s); reconnecting", what, type(e).__name__, e,
            exc_info=e if not isinstance(e, (KafkaError, OSError)) else None,
        )  # fmt: skip

    while not stop.is_set():
        retrying = AsyncRetrying(
            sleep=sleep,
            wait=wait_exponential(multiplier=first_wait_s, min=first_wait_s, max=max_wait_s),
            retry=retry_if_exception_type(Exception),
            before_sleep=before_sleep,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                if stop.is_set():
                    return
                await session()
