"""The shared tick parser: timestamps of any unit, numbers, formats (pure, no Kafka)."""

from __future__ import annotations

import math

import pytest

from model.tickparse import (
    MAX_TS_MS,
    REJECT_REASONS,
    SKIP_REASONS,
    Bad,
    Skip,
    Tick,
    make_format,
    parse_number,
    parse_ts,
)

JAN_2025_MS = 1735689600000  # 2025-01-01T00:00:00Z


@pytest.mark.parametrize(
    ("raw", "ms"),
    [
        (1735689600, JAN_2025_MS),  # seconds
        (1735689600.25, JAN_2025_MS + 250),  # fractional seconds
        (JAN_2025_MS, JAN_2025_MS),  # milliseconds
        (1735689600000000, JAN_2025_MS),  # microseconds (Binance spot files from 2025)
        (1735689600123456, JAN_2025_MS + 123),  # µs: floored to the millisecond
        (1735689600000000000, JAN_2025_MS),  # nanoseconds
        (1712900009000.0, 1712900009000),  # an integral float (issue 12)
        ("1735689600000000", JAN_2025_MS),  # digit strings
        ("1712900009000.0", 1712900009000),
        ("2025-01-01T00:00:00Z", JAN_2025_MS),  # ISO-8601 with Z
        ("2025-01-01T01:00:00+01:00", JAN_2025_MS),  # with an offset
        ("2025-01-01 00:00:00.5", JAN_2025_MS + 500),  # naive: UTC
        ("2025-01-01", JAN_2025_MS),  # a date (Yahoo's Date column)
        ("2024-04-12T05:33:23.123456Z", 1712900003123),  # Coinbase's microseconds
        (1735689600000.5, JAN_2025_MS),  # a fraction of a ms (time.time() * 1000): floored
        (1735689600000123.9, JAN_2025_MS),  # of a microsecond
    ],
)
def test_timestamps_of_every_unit_become_epoch_ms(raw: object, ms: int) -> None:
    assert parse_ts(raw) == ms


def test_units_mix_in_one_stream_and_the_ranges_are_the_documented_ones() -> None:
    mixed = [1735689600, 1735689601000, 1735689602000000, 1735689603000000000]
    assert [parse_ts(v) for v in mixed] == [JAN_2025_MS + 1000 * k for k in range(4)]
    # Just below 1e11 is seconds (year 5138: implausible), 1e11 is milliseconds (1973).
    with pytest.raises(Bad, match="99999999999 read as epoch s is after 2200"):
        parse_ts(99_999_999_999)
    assert parse_ts(100_000_000_000) == 100_000_000_000
    assert parse_ts(100_000_000_000_000) == 100_000_000_000  # 1e14: microseconds
    assert parse_ts(100_000_000_000_000_000) == 100_000_000_000  # 1e17: nanoseconds


@pytest.mark.parametrize(
    "raw",
    [0, 1, 2019, 190102, 43000, 43000.5, "43466", 99_999_999, -5, 1e7, 311299],
)
def test_numbers_too_small_for_an_epoch_time_are_rejected_not_read_as_1970(raw: object) -> None:
    """A year, a date without separators (YYMMDD, DDMMYY), an Excel serial day (with a time
    fraction too) or a row number read as epoch seconds would be a day in 1970: with the
    unit inferred it is `bad_ts`, naming the value; forced to seconds, it is read."""
    with pytest.raises(Bad, match="too small for an epoch time") as e:
        parse_ts(raw)
    assert e.value.reason == "bad_ts" and str(raw) in str(e.value)
    if float(raw) >= 0:
        assert parse_ts(raw, "s") == int(float(raw) * 1000)
    assert parse_ts(100_000_000) == 100_000_000_000  # 1e8: 1973-03-03, seconds


