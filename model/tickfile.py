"""Tick files (CSV, JSON lines) read through the shared parser, `model.tickparse`.

What a file may look like:

* CSV with a header, UTF-8 with or without a BOM, LF or CRLF line ends; the delimiter is
  sniffed from the header (comma, semicolon or tab); with semicolons, a decimal comma is
  read as a decimal point (`120,00` = 120.0), as European Excel writes them;
* columns by name, case-insensitive: time from `timestamp`, `ts`, `time`, `date` or
  `datetime`; `symbol` or `ticker` (else `--symbol`, else the file name's stem); price from
  `--price-column`, else `price`, else `Adj Close`, else `Close` (so Yahoo Finance's
  `Date,Open,High,Low,Close,Adj Close,Volume` works as it is); optional `volume`; other
  columns are ignored. `--format fields:symbol=K,price=K,ts=K[,volume=K]` names the
  columns instead;
* JSON lines (`.jsonl`, `.ndjson`, `.json`, or a first character `{`): one message per line
  in any `--format` (`tickcast`, `binance`, `coinbase`, `fields:...`), exactly what the
  Kafka path accepts.

Rows are validated by `tickparse` as the stream validates a message. A row without a price
(Yahoo's `null` rows) is skipped and reported once (count and first line numbers; `strict`
refuses the file); a message of the format that is not a tick is skipped and counted; any
other invalid row is a rejection naming the file and line. Equal timestamps are kept (the
stream accepts them too), in file order.

The CSV reader is Python's own `csv` module (C, in the standard library). We looked at
pyarrow's and polars' readers: they are faster on big files but parse whole typed columns
at once, so a bad cell is reported per column or block rather than as the row's line, and
either would add a 40-100 MB dependency for files of a few thousand rows. `csv` gives the
physical line of every record (`line_num`, quoted newlines included), and every value then
goes through the same parser as a Kafka message, which is what parity needs.
"""

from __future__ import annotations

import csv
import io
import logging
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from model.errors import DataError
from model.tickparse import Bad, Format, Skip, Tick, make_format

__all__ = ["FileRead", "ReadOptions", "Row", "add_read_arguments", "read_options", "read_ticks"]

log = logging.getLogger("model.data")

TIME_COLUMNS = ("timestamp", "ts", "time", "date", "datetime")
SYMBOL_COLUMNS = ("symbol", "ticker")
PRICE_COLUMNS = ("price", "adj close", "close")
JSON_SUFFIXES = (".jsonl", ".ndjson", ".json")


@dataclass(frozen=True)
class ReadOptions:
    """How to read a tick file (the file commands' `--format`, `--ts-unit`, ... flags)."""

    format: str = "tickcast"  # tickcast | binance | coinbase | fields:symbol=K,price=K,ts=K
    ts_unit: str | None = None  # None/"auto": inferred per value; s, ms, us, ns: forced
    symbol: str | None = None  # symbol of a file without a symbol column (default: stem)
    price_column: str | None = None  # CSV column of the price (default price/Adj Close/Close)
    strict: bool = False  # a row without a price refuses the file instead of being skipped


@dataclass(frozen=True)
class Row:
    """A rejected or skipped row: its 1-based line, the reason code and a detail."""

    line: int
    reason: str
    detail: str


@dataclass
class FileRead:
    """Everything read from one file: accepted ticks `(line, Tick)` in file order, rows
    without a price, other rejections, and skipped non-tick messages per reason."""

    path: Path
    ticks: list[tuple[int, Tick]] = field(default_factory=list)
    no_price: list[Row] = field(default_factory=list)
    rejected: list[Row] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)

    def where(self, row: Row) -> str:
        return f"{self.path}:{row.line}: {row.detail} ({row.reason})"

    def summary(self) -> str:
        """One line: valid ticks, skipped rows (no price, non-tick messages) and rejected
        rows with the first one's file, line and reason."""
        skipped = len(self.no_price) + sum(self.skipped.values())
        why = dict(self.skipped)
        if self.no_price:
            why["no_price"] = len(self.no_price)
        text = (
            f"{self.path}: {len(self.ticks)} valid ticks, {skipped} skipped"
            + (f" {why}" if why else "")
            + f", {len(self.rejected)} rejected"
        )
        if self.rejected:
            text += f" (first: {self.where(self.rejected[0])})"
        return text

    def warn_no_price(self) -> None:
        """One warning for all rows without a price (count, first line numbers)."""
        if self.no_price:
            lines = ", ".join(str(r.line) for r in self.no_price[:5])
            more = ", ..." if len(self.no_price) > 5 else ""
            log.warning(
                "%s: skipped %d row(s) without a price (lines %s%s)",
                self.path, len(self.no_price), lines, more,
            )  # fmt: skip


