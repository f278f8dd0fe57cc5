"""Files and Kafka values accept the same ticks with the same values (no broker: the
decoders alone; test_formats.py runs the same cases through a real broker and `serve`)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import orjson
import pytest

from model import data
from model.checkpoint import LoadedModel
from model.tickfile import ReadOptions, read_ticks
from streamer.core.engine import Engine
from streamer.core.ticks import decode, encode, make_format
from streamer.jobs.replay import interleave
from tests.streamer.core.test_engine import offline
from tests.streamer.formats_cases import (
    FIELDS,
    binance_feed,
    coinbase_feed,
    every_kind,
    fields_feed,
    same,
)

Row = tuple[str, int, float, float]


def file_ticks(path: Path, fmt: str = "tickcast") -> list[Row]:
    got = read_ticks(path, ReadOptions(format=fmt))
    return [(t.symbol, t.ts, t.price, t.volume) for _, t in got.ticks]


def kafka_ticks(values: list[bytes], keys: list[bytes | None], fmt: str = "tickcast") -> list[Row]:
    good, _ = decode(values, keys, make_format(fmt))  # type: ignore[arg-type]
    return list(zip(good.symbols, good.ts, good.price, good.volume, strict=True))


def equal_rows(a: list[Row], b: list[Row]) -> bool:
    return len(a) == len(b) and all(
        x[:3] == y[:3] and same(x[3], y[3]) for x, y in zip(a, b, strict=True)
    )


def test_every_kind_parses_the_same_from_a_file_and_from_kafka(tmp_path: Path) -> None:
    records, bad = every_kind()
    f = tmp_path / "kinds.jsonl"
    f.write_bytes(b"\n".join(v for _, v in records) + b"\n")
    from_file = file_ticks(f)
    from_kafka = kafka_ticks([v for _, v in records], [k for k, _ in records])
    assert equal_rows(from_file, from_kafka)
    assert len(from_file) == 5 * 100
    _, rejected = decode([v for _, v in records], [k for k, _ in records])  # type: ignore[arg-type]
    got = read_ticks(f)
    assert sorted(r.reason for r in rejected) == sorted(
        [r.reason for r in got.rejected] + [r.reason for r in got.no_price]
    )
    assert {r: sum(1 for x in rejected if x.reason == r) for r in bad} == bad
    by = {s.symbol: s for s in data.to_series(got)}
    assert by["DOGEUSDT"].ts[0] == 1_735_689_600_000  # µs
    assert by["PEPE"].ts[0] == 1_735_689_600_000  # ns
    assert by["SAP.DE"].ts[:3].tolist() == [1_735_689_600_000 + 60_000 * k for k in range(3)]
    assert np.sum(np.diff(by["SAP.DE"].ts) == 0) == 10  # duplicate times kept
    vol = by["DOGEUSDT"].volume
    assert vol is not None and np.isnan(vol).sum() == sum(
        1 for i in range(100) if i % 7 == 3 or i % 11 == 5 or i % 13 == 6
    )
    assert by["PEPE"].volume is None


@pytest.mark.parametrize(
    ("feed", "fmt"), [(binance_feed, "binance"), (coinbase_feed, "coinbase"), (fields_feed, FIELDS)]
)
def test_exchange_feeds_parse_the_same_from_a_file_and_from_kafka(
    tmp_path: Path, feed: object, fmt: str
) -> None:
    values, n_ticks = feed()  # type: ignore[operator]
    f = tmp_path / "feed.jsonl"
    f.write_bytes(b"\n".join(values) + b"\n")
    from_file = file_ticks(f, fmt)
    assert len(from_file) == n_ticks
    assert equal_rows(from_file, kafka_ticks(values, [None] * len(values), fmt))
    good, bad = decode(values, [None] * len(values), make_format(fmt))  # type: ignore[arg-type]
    assert bad == [] and len(good.skipped) == len(values) - n_ticks
    assert dict(read_ticks(f, ReadOptions(format=fmt)).skipped) == {
        r: sum(1 for s in good.skipped if s.reason == r) for r in {s.reason for s in good.skipped}
    }


def test_csv_kinds_through_replay_encoding_decode_to_the_same_ticks(tmp_path: Path) -> None:
    # What `tickcast replay` publishes for a messy CSV is what `serve` decodes, value for value.
    f = tmp_path / "SAP.DE.csv"
    f.write_bytes(
        "\ufeffDate;Price;Volume\r\n2019-01-02;120,00;297486\r\n2019-01-02;120,10;\r\n"
        "2019-01-03;null;null\r\n2019-01-04;119,52;1000\r\n".encode()
    )
    series = data.load_csv(f)
    sent = list(interleave(series))
    good, bad = decode([encode(*t) for t in sent], [t[0].encode() for t in sent])
    assert bad == []
    rows = list(zip(good.symbols, good.ts, good.price, good.volume, strict=True))
    assert equal_rows(rows, file_ticks(f))
    assert math.isnan(rows[1][3])  # the blank volume is missing on both paths


def test_missing_volumes_give_live_forecasts_equal_to_offline(stocks: LoadedModel) -> None:
    # The stocks model uses volume: a blank cell once became 0 offline and "unchanged" live.
    records, _ = every_kind()
    values = [v for k, v in records if k == b"DOGEUSDT"]
    good, _ = decode(values, [b"DOGEUSDT"] * len(values))  # type: ignore[arg-type]
    assert np.isnan(good.volume).sum() > 10
    eng = Engine(stocks)
    f = eng.apply(good, np.zeros(len(values), np.int32), np.arange(len(values))).forecasts
    ts, price, vol = (np.asarray(x) for x in (good.ts, good.price, good.volume))
    ref = offline(stocks, [data.Series("DOGEUSDT", ts, price, vol)])["DOGEUSDT"]
    w = stocks.config.window
    live = np.stack([f.forecast, f.lower, f.upper], axis=1)[w - 1 :]
    np.testing.assert_allclose(live, ref, rtol=1e-5)


def test_prices_from_1e_8_to_1e10_in_one_stream_keep_every_digit(stocks: LoadedModel) -> None:
    # The same returns at three price levels in one batch: the forecasts, once divided by
    # the level, agree far beyond 6 significant digits, and the wire keeps them exactly.
    records, _ = every_kind()
    base = [orjson.loads(v)["price"] for k, v in records if k == b"SAP.DE"]
    levels = {"MEME": 1e-8, "MID": 1.0, "IDR": 1e10}
    ticks = [(sym, 1_735_689_600_000 + 60_000 * i, float(p) * lv / 120, None)
             for i, p in enumerate(base) for sym, lv in levels.items()]  # fmt: skip
    good, bad = decode([encode(*t) for t in ticks], [t[0].encode() for t in ticks])
    assert bad == [] and good.price[:3] == [t[2] for t in ticks[:3]]
    f = Engine(stocks).apply(good, np.zeros(len(ticks), np.int32), np.arange(len(ticks))).forecasts
    per = {
        sym: np.array([f.forecast[i] for i, s in enumerate(f.symbols) if s == sym]) / lv
        for sym, lv in levels.items()
    }
    np.testing.assert_allclose(per["MEME"], per["MID"], rtol=1e-9)
    np.testing.assert_allclose(per["IDR"], per["MID"], rtol=1e-9)
    assert per["MEME"].min() > 0.5  # 1e-8 forecasts are not rounded to 0