def test_forced_unit() -> None:
    assert parse_ts(5, "ms") == 5  # milliseconds in 1970: only with --ts-unit ms
    assert parse_ts(5, "s") == 5000
    assert parse_ts(1735689600000000, "us") == JAN_2025_MS
    assert parse_ts("1735689600", "s") == JAN_2025_MS
    with pytest.raises(Bad, match="read as epoch s is after 2200"):
        parse_ts(JAN_2025_MS, "s")
    with pytest.raises(ValueError, match="unknown ts unit"):
        make_format("tickcast", "minutes")


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (-1_000_000_000, "ts -1000000000 read as epoch s is before 1970"),
        (9_000_000_000_000, "ts 9000000000000 read as epoch ms is after 2200"),
        (10**21, "too large for any epoch unit"),
        ("1969-12-31T23:59:59Z", "'1969-12-31T23:59:59Z' read as epoch ISO-8601 is before 1970"),
        ("2201-01-01", "after 2200"),
        ("yesterday", "'yesterday': epoch number or ISO-8601 expected"),
        (19650315, "read as a date .* is before 1970"),  # a date, but before the epoch
        (196503150930, "read as a date .* is before 1970"),
        ("１７９６０３９０００", "in ASCII expected"),  # full-width digits
        (True, "got bool"),
        (float("nan"), "not a number"),
    ],
)
def test_implausible_timestamps_are_rejected_naming_the_value(raw: object, match: str) -> None:
    with pytest.raises(Bad, match=match) as e:
        parse_ts(raw)
    assert e.value.reason == "bad_ts"
    assert MAX_TS_MS == 7_258_118_400_000  # 2200-01-01


@pytest.mark.parametrize("raw", [None, float("nan"), "", " ", "null", "NaN", "nan", "None"])
def test_missing_numbers_are_nan(raw: object) -> None:
    assert math.isnan(parse_number(raw, "volume"))


def test_decimal_strings_keep_their_value() -> None:
    assert parse_number("70746.9", "price") == 70746.9
    assert parse_number("0.00878062", "volume") == 0.00878062
    assert parse_number("1e-8", "price") == 1e-8
    assert parse_number(3, "price") == 3.0
    with pytest.raises(Bad, match="'lots' is not a number"):
        parse_number("lots", "volume")
    with pytest.raises(Bad, match="got bool"):
        parse_number(True, "price")


TICKCAST = make_format("tickcast")


def test_the_issue_messages_are_accepted() -> None:
    t = TICKCAST.parse(
        {"symbol": "BTC-USD", "ts": 1712900003000, "price": "70746.9", "volume": "0.00878062"}
    )
    assert t == Tick("BTC-USD", 1712900003000, 70746.9, 0.00878062)
    t = TICKCAST.parse({"symbol": "BTC-USD", "ts": 1712900009000.0, "price": 70747.0})
    assert isinstance(t, Tick) and t.ts == 1712900009000 and math.isnan(t.volume)


@pytest.mark.parametrize(
    ("obj", "reason"),
    [
        ([1], "not_object"),
        ({"ts": 1, "price": 1}, "missing_field"),
        ({"symbol": "X", "ts": 1, "price": None}, "bad_price"),  # missing price: rejected
        ({"symbol": "X", "ts": 1, "price": "null"}, "bad_price"),
        ({"symbol": "X", "ts": 1, "price": ""}, "bad_price"),
        ({"symbol": "X", "ts": 1, "price": "-1"}, "bad_price"),
        ({"symbol": "X", "ts": 1, "price": "1", "volume": "-1"}, "bad_volume"),
        ({"symbol": 5, "ts": 1, "price": "1"}, "bad_type"),
        ({"symbol": "", "ts": 1, "price": "1"}, "bad_symbol"),
        ({"symbol": "X", "ts": None, "price": "1"}, "missing_field"),
    ],
)
def test_tickcast_rejections(obj: object, reason: str) -> None:
    assert reason in REJECT_REASONS
    with pytest.raises(Bad) as e:
        TICKCAST.parse(obj)
    assert e.value.reason == reason and e.value.detail


def test_missing_volume_stays_missing() -> None:
    for vol in (None, "", "null", float("nan")):
        t = TICKCAST.parse({"symbol": "X", "ts": JAN_2025_MS, "price": 1.0, "volume": vol})
        assert isinstance(t, Tick) and math.isnan(t.volume)