def _sniff(header: str) -> str:
    counts = {d: header.count(d) for d in (",", ";", "\t")}
    return max(counts, key=lambda d: counts[d]) if any(counts.values()) else ","


def _column(names: list[str], wanted: tuple[str, ...]) -> str | None:
    low = {n.strip().lower(): n for n in names}
    for w in wanted:
        if w in low:
            return low[w]
    return None


def _csv_rows(
    path: Path, text: io.TextIOBase, opts: ReadOptions
) -> Iterator[tuple[int, dict[str, Any] | Bad]]:
    first = text.readline()
    delim = _sniff(first)
    decimal_comma = delim == ";"
    header = [h.strip() for h in next(csv.reader([first], delimiter=delim), [])]

    if opts.format.startswith("fields:"):
        mapping = {}
        for item in opts.format[len("fields:") :].split(","):
            name, _, key = item.partition("=")
            mapping[name.strip()] = key.strip()
        cols = {k: _column(header, (v.lower(),)) for k, v in mapping.items()}
        for k in ("symbol", "price", "ts"):
            if k not in cols:
                raise ValueError(f"field mapping lacks {k!r}")
        # A file of one symbol may map a symbol column it lacks when --symbol names it.
        missing = [mapping[k] for k, v in cols.items()
                   if v is None and not (k == "symbol" and opts.symbol)]  # fmt: skip
        if missing:
            raise DataError(f"{path}:1: header {header} lacks {missing} (the fields: mapping)")
    elif opts.format == "tickcast":
        price_col = (
            _column(header, (opts.price_column.lower(),))
            if opts.price_column
            else _column(header, PRICE_COLUMNS)
        )
        cols = {
            "ts": _column(header, TIME_COLUMNS),
            "symbol": _column(header, SYMBOL_COLUMNS),
            "price": price_col,
            "volume": _column(header, ("volume",)),
        }
        need = [k for k in ("ts", "price") if cols[k] is None]
        if need:
            want = {"ts": "timestamp (or ts/time/date)", "price": "price (or Adj Close/Close)"}
            if opts.price_column and cols["price"] is None:
                want["price"] = f"the price column {opts.price_column!r}"
            raise DataError(
                f"{path}:1: header {header} lacks {', '.join(want[k] for k in need)} "
                f"(delimiter {delim!r}); expected timestamp,symbol,price[,volume]"
            )
    else:
        raise DataError(
            f"{path}: the {opts.format} format is JSON messages (one per line, .jsonl); "
            "a CSV is read with --format tickcast or fields:..."
        )
    low = [h.lower() for h in header]
    twice = sorted({c for c in cols.values() if c is not None and low.count(c.lower()) > 1})
    if twice:
        raise DataError(f"{path}:1: header {header} has more than one {twice[0]!r} column: "
                        "which one is meant is ambiguous")  # fmt: skip
    default_symbol = opts.symbol or path.stem
    reader = csv.reader(text, delimiter=delim)
    rows: list[tuple[int, list[str]]] = []
    last = 0  # physical lines read so far, past the header
    for cells in reader:
        start, last = 1 + last + 1, reader.line_num
        if last > start - 1 and any(_swallows_rows(c, delim, len(header)) for c in cells):
            raise DataError(
                f"{path}:{start}: a quoted cell runs over lines {start}-{last + 1} "
                "(an unterminated quote?)"
            )
        rows.append((start, cells))
    numeric = [cols.get("price"), cols.get("volume")]
    idx = [header.index(c) for c in numeric if c is not None and c in header]
    # Decimal commas: a semicolon file whose numbers have commas (then a dot groups
    # thousands, `1.316,82`, and `1.205` alone is 1205, as such exports write it).
    decimal_comma = decimal_comma and any(
        "," in cells[i] for _, cells in rows[:1000] for i in idx if i < len(cells)
    )
    has_symbol = cols.get("symbol") is not None
    for line, cells in rows:
        if not cells or all(not c.strip() for c in cells):
            continue
        if len(cells) < len(header):
            cells = cells + [""] * (len(header) - len(cells))
        row = dict(zip(header, (c.strip() for c in cells), strict=False))
        rec: dict[str, Any] = {}
        for k, col in cols.items():
            if col is None:
                continue
            v = row.get(col, "")
            if decimal_comma and k in ("price", "volume"):
                v = _decimal_comma(v)
            rec[k] = v
        if not has_symbol:  # a file of one symbol: --symbol, or the file's name
            rec["symbol"] = default_symbol
        yield line, rec


