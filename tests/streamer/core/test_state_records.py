"""The state topic's record codec (streamer/core/state_records.py), without Kafka."""

from __future__ import annotations

import numpy as np
import pytest

from streamer.core.state_records import (
    decode_marker,
    decode_state,
    encode_marker,
    encode_states,
)


def test_states_round_trip_bit_exactly() -> None:
    rng = np.random.default_rng(0)
    n, r = 3, 8
    prices = rng.uniform(1e-8, 1e9, (n, r))
    times = rng.integers(0, 2**62, (n, r))
    volumes = rng.uniform(0, 10, (n, r))
    volumes[1, 2] = np.nan  # unknown volumes stay unknown
    hc = rng.normal(size=(n, 2, 3, 4)).astype(np.float32)
    meta = np.array([[0, 10, 5, 7, 100], [1, 11, 6, 8, 200], [2, 12, 7, 9, 300]], np.int64)
    values = encode_states(["A", "B", "C"], "v1", meta, prices, times, volumes, hc)
    for j, value in enumerate(values):
        rec = decode_state(value, r)
        assert (rec.symbol, rec.model) == ("ABC"[j], "v1")
        got = (rec.partition, rec.offset, rec.count, rec.seq, rec.last_ts)
        assert got == tuple(meta[j].tolist())
        np.testing.assert_array_equal(rec.prices, prices[j])
        np.testing.assert_array_equal(rec.times, times[j])
        np.testing.assert_array_equal(rec.volumes, volumes[j])  # NaN == NaN here
        np.testing.assert_array_equal(rec.hc, hc[j])


def test_unreadable_records_raise_value_error_with_the_reason() -> None:
    one = np.zeros((1, 4))
    (value,) = encode_states(
        ["A"], "v1", np.zeros((1, 5), np.int64), one, one.astype(np.int64), one,
        np.zeros((1, 2, 1, 2), np.float32),
    )  # fmt: skip
    with pytest.raises(ValueError, match="history 4"):
        decode_state(value, 8)  # another buffer length
    with pytest.raises(ValueError, match="bytes of arrays"):
        decode_state(value[:-4], 4)  # truncated
    with pytest.raises(ValueError):
        decode_state(b"\x05\x00\x00\x00{nope", 4)


def test_marker_round_trip() -> None:
    assert decode_marker(encode_marker(1234, "v9")) == 1234
    with pytest.raises(ValueError, match="not a state marker"):
        decode_marker(b'{"format": 1}')
