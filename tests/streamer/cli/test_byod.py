"""Bring your own data, as a user runs it: a Yahoo export evaluates, replay tells the truth
about what it sent, and forecasts print with significant digits."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import orjson

from model import data
from model.evaluate import format_table
from streamer.kafka.local import LocalBroker, free_port
from streamer.tools.watch import line
from tests.streamer.cli.test_cli import tickcast
from tests.streamer.harness import fresh_settings, read_topic


def test_watch_prints_significant_digits() -> None:
    f = {"ts": 1735689600000, "symbol": "PEPE", "price": 1.2e-8, "forecast": 1.2345678e-8,
         "lower": 1.1e-8, "upper": 1.3e-8, "model": "v1"}  # fmt: skip
    text = line(f)
    assert "1.2e-08" in text and "1.234568e-08" in text and "[1.1e-08, 1.3e-08]" in text
    assert "0.0000" not in text
    big = line({**f, "price": 1.1e10, "forecast": 11000001234.5, "lower": 1e10, "upper": 1.2e10})
    assert "1.1e+10" in big and "1.1e+10" in big and "1.2e+10" in big
    assert "1.0001" in line(
        {**f, "price": 1.0001, "forecast": 1.0, "lower": 0.9999, "upper": 1.0002}
    )


def test_report_table_without_a_ratio_where_persistence_is_exact() -> None:
    m = {"rmse": 1e-6, "mae": 1e-6, "mase": 1.0, "directional_accuracy": 0.5}
    rep = {"model": {"stateful": {**m, "coverage90": 1.0}, "window": m}, "n_test": 10,
           "persistence": {**m, "rmse": 0.0}, "ar60": m}  # fmt: skip
    text = format_table(rep)
    first = text.splitlines()[1]  # the model's row: RMSE, then the ratio column empty
    assert "1e-06          - " in first and "inf" not in text


def yahoo_file(tmp_path: Path) -> Path:
    """The bundled MSFT closes as Yahoo Finance exports them, with two null rows."""
    (msft,) = data.load("msft")
    f = tmp_path / "MSFT.csv"
    rows = ["Date,Open,High,Low,Close,Adj Close,Volume"]
    for i in range(400):
        day = np.datetime_as_string(np.datetime64(int(msft.ts[i]), "ms"), unit="D")
        p, v = float(msft.price[i]), float(msft.volume[i])  # type: ignore[index]
        rows.append(f"{day},{p},{p},{p},{p},{p},{v:.0f}")
        if i in (100, 200):
            rows.append(f"{day}T12:00:00,null,null,null,null,null,null")
    f.write_text("\r\n".join(rows) + "\r\n", encoding="utf-8-sig")
    return f


def test_evaluate_a_yahoo_export_with_the_bundled_model(tmp_path: Path) -> None:
    f = yahoo_file(tmp_path)
    proc = tickcast("evaluate", "--data", str(f), "--model", "msft")  # a bundled name
    assert "LSTM, carried state (live)" in proc.stdout
    assert "skipped 2 row(s) without a price (lines 103, 204)" in proc.stderr
    strict = tickcast("evaluate", "--data", str(f), "--model", "model/bundled/msft", "--strict",
                      check=False)  # fmt: skip
    assert strict.returncode == 2 and "MSFT.csv:103: price is missing" in strict.stderr


def test_replay_exits_non_zero_when_nothing_valid_was_sent(tmp_path: Path) -> None:
    f = tmp_path / "bad.csv"
    f.write_text("timestamp,symbol,price\n-5,X,1\n2019-07-31,X,null\n")
    # Validation comes first: nothing is sent and no broker is even needed.
    proc = tickcast("replay", "--data", str(f), "--kafka-bootstrap", f"127.0.0.1:{free_port()}",
                    check=False)  # fmt: skip
    assert proc.returncode == 1
    assert "0 valid ticks, 1 skipped {'no_price': 1}, 1 rejected" in proc.stderr
    assert "bad.csv:2: ts '-5' is too small for an epoch time" in proc.stderr


def test_replay_sends_only_valid_ticks_and_says_so(kafka: LocalBroker, tmp_path: Path) -> None:
    f = tmp_path / "doge.csv"
    f.write_text(
        "timestamp,symbol,price,volume\n1735689600000000,DOGEUSDT,0.31600,71.02\n"
        "1735689601000000,DOGEUSDT,0.31590,\n1735689602000000,DOGEUSDT,null,null\n"
        "9000000000000,DOGEUSDT,0.3,1\n1735689603,DOGEUSDT,0.3161,2\n"
    )
    s = fresh_settings(kafka.bootstrap)
    proc = tickcast("replay", "--data", str(f), "--kafka-bootstrap", s.kafka_bootstrap,
                    "--ticks-topic", s.ticks_topic, "--quiet")  # fmt: skip
    assert "3 valid ticks, 1 skipped {'no_price': 1}, 1 rejected" in proc.stderr
    assert "doge.csv:5: ts '9000000000000' read as epoch ms is after 2200" in proc.stderr
    assert "sent 3 ticks" in proc.stdout and "1 skipped, 1 rejected, not sent" in proc.stdout
    recs = asyncio.run(read_topic(s.kafka_bootstrap, s.ticks_topic, expect=3, idle_s=1.0))
    got = sorted(orjson.loads(r.value)["ts"] for r in recs)
    assert got == [1735689600000, 1735689601000, 1735689603000]  # µs and s, as ms
    assert sum("volume" not in orjson.loads(r.value) for r in recs) == 1  # blank: not 0


def test_replay_flags_and_an_unreachable_broker_are_errors_not_tracebacks() -> None:
    down = f"127.0.0.1:{free_port()}"
    for rate, said in (("abc", "'abc' is not a number or 'max'"), ("0", "must be > 0")):
        proc = tickcast("replay", "--synthetic", "1", "--rate", rate, "--kafka-bootstrap", down,
                        check=False)  # fmt: skip
        assert proc.returncode == 2 and said in proc.stderr, proc.stderr
    proc = tickcast("replay", "--synthetic", "1", "--rate", "5", "--kafka-bootstrap", down,
                    check=False)  # fmt: skip
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert f"error: cannot reach Kafka at {down}" in proc.stderr


def test_serve_on_a_feed_port_in_use_is_an_error_not_a_traceback() -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = tickcast("serve", "--feed-port", str(port), "--kafka-bootstrap",
                        f"127.0.0.1:{free_port()}", "--no-precompile", "--metrics-port", "0",
                        check=False)  # fmt: skip
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "address already in use" in proc.stderr
