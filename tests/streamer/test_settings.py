"""One settings object: defaults < TICKCAST_* environment < flags."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from streamer import settings as st

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_env_and_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    assert st.from_env({}).kafka_bootstrap == "127.0.0.1:9092"
    monkeypatch.setenv("TICKCAST_KAFKA_BOOTSTRAP", "127.0.0.1:19092")
    monkeypatch.setenv("TICKCAST_EXACTLY_ONCE", "false")
    monkeypatch.setenv("TICKCAST_MAX_SYMBOLS", "7")
    p = argparse.ArgumentParser()
    st.add_arguments(p, ["kafka_bootstrap", "exactly_once", "max_symbols", "group_id"])
    s = st.from_args(p.parse_args([]))
    assert (s.kafka_bootstrap, s.exactly_once, s.max_symbols) == ("127.0.0.1:19092", False, 7)
    s = st.from_args(p.parse_args(["--group-id", "g2", "--exactly-once", "--max-symbols", "9"]))
    assert (s.group_id, s.exactly_once, s.max_symbols) == ("g2", True, 9)


def test_bad_env_value_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TICKCAST_MAX_SYMBOLS", "many")
    with pytest.raises(ValueError, match="TICKCAST_MAX_SYMBOLS"):
        st.from_env()


def test_every_setting_has_help() -> None:
    assert set(st.HELP) == {f.name for f in st.fields(st.Settings)}


def test_old_names_still_work_with_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings renamed to Kafka's own names keep their old variables and flags."""
    assert set(st.RENAMED.values()) <= set(st.NAMES)
    monkeypatch.setenv("TICKCAST_MAX_BATCH", "123")
    monkeypatch.setenv("TICKCAST_GROUP", "old-group")
    with pytest.warns(FutureWarning) as caught:
        s = st.from_env()
    said = sorted(str(w.message) for w in caught)
    assert said == [
        "TICKCAST_GROUP is deprecated: use TICKCAST_GROUP_ID",
        "TICKCAST_MAX_BATCH is deprecated: use TICKCAST_MAX_POLL_RECORDS",
    ]
    assert (s.max_poll_records, s.group_id) == (123, "old-group")
    monkeypatch.setenv("TICKCAST_GROUP_ID", "new-group")  # the new name wins
    with pytest.warns(FutureWarning):
        assert st.from_env().group_id == "new-group"
    monkeypatch.delenv("TICKCAST_MAX_BATCH")
    monkeypatch.delenv("TICKCAST_GROUP")
    p = argparse.ArgumentParser()
    st.add_arguments(p, ["group_id", "max_poll_records"])
    s = st.from_args(p.parse_args(["--group", "g3", "--max-batch", "7"]))
    assert (s.group_id, s.max_poll_records) == ("g3", 7)


@pytest.mark.parametrize(
    ("env", "argv", "code", "said"),
    [
        ({"TICKCAST_NUM_PARTITIONS": "abc"}, ["serve", "--help"], 2, "NUM_PARTITIONS='abc'"),
        ({"TICKCAST_EXACTLY_ONCE": "maybe"}, ["serve", "--help"], 2, "not a boolean: 'maybe'"),
        ({"TICKCAST_FEED_PORT": "99999"}, ["serve"], 2, "feed_port must be 0-65535, got 99999"),
        ({"TICKCAST_MAX_SYMBOLS": "0"}, ["serve"], 2, "max_symbols must be at least 1, got 0"),
        # The flag wins over the environment; a time must be > 0.
        (
            {"TICKCAST_MAX_SYMBOLS": "0"},
            ["serve", "--max-symbols", "5", "--feed-heartbeat-s", "0"],
            2,
            "feed_heartbeat_s must be > 0, got 0.0",
        ),
        # A command is not refused for a setting it does not use.
        ({"TICKCAST_FEED_PORT": "70000"}, ["watch", "--help"], 0, "usage:"),
    ],
)
def test_a_bad_setting_is_an_error_naming_it_not_a_traceback(
    env: dict[str, str], argv: list[str], code: int, said: str
) -> None:
    proc = subprocess.run([sys.executable, "-m", "streamer", *argv, "--kafka-bootstrap",
                           "127.0.0.1:1"] if argv[0] == "serve" and "--help" not in argv
                          else [sys.executable, "-m", "streamer", *argv],
                          env={**os.environ, **env}, capture_output=True, text=True,
                          cwd=ROOT, timeout=120)  # fmt: skip
    assert proc.returncode == code and "Traceback" not in proc.stderr, proc.stderr
    assert said in proc.stderr + proc.stdout


def test_check_names_the_setting() -> None:
    with pytest.raises(ValueError, match="feed_port must be 0-65535"):
        st.Settings(feed_port=65536).check()
    st.Settings(feed_port=65536).check(["max_symbols"])  # only the names asked for
    with pytest.raises(ValueError, match="feed_frames_per_s must be >= 0"):
        st.Settings(feed_frames_per_s=-1).check()
    st.Settings(feed_frames_per_s=0, feed_port=0, metrics_port=0).check()  # 0: none / no limit
