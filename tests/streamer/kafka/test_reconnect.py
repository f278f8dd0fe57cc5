"""Reconnecting after session failures (streamer/kafka/reconnect.py), without Kafka."""

from __future__ import annotations

import asyncio
import itertools
import logging

import pytest
from aiokafka.errors import KafkaConnectionError

from streamer.kafka.reconnect import reconnecting

log = logging.getLogger("test")


def test_failures_back_off_and_a_clean_session_ends_it(caplog: pytest.LogCaptureFixture) -> None:
    starts: list[float] = []

    async def go() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()

        async def session() -> None:
            starts.append(loop.time())
            if len(starts) < 4:
                raise KafkaConnectionError("broker down")
            stop.set()  # the fourth session ends cleanly (a graceful stop)

        await reconnecting(session, stop, what="session", log=log, first_wait_s=0.02,
                           max_wait_s=0.05)  # fmt: skip

    with caplog.at_level(logging.WARNING, "test"):
        asyncio.run(go())
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert len(starts) == 4
    assert 0.015 < gaps[0] < gaps[1] + 0.01 and gaps[2] < 0.2  # 0.02, 0.04, capped at 0.05
    assert caplog.text.count("session failed (KafkaConnectionError: ") == 3
    assert "broker down); reconnecting" in caplog.text


def test_stop_ends_the_wait_at_once() -> None:
    async def go() -> float:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()

        async def session() -> None:
            raise OSError("refused")

        loop.call_later(0.05, stop.set)
        t0 = loop.time()
        await reconnecting(session, stop, what="s", log=log, first_wait_s=30.0, max_wait_s=30.0)
        return loop.time() - t0

    assert asyncio.run(go()) < 5.0