# Messages written from Binance's published spot WebSocket stream schemas.
BINANCE_TRADE = {
    "e": "trade", "E": 1735689600005, "s": "DOGEUSDT", "t": 12345, "p": "0.31600000",
    "q": "71.02000000", "T": 1735689600001, "m": True, "M": True,
}  # fmt: skip
BINANCE_AGG = {
    "e": "aggTrade", "E": 1735689601005, "s": "DOGEUSDT", "a": 26129, "p": "0.31590000",
    "q": "0.00000000", "f": 100, "l": 105, "T": 1735689601000, "m": True, "M": True,
}  # fmt: skip
KLINE = {
    "t": 1735689600000, "T": 1735689659999, "s": "BTCUSDT", "i": "1m", "f": 100, "L": 200,
    "o": "93576.00", "c": "93610.93", "h": "93625.00", "l": "93570.00", "v": "12.34500",
    "n": 100, "x": True, "q": "1155000.1", "V": "6.1", "Q": "571000.2", "B": "0",
}  # fmt: skip
BINANCE_KLINE = {"e": "kline", "E": 1735689660001, "s": "BTCUSDT", "k": KLINE}


def test_binance_trades_aggtrades_and_closed_klines() -> None:
    b = make_format("binance")
    assert b.parse(BINANCE_TRADE) == Tick("DOGEUSDT", 1735689600001, 0.316, 71.02)
    assert b.parse(BINANCE_AGG) == Tick("DOGEUSDT", 1735689601000, 0.3159, 0.0)
    assert b.parse(BINANCE_KLINE) == Tick("BTCUSDT", 1735689659999, 93610.93, 12.345)
    wrapped = {"stream": "dogeusdt@trade", "data": BINANCE_TRADE}  # combined streams
    assert b.parse(wrapped) == b.parse(BINANCE_TRADE)
    # Microsecond timestamps (the 2025 `timeUnit=MICROSECOND` option) infer their unit.
    assert b.parse({**BINANCE_TRADE, "T": 1735689600001000}) == b.parse(BINANCE_TRADE)


def test_binance_non_ticks_are_skipped_with_their_reason() -> None:
    b = make_format("binance")
    assert b.parse({"result": None, "id": 1}) == Skip("ack", "subscription response id=1")
    open_kline = {**BINANCE_KLINE, "k": {**KLINE, "x": False}}
    assert isinstance(s := b.parse(open_kline), Skip) and s.reason == "open_kline"
    depth = {"e": "depthUpdate", "E": 1, "s": "BNBBTC", "U": 157, "u": 160, "b": [], "a": []}
    assert isinstance(s := b.parse(depth), Skip) and s.reason == "other_message"
    assert {"ack", "open_kline", "other_message"} <= set(SKIP_REASONS)
    with pytest.raises(Bad, match="'p'"):
        b.parse({k: v for k, v in BINANCE_TRADE.items() if k != "p"})


# Messages written from Coinbase Exchange's published WebSocket feed schemas.
COINBASE_TICKER = {
    "type": "ticker", "sequence": 37475248783, "product_id": "BTC-USD", "price": "70746.9",
    "open_24h": "69000.1", "volume_24h": "12000.5", "low_24h": "68000", "high_24h": "71000",
    "volume_30d": "400000", "best_bid": "70746.8", "best_bid_size": "0.1",
    "best_ask": "70747.0", "best_ask_size": "0.2", "side": "buy",
    "time": "2024-04-12T05:33:23.000000Z", "trade_id": 370843401, "last_size": "0.00878062",
}  # fmt: skip
COINBASE_MATCH = {
    "type": "match", "trade_id": 10, "sequence": 50, "maker_order_id": "ac928c66",
    "taker_order_id": "132fb6ae", "time": "2024-04-12T05:33:29.5Z", "product_id": "BTC-USD",
    "size": "5.23512", "price": "70747.01", "side": "sell",
}  # fmt: skip


