"""Every kind of input of issue 12 as one JSON-lines stream, and exchange feeds per format.

Shared by the pure parity test (test_ticks_parity.py) and the broker tests
(test_formats.py). Prices follow the first ticks of the bundled AAPL series, scaled per
symbol, so a model sees realistic returns at every price level.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

import orjson

from model import data

N = 100  # ticks per symbol: more than the bundled models' 60-tick window
JAN_2025_MS = 1_735_689_600_000


def _base() -> list[float]:
    aapl = next(s for s in data.load("stocks") if s.symbol == "AAPL")
    return [float(p) / float(aapl.price[0]) for p in aapl.price[:N]]


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def every_kind() -> tuple[list[tuple[bytes, bytes]], dict[str, int]]:
    """`[(key, value)]` in stream order (symbols interleaved), and the rejections expected
    per reason. Kinds: epoch µs with decimal strings and every way of a missing volume;
    seconds, ISO-8601 and integral floats with duplicate times; ns with 1e-8 prices; a
    1e10 price; a constant series; rows without a price and an implausible time."""
    base = _base()
    rows: list[list[tuple[bytes, bytes]]] = [[] for _ in range(N)]
    bad: dict[str, int] = {"bad_price": 0, "bad_ts": 0}

    def put(i: int, sym: str, obj: dict[str, object]) -> None:
        rows[i].append((sym.encode(), orjson.dumps(obj)))

    for i, b in enumerate(base):
        ms = JAN_2025_MS + 60_000 * i
        # Microseconds, decimal strings, volumes missing as null, absent and "".
        us: dict[str, object] = {"symbol": "DOGEUSDT", "ts": ms * 1000, "price": f"{0.316 * b:.8f}"}
        if i % 7 == 3:
            us["volume"] = None
        elif i % 11 == 5:
            pass
        elif i % 13 == 6:
            us["volume"] = ""
        else:
            us["volume"] = f"{71.02 + i:.2f}"
        put(i, "DOGEUSDT", us)
        if i in (40, 41):  # Yahoo-style rows without a price
            put(i, "DOGEUSDT", {"symbol": "DOGEUSDT", "ts": ms * 1000 + 1, "price": None})
            bad["bad_price"] += 1
        # Seconds, ISO-8601 and integral float ms; every 10th tick repeats the time before.
        t = ms - 60_000 if i % 10 == 9 else ms
        ts: object = t // 1000 if i % 3 == 0 else (_iso(t) if i % 3 == 1 else float(t))
        put(i, "SAP.DE", {"symbol": "SAP.DE", "ts": ts, "price": round(120 * b, 2), "volume": 1e5})
        # Nanoseconds and a 1e-8 price; a 1e10 price (BTC in IDR) with a string volume.
        put(i, "PEPE", {"symbol": "PEPE", "ts": ms * 1_000_000, "price": 1.2e-8 * b})
        put(i, "BTCIDR", {"symbol": "BTCIDR", "ts": ms, "price": f"{1.1e10 * b:.1f}",
                          "volume": "0.00878062"})  # fmt: skip
        # A stablecoin that never moves.
        put(i, "USDC", {"symbol": "USDC", "ts": ms, "price": "1.0000", "volume": 1000.0 + i})
        if i == 50:
            put(i, "USDC", {"symbol": "USDC", "ts": 9_000_000_000_000, "price": 1.0})  # 2255
            bad["bad_ts"] += 1
    return [r for group in rows for r in group], bad


def binance_feed(n: int = N) -> tuple[list[bytes], int]:
    """Binance spot stream messages: trades, aggTrades and closed klines of two symbols in a
    combined-stream envelope, with a subscription ack, open klines and depth updates in
    between. Returns the values and the number of trades (ticks)."""
    base = _base()
    out = [orjson.dumps({"result": None, "id": 1})]
    ticks = 0
    for i in range(n):
        ms = JAN_2025_MS + 60_000 * i
        p = base[i % len(base)]
        out.append(orjson.dumps({"stream": "dogeusdt@trade", "data": {
            "e": "trade", "E": ms + 5, "s": "DOGEUSDT", "t": i, "p": f"{0.316 * p:.8f}",
            "q": f"{10 + i}.00000000", "T": ms * 1000, "m": True, "M": True}}))  # fmt: skip
        out.append(orjson.dumps({
            "e": "aggTrade", "E": ms + 6, "s": "BTCUSDT", "a": i, "p": f"{93610 * p:.2f}",
            "q": "0.01000000", "f": i, "l": i, "T": ms, "m": False, "M": True}))  # fmt: skip
        k = {"t": ms, "T": ms + 59_999, "s": "ETHUSDT", "i": "1m", "f": 1, "L": 2,
             "o": "3300.00", "c": f"{3300 * p:.2f}", "h": "3400.0", "l": "3200.0",
             "v": "12.5", "n": 2, "q": "41000.0", "V": "6", "Q": "20000", "B": "0"}  # fmt: skip
        out.append(orjson.dumps({"e": "kline", "E": ms + 30_000, "s": "ETHUSDT",
                                 "k": {**k, "x": False}}))  # fmt: skip
        out.append(orjson.dumps({"e": "kline", "E": ms + 59_999, "s": "ETHUSDT",
                                 "k": {**k, "x": True}}))  # fmt: skip
        ticks += 3
        if i % 10 == 0:
            out.append(orjson.dumps({"e": "depthUpdate", "E": ms, "s": "BTCUSDT", "U": 1,
                                     "u": 2, "b": [["1", "2"]], "a": []}))  # fmt: skip
    return out, ticks


def coinbase_feed(n: int = N) -> tuple[list[bytes], int]:
    """Coinbase Exchange feed messages: tickers and matches with a subscriptions ack and
    heartbeats in between. Returns the values and the number of ticks."""
    base = _base()
    channels = [
        {"name": "ticker", "product_ids": ["BTC-USD"]},
        {"name": "matches", "product_ids": ["ETH-USD"]},
    ]
    out = [orjson.dumps({"type": "subscriptions", "channels": channels})]
    for i in range(n):
        ms = 1_712_900_003_000 + 1000 * i
        p = base[i % len(base)]
        out.append(orjson.dumps({
            "type": "ticker", "sequence": i, "product_id": "BTC-USD", "price": f"{70746.9 * p:.2f}",
            "open_24h": "69000", "volume_24h": "1200.5", "low_24h": "68000", "high_24h": "72000",
            "best_bid": "1", "best_ask": "2", "side": "buy", "time": _iso(ms), "trade_id": i,
            "last_size": "0.00878062"}))  # fmt: skip
        out.append(orjson.dumps({
            "type": "match", "trade_id": i, "sequence": i, "maker_order_id": "a",
            "taker_order_id": "b", "time": _iso(ms + 500), "product_id": "ETH-USD",
            "size": "1.5", "price": f"{3300.12 * p:.2f}", "side": "sell"}))  # fmt: skip
        if i % 10 == 0:
            out.append(orjson.dumps({"type": "heartbeat", "sequence": i, "last_trade_id": i,
                                     "product_id": "BTC-USD", "time": _iso(ms)}))  # fmt: skip
    return out, 2 * n


def fields_feed(n: int = N) -> tuple[list[bytes], int]:
    """A broker's own JSON (`fields:symbol=instrument,price=px.last,ts=time,volume=qty`)."""
    base = _base()
    out = []
    for i in range(n):
        qty = None if i % 4 == 0 else 1000 + i
        px = {"last": f"{1.08345 * base[i]:.5f}"}
        t = 1_735_689_600 + 60 * i
        out.append(orjson.dumps({"instrument": "EURUSD", "time": t, "px": px, "qty": qty}))
    return out, n


FIELDS = "fields:symbol=instrument,price=px.last,ts=time,volume=qty"


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b
