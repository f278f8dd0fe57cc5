"""Forecast payloads are valid JSON with the documented fields; the hub fans out and keeps
the latest per symbol."""

from __future__ import annotations

import numpy as np
import orjson

from streamer.core.forecasts import Forecasts, payloads
from streamer.feed.hub import Hub


def forecasts() -> Forecasts:
    return Forecasts(
        symbols=['A"1', "B"],
        index=np.array([1, 0]),
        ts=np.array([1_700_000_000_000, 5]),
        partition=np.array([2, 0], np.int32),
        offset=np.array([81, 80]),
        seq=np.array([7, 1]),
        price=np.array([371.25, 1e-7]),
        forecast=np.array([371.31, 1.5e-7]),
        lower=np.array([368.0, 1e-7]),
        upper=np.array([374.6, 2e-7]),
        warming=np.array([False, True]),
        version="v-1",
    )


def test_payloads_are_json_with_every_field() -> None:
    f = forecasts()
    out = [
        orjson.loads(b)
        for b in payloads(f, np.array([0, 1]), np.array([111, 222]), {"instance": "s1"})
    ]
    assert out[0] == {
        "symbol": 'A"1', "ts": 1_700_000_000_000, "source": {"partition": 2, "offset": 81},
        "seq": 7, "price": 371.25, "forecast": 371.31, "lower": 368.0, "upper": 374.6,
        "warming": False, "model": "v-1", "tick_time": 222, "instance": "s1",
    }  # fmt: skip
    assert out[1]["warming"] is True and out[1]["tick_time"] == 111 and out[1]["price"] == 1e-7
    assert payloads(f, np.array([], np.int64), np.array([1, 2])) == []


def test_hub_fans_out_keeps_latest_and_survives_a_broken_listener() -> None:
    hub = Hub()
    got: list[tuple[list[str], list[bytes]]] = []
    hub.subscribe(lambda s, v: got.append((s, v)))

    def broken(s: list[str], v: list[bytes]) -> None:
        raise RuntimeError("listener bug")

    hub.subscribe(broken)
    hub.publish(["A", "B", "A"], [b"1", b"2", b"3"])
    hub.publish(["B"], [b"4"])
    assert got == [(["A", "B", "A"], [b"1", b"2", b"3"]), (["B"], [b"4"])]
    assert hub.latest == {"A": b"3", "B": b"4"}
    # Evicted from the device, A keeps its snapshot: its state lives on, so does its chart.
    hub.announce({"type": "evicted", "symbols": ["A"]})
    assert hub.latest == {"A": b"3", "B": b"4"} and hub.events[-1]["symbols"] == ["A"]


def test_the_hub_holds_at_most_max_symbols_dropping_the_least_recently_published() -> None:
    hub = Hub(snapshot_points=4, max_symbols=3)
    pts = np.arange(5.0)[None, :]
    for sym in ["A", "B", "C", "A"]:
        hub.publish([sym], [sym.encode()], pts)
    hub.publish(["D", "E"], [b"D", b"E"], np.repeat(pts, 2, axis=0))  # B, then C, go
    assert list(hub.latest) == ["A", "D", "E"]
    assert len(hub.points) == 3 and len(hub.points.get("B")) == 0
    assert len(hub.points.get("A")) == 2  # A's two points survived


def test_at_the_bound_a_new_symbol_reuses_a_row_and_a_huge_batch_keeps_its_newest() -> None:
    hub = Hub(snapshot_points=2, max_symbols=64)  # 64: the points' first capacity
    pts = np.ones((1, 5))
    for k in range(65):
        hub.publish([f"S{k}"], [b"x"], pts)
    assert len(hub.latest) == len(hub.points) == 64 and len(hub.points._buf) == 64
    syms = [f"N{k}" for k in range(100)]
    hub.publish(syms, [b"y"] * 100, np.ones((100, 5)))
    assert list(hub.latest) == syms[-64:] and len(hub.points) == 64
    assert len(hub.points.get("N99")) == 1 and len(hub.points.get("N0")) == 0
