"""The state topic's record codec (pure): one record per symbol, one marker per partition.

A symbol's record (key = the symbol, UTF-8) holds everything needed to continue it exactly:

    [u32 little-endian n][n bytes of JSON header][prices f64 | times i64 | volumes f64 | h,c f32]

The header is `{"format", "symbol", "model", "partition", "offset", "count", "seq", "last_ts",
"history", "hc"}`: `history` is the buffer length (ticks kept per symbol), `hc` the shape of
the LSTM state `[2, layers, units]`, `offset` the last tick offset applied. The arrays follow
as raw little-endian bytes, `history` values each, then the state. A `None` value (a
tombstone) deletes a symbol's record when the topic is compacted.

The marker (key `MARKER_KEY`) says that every symbol record of its partition reflects exactly
the ticks before `next_offset`: a restore seeks there and replays the rest.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np
import orjson

__all__ = [
    "MARKER_KEY",
    "STATE_FORMAT",
    "RecordInfo",
    "StateRecord",
    "decode_marker",
    "decode_state",
    "encode_marker",
    "encode_states",
    "record_info",
]

STATE_FORMAT = 1
MARKER_KEY = b"\x00partition"  # per-partition marker record in the state topic
_HEADER = struct.Struct("<I")


@dataclass
class StateRecord:
    """One decoded symbol record; arrays are `[buffer_len]`, `hc` is `[2, layers, units]`."""

    symbol: str
    model: str  # version of the model that made `hc`
    partition: int
    offset: int  # last tick offset applied
    count: int  # ticks since the state started
    seq: int  # ticks over the symbol's life
    last_ts: int  # epoch ms of its last tick
    prices: np.ndarray
    times: np.ndarray
    volumes: np.ndarray
    hc: np.ndarray


def encode_states(
    symbols: list[str],
    version: str,
    meta: np.ndarray,
    prices: np.ndarray,
    times: np.ndarray,
    volumes: np.ndarray,
    hc: np.ndarray,
) -> list[bytes]:
    """The record values of `n` symbols.

    Args:
      symbols: `n` symbols.
      version: the model version that made the states.
      meta: int64 `[n, 5]`: partition, offset, count, seq, last_ts.
      prices, times, volumes: buffers `[n, buffer_len]` (float64, int64 epoch ms, float64).
      hc: LSTM states `[n, 2, layers, units]`.
    """
    n, r = prices.shape
    # Every record's arrays as one [n, bytes] block: one copy, not four per symbol.
    body = np.concatenate(
        [np.ascontiguousarray(prices, np.float64).view(np.uint8),
         np.ascontiguousarray(times, np.int64).view(np.uint8),
         np.ascontiguousarray(volumes, np.float64).view(np.uint8),
         np.ascontiguousarray(hc, np.float32).reshape(n, -1).view(np.uint8)],
        axis=1,
    )  # fmt: skip
    shape = list(hc.shape[1:])
    out = []
    for j, (sym, (part, off, cnt, seq, last)) in enumerate(
        zip(symbols, meta.tolist(), strict=True)
    ):
        header = orjson.dumps({
            "format": STATE_FORMAT, "symbol": sym, "model": version,
            "partition": part, "offset": off, "count": cnt, "seq": seq,
            "last_ts": last, "history": r, "hc": shape,
        })  # fmt: skip
        out.append(_HEADER.pack(len(header)) + header + body[j].tobytes())
    return out


def decode_state(value: bytes, buffer_len: int) -> StateRecord:
    """Decode one symbol record. Raises ValueError if it is unreadable, of another format,
    or made with another buffer length (the arrays are views of `value`: read-only)."""
    r = buffer_len
    try:
        (n,) = _HEADER.unpack_from(value)
        h = orjson.loads(value[4 : 4 + n])
        if h.get("format") != STATE_FORMAT or h["history"] != r:
            raise ValueError(f"format {h.get('format')}, history {h.get('history')}")
        body = memoryview(value)[4 + n :]
        shape = tuple(int(d) for d in h["hc"])
        if len(body) != 24 * r + 4 * int(np.prod(shape)):
            raise ValueError(f"{len(body)} bytes of arrays")
        return StateRecord(
            symbol=str(h["symbol"]),
            model=str(h["model"]),
            partition=int(h["partition"]),
            offset=int(h["offset"]),
            count=int(h["count"]),
            seq=int(h["seq"]),
            last_ts=int(h["last_ts"]),
            prices=np.frombuffer(body[: 8 * r], np.float64),
            times=np.frombuffer(body[8 * r : 16 * r], np.int64),
            volumes=np.frombuffer(body[16 * r : 24 * r], np.float64),
            hc=np.frombuffer(body[24 * r :], np.float32).reshape(shape),
        )
    except (KeyError, TypeError, struct.error, orjson.JSONDecodeError) as e:
        raise ValueError(f"{type(e).__name__}: {e}") from None


@dataclass(frozen=True)
class RecordInfo:
    """The header fields of a symbol record that say which state it holds."""

    symbol: str
    partition: int
    seq: int  # ticks of the symbol the state has seen
    model: str  # version of the model that made the state
    last_ts: int  # epoch ms of its last tick


def record_info(value: bytes) -> RecordInfo:
    """Read a symbol record's header (not its arrays).

    Raises:
      ValueError: not a state record (too short, bad JSON, fields missing or mistyped).
    """
    try:
        (n,) = _HEADER.unpack_from(value)
        h = orjson.loads(value[4 : 4 + n])
        return RecordInfo(
            str(h["symbol"]), int(h["partition"]), int(h["seq"]), str(h["model"]),
            int(h["last_ts"]),
        )  # fmt: skip
    except (struct.error, orjson.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"not a state record: {e}") from e


def encode_marker(next_offset: int, version: str) -> bytes:
    """The per-partition marker: every symbol record of this partition in the state topic
    reflects exactly the ticks before `next_offset`."""
    return orjson.dumps({"format": STATE_FORMAT, "next_offset": next_offset, "model": version})


def decode_marker(value: bytes) -> int:
    """The `next_offset` of a marker. Raises ValueError if it is not one."""
    try:
        return int(orjson.loads(value)["next_offset"])
    except (KeyError, TypeError, orjson.JSONDecodeError) as e:
        raise ValueError(f"not a state marker: {e}") from None
