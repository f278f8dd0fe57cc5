"""One settings object: defaults < TICKCAST_* environment < flags."""

from __future__ import annotations

import argparse

import pytest

from streamer import settings as st


def test_defaults_env_and_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    assert st.from_env({}).kafka_bootstrap == "127.0.0.1:9092"
    monkeypatch.setenv("TICKCAST_KAFKA_BOOTSTRAP", "127.0.0.1:19092")
    monkeypatch.setenv("TICKCAST_EXACTLY_ONCE", "false")
    monkeypatch.setenv("TICKCAST_MAX_SYMBOLS", "7")
    p = argparse.ArgumentParser()
    st.add_arguments(p, ["kafka_bootstrap", "exactly_once", "max_symbols", "group"])
    s = st.from_args(p.parse_args([]))
    assert (s.kafka_bootstrap, s.exactly_once, s.max_symbols) == ("127.0.0.1:19092", False, 7)
    s = st.from_args(p.parse_args(["--group", "g2", "--exactly-once", "--max-symbols", "9"]))
    assert (s.group, s.exactly_once, s.max_symbols) == ("g2", True, 9)


def test_bad_env_value_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TICKCAST_MAX_SYMBOLS", "many")
    with pytest.raises(ValueError, match="TICKCAST_MAX_SYMBOLS"):
        st.from_env()


def test_every_setting_has_help() -> None:
    assert set(st.HELP) == {f.name for f in st.fields(st.Settings)}
