"""Tick validation: every rejection reason, and good ticks decoded exactly."""

from __future__ import annotations

import math

import pytest

from streamer.core.ticks import REASONS, as_arrays, decode, encode, make_format

GOOD = b'{"symbol": "MSFT", "ts": 1700000000000, "price": 371.25, "volume": 1200}'

BAD: list[tuple[bytes | None, bytes | None, str]] = [
    (b"{not json", b"X", "bad_json"),
    (b"\xff\xfe", b"X", "bad_json"),
    (None, b"X", "not_object"),
    (b"[1, 2]", b"X", "not_object"),
    (b'"MSFT"', b"X", "not_object"),
    (b'{"ts": 1700000000000, "price": 1.0}', None, "missing_field"),
    (b'{"symbol": "X", "price": 1.0}', b"X", "missing_field"),
    (b'{"symbol": "X", "ts": 1700000000000}', b"X", "missing_field"),
    (b'{"symbol": 7, "ts": 1700000000000, "price": 1.0}', None, "bad_type"),
    (b'{"symbol": "X", "ts": "soon", "price": 1.0}', b"X", "bad_ts"),
    (b'{"symbol": "X", "ts": 1.5, "price": 1.0}', b"X", "bad_ts"),  # no epoch time
    (b'{"symbol": "X", "ts": true, "price": 1.0}', b"X", "bad_ts"),
    (b'{"symbol": "X", "ts": 1700000000000, "price": "1.0x"}', b"X", "bad_type"),
    (b'{"symbol": "X", "ts": 1700000000000, "price": null}', b"X", "bad_price"),
    (b'{"symbol": "X", "ts": 1700000000000, "price": [1]}', b"X", "bad_type"),
    (b'{"symbol": "X", "ts": 1700000000000, "price": 1.0, "volume": "lots"}', b"X", "bad_type"),
    (b'{"symbol": "", "ts": 1700000000000, "price": 1.0}', None, "bad_symbol"),
    (b'{"symbol": "' + b"A" * 65 + b'", "ts": 1700000000000, "price": 1.0}', None, "bad_symbol"),
    (b'{"symbol": "X", "ts": 1700000000000, "price": 1.0}', b"Y", "key_mismatch"),
    (b'{"symbol": "X", "ts": 1700000000000, "price": NaN}', b"X", "bad_price"),
    (b'{"symbol": "X", "ts": 1700000000000, "price": Infinity}', b"X", "bad_price"),
    (b'{"symbol": "X", "ts": 1700000000000, "price": 0}', b"X", "bad_price"),
    (b'{"symbol": "X", "ts": 1700000000000, "price": -3.5}', b"X", "bad_price"),
    (b'{"symbol": "X", "ts": 1700000000000, "price": 1.0, "volume": -1}', b"X", "bad_volume"),
    (b'{"symbol": "X", "ts": 1700000000000, "price": 1.0, "volume": Infinity}', b"X", "bad_volume"),
    (b'{"symbol": "X", "ts": -1, "price": 1.0}', b"X", "bad_ts"),
    (b'{"symbol": "X", "ts": 1700000000000000000000, "price": 1.0}', b"X", "bad_ts"),
    (b'{"symbol": "X", "ts": 9000000000000, "price": 1.0}', b"X", "bad_ts"),  # ms in 2255
]


def test_good_tick_decodes_exactly() -> None:
    good, bad = decode([GOOD, encode("IBM", 1700000000005, 2.5)], [b"MSFT", b"IBM"])
    assert bad == []
    assert good.symbols == ["MSFT", "IBM"]
    ts, price, vol = as_arrays(good)
    assert ts.tolist() == [1700000000000, 1700000000005]
    assert price.tolist() == [371.25, 2.5]
    assert vol[0] == 1200.0 and math.isnan(vol[1])
    assert good.index == [0, 1]


@pytest.mark.parametrize(("raw", "key", "reason"), BAD)
def test_each_rejection_reason(raw: bytes | None, key: bytes | None, reason: str) -> None:
    good, bad = decode([GOOD, raw], [b"MSFT", key])
    assert len(good) == 1 and good.index == [0]
    assert [(b.index, b.reason) for b in bad] == [(1, reason)]
    assert bad[0].detail