def test_coinbase_ticker_and_match_and_the_skipped_rest() -> None:
    c = make_format("coinbase")
    assert c.parse(COINBASE_TICKER) == Tick("BTC-USD", 1712900003000, 70746.9, 0.00878062)
    assert c.parse(COINBASE_MATCH) == Tick("BTC-USD", 1712900009500, 70747.01, 5.23512)
    assert c.parse({**COINBASE_MATCH, "type": "last_match"}) == c.parse(COINBASE_MATCH)
    subs = {"type": "subscriptions", "channels": [{"name": "ticker", "product_ids": ["BTC-USD"]}]}
    assert c.parse(subs) == Skip("ack", "subscriptions")
    beat = {"type": "heartbeat", "sequence": 90, "last_trade_id": 20,
            "product_id": "BTC-USD", "time": "2014-11-07T08:19:28.464459Z"}  # fmt: skip
    assert c.parse(beat) == Skip("heartbeat", "heartbeat")
    l2 = {
        "type": "l2update",
        "product_id": "BTC-USD",
        "changes": [],
        "time": "2024-04-12T05:33:23Z",
    }
    assert isinstance(s := c.parse(l2), Skip) and s.reason == "other_message"


def test_fields_mapping() -> None:
    f = make_format("fields:symbol=instrument,price=last,ts=time,volume=qty")
    got = f.parse({"instrument": "EURUSD", "last": "1.08345", "time": 1735689600, "qty": None})
    assert isinstance(got, Tick) and (got.symbol, got.ts, got.price) == (
        "EURUSD",
        JAN_2025_MS,
        1.08345,
    )
    assert math.isnan(got.volume)
    nested = make_format("fields:symbol=k.s,price=k.c,ts=k.T,volume=k.v")
    assert nested.parse(BINANCE_KLINE) == Tick("BTCUSDT", 1735689659999, 93610.93, 12.345)
    with pytest.raises(Bad, match="'last'"):
        f.parse({"instrument": "EURUSD", "time": 1735689600})
    for bad in ("fields:symbol=a,price=b", "fields:symbol=a,price=b,ts=c,colour=d", "fields:x"):
        with pytest.raises(ValueError, match="fields:symbol=KEY"):
            make_format(bad)
    with pytest.raises(ValueError, match="unknown format"):
        make_format("kraken")


@pytest.mark.parametrize(
    "record",
    [
        {"symbol": "AAA", "ts": "²", "price": 1},  # a Unicode digit int() refuses
        {"symbol": "AAA", "ts": "1712900003000²", "price": 1},
        {"symbol": "AAA", "ts": "9" * 5000, "price": 1},  # beyond int()'s 4300 digits
        {"symbol": "AAA", "ts": 1712900003000, "price": "1_000"},  # Python-only syntax
        {"symbol": "AAA", "ts": 1712900003000, "price": "١٢"},  # Arabic-Indic digits
        {"symbol": "AAA", "ts": 1712900003000, "price": {"nested": [1]}},
    ],
)
def test_a_record_no_rule_foresaw_is_rejected_never_raised(record: dict[str, object]) -> None:
    for spec in ("tickcast", "fields:symbol=symbol,price=price,ts=ts"):
        with pytest.raises(Bad) as e:
            make_format(spec).parse(record)
        assert e.value.reason in ("bad_ts", "bad_type", "bad_price")


@pytest.mark.parametrize(
    ("raw", "ms"),
    [
        (20230102, 1672617600000),  # YYYYMMDD, not 1970-08-23 in epoch seconds
        ("20230102", 1672617600000),
        (202404120930, 1712914200000),  # YYYYMMDDHHMM, not 1976 in epoch ms
        (20240412093015, 1712914215000),  # YYYYMMDDHHMMSS, not after 2200 in epoch ms
        (20230102.0, 1672617600000),  # as pandas writes an integer column with a NaN
        (202404120930.0, 1712914200000),
        (1712900003, 1712900003000),  # epoch seconds stay epoch seconds
    ],
)
def test_integers_that_spell_a_date_are_read_as_dates(raw: object, ms: int) -> None:
    assert parse_ts(raw) == ms
    assert parse_ts(20230102, "s") == 20230102000  # a forced unit reads the number as is
    with pytest.raises(Bad, match="too small for an epoch time"):  # no month 13: no date,
        parse_ts(20231301)  # and as epoch seconds a day in 1970
