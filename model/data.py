"""Series loading: bundled real data, tick files (CSV, JSON lines: `model.tickfile`), synthetic.

A `Series` is one symbol's ticks in time order. Splits are chronological with cut times
shared by all symbols of a data set, so no symbol trains on a period another is tested on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model.errors import DataError
from model.tickfile import FileRead, ReadOptions, read_ticks

__all__ = [
    "BUNDLED",
    "DataError",
    "Series",
    "Split",
    "bundled_path",
    "load",
    "load_csv",
    "split_times",
    "synthetic",
    "to_series",
]

DATASETS = Path(__file__).resolve().parent / "datasets"
BUNDLED: dict[str, str] = {
    "taylor": "England & Wales electricity demand (MW), half-hourly, 2000 (pmdarima)",
    "msft": "MSFT daily close 1986-2017 (pmdarima)",
    "stocks": "AAPL, GOOG, IBM, MSFT daily adjusted close 2000-2013 (bokeh_sampledata)",
    "sp500": "S&P 500 daily adjusted close 1999-2018 (arch)",
    "nasdaq": "NASDAQ Composite daily adjusted close 1999-2018 (arch)",
}
REQUIRED = ("timestamp", "symbol", "price")


@dataclass
class Series:
    """One symbol's ticks, sorted by time.

    ts: epoch milliseconds `[time]` int64, non-decreasing; price `[time]` float64 (> 0);
    volume `[time]` float64 (NaN where a tick had none) or None when the source has none.
    """

    symbol: str
    ts: np.ndarray
    price: np.ndarray
    volume: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.price)

    def __post_init__(self) -> None:
        if len(self.ts) != len(self.price) or (
            self.volume is not None and len(self.volume) != len(self.price)
        ):
            raise ValueError(f"{self.symbol}: ts, price and volume must have the same length")


@dataclass(frozen=True)
class Split:
    """Chronological cut times (epoch ms): train < val_start <= val < test_start <= test."""

    val_start: int
    test_start: int

    def indices(self, s: Series) -> tuple[int, int]:
        """Row indices where `s`'s validation and test parts start."""
        return int(np.searchsorted(s.ts, self.val_start)), int(
            np.searchsorted(s.ts, self.test_start)
        )


def bundled_path(name: str) -> Path:
    if name not in BUNDLED:
        raise DataError(f"unknown bundled data set {name!r}; bundled: {', '.join(BUNDLED)}")
    return DATASETS / f"{name}.csv"


def load(spec: str, opts: ReadOptions | None = None) -> list[Series]:
    """Load a bundled data set by name (`taylor`, `msft`, ...) or a tick file by path
    (CSV or JSON lines, read as `opts` says: `model.tickfile`)."""
    if spec in BUNDLED:
        return load_csv(bundled_path(spec))
    path = Path(spec)
    if not path.is_file():
        raise DataError(f"{spec!r} is neither a file nor a bundled data set ({', '.join(BUNDLED)})")
    try:
        return load_csv(path, opts)
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from e


def load_csv(path: str | Path, opts: ReadOptions | None = None) -> list[Series]:
    """Read a tick file (`timestamp,symbol,price[,volume]` CSV, Yahoo's layout, JSON lines
    of any format: `model.tickfile`) into one `Series` per symbol, sorted by time (equal
    timestamps keep file order).

    Rows without a price are skipped with one warning (`opts.strict`: refused). Raises
    `DataError` naming the file and line of the first invalid row, or when no row is left.
    """
    opts = opts or ReadOptions()
    got = read_ticks(path, opts)
    path = got.path
    if got.rejected:
        more = f" (and {len(got.rejected) - 1} more)" if len(got.rejected) > 1 else ""
        raise DataError(got.where(got.rejected[0]) + more)
    if got.no_price and opts.strict:
        raise DataError(got.where(got.no_price[0]) + f" ({len(got.no_price)} such rows; --strict)")
    got.warn_no_price()
    if not got.ticks:
        raise DataError(
            f"{path}: no rows" + (f" (skipped: {dict(got.skipped)})" if got.skipped else "")
        )
    return to_series(got)