def test_reasons_are_all_exercised() -> None:
    engine_reasons = {"stale_ts", "partition_mismatch"}  # tested in test_engine
    assert {r for _, _, r in BAD} | engine_reasons == set(REASONS)


def test_encode_round_trip_and_unknown_fields_ignored() -> None:
    raw = b'{"symbol": "A", "ts": 1700000003, "price": 9.5, "exchange": "X", "volume": null}'
    good, bad = decode([raw, encode("A", 1700000004, 9.75, 10.0)], [b"A", b"A"])
    assert bad == [] and good.price == [9.5, 9.75] and math.isnan(good.volume[0])


def test_formats_skip_non_ticks_and_force_units() -> None:
    ack, trade = (
        b'{"result": null, "id": 7}',
        (
            b'{"e": "trade", "E": 1, "s": "BTCUSDT", "t": 1, "p": "93610.93", "q": "0.5", '
            b'"T": 1735689600000000, "m": true, "M": true}'
        ),
    )
    good, bad = decode([ack, trade, b"{oops"], [None, b"BTCUSDT", None], make_format("binance"))
    assert good.symbols == ["BTCUSDT"] and good.ts == [1735689600000] and good.index == [1]
    assert [(s.index, s.reason) for s in good.skipped] == [(0, "ack")]
    assert [(b.index, b.reason) for b in bad] == [(2, "bad_json")]
    # Integers below 1e11 are epoch seconds unless the unit is forced (the fast path steps
    # aside); below 1e8 they are no epoch time at all, unless forced.
    raw = encode("X", 1700000005, 1.0)
    assert decode([raw], [b"X"])[0].ts == [1700000005000]
    assert decode([raw], [b"X"], make_format("tickcast", "ms"))[0].ts == [1700000005]
    small = encode("X", 5, 1.0)
    assert [b.reason for b in decode([small], [b"X"])[1]] == ["bad_ts"]
    assert decode([small], [b"X"], make_format("tickcast", "ms"))[0].ts == [5]


def test_poison_records_are_dead_letters_not_crashes() -> None:
    """Records no rule foresaw end as rejections with a reason; the batch carries on."""
    values = [
        b'{"symbol":"AAA","ts":"\xc2\xb2","price":1}',
        b"[" * 100_000 + b"]" * 100_000,  # nested beyond any JSON parser's depth
        b'{"symbol":"AAA","ts":"' + b"9" * 5000 + b'","price":1}',
        GOOD,
    ]
    for spec in ("tickcast", "binance", "coinbase"):
        good, bad = decode(values, [None] * len(values), make_format(spec))
        assert len(good) + len(bad) + len(good.skipped) == len(values), spec
        assert {b.index for b in bad} >= {0, 1, 2}, (spec, bad)
    good, bad = decode(values, [None] * len(values))
    assert [b.reason for b in bad] == ["bad_ts", "bad_json", "bad_ts"] and len(good) == 1


def test_the_kafka_fast_path_reads_a_12_digit_date_as_the_file_path_does() -> None:
    """202404120930 is 2024-04-12 09:30 in a file; as epoch ms it would be 1976. The fast
    path leaves such values to the parser, so Kafka reads it as the file does."""
    good, bad = decode([b'{"symbol": "X", "ts": 202404120930, "price": 1.0}'], [b"X"])
    assert bad == [] and good.ts == [1712914200000]
    good, _ = decode([encode("X", 1712900003000, 1.0)], [b"X"])  # real ms: unchanged
    assert good.ts == [1712900003000]


def test_every_time_replay_writes_reads_back_as_itself() -> None:
    """Epoch ms of 1976 that spell a YYYYMMDDHHMM date (200101010000: 2001-01-01 00:00)
    are written as ISO-8601, so Kafka reads the time replay meant."""
    for ts in (200101010000, 194486400000, 219912312359, 1712900003123):
        good, bad = decode([encode("X", ts, 1.0)], [b"X"])
        assert bad == [] and good.ts == [ts], ts