def _swallows_rows(cell: str, delim: str, width: int) -> bool:
    """A quoted cell over several lines whose later lines look like rows of the file: a
    stray quote that swallowed them (a cell with line breaks in it is fine otherwise)."""
    lines = cell.splitlines()
    return len(lines) > 1 and any(ln.count(delim) >= width - 1 for ln in lines[1:])


_THOUSANDS = re.compile(r"[0-9]{1,3}(\.[0-9]{3})+")


def _decimal_comma(v: str) -> str:
    """`1.316,82` → `1316.82`, `1.205` → `1205`, `120,5` → `120.5` (European exports)."""
    if "," in v:
        return v.replace(".", "").replace(",", ".")
    if _THOUSANDS.fullmatch(v):
        return v.replace(".", "")
    return v


def _json_rows(text: io.TextIOBase) -> Iterator[tuple[int, object | Bad]]:
    for line, raw in enumerate(text, start=1):
        if not raw.strip():
            continue
        try:
            yield line, orjson.loads(raw)
        except orjson.JSONDecodeError as e:
            yield line, Bad("bad_json", str(e)[:200])


def _tickcast_row(fmt: Format, rec: dict[str, Any]) -> Tick | Skip:
    # A CSV row mapped to tickcast's fields (absent volume column: missing volume).
    return fmt.parse(
        {"symbol": rec["symbol"], "ts": rec["ts"], "price": rec["price"],
         "volume": rec.get("volume")}
    )  # fmt: skip


def read_ticks(path: str | Path, opts: ReadOptions | None = None) -> FileRead:
    """Read and validate every row of a tick file (see the module docstring).

    Raises `model.errors.DataError` naming the file (and line) when the file cannot be read
    as ticks at all (no usable header, a binary file), and `ValueError` for a bad
    `--format` or `--ts-unit`. Invalid rows are returned, not raised: the caller decides.
    """

    path = Path(path)
    opts = opts or ReadOptions()
    fmt = make_format(opts.format, opts.ts_unit)
    out = FileRead(path)
    try:
        with path.open(encoding="utf-8-sig", newline="") as f:
            head = f.read(1)
            f.seek(0)
            if path.suffix.lower() in JSON_SUFFIXES or head == "{":
                rows: Iterator[tuple[int, Any]] = _json_rows(f)  # type: ignore[arg-type]
                parse = fmt.parse
            else:
                rows = _csv_rows(path, f, opts)  # type: ignore[arg-type]
                csv_fmt = make_format("tickcast", opts.ts_unit)

                def parse(rec: Any) -> Tick | Skip:
                    return _tickcast_row(csv_fmt, rec)

            for line, rec in rows:
                try:
                    if isinstance(rec, Bad):
                        raise rec
                    t = parse(rec)
                except Bad as e:
                    r = Row(line, e.reason, e.detail)
                    if e.missing_price:
                        out.no_price.append(r)
                    else:
                        out.rejected.append(r)
                    continue
                if isinstance(t, Skip):
                    out.skipped[t.reason] += 1
                else:
                    out.ticks.append((line, t))
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except csv.Error as e:
        raise DataError(f"{path}: {e}") from None
    return out


def add_read_arguments(parser: Any) -> None:
    """The file commands' flags (train, evaluate, replay): `--format`, `--ts-unit`,
    `--symbol`, `--price-column`, `--strict`. `parser` is an `argparse.ArgumentParser`."""
    g = parser.add_argument_group("input file (CSV or JSON lines; README: Bring your own data)")
    g.add_argument(
        "--format",
        default="tickcast",
        help="tickcast (CSV columns or JSON ticks), binance, coinbase (JSON lines), "
        "or fields:symbol=KEY,price=KEY,ts=KEY[,volume=KEY] (default tickcast)",
    )
    g.add_argument("--ts-unit", default="auto", choices=("auto", "s", "ms", "us", "ns"),
                   help="epoch unit of numeric timestamps (default auto: per value)")  # fmt: skip
    g.add_argument("--symbol", help="symbol of a file without a symbol column (default: stem)")
    g.add_argument("--price-column", metavar="NAME",
                   help="CSV price column (default price, else Adj Close, else Close)")  # fmt: skip
    g.add_argument("--strict", action="store_true",
                   help="refuse a file with rows without a price (default: skip them)")  # fmt: skip


def read_options(ns: Any) -> ReadOptions:
    """`ReadOptions` from parsed flags (absent flags: the defaults)."""
    return ReadOptions(
        format=getattr(ns, "format", None) or "tickcast",
        ts_unit=getattr(ns, "ts_unit", None),
        symbol=getattr(ns, "symbol", None),
        price_column=getattr(ns, "price_column", None),
        strict=bool(getattr(ns, "strict", False)),
    )
