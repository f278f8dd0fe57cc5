"""`tickcast replay` and `tickcast watch` never import JAX (nor Flax or Orbax, which load it):
they publish ticks and read the feed, and loading JAX costs seconds and hundreds of MB."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from streamer.kafka.local import LocalBroker

ROOT = Path(__file__).resolve().parents[3]
HEAVY = ("jax", "jaxlib", "flax", "orbax")


def _imported(*args: str) -> list[str]:
    """Run `python -X importtime *args` from the repository root; the modules it imported."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", *args], cwd=ROOT, env=env,
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # Lines of -X importtime: "import time: self [us] | cumulative | module"
    return [
        line.rsplit("|", 1)[1].strip()
        for line in proc.stderr.splitlines()
        if line.startswith("import time:") and line.count("|") == 2
    ]


def _heavy(modules: list[str]) -> list[str]:
    return [m for m in modules if m.split(".")[0] in HEAVY]


@pytest.mark.parametrize("command", ["replay", "watch"])
def test_help_imports_no_jax(command: str) -> None:
    modules = _imported("-m", "streamer", command, "--help")
    assert "streamer.cli.stream_commands" in modules  # the probe sees the CLI's imports
    assert _heavy(modules) == []


def test_what_replay_and_watch_run_imports_no_jax() -> None:
    code = (
        "import sys, streamer.cli.main, streamer.cli.stream_commands, streamer.jobs.replay, "
        "streamer.tools.watch, streamer.settings, model.data; "
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))"
    )
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_a_real_replay_imports_no_jax(kafka: LocalBroker) -> None:
    topic = f"ticks-{uuid.uuid4().hex[:8]}"
    modules = _imported(
        "-m", "streamer", "replay", "--synthetic", "2", "--ticks-per-symbol", "3", "--quiet",
        "--kafka-bootstrap", kafka.bootstrap, "--ticks-topic", topic, "--num-partitions", "1",
    )  # fmt: skip
    assert "streamer.jobs.replay" in modules
    assert _heavy(modules) == []
