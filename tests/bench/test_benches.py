"""Every benchmark script still starts: its imports resolve and its argument defaults (many
read `Settings`) still exist. A renamed setting once broke `fanout_bench.py` unnoticed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCHES = sorted(p.name for p in (ROOT / "bench").glob("*.py"))


def test_every_bench_is_listed() -> None:
    assert "stream_bench.py" in BENCHES and len(BENCHES) >= 7, BENCHES


@pytest.mark.parametrize("name", BENCHES)
def test_bench_help_runs(name: str) -> None:
    proc = subprocess.run([sys.executable, f"bench/{name}", "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "usage:" in proc.stdout
