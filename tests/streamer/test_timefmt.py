"""streamer.timefmt: epoch milliseconds as UTC text."""

from __future__ import annotations

from streamer.timefmt import MINUTES, format_ms


def test_iso_seconds_by_default_and_minutes_for_tables():
    ms = 1_714_571_100_500  # 2024-05-01 13:45:00.5 UTC
    assert format_ms(ms) == "2024-05-01T13:45:00Z"
    assert format_ms(ms, MINUTES) == "2024-05-01 13:45"
    assert format_ms(0) == "1970-01-01T00:00:00Z"
