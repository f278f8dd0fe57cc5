"""The service lifecycle (streamer/lifecycle.py): start, main loop, shutdown, signals."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from streamer.lifecycle import serve_until_stopped


class Recorder:
    def __init__(self, fail_start: bool = False) -> None:
        self.calls: list[str] = []
        self.fail_start = fail_start

    async def start(self) -> None:
        self.calls.append("start")
        if self.fail_start:
            raise RuntimeError("port taken")

    async def main_loop(self, stop: asyncio.Event) -> None:
        self.calls.append("main_loop")
        await stop.wait()
        self.calls.append("stopped")

    async def shutdown(self) -> None:
        self.calls.append("shutdown")


def test_start_main_loop_shutdown_in_order() -> None:
    svc = Recorder()

    async def go() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(0.05, stop.set)
        await serve_until_stopped(svc, stop, signals=False)

    asyncio.run(go())
    assert svc.calls == ["start", "main_loop", "stopped", "shutdown"]


def test_shutdown_runs_when_start_fails() -> None:
    svc = Recorder(fail_start=True)
    with pytest.raises(RuntimeError, match="port taken"):
        asyncio.run(serve_until_stopped(svc, asyncio.Event(), signals=False))
    assert svc.calls == ["start", "shutdown"]


def test_first_signal_stops_gracefully_second_cancels() -> None:
    svc = Recorder()

    async def go() -> None:
        loop = asyncio.get_running_loop()
        loop.call_later(0.05, os.kill, os.getpid(), signal.SIGTERM)
        await serve_until_stopped(svc)

    asyncio.run(go())
    assert svc.calls == ["start", "main_loop", "stopped", "shutdown"]

    class Stubborn(Recorder):
        async def main_loop(self, stop: asyncio.Event) -> None:
            self.calls.append("main_loop")
            await asyncio.sleep(30)  # ignores stop: only a second signal ends it

    svc2 = Stubborn()

    async def go2() -> None:
        loop = asyncio.get_running_loop()
        loop.call_later(0.05, os.kill, os.getpid(), signal.SIGINT)
        loop.call_later(0.10, os.kill, os.getpid(), signal.SIGINT)
        await serve_until_stopped(svc2)

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(go2())
    assert svc2.calls == ["start", "main_loop", "shutdown"]
