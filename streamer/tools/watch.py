"""`tickcast watch SYM…`: print live forecasts from the websocket feed, one line each.

The reference client of the protocol (docs/feed.md): it checks `seq` continuity, answers a
gap with `resync`, and prints errors and the close reason. `--json` prints every message.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

import orjson
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidURI


def line(f: dict[str, Any]) -> str:
    """One forecast as a line: tick time, symbol, price, forecast [90% interval], model."""
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(f["ts"] / 1000))
    warm = " warming" if f.get("warming") else ""
    return (
        # Significant digits, not fixed decimals: 1.2e-08 and 1e+10 prices share a stream.
        f"{when}  {f['symbol']:<8} price {f['price']:>12.7g}  next {f['forecast']:>12.7g}"
        f"  [{f['lower']:.7g}, {f['upper']:.7g}]  {f['model']}{warm}"
    )


async def watch(
    url: str,
    symbols: list[str],
    *,
    token: str | None = None,
    count: int | None = None,
    as_json: bool = False,
    out: TextIO = sys.stdout,
    on_message: Callable[[dict[str, Any]], None] | None = None,
) -> int:
    """Subscribe to `symbols` (["*"]: all) and print until `count` forecasts were printed
    (None: forever); returns the number printed."""
    headers = {"Authorization": f"Bearer {token}"} if token else None
    printed = 0
    async with connect(url, additional_headers=headers, compression=None) as ws:
        want: list[str] | str = "*" if symbols == ["*"] else symbols
        await ws.send(orjson.dumps({"op": "subscribe", "id": 1, "symbols": want}).decode())
        last = 0
        while count is None or printed < count:
            msg = orjson.loads(await ws.recv())
            if on_message is not None:
                on_message(msg)
            if msg["seq"] != last + 1:  # a lost message: ask for fresh snapshots
                print(f"# gap: seq {last} -> {msg['seq']}; resync", file=sys.stderr)
                await ws.send(orjson.dumps({"op": "resync", "id": "gap"}).decode())
            last = msg["seq"]
            kind = msg["type"]
            if as_json:
                out.write(orjson.dumps(msg).decode() + "\n")
            if kind == "update":
                for f in msg["forecasts"]:
                    if count is not None and printed >= count:
                        break
                    if not as_json:
                        out.write(line(f) + "\n")
                    printed += 1
                if msg.get("conflated") and not as_json:
                    out.write(f"# {msg['conflated']} forecasts conflated (this client lagged)\n")
            elif kind == "snapshot" and msg["forecast"] is not None:
                if not as_json:
                    out.write(line(msg["forecast"]) + "  (snapshot)\n")
                printed += 1
            elif kind == "error":
                print(f"# error {msg['code']}: {msg['message']}", file=sys.stderr)
            out.flush()
    return printed


def ws_url(url: str) -> str:
    """The feed's websocket URL: an http(s) address, such as the dashboard's, becomes ws(s)
    on the same host and path (every path of the feed's port upgrades to the feed)."""
    for http, ws in (("http://", "ws://"), ("https://", "wss://")):
        if url.lower().startswith(http):
            return ws + url[len(http) :]
    return url


def main(url: str, symbols: list[str], token: str | None, count: int | None, as_json: bool) -> int:
    try:
        asyncio.run(watch(ws_url(url), symbols, token=token, count=count, as_json=as_json))
    except InvalidURI:
        print(f"error: {url!r} is not a websocket URL (ws://HOST:PORT/ws)", file=sys.stderr)
        return 1
    except ConnectionClosed as e:
        rcvd = e.rcvd
        why = f"{rcvd.code} {rcvd.reason}" if rcvd is not None else "no close frame"
        print(f"error: the feed closed the connection ({why})", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"error: cannot reach the feed at {url}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0
