"""streamer.loop: the event-loop factory shared by the service and the load test."""

from __future__ import annotations

import asyncio
import importlib.util

from streamer.loop import new_event_loop, new_event_loop_factory


def test_asyncio_loop_unless_uvloop_is_asked_for():
    assert new_event_loop_factory(False) is None
    loop = new_event_loop(use_uvloop=False)
    try:
        assert type(loop).__module__.startswith("asyncio")
        assert loop.run_until_complete(asyncio.sleep(0, result=7)) == 7
    finally:
        loop.close()


def test_uvloop_when_installed():
    factory = new_event_loop_factory(True)
    if importlib.util.find_spec("uvloop") is None:
        assert factory is None
        return
    assert factory is not None
    loop = factory()
    try:
        assert type(loop).__module__.startswith("uvloop")
        with asyncio.Runner(loop_factory=factory) as runner:
            assert runner.run(asyncio.sleep(0, result=1)) == 1
    finally:
        loop.close()
