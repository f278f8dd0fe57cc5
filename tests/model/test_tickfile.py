"""Tick files as users bring them: epoch units, Excel's BOM and CRLF, semicolons with decimal
commas, Yahoo Finance exports with null rows, duplicate times, JSON lines of exchange feeds."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import orjson
import pytest

from model.data import DataError, load, load_csv
from model.tickfile import ReadOptions, read_ticks

JAN_2025_MS = 1735689600000


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


def test_epoch_microseconds_and_seconds(tmp_path: Path) -> None:
    us = write(tmp_path / "doge.csv", "timestamp,symbol,price,volume\n"
               "1735689600000000,DOGEUSDT,0.31600,71.02\n"
               "1735689601000000,DOGEUSDT,0.31590,0.0\n")  # fmt: skip
    (s,) = load_csv(us)
    assert s.ts.tolist() == [JAN_2025_MS, JAN_2025_MS + 1000]  # 2025, not year 56970
    assert s.price.tolist() == [0.316, 0.3159] and s.volume is not None
    assert s.volume.tolist() == [71.02, 0.0]
    sec = write(tmp_path / "s.csv", "timestamp,symbol,price\n1735689600,X,1\n1735689660,X,2\n")
    assert load_csv(sec)[0].ts.tolist() == [JAN_2025_MS, JAN_2025_MS + 60_000]  # not 1970
    mixed = write(
        tmp_path / "m.csv", "timestamp,symbol,price\n1735689599999,X,1\n1735689600000000,X,2\n"
    )  # fmt: skip  (Binance's switch on 2025-01-01)
    assert load_csv(mixed)[0].ts.tolist() == [JAN_2025_MS - 1, JAN_2025_MS]
    forced = write(tmp_path / "f.csv", "timestamp,symbol,price\n5,X,1\n6,X,2\n")
    assert load_csv(forced, ReadOptions(ts_unit="ms"))[0].ts.tolist() == [5, 6]


def test_excel_bom_and_crlf(tmp_path: Path) -> None:
    f = write(tmp_path / "x.csv", "\ufefftimestamp,symbol,price\r\n"
              "2019-01-02,SAP.DE,120.5\r\n2019-01-03,SAP.DE,121\r\n")  # fmt: skip
    (s,) = load_csv(f)
    assert s.symbol == "SAP.DE" and s.price.tolist() == [120.5, 121.0]


def test_semicolons_with_decimal_commas_and_tabs(tmp_path: Path) -> None:
    f = write(tmp_path / "eu.csv", "\ufeffDate;Symbol;Price;Volume\r\n"
              "2019-01-02;SAP.DE;120,00;297486\r\n2019-01-03;SAP.DE;119,52;\r\n")  # fmt: skip
    (s,) = load_csv(f)
    assert s.price.tolist() == [120.0, 119.52]
    assert s.volume is not None and s.volume[0] == 297486.0 and np.isnan(s.volume[1])
    t = write(tmp_path / "t.tsv", "timestamp\tsymbol\tprice\n1735689600\tX\t1.5\n")
    assert load_csv(t)[0].price.tolist() == [1.5]


YAHOO = (
    "Date,Open,High,Low,Close,Adj Close,Volume\n"
    "2019-07-29,10.0,10.5,9.5,10.2,9.2,1000\n"
    "2019-07-30,10.2,10.6,10.0,10.4,9.4,1100\n"
    "2019-07-31,null,null,null,null,null,null\n"
    "2019-08-01,10.4,10.8,10.1,10.6,9.6,900\n"
    "2019-08-02,null,null,null,null,null,null\n"
)


def test_yahoo_layout_with_null_rows(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    f = write(tmp_path / "RAW.DE.csv", YAHOO)
    with caplog.at_level(logging.WARNING, "model.data"):
        (s,) = load_csv(f)
    assert s.symbol == "RAW.DE"  # the file name's stem
    assert s.price.tolist() == [9.2, 9.4, 9.6]  # Adj Close by default
    assert s.volume is not None and s.volume.tolist() == [1000.0, 1100.0, 900.0]
    assert "skipped 2 row(s) without a price (lines 4, 6)" in caplog.text
    assert str(f) in caplog.text
    (c,) = load_csv(f, ReadOptions(price_column="Close", symbol="RAW"))
    assert c.symbol == "RAW" and c.price.tolist() == [10.2, 10.4, 10.6]
    with pytest.raises(DataError, match=r"RAW.DE.csv:4: price is missing .*2 such rows; --strict"):
        load_csv(f, ReadOptions(strict=True))
    with pytest.raises(DataError, match="lacks the price column 'Last'"):
        load_csv(f, ReadOptions(price_column="Last"))


def test_the_issue_null_row(tmp_path: Path) -> None:
    body = (
        "timestamp,symbol,price,volume\n"
        "2019-07-30,RAW.DE,5.1,100\n2019-07-31,RAW.DE,null,null\n2019-08-01,RAW.DE,5.2,\n"
    )
    f = write(tmp_path / "de.csv", body)
    got = read_ticks(f)
    assert [r.line for r in got.no_price] == [3] and not got.rejected
    (s,) = load_csv(f)
    assert s.price.tolist() == [5.1, 5.2]
    assert s.volume is not None and np.isnan(s.volume[1])  # blank volume: missing, not 0


def test_duplicate_timestamps_are_kept_in_file_order(tmp_path: Path) -> None:
    f = write(tmp_path / "d.csv", "timestamp,symbol,price\n"
              "1735689600000,X,1.0\n1735689600000,X,1.1\n1735689599000,X,0.9\n")  # fmt: skip
    (s,) = load_csv(f)
    assert s.ts.tolist() == [JAN_2025_MS - 1000, JAN_2025_MS, JAN_2025_MS]
    assert s.price.tolist() == [0.9, 1.0, 1.1]


@pytest.mark.parametrize(
    ("body", "match"),
    [
        ("timestamp,symbol,price\n1735689600,X,1\n1735689601,X,-2\n", r"e.csv:3: price must be"),
        ("timestamp,symbol,price\n1735689600,X,1\n4102444800000000000000,X,2\n", r"e.csv:3: ts"),
        ("timestamp,symbol,price\n-5,X,1\n", r"e.csv:2: ts '-5' is too small for an epoch time"),
        (
            'timestamp,symbol,price,note\n1735689600,X,1,"two\nlines"\n1735689601,X,x,\n',
            r"e.csv:4: price 'x' is not a number",
        ),
        ("price\n1\n", r"e.csv:1: header \['price'\] lacks timestamp"),
        (
            "timestamp,symbol,price,Price\n1735689600,X,1,2\n",
            r"e.csv:1: header .* has more than one 'Price' column: which one is meant",
        ),
        ("Date,date,Close\n2019-01-02,2019-01-03,1\n", r"more than one 'date' column"),
    ],
)
def test_every_error_names_file_and_line(tmp_path: Path, body: str, match: str) -> None:
    with pytest.raises(DataError, match=match):
        load_csv(write(tmp_path / "e.csv", body))


def test_binary_file_is_refused_with_its_name(tmp_path: Path) -> None:
    f = tmp_path / "b.csv"
    f.write_bytes(b"timestamp,symbol,price\n\xff\xfe\x00\x01,X,1\n")
    with pytest.raises(DataError, match=r"b\.csv: not UTF-8"):
        load(str(f))


def test_json_lines_of_an_exchange_feed(tmp_path: Path) -> None:
    msgs = [
        {"result": None, "id": 1},
        {"e": "trade", "E": 1, "s": "BTCUSDT", "t": 1, "p": "93610.93", "q": "0.5",
         "T": 1735689600000, "m": True, "M": True},
        {"e": "trade", "E": 1, "s": "BTCUSDT", "t": 2, "p": "93611.00", "q": "0.25",
         "T": 1735689600001000, "m": True, "M": True},  # microseconds
        {"e": "trade", "E": 1, "s": "BTCUSDT", "t": 3, "p": "-1", "q": "0.25",
         "T": 1735689600002, "m": True, "M": True},
    ]  # fmt: skip
    f = tmp_path / "btc.jsonl"
    f.write_bytes(b"\n".join(orjson.dumps(m) for m in msgs) + b"\n{oops\n")
    got = read_ticks(f, ReadOptions(format="binance"))
    assert [(t.ts, t.price) for _, t in got.ticks] == [
        (JAN_2025_MS, 93610.93),
        (JAN_2025_MS + 1, 93611.0),
    ]
    assert dict(got.skipped) == {"ack": 1}
    assert [(r.line, r.reason) for r in got.rejected] == [(4, "bad_price"), (5, "bad_json")]
    assert "2 valid ticks, 1 skipped {'ack': 1}, 2 rejected (first: " in got.summary()
    with pytest.raises(
        DataError, match=r"btc.jsonl:4: price must be finite and > 0, got '-1' .*and 1 more"
    ):
        load_csv(f, ReadOptions(format="binance"))
    with pytest.raises(DataError, match="binance format is JSON messages"):
        load_csv(write(tmp_path / "x.csv", "a,b\n1,2\n"), ReadOptions(format="binance"))


def test_fields_mapping_on_a_csv(tmp_path: Path) -> None:
    f = write(tmp_path / "fx.csv", 'Time,Pair,Bid,Size\n1735689600,EURUSD,"1,08",5\n')
    with pytest.raises(DataError, match="lacks"):
        load_csv(f, ReadOptions(format="fields:symbol=Pair,price=Last,ts=Time"))
    g = write(tmp_path / "fx2.csv", "Time,Pair,Bid,Size\n1735689600,EURUSD,1.08345,5\n")
    (s,) = load_csv(g, ReadOptions(format="fields:symbol=Pair,price=Bid,ts=Time,volume=Size"))
    assert (s.symbol, s.ts.tolist(), s.price.tolist()) == ("EURUSD", [JAN_2025_MS], [1.08345])


def test_decimal_commas_with_thousands_separators(tmp_path: Path) -> None:
    f = write(tmp_path / "euro.csv", "\ufeffdate;symbol;price;volume\r\n"
              '2019-01-02;SAP.DE;"1.316,82";1.297.486\r\n'
              "2019-01-03;SAP.DE;1.205;297486\r\n"
              "2019-01-04;SAP.DE;120,5;297,5\r\n")  # fmt: skip
    got = read_ticks(f)
    assert not got.rejected
    assert [(t.price, t.volume) for _, t in got.ticks] == [
        (1316.82, 1297486.0), (1205.0, 297486.0), (120.5, 297.5)
    ]  # fmt: skip
    # A semicolon file with decimal points (no commas in its numbers) keeps them.
    dots = write(tmp_path / "dots.csv", "date;symbol;price\n2019-01-02;X;1.205\n")
    assert [t.price for _, t in read_ticks(dots).ticks] == [1.205]


def test_a_stray_quote_that_swallows_rows_is_an_error_at_its_line(tmp_path: Path) -> None:
    rows = [f"{1712900000000 + 1000 * i},AAA,{100 + i / 100}" for i in range(20)]
    rows[9] = '1712900009000,"AAA,100.09'  # line 11 of the file
    f = write(tmp_path / "quote.csv", "timestamp,symbol,price\n" + "\n".join(rows) + "\n")
    with pytest.raises(DataError, match=r"quote\.csv:11: a quoted cell runs over lines 11-"):
        read_ticks(f)


def test_a_blank_symbol_cell_is_rejected_not_named_after_the_file(tmp_path: Path) -> None:
    f = write(tmp_path / "blank.csv", "timestamp,symbol,price\n"
              "1735689600000,AAA,10\n1735689660000,,11\n")  # fmt: skip
    got = read_ticks(f)
    assert [t.symbol for _, t in got.ticks] == ["AAA"]
    assert [(r.line, r.reason) for r in got.rejected] == [(3, "bad_symbol")]


def test_a_fields_mapping_must_name_columns_the_file_has(tmp_path: Path) -> None:
    f = write(tmp_path / "f.csv", "time,Instrument,px\n1735689600000,AAA,10\n1735689600000,BBB,5\n")
    with pytest.raises(DataError, match=r"f\.csv:1: .*lacks \['instrumnt'\]"):
        read_ticks(f, ReadOptions(format="fields:symbol=instrumnt,price=px,ts=time"))
    got = read_ticks(f, ReadOptions(format="fields:symbol=instrument,price=px,ts=time"))
    assert [t.symbol for _, t in got.ticks] == ["AAA", "BBB"]  # names match in any case
