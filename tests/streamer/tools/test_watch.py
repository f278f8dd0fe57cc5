"""streamer.tools.watch without a feed: URLs and their errors (the live watch is tested
against a real feed in tests/streamer/feed/test_server.py)."""

from __future__ import annotations

import pytest

from streamer.tools.watch import line, main, ws_url


def test_the_dashboards_http_address_works_as_the_feed_url() -> None:
    assert ws_url("http://127.0.0.1:8765/") == "ws://127.0.0.1:8765/"
    assert ws_url("HTTPS://feed.example/ws") == "wss://feed.example/ws"
    assert ws_url("ws://127.0.0.1:8765/ws") == "ws://127.0.0.1:8765/ws"


@pytest.mark.parametrize("url", ["ftp://x", "nonsense", "ws://"])
def test_a_url_that_is_no_websocket_url_is_an_error_not_a_traceback(
    url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(url, ["AAPL"], None, 1, False) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err


def test_prices_keep_seven_significant_digits_at_any_scale() -> None:
    f = {"ts": 1735689600000, "symbol": "SHIB", "price": 1.2e-08, "forecast": 1.21e-08,
         "lower": 1.1e-08, "upper": 1.3e-08, "model": "v1"}  # fmt: skip
    assert "1.2e-08" in line(f) and "[1.1e-08, 1.3e-08]" in line(f)
