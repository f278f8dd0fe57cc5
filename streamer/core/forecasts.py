"""The forecast: one micro-batch's forecasts as columns, and their wire format (pure).

`Forecasts` is what `Engine.apply` returns; `payloads` renders the JSON value published on
the `forecasts` topic and forwarded by the websocket feed (the output twin of
`streamer.core.ticks`, the input format); `points_of` gives the rows the hub keeps for
snapshots.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

__all__ = ["POINT_FIELDS", "Forecasts", "payloads", "points_of"]


@dataclass
class Forecasts:
    """One micro-batch's forecasts, columnar; row i answers input tick `index[i]`.

    `forecast`, `lower`, `upper` are the next tick's price (median) and its central 90%
    interval, in price units. `seq` counts the symbol's ticks from 1.
    """

    symbols: list[str]
    index: np.ndarray  # int64 [n], position of the tick in the decoded batch's input
    ts: np.ndarray  # int64 [n], epoch ms of the tick
    partition: np.ndarray  # int32 [n]
    offset: np.ndarray  # int64 [n]
    seq: np.ndarray  # int64 [n]
    price: np.ndarray  # float64 [n], the tick's price
    forecast: np.ndarray  # float64 [n]
    lower: np.ndarray  # float64 [n]
    upper: np.ndarray  # float64 [n]
    warming: np.ndarray  # bool [n]
    version: str
    sq_err_model: float = 0.0  # squared errors of the previous forecasts these ticks resolve
    sq_err_persistence: float = 0.0
    n_err: int = 0

    def __len__(self) -> int:
        return len(self.symbols)

    @classmethod
    def empty(cls, version: str) -> Forecasts:
        """No forecasts (a batch with no valid tick)."""
        z = np.zeros(0)
        zi = np.zeros(0, np.int64)
        return cls([], zi, zi, zi.astype(np.int32), zi, zi, z, z, z, z, np.zeros(0, bool), version)


_FORMAT = (
    b'{"symbol":%b,"ts":%b,"source":{"partition":%b,"offset":%b},"seq":%b,"price":%b,'
    b'"forecast":%b,"lower":%b,"upper":%b,"warming":%b,"model":%b,"tick_time":%b%b}'
)
_BOOL = (b"false", b"true")


def _column(a: np.ndarray) -> list[bytes]:
    """Each value of a 1-D numeric array as JSON text, rendered by orjson in one call."""
    if len(a) == 0:
        return []
    return orjson.dumps(a, option=orjson.OPT_SERIALIZE_NUMPY)[1:-1].split(b",")


def payloads(
    f: Forecasts, rows: np.ndarray, tick_time: np.ndarray, extra: dict[str, Any] | None = None
) -> list[bytes]:
    """The JSON value of each forecast in `rows` (the `forecasts` topic's schema):

        {"symbol", "ts", "source": {"partition", "offset"}, "seq", "price", "forecast",
         "lower", "upper", "warming", "model", "tick_time", ...extra}

    `tick_time` `[n_input]` is each input tick's Kafka timestamp (epoch ms, indexed like
    `f.index`). Columns are rendered by orjson once each, then joined per row: about 1.5 µs
    a forecast, against 3.5 µs for a dict per row."""
    rows = np.asarray(rows, np.int64)
    more = b"".join(
        b"," + orjson.dumps(k) + b":" + orjson.dumps(v) for k, v in (extra or {}).items()
    )
    model = orjson.dumps(f.version)
    cols = zip(
        [orjson.dumps(f.symbols[i]) for i in rows.tolist()],
        _column(f.ts[rows]),
        _column(f.partition[rows]),
        _column(f.offset[rows]),
        _column(f.seq[rows]),
        _column(f.price[rows]),
        _column(f.forecast[rows]),
        _column(f.lower[rows]),
        _column(f.upper[rows]),
        [_BOOL[w] for w in f.warming[rows].tolist()],
        _column(np.asarray(tick_time, np.int64)[f.index[rows]]),
        strict=True,
    )
    return [
        _FORMAT % (s, t, p, o, q, x, fc, lo, hi, w, model, tt, more)
        for s, t, p, o, q, x, fc, lo, hi, w, tt in cols
    ]


POINT_FIELDS = ("ts", "price", "forecast", "lower", "upper")


def points_of(f: Forecasts, rows: np.ndarray) -> np.ndarray:
    """`[len(rows), 5]` float64 snapshot points (`POINT_FIELDS`; ts in epoch ms)."""
    rows = np.asarray(rows, np.int64)
    return np.stack(
        [f.ts[rows].astype(np.float64), f.price[rows], f.forecast[rows], f.lower[rows],
         f.upper[rows]],
        axis=1,
    )  # fmt: skip
