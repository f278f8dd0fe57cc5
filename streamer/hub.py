"""In-process fan-out of forecasts: the engine publishes each micro-batch here once; the
websocket feed (and tests) subscribe. Pure and synchronous: a listener is a plain callable
that must not block (the websocket server's listeners only enqueue).

The hub keeps the latest forecast per symbol, so a new subscriber starts from a snapshot.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from streamer.engine import Forecasts

log = logging.getLogger(__name__)

Listener = Callable[[list[dict[str, Any]]], None]


def to_dicts(f: Forecasts) -> list[dict[str, Any]]:
    """One JSON-ready dict per forecast (the `forecasts` topic's value schema)."""
    out = []
    for i, sym in enumerate(f.symbols):
        out.append(
            {
                "symbol": sym,
                "ts": int(f.ts[i]),
                "source": {"partition": int(f.partition[i]), "offset": int(f.offset[i])},
                "seq": int(f.seq[i]),
                "price": float(f.price[i]),
                "forecast": float(f.forecast[i]),
                "lower": float(f.lower[i]),
                "upper": float(f.upper[i]),
                "warming": bool(f.warming[i]),
                "model": f.version,
            }
        )
    return out


class Hub:
    """Latest forecast per symbol plus listeners called with each batch's forecasts."""

    def __init__(self) -> None:
        self.latest: dict[str, dict[str, Any]] = {}
        self._listeners: list[Listener] = []
        self.events: list[dict[str, Any]] = []  # announcements (evictions), newest last

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Add a listener; returns a function that removes it."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def publish(self, batch: list[dict[str, Any]]) -> None:
        for d in batch:
            self.latest[d["symbol"]] = d
        for listener in list(self._listeners):
            try:
                listener(batch)
            except Exception:  # one broken listener must not stop the stream
                log.exception("hub listener failed; removing it")
                self._listeners.remove(listener)

    def announce(self, event: dict[str, Any]) -> None:
        """Record an event (e.g. `{"type": "evicted", "symbols": [...]}`), keep the last 100."""
        self.events.append(event)
        del self.events[:-100]
        for sym in event.get("symbols", []) if event.get("type") == "evicted" else []:
            self.latest.pop(sym, None)