def to_series(got: FileRead) -> list[Series]:
    """The accepted ticks of a file, one `Series` per symbol (first-seen order), each sorted
    by time; equal timestamps keep file order."""
    per: dict[str, list[tuple[int, float, float]]] = {}
    for _, t in got.ticks:
        per.setdefault(t.symbol, []).append((t.ts, t.price, t.volume))
    out = []
    for sym, rows in per.items():
        rows.sort(key=lambda r: r[0])  # stable: equal timestamps keep file order
        ts = np.array([r[0] for r in rows], np.int64)
        price = np.array([r[1] for r in rows], np.float64)
        vols = np.array([r[2] for r in rows], np.float64)
        # A missing volume stays missing (NaN), as on the stream; no volume at all: None.
        volume = None if np.isnan(vols).all() else vols
        out.append(Series(sym, ts, price, volume))
    return out


def split_times(series: list[Series], val_fraction: float, test_fraction: float) -> Split:
    """Cut times at the pooled time quantiles, shared by every symbol.

    For a single series this is an index split: the last `test_fraction` of rows is the
    test part, the `val_fraction` before it validation, the rest training.
    """
    ts = np.sort(np.concatenate([s.ts for s in series]))
    n = len(ts)
    n_test = round(n * test_fraction)
    n_val = round(n * val_fraction)
    if n_test < 2 or n - n_test - n_val < 2:
        names = ", ".join(s.symbol for s in series[:3]) + (", ..." if len(series) > 3 else "")
        raise DataError(
            f"{n} rows (of {names}) are too few for a {val_fraction}/{test_fraction} "
            "validation/test split"
        )
    return Split(val_start=int(ts[n - n_test - n_val]), test_start=int(ts[n - n_test]))


def synthetic(
    n_symbols: int = 4,
    n_steps: int = 2000,
    *,
    seed: int = 0,
    kind: str = "seasonal",
    period: int = 48,
    step_ms: int = 1_800_000,
    start_ms: int = 946_684_800_000,
) -> list[Series]:
    """Synthetic series for tests.

    kind="random_walk": geometric random walk (nothing beats persistence);
    kind="seasonal": a level with a daily cycle of `period` steps plus AR(1) noise
    (a model with state or a time-of-day feature beats persistence);
    kind="drift": a regime change for retraining tests. Log returns follow an AR(1) with
    phi = +0.6 for steps < n_steps // 2 and phi = -0.6 from there on (noise sd 0.01),
    price = 100 * exp(cumsum of the returns); a model fitted on the first half forecasts
    the second half worse than persistence, one fitted on the second half beats it.
    Volume is log-normal for every kind.
    """
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n_symbols):
        ts = start_ms + step_ms * np.arange(n_steps, dtype=np.int64)
        if kind == "random_walk":
            r = rng.normal(0.0, 0.01, n_steps)
            price = 100.0 * np.exp(np.cumsum(r))
        elif kind == "seasonal":
            phase = 2 * np.pi * np.arange(n_steps) / period
            noise = np.zeros(n_steps)
            e = rng.normal(0.0, 0.01, n_steps)
            for t in range(1, n_steps):
                noise[t] = 0.8 * noise[t - 1] + e[t]
            price = (50.0 + 10 * k) * np.exp(0.2 * np.sin(phase + k) + noise)
        elif kind == "drift":
            e = rng.normal(0.0, 0.01, n_steps)
            r = np.zeros(n_steps)
            r[0] = e[0]
            for t in range(1, n_steps):
                phi = 0.6 if t < n_steps // 2 else -0.6
                r[t] = phi * r[t - 1] + e[t]
            price = 100.0 * np.exp(np.cumsum(r))
        else:
            raise ValueError(f"unknown synthetic kind {kind!r}")
        volume = rng.lognormal(10.0, 0.5, n_steps)
        out.append(Series(f"S{k:03d}", ts, price, volume))
    return out
