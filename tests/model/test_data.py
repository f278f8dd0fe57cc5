from __future__ import annotations

import numpy as np
import pytest

from model import data
from model.data import DataError, load_csv, split_times, synthetic


def test_csv_iso_and_epoch_ms_several_symbols_any_order(tmp_path):
    f = tmp_path / "t.csv"
    f.write_text(
        "timestamp,symbol,price,volume,other\n"
        "2024-01-02T10:00:01Z,B,20.5,3,1.0\n"
        "1704189600000,A,10.0,,2\n"  # 2024-01-02T10:00:00Z as epoch ms, no volume
        "2024-01-02T10:00:00+00:00,B,20.0,2,3\n"
        "2024-01-02 10:00:02,A,10.5,5,4\n"
    )
    got = {s.symbol: s for s in load_csv(f)}
    assert set(got) == {"A", "B"}
    assert got["A"].ts.tolist() == [1704189600000, 1704189602000]
    assert got["A"].price.tolist() == [10.0, 10.5]
    vol = got["A"].volume  # a blank volume stays missing (NaN), never 0
    assert vol is not None and np.isnan(vol[0]) and vol[1] == 5.0
    assert got["B"].price.tolist() == [20.0, 20.5]


def test_csv_without_volume(tmp_path):
    f = tmp_path / "t.csv"
    f.write_text("timestamp,symbol,price\n1700000000,X,1.5\n1700000060,X,1.6\n")
    (s,) = load_csv(f)
    assert s.volume is None and len(s) == 2


@pytest.mark.parametrize(
    ("body", "match"),
    [
        ("when,symbol,price\n1,X,1\n", "header .* lacks timestamp"),
        ("timestamp,symbol,price\n1,X,abc\n", "not a number"),
        ("timestamp,symbol,price\n1,X,-3\n", "> 0"),
        ("timestamp,symbol,price\n1,X,nan\n", "no rows"),  # a missing price is skipped
        ("timestamp,symbol,price\n1,X,inf\n", "bad.csv:2: price must be finite"),
        ("timestamp,symbol,price\nyesterday,X,1\n", "bad.csv:2: ts 'yesterday': epoch number"),
        ("timestamp,symbol,price\n", "no rows"),
        ("timestamp,symbol,price,volume\n1,X,1,lots\n", "bad.csv:2: volume 'lots'"),
    ],
)
def test_csv_errors_name_the_problem(tmp_path, body, match):
    f = tmp_path / "bad.csv"
    f.write_text(body)
    with pytest.raises(DataError, match=match):
        load_csv(f)


def test_bundled_sets_load_with_expected_sizes():
    sizes = {"taylor": 4032, "msft": 7983, "sp500": 5031, "nasdaq": 5031}
    for name, n in sizes.items():
        (s,) = data.load(name)
        assert len(s) == n and np.all(s.price > 0) and np.all(np.diff(s.ts) > 0)
    stocks = {s.symbol: len(s) for s in data.load("stocks")}
    assert set(stocks) == {"AAPL", "GOOG", "IBM", "MSFT"}
    with pytest.raises(DataError, match="neither a file nor a bundled"):
        data.load("nope")


def test_a_directory_is_not_a_data_file(tmp_path):
    with pytest.raises(DataError, match="neither a file"):
        data.load(str(tmp_path))


def test_split_is_chronological_and_shared_across_symbols():
    series = data.load("stocks")
    sp = split_times(series, 0.1, 0.2)
    assert sp.val_start < sp.test_start
    for s in series:
        v, t = sp.indices(s)
        assert np.all(s.ts[:v] < sp.val_start) and np.all(s.ts[t:] >= sp.test_start)
    (taylor,) = data.load("taylor")
    v, t = split_times([taylor], 0.1, 0.2).indices(taylor)
    assert (v, t) == (4032 - 806 - 403, 4032 - 806)


def test_synthetic_is_seeded():
    a, b = synthetic(2, 100, seed=5), synthetic(2, 100, seed=5)
    np.testing.assert_array_equal(a[1].price, b[1].price)
    assert not np.array_equal(a[0].price, synthetic(2, 100, seed=6)[0].price)
    assert all(np.all(s.price > 0) for s in synthetic(3, 50, kind="random_walk"))
