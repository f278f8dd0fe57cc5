"""One service lifecycle for every long-running command (`serve`, `run`, `retrain --every`),
in the shape of uvicorn's `Server`: `start()`, `main_loop(stop)`, `shutdown()`.

`run_service` owns the event loop and the signals, handled once here: the first SIGINT or
SIGTERM sets `stop` (a graceful stop: the service finishes what it is doing, checkpoints,
and `shutdown` runs); a second one cancels the main task, so `shutdown` still runs (a broker
the service started is stopped) without waiting for the graceful part, and the exit code is
130.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Protocol

from streamer.loop import new_event_loop_factory

__all__ = ["Service", "install_signals", "run_service", "serve_until_stopped"]

log = logging.getLogger(__name__)


class Service(Protocol):
    """A long-running part of tickcast."""

    async def start(self) -> None:
        """Acquire resources (ports, clients, compiled kernels); raise if that fails."""

    async def main_loop(self, stop: asyncio.Event) -> None:
        """Work until `stop` is set."""

    async def shutdown(self) -> None:
        """Release what `start` acquired (called even if `start` or `main_loop` failed)."""


def install_signals(stop: asyncio.Event) -> None:
    """SIGTERM/SIGINT set `stop`; a second one cancels the task that called this."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()

    def handler() -> None:
        if stop.is_set() and task is not None:
            log.warning("second signal: stopping now")
            task.cancel()
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, handler)


async def serve_until_stopped(
    service: Service, stop: asyncio.Event | None = None, *, signals: bool = True
) -> None:
    """`start`, `main_loop` until `stop` (or a signal, when `signals`), then `shutdown`."""
    stop = stop or asyncio.Event()
    if signals:
        install_signals(stop)  # from the start: a signal while starting still cleans up
    try:
        await service.start()
        if not stop.is_set():
            await service.main_loop(stop)
    finally:
        await service.shutdown()


def run_service(service: Service, *, use_uvloop: bool = True, signals: bool = True) -> int:
    """Run `service` on a new event loop until a signal (or until its main loop returns);
    returns 0, or 130 when a second signal cut it short. `signals=False` leaves the process's
    signal handlers alone (a service run from another thread, or a test)."""
    with asyncio.Runner(loop_factory=new_event_loop_factory(use_uvloop)) as runner:
        try:
            runner.run(serve_until_stopped(service, signals=signals))
        except asyncio.CancelledError:  # a second Ctrl-C: stopped without the graceful part
            return 130
    return 0
