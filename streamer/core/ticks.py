"""The tick wire format and its validation (pure: no Kafka, no asyncio).

A tick is one Kafka record on topic `ticks`, key = the symbol (UTF-8), value = a JSON object:

    {"symbol": "MSFT", "ts": 1700000000000, "price": 371.25, "volume": 1200.0}

* `symbol`: non-empty string, at most `MAX_SYMBOL` characters, equal to the record key;
* `ts`: epoch s/ms/µs/ns (unit inferred per value) or ISO-8601, normalised to epoch ms in
  1970..2200 (not before the symbol's previous tick: checked by the engine);
* `price`: finite number > 0, or a decimal string;
* `volume`: optional finite number >= 0 or decimal string (null/absent: missing).

Other formats (`--format binance|coinbase|fields:...`) and every value that is not the plain
form above go through `model.tickparse`, the parser the file readers use too; this module
keeps a fast path for the plain tickcast JSON. Unknown fields are ignored. A tick that breaks
a rule never touches state: it is rejected with one of `REASONS`, and the server forwards its
original bytes to the dead-letter topic. A message of a known format that is not a tick (an
ack, a heartbeat, an open kline) is skipped with one of `SKIP_REASONS`: counted, not
dead-lettered.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import orjson

from model.tickparse import (
    CALENDAR_12,
    MAX_SYMBOL,
    MAX_TS_MS,
    REJECT_REASONS,
    SKIP_REASONS,
    Bad,
    Format,
    Skip,
)
from model.tickparse import make_format as make_format

MIN_FAST_MS = 100_000_000_000  # smaller integers are epoch seconds: the parser scales them

REASONS = (
    *REJECT_REASONS,
    "stale_ts",  # older than the symbol's previous tick (set by the engine)
    "partition_mismatch",  # the symbol is already served from another partition (engine)
)
__all__ = [
    "MAX_SYMBOL",
    "MAX_TS_MS",
    "REASONS",
    "SKIP_REASONS",
    "Decoded",
    "Format",
    "Rejected",
    "as_arrays",
    "decode",
    "encode",
    "make_format",
]


@dataclass
class Decoded:
    """Good ticks of one batch, columnar. `index[i]` is tick i's position in the input."""

    symbols: list[str] = field(default_factory=list)
    ts: list[int] = field(default_factory=list)
    price: list[float] = field(default_factory=list)
    volume: list[float] = field(default_factory=list)  # NaN where absent
    index: list[int] = field(default_factory=list)
    skipped: list[Rejected] = field(default_factory=list)  # non-tick messages (SKIP_REASONS)

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
        # (orjson also refuses JSON nested deeper than 1024: so does this, in its way.)
        try:
            return json.loads(raw)
        except RecursionError:
            raise ValueError("JSON nested too deep") from None


def check(
    obj: object, key: bytes | None, fmt: Format | None = None
) -> tuple[str, float, float, int] | tuple[str, str] | Skip:
    """Validate one parsed record: `(symbol, price, volume, ts)`, `(reason, detail)` or a
    `Skip` (a non-tick message of the format)."""
    try:
        t = (fmt or make_format()).parse(obj)
    except Bad as e:
        return e.reason, e.detail
    if isinstance(t, Skip):
        return t
    if key is not None and key != t.symbol.encode():
        return "key_mismatch", f"record key {key[:MAX_SYMBOL]!r} is not the symbol {t.symbol!r}"
    return t.symbol, t.price, t.volume, t.ts


def decode(
    values: list[bytes | None], keys: list[bytes | None], fmt: Format | None = None
) -> tuple[Decoded, list[Rejected]]:
    """Decode and validate a batch of record values (and keys) in order.

    `fmt` is the record format (`make_format(spec, ts_unit)`; default: tickcast JSON with
    the ts unit inferred). Skipped messages are listed in `Decoded.skipped`.
    """
    fast = fmt is None or (fmt.name == "tickcast" and fmt.unit is None)
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
            if not fast:
                raise ValueError
            obj = loads(raw)  # type: ignore[arg-type]
            symbol, ts, price = obj["symbol"], obj["ts"], obj["price"]
            volume = obj.get("volume")
            if (
                type(symbol) is str
                and type(ts) is int
                and (type(price) is float or type(price) is int)
                and 0 < price < inf
                and MIN_FAST_MS <= ts <= MAX_TS_MS
                and not CALENDAR_12[0] <= ts < CALENDAR_12[1]
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
        r = check(obj, key, fmt)
        if isinstance(r, Skip):
            good.skipped.append(Rejected(i, r.reason, r.detail))
            continue
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
    """The JSON value of one tick (what `tickcast replay` publishes). `ts` is epoch ms, or
    ISO-8601 for the ms of 1976 that would spell a `YYYYMMDDHHMM` date (which the parser
    reads as that date): so every time reads back as itself."""
    ms = int(ts_ms)
    ts: int | str = ms
    if CALENDAR_12[0] <= ms < CALENDAR_12[1]:
        when = datetime.fromtimestamp(ms / 1000, UTC)
        ts = when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"
    if volume is None or not math.isfinite(volume):
        return orjson.dumps({"symbol": symbol, "ts": ts, "price": float(price)})
    return orjson.dumps(
        {"symbol": symbol, "ts": ts, "price": float(price), "volume": float(volume)}
    )


def as_arrays(d: Decoded) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`(ts int64 [n], price float64 [n], volume float64 [n])` of decoded ticks."""
    return (
        np.asarray(d.ts, np.int64),
        np.asarray(d.price, np.float64),
        np.asarray(d.volume, np.float64),
    )
