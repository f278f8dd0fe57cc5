"""Regenerate the vendored real series under model/datasets/ from their PyPI packages.

Run once with the `data` extra installed (`pip install -e '.[data]'`, then
`python scripts/bundle_data.py`). tickcast itself never imports these packages: the CSVs
are small (about 2 MB together), so we vendor them and keep the heavy loaders
(pmdarima pulls scikit-learn and statsmodels) out of the runtime dependencies.

Every file has the header `timestamp,symbol,price,volume` (ISO-8601 UTC timestamps);
`volume` is left empty where the source has none.
"""

from __future__ import annotations

import csv
from datetime import UTC, datetime, timedelta
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "model" / "datasets"


def _write(name: str, rows: list[tuple[str, str, float, float | None]]) -> None:
    rows.sort(key=lambda r: (r[0], r[1]))
    with (OUT / f"{name}.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["timestamp", "symbol", "price", "volume"])
        for ts, sym, price, vol in rows:
            w.writerow([ts, sym, repr(float(price)), "" if vol is None else repr(float(vol))])
    print(f"{name}.csv: {len(rows)} rows")


def _iso(d: datetime) -> str:
    return d.strftime("%Y-%m-%dT%H:%M:%SZ")


def msft() -> None:
    from pmdarima.datasets import load_msft

    df = load_msft()
    rows = [
        (_iso(datetime.strptime(str(d)[:10], "%Y-%m-%d")), "MSFT", c, v)
        for d, c, v in zip(df["Date"], df["Close"], df["Volume"], strict=True)
    ]
    _write("msft", rows)


def taylor() -> None:
    from pmdarima.datasets import load_taylor

    y = load_taylor()
    start = datetime(2000, 6, 5, tzinfo=UTC)  # a Monday; the package ships no timestamps
    rows = [
        (_iso(start + timedelta(minutes=30 * i)), "TAYLOR", float(v), None) for i, v in enumerate(y)
    ]
    _write("taylor", rows)


def stocks() -> None:
    from bokeh_sampledata import stocks as s

    rows = []
    for sym in ("AAPL", "GOOG", "IBM", "MSFT"):
        d = getattr(s, sym)
        for date, adj, vol in zip(d["date"], d["adj_close"], d["volume"], strict=True):
            rows.append((_iso(datetime.strptime(date, "%Y-%m-%d")), sym, adj, vol))
    _write("stocks", rows)


def indices() -> None:
    from arch.data import nasdaq, sp500

    for name, mod, sym in (("sp500", sp500, "SPX"), ("nasdaq", nasdaq, "IXIC")):
        df = mod.load()
        rows = [
            (_iso(d.to_pydatetime()), sym, c, v)
            for d, c, v in zip(df.index, df["Adj Close"], df["Volume"], strict=True)
        ]
        _write(name, rows)


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    msft()
    taylor()
    stocks()
    indices()
