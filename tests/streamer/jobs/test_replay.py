"""streamer.jobs.replay's pacing, without a broker (replay itself runs against a real one
in the CLI and e2e tests)."""

from __future__ import annotations

import pytest

from streamer.jobs.replay import Pacer


def test_the_pacer_keeps_the_rate_and_catches_up_a_short_lag() -> None:
    p = Pacer(rate=100.0, now=0.0)
    assert p.delay(50, 0.1) == pytest.approx(0.4)  # 50 sent at 0.1 s: the next due at 0.5 s
    assert p.delay(100, 1.5) == 0.0  # 0.5 s behind: no wait, catch up
    assert p.delay(150, 1.5) == pytest.approx(0.0)  # ... sending on at once
    assert p.delay(160, 1.5) == pytest.approx(0.1)


def test_after_a_pause_the_pacer_carries_on_at_the_rate_without_a_burst() -> None:
    """Paused 15 s (SIGSTOP) at 20 ticks/s: a newcomer saw the next ~300 ticks go at once."""
    p = Pacer(rate=20.0, now=0.0)
    assert p.delay(20, 1.0) == 0.0
    assert p.delay(20, 16.0) == 0.0  # resumed 15 s late: the schedule restarts here
    assert p.delay(21, 16.0) == pytest.approx(0.05)  # one tick's interval, not a burst
    assert p.delay(40, 16.0) == pytest.approx(1.0)
