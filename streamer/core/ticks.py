"""The tick wire format and its validation (pure: no Kafka, no asyncio).

A tick is one Kafka record on topic `ticks`, key = the symbol (UTF-8), value = a JSON object:

    {"symbol": "MSFT", "ts": 1700000000000, "price": 371.25, "volume": 1200.0}

* `symbol`: non-empty string, at most `MAX_SYMBOL` characters, equal to the record key;
* `ts`: integer epoch milliseconds, >= 0 (not before the symbol's previous tick: checked by
  the engine, which knows the previous tick);
* `price`: finite number > 0;
* `volume`: optional finite number >= 0 (or null).

Unknown fields are ignored. A tick that breaks a rule never touches state: it is rejected
with one of `REASONS`, and the server forwards its original bytes to the dead-letter topic.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import numpy as np
import orjson

MAX_SYMBOL = 64
MAX_TS_MS = 32503680000000  # year 3000: anything later is a unit mistake (µs or ns)

REASONS = (
    "bad_json",  # not parseable JSON
    "not_object",  # JSON, but not an object
    "missing_field",  # symbol, ts or price absent
    "bad_type",  # a field of the wrong type (e.g. a price given as a string)
    "bad_symbol",  # empty or too long
    "key_mismatch",  # the record key is not the symbol (it would land on the wrong partition)
    "bad_price",  # NaN, infinite, zero or negative
    "bad_volume",  # NaN, infinite or negative
    "bad_ts",  # negative or absurdly large (not epoch milliseconds)
    "stale_ts",  # older than the symbol's previous tick (set by the engine)
    "partition_mismatch",  # the symbol is already served from another partition (engine)
)


@dataclass
class Decoded:
    """Good ticks of one batch, columnar. `index[i]` is tick i's position in the input."""

    symbols: list[str] = field(default_factory=list)
    ts: list[int] = field(default_factory=list)
    price: list[float] = field(default_factory=list)
    volume: list[float] = field(default_factory=list)  # NaN where absent
    index: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.symbols)


@dataclass(frozen=True)
class Rejected:
    """A rejected record: its position in the input, the reason code and a human detail."""

    index: int
    reason: str
    detail: str


def _parse(raw: bytes) -> object:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        # orjson refuses NaN and Infinity literals, which Python's json emits; parse those
        # leniently so the rejection names the real problem (a bad price, not bad JSON).
        return json.loads(raw)


def _number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def check(obj: object, key: bytes | None) -> tuple[str, float, float, int] | tuple[str, str]:
    """Validate one parsed tick: `(symbol, price, volume, ts)` or `(reason, detail)`."""
    if not isinstance(obj, dict):
        return "not_object", f"expected a JSON object, got {type(obj).__name__}"
    try:
        symbol, ts, price = obj["symbol"], obj["ts"], obj["price"]
    except KeyError as e:
        return "missing_field", f"missing field {e.args[0]!r}"
    volume = obj.get("volume")
    if not isinstance(symbol, str):
        return "bad_type", "symbol must be a string"
    if not isinstance(ts, int) or isinstance(ts, bool):
        return "bad_type", "ts must be an integer (epoch milliseconds)"
    if not _number(price):
        return "bad_type", "price must be a number"
    if volume is not None and not _number(volume):
        return "bad_type", "volume must be a number or null"
    if not symbol or len(symbol) > MAX_SYMBOL:
        return "bad_symbol", f"symbol must have 1..{MAX_SYMBOL} characters"
    if key is not None and key != symbol.encode():
        return "key_mismatch", f"record key {key[:MAX_SYMBOL]!r} is not the symbol {symbol!r}"
    p = float(price)
    if not math.isfinite(p) or p <= 0:
        return "bad_price", f"price must be finite and > 0, got {price!r}"
    v = math.nan
    if volume is not None:
        v = float(volume)
        if not math.isfinite(v) or v < 0:
            return "bad_volume", f"volume must be finite and >= 0, got {volume!r}"
    if not 0 <= ts <= MAX_TS_MS:
        return "bad_ts", f"ts must be epoch milliseconds in [0, {MAX_TS_MS}], got {ts}"
    return symbol, p, v, ts


def decode(values: list[bytes | None], keys: list[bytes | None]) -> tuple[Decoded, list[Rejected]]:
    """Decode and validate a batch of record values (and keys) in order."""
    good = Decoded()
    bad: list[Rejected] = []
    symbols, tss, prices, volumes, index = (
        good.symbols, good.ts, good.price, good.volume, good.index
    )  # fmt: skip
    loads = orjson.loads
    nan, inf = math.nan, math.inf
    for i, (raw, key) in enumerate(zip(values, keys, strict=True)):
        # Fast path for the common, valid tick: exact types, plain comparisons (NaN fails
        # every comparison, so it falls through to the full check below).
        try:
            obj = loads(raw)  # type: ignore[arg-type]
            symbol, ts, price = obj["symbol"], obj["ts"], obj["price"]
            volume = obj.get("volume")
            if (
                type(symbol) is str
                and type(ts) is int
                and (type(price) is float or type(price) is int)
                and 0 < price < inf
                and 0 <= ts <= MAX_TS_MS
                and 0 < len(symbol) <= MAX_SYMBOL
                and (key is None or key == symbol.encode())
            ):
                if volume is None:
                    v = nan
                elif (type(volume) is float or type(volume) is int) and 0 <= volume < inf:
                    v = float(volume)
                else:
                    v = -1.0
                if v != -1.0:
                    symbols.append(symbol)
                    tss.append(ts)
                    prices.append(float(price))
                    volumes.append(v)
                    index.append(i)
                    continue
        except Exception:  # anything odd: the full check names the reason
            pass
        try:
            obj = _parse(raw) if raw is not None else None
        except (ValueError, UnicodeDecodeError) as e:
            bad.append(Rejected(i, "bad_json", str(e)[:200]))
            continue
        r = check(obj, key)
        if len(r) == 2:
            bad.append(Rejected(i, r[0], r[1]))
            continue
        symbol, p, v, ts = r
        symbols.append(symbol)
        tss.append(ts)
        prices.append(p)
        volumes.append(v)
        index.append(i)
    return good, bad


def encode(symbol: str, ts_ms: int, price: float, volume: float | None = None) -> bytes:
    """The JSON value of one tick (what `tickcast replay` publishes)."""
    if volume is None or not math.isfinite(volume):
        return orjson.dumps({"symbol": symbol, "ts": int(ts_ms), "price": float(price)})
    return orjson.dumps(
        {"symbol": symbol, "ts": int(ts_ms), "price": float(price), "volume": float(volume)}
    )


def as_arrays(d: Decoded) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`(ts int64 [n], price float64 [n], volume float64 [n])` of decoded ticks."""
    return (
        np.asarray(d.ts, np.int64),
        np.asarray(d.price, np.float64),
        np.asarray(d.volume, np.float64),
    )
