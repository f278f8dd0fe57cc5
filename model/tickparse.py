"""One tick parser for files and Kafka: a raw record in, a tick, a skip or a rejection out.

Pure (no I/O, no jax): `model.data` (CSV and JSONL files) and `streamer.ticks` (Kafka values
in `serve`, `retrain`, `replay`'s validation) call the same functions, so a record accepted
on one path is accepted on the other with the same values.

Formats (`make_format(spec)`; `--format` of `serve` and of the file commands):

* `tickcast`: `{"symbol", "ts", "price", "volume"?}` (a CSV row is the same mapping);
* `binance`: `trade`, `aggTrade` (`s`, `p`, `q`, `T`) and the closed `kline` (`k.s`, `k.c`,
  `k.v`, `k.T`), bare or in a combined-stream `{"stream", "data"}` envelope; subscription
  acks (`{"result", "id"}`) and klines not yet closed (`k.x` false) are skipped;
* `coinbase`: the Exchange feed's `ticker` (`product_id`, `price`, `last_size`, `time`) and
  `match`/`last_match` (`product_id`, `price`, `size`, `time`); `subscriptions` acks and
  `heartbeat`s are skipped, and so is any other `type` (`l2update`, `error`, ...);
* `fields:symbol=KEY,price=KEY,ts=KEY[,volume=KEY]`: any flat JSON object (a dotted KEY
  reaches into nested objects: `k.c`).

Timestamps (`parse_ts`) become epoch milliseconds:

* numbers (JSON integers, integral floats, digit strings): the unit is inferred from each
  value's magnitude, so one stream may mix units: |v| < 1e11 seconds, < 1e14 milliseconds,
  < 1e17 microseconds, < 1e20 nanoseconds (so milliseconds before 1973-03-03 read as
  seconds: force the unit with `ts_unit` then); fractions of a millisecond are truncated;
  below 1e8 (1973-03-03 in seconds) a number is rejected: it is a year, a date without
  separators, an Excel serial day or a row number, never a recent epoch time (`ts_unit`
  "s" accepts it);
* ISO-8601 strings, with an offset or `Z`; a naive time is UTC;
* after normalising, a time before 1970 or after 2200-01-01 is rejected (`bad_ts`), with
  the value in the detail.

Numbers (`parse_number`): JSON numbers or decimal strings (`"70746.9"`); null, NaN, `""`,
`"null"`, `"nan"` and `"NaN"` mean missing. A missing price rejects the record
(`bad_price`); a missing volume stays missing (NaN), never 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

__all__ = [
    "FORMATS",
    "MAX_SYMBOL",
    "MAX_TS_MS",
    "REJECT_REASONS",
    "SKIP_REASONS",
    "TS_UNITS",
    "Bad",
    "Format",
    "Skip",
    "Tick",
    "make_format",
    "parse_number",
    "parse_ts",
]

MAX_SYMBOL = 64
MAX_TS_MS = 7_258_118_400_000  # 2200-01-01T00:00:00Z: later is a unit or data mistake
FORMATS = ("tickcast", "binance", "coinbase", "fields:...")
TS_UNITS = ("s", "ms", "us", "ns")
# Magnitude bounds of the inferred unit: |v| < bound -> unit (see the module docstring).
UNIT_BOUNDS = ((1e11, "s"), (1e14, "ms"), (1e17, "us"), (1e20, "ns"))
# With the unit inferred, a smaller number is no epoch time (before 1973-03-03T09:46:40Z as
# seconds) but a year (2019), a date without separators (190102), an Excel serial day
# (43000) or a row number: rejected, not read as a day in 1970. `ts_unit="s"` accepts it.
MIN_INFERRED = 1e8
# 12-digit integers that may spell YYYYMMDDHHMM (years 1900-2199): as epoch ms they would be
# 1976; the Kafka fast path leaves these to `parse_ts`, which tries the date first.
CALENDAR_12 = (190_000_000_000, 220_000_000_000)

REJECT_REASONS = (
    "bad_json",  # not parseable JSON
    "not_object",  # JSON, but not an object
    "missing_field",  # symbol, ts or price absent
    "bad_type",  # a field of the wrong type (a list, a bool, a non-numeric string)
    "bad_symbol",  # empty or too long
    "key_mismatch",  # the record key is not the symbol (it would land on the wrong partition)
    "bad_price",  # missing (null, NaN, empty), infinite, zero or negative
    "bad_volume",  # infinite or negative
    "bad_ts",  # not a time, or before 1970 / after 2200 once normalised
)
SKIP_REASONS = (
    "ack",  # a subscription acknowledgement (binance {"result", "id"}; coinbase subscriptions)
    "heartbeat",  # coinbase heartbeat
    "open_kline",  # a binance kline that has not closed yet
    "other_message",  # another message type of the format (depth, l2update, error, ...)
)
_MISSING = ("", "null", "nan", "none", "na", "n/a")


@dataclass(frozen=True, slots=True)
class Tick:
    """An accepted tick: ts epoch ms, price > 0, volume >= 0 or NaN when missing."""

    symbol: str
    ts: int
    price: float
    volume: float


@dataclass(frozen=True, slots=True)
class Skip:
    """A well-formed message of the format that is not a tick (`SKIP_REASONS`)."""

    reason: str
    detail: str


class Bad(ValueError):
    """A rejected record: `reason` (one of `REJECT_REASONS`) and a detail naming the value."""

    def __init__(self, reason: str, detail: str, *, missing_price: bool = False) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.missing_price = missing_price  # the price is absent or null (a file skips it)


def parse_number(v: object, name: str) -> float:
    """A JSON number or a decimal string as a float; NaN when missing.

    Raises `Bad("bad_type")` for a bool, a container or a non-numeric string.
    """
    if type(v) is float or type(v) is int:
        return float(v)
    if v is None:
        return math.nan
    if isinstance(v, str):
        s = v.strip()
        if s.lower() in _MISSING:
            return math.nan
        try:
            if not s.isascii() or "_" in s:  # Python-only forms: "1_000", other scripts' digits
                raise ValueError(s)
            return float(s)
        except ValueError:
            raise Bad("bad_type", f"{name} {v[:40]!r} is not a number") from None
    raise Bad("bad_type", f"{name} must be a number or a decimal string, got {type(v).__name__}")


_FACTOR = {"s": (1000, 1), "ms": (1, 1), "us": (1, 1000), "ns": (1, 1_000_000)}


def _unit_of(a: float, raw: object) -> str:
    if a < MIN_INFERRED:
        raise Bad(
            "bad_ts",
            f"ts {raw!r} is too small for an epoch time (before 1973-03-03 in seconds): a "
            "year, a date without separators, an Excel serial day or a row number? "
            "(a ts unit of s reads it as epoch seconds)",
        )
    for bound, u in UNIT_BOUNDS:
        if a < bound:
            return u
    raise Bad("bad_ts", f"ts {raw!r} is too large for any epoch unit (s, ms, us, ns)")


def _check_ms(ms: int, unit: str, raw: object) -> int:
    if not 0 <= ms <= MAX_TS_MS:
        when = "before 1970" if ms < 0 else "after 2200"
        raise Bad("bad_ts", f"ts {raw!r} read as epoch {unit} is {when}")
    return ms


def _calendar_ms(v: int) -> int | None:
    """Epoch ms of an integer that spells a calendar time, `YYYYMMDD`, `YYYYMMDDHHMM` or
    `YYYYMMDDHHMMSS` (UTC, years 1900-2199), else None. As epoch numbers those would be
    1970 (8 digits, seconds), 1976 (12, milliseconds) or after 2200 (14): vendors' date
    columns, never real epochs."""
    s = str(v)
    if len(s) not in (8, 12, 14) or not "1900" <= s[:4] <= "2199":
        return None
    try:
        d = datetime.strptime(s, {8: "%Y%m%d", 12: "%Y%m%d%H%M", 14: "%Y%m%d%H%M%S"}[len(s)])
    except ValueError:
        return None
    return int(d.replace(tzinfo=UTC).timestamp()) * 1000


def _epoch_int(v: int, unit: str | None, raw: object) -> int:
    """Exact integer scaling (floor to the millisecond); with the unit inferred, an integer
    spelling a calendar date or time (`_calendar_ms`) is read as one."""
    if unit is None and (ms := _calendar_ms(v)) is not None:
        if ms < 0:
            raise Bad("bad_ts", f"ts {raw!r} read as a date (YYYYMMDD[HHMM[SS]]) is before 1970")
        return ms
    u = unit or _unit_of(abs(v), raw)
    mul, div = _FACTOR[u]
    return _check_ms(v * mul // div, u, raw)


def _epoch_float(v: float, unit: str | None, raw: object) -> int:
    if not math.isfinite(v):
        raise Bad("bad_ts", f"ts {raw!r} is not a number")
    if v == math.floor(v):  # as its integer: `20230102.0` (pandas writes those) is a date
        return _epoch_int(int(v), unit, raw)
    u = unit or _unit_of(abs(v), raw)
    if u == "s":  # the 1e-6 keeps 1735689600.25 s at 1735689600250 ms despite binary floats
        return _check_ms(math.floor(v * 1000 + 1e-6), u, raw)
    mul, div = _FACTOR[u]  # a fraction of a ms, us or ns (time.time() * 1000) is floored
    return _check_ms(math.floor(v * mul / div), u, raw)


def parse_ts(v: object, unit: str | None = None) -> int:
    """Epoch milliseconds of a timestamp (number of any unit, digit string or ISO-8601).

    `unit` ("s", "ms", "us", "ns") forces the unit of numbers; None infers it per value.
    Raises `Bad("bad_ts")` (not a time, implausible once normalised) or
    `Bad("missing_field")` (null or empty).
    """
    if type(v) is int:
        return _epoch_int(v, unit, v)
    if type(v) is float:
        return _epoch_float(v, unit, v)
    if isinstance(v, str):
        s = v.strip()
        if not s or s.lower() in _MISSING:
            raise Bad("missing_field", "ts is empty")
        if s.isascii() and s.lstrip("-").isdigit():
            try:
                n = int(s)
            except ValueError:  # longer than Python converts (4300 digits)
                raise Bad("bad_ts", f"ts {v[:40]!r} is too long to be a time") from None
            return _epoch_int(n, unit, v)
        if not s.isascii():  # float() and fromisoformat() read other scripts' digits
            raise Bad("bad_ts", f"ts {v[:40]!r}: epoch number or ISO-8601 in ASCII expected")
        try:
            d = datetime.fromisoformat(s[:-1] + "+00:00" if s[-1:] in "Zz" else s)
        except ValueError:
            try:
                x = float(s)
            except ValueError:
                raise Bad("bad_ts", f"ts {v[:40]!r}: epoch number or ISO-8601 expected") from None
            return _epoch_float(x, unit, v)
        if d.tzinfo is None:
            d = d.replace(tzinfo=UTC)
        delta = d - datetime(1970, 1, 1, tzinfo=UTC)
        ms = (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000
        return _check_ms(ms, "ISO-8601", v)
    if v is None:
        raise Bad("missing_field", "ts is null")
    raise Bad("bad_ts", f"ts must be a number or an ISO-8601 string, got {type(v).__name__}")


def build(
    symbol: object, ts: object, price: object, volume: object, unit: str | None = None
) -> Tick:
    """Validate the four fields of one record (any source) into a `Tick`; raises `Bad`."""
    if not isinstance(symbol, str):
        raise Bad("bad_type", f"symbol must be a string, got {type(symbol).__name__}")
    if not symbol or len(symbol) > MAX_SYMBOL:
        raise Bad("bad_symbol", f"symbol must have 1..{MAX_SYMBOL} characters")
    p = parse_number(price, "price")
    if math.isnan(p):
        raise Bad("bad_price", f"price is missing ({price!r})", missing_price=True)
    if not math.isfinite(p) or p <= 0:
        raise Bad("bad_price", f"price must be finite and > 0, got {price!r}")
    vol = parse_number(volume, "volume")
    if vol < 0 or vol == math.inf:
        raise Bad("bad_volume", f"volume must be finite and >= 0, got {volume!r}")
    return Tick(symbol, parse_ts(ts, unit), p, vol)


Parse = Callable[[Any], "Tick | Skip"]


def _need(obj: Mapping[str, Any], key: str) -> Any:
    try:
        return obj[key]
    except KeyError:
        raise Bad("missing_field", f"missing field {key!r}") from None


def _path(obj: Any, key: str) -> Any:
    for part in key.split("."):
        if not isinstance(obj, dict) or part not in obj:
            raise Bad("missing_field", f"missing field {key!r}")
        obj = obj[part]
    return obj


def _object(obj: object) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise Bad("not_object", f"expected a JSON object, got {type(obj).__name__}")
    return obj


@dataclass(frozen=True)
class Format:
    """A record format: `parse(obj)` turns one decoded JSON value (or CSV row dict) into a
    `Tick` or a `Skip`, or raises `Bad`."""

    name: str
    parse: Parse
    unit: str | None = None  # the forced ts unit, None: inferred per value


def _total(parse: Parse) -> Parse:
    """`parse`, with any error other than `Bad` (a value no rule foresaw: a digit string
    Python cannot convert, a structure nested too deep) turned into `Bad("bad_type")`: one
    odd record is rejected with a reason, never a crash of the reader or the stream."""

    def total(obj: object) -> Tick | Skip:
        try:
            return parse(obj)
        except Bad:
            raise
        except (ValueError, TypeError, OverflowError, RecursionError, KeyError) as e:
            detail = f"unreadable record ({type(e).__name__}: {str(e)[:120]})"
            raise Bad("bad_type", detail) from None

    return total


def _tickcast(unit: str | None) -> Parse:
    def parse(obj: object) -> Tick | Skip:
        o = _object(obj)
        sym, ts, price = _need(o, "symbol"), _need(o, "ts"), _need(o, "price")
        return build(sym, ts, price, o.get("volume"), unit)

    return parse


def _binance(unit: str | None) -> Parse:
    def parse(obj: object) -> Tick | Skip:
        o = _object(obj)
        if isinstance(o.get("data"), dict) and "stream" in o:  # combined-stream envelope
            o = o["data"]
        elif isinstance(o.get("event"), dict):  # WebSocket API user-stream envelope
            o = o["event"]
        if "e" not in o:
            if "result" in o and "id" in o:
                return Skip("ack", f"subscription response id={o['id']!r}")
            raise Bad("missing_field", "missing field 'e' (event type)")
        e = o["e"]
        if e in ("trade", "aggTrade"):
            return build(_need(o, "s"), _need(o, "T"), _need(o, "p"), _need(o, "q"), unit)
        if e == "kline":
            k = _need(o, "k")
            if not isinstance(k, dict):
                raise Bad("bad_type", "k must be an object")
            if not _need(k, "x"):
                return Skip("open_kline", "kline not closed yet")
            sym = k.get("s", o.get("s"))
            return build(sym, _need(k, "T"), _need(k, "c"), _need(k, "v"), unit)
        return Skip("other_message", f"binance event {str(e)[:40]!r}")

    return parse


def _coinbase(unit: str | None) -> Parse:
    def parse(obj: object) -> Tick | Skip:
        o = _object(obj)
        t = _need(o, "type")
        if t == "ticker":
            return build(
                _need(o, "product_id"), _need(o, "time"), _need(o, "price"),
                o.get("last_size"), unit,
            )  # fmt: skip
        if t in ("match", "last_match"):
            return build(
                _need(o, "product_id"), _need(o, "time"), _need(o, "price"), _need(o, "size"), unit
            )
        if t == "subscriptions":
            return Skip("ack", "subscriptions")
        if t == "heartbeat":
            return Skip("heartbeat", "heartbeat")
        return Skip("other_message", f"coinbase message type {str(t)[:40]!r}")

    return parse


def _fields(spec: str, unit: str | None) -> Parse:
    keys: dict[str, str] = {}
    for item in spec.split(","):
        name, eq, key = item.partition("=")
        name, key = name.strip(), key.strip()
        if not eq or name not in ("symbol", "price", "ts", "volume") or not key or name in keys:
            raise ValueError(
                f"bad field mapping {item!r}: expected fields:symbol=KEY,price=KEY,ts=KEY"
                "[,volume=KEY]"
            )
        keys[name] = key
    missing = [n for n in ("symbol", "price", "ts") if n not in keys]
    if missing:
        raise ValueError(f"field mapping lacks {missing}: fields:symbol=KEY,price=KEY,ts=KEY")
    vkey = keys.get("volume")

    def parse(obj: object) -> Tick | Skip:
        o = _object(obj)
        vol = None
        if vkey is not None:
            try:
                vol = _path(o, vkey)
            except Bad:
                vol = None
        return build(
            _path(o, keys["symbol"]), _path(o, keys["ts"]), _path(o, keys["price"]), vol, unit
        )

    return parse


@lru_cache(maxsize=32)
def make_format(spec: str = "tickcast", ts_unit: str | None = None) -> Format:
    """The `Format` of a `--format` spec (`tickcast`, `binance`, `coinbase`,
    `fields:symbol=K,price=K,ts=K[,volume=K]`) and a `--ts-unit` (None or "auto": inferred
    per value; "s", "ms", "us", "ns"). Raises `ValueError` naming what is wrong."""
    unit = None if ts_unit in (None, "", "auto") else ts_unit
    if unit is not None and unit not in TS_UNITS:
        raise ValueError(f"unknown ts unit {ts_unit!r}: auto, s, ms, us or ns")
    if spec == "tickcast":
        return Format(spec, _total(_tickcast(unit)), unit)
    if spec == "binance":
        return Format(spec, _total(_binance(unit)), unit)
    if spec == "coinbase":
        return Format(spec, _total(_coinbase(unit)), unit)
    if spec.startswith("fields:"):
        return Format(spec, _total(_fields(spec[len("fields:") :], unit)), unit)
    raise ValueError(f"unknown format {spec!r}: tickcast, binance, coinbase or fields:...")
