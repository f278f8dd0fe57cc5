"""The `tickcast` command end to end, as a user runs it (real processes, real files)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from model.data import synthetic

ROOT = Path(__file__).resolve().parents[3]  # the repository root


def tickcast(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "MPLBACKEND": "Agg"}
    proc = subprocess.run(
        [sys.executable, "-m", "streamer.cli", *args], cwd=ROOT, env=env,
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    if check and proc.returncode != 0:
        raise AssertionError(f"tickcast {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture
def csv_file(tmp_path: Path) -> Path:
    """Two symbols, interleaved, ISO timestamps, with volume and an extra column."""
    f = tmp_path / "ticks.csv"
    with f.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["timestamp", "symbol", "price", "volume", "spread"])
        for s in synthetic(2, 500, seed=3, kind="seasonal"):
            for t, p, v in zip(s.ts, s.price, s.volume, strict=True):
                iso = datetime.fromtimestamp(t / 1000, UTC).isoformat()
                w.writerow([iso, s.symbol, p, v, 0.01])
    return f


def test_help_on_every_subcommand():
    out = tickcast("--help").stdout
    for cmd in ("run", "report", "watch", "train", "evaluate", "datasets", "bundle", "kafka",
                "serve", "replay", "loadtest", "retrain", "models"):  # fmt: skip
        assert cmd in out
        assert "usage: tickcast " + cmd in tickcast(cmd, "--help").stdout


@pytest.mark.heavy
def test_train_then_evaluate_json_on_any_csv(csv_file: Path, tmp_path: Path):
    model_dir = tmp_path / "model"
    tickcast(
        "train", "--data", str(csv_file), "--out", str(model_dir), "--layers", "2", "--units", "8",
        "--window", "12", "--max-steps", "40", "--no-progress",
    )  # fmt: skip
    meta = json.loads((model_dir / "metadata.json").read_text())
    assert meta["data"]["symbols"] == ["S000", "S001"]
    assert meta["config"]["features"] == ["ret", "lvl", "dlogvol", "tod", "dow", "lags"]
    png = tmp_path / "plot.png"
    proc = tickcast(
        "evaluate", "--data", str(csv_file), "--model", str(model_dir), "--json", "--plot", str(png)
    )
    report = json.loads(proc.stdout)  # one JSON object, nothing else on stdout
    assert isinstance(report["n_test"], int) and report["n_test"] > 100
    keys = {"rmse", "mae", "mase", "directional_accuracy"}
    for m in (report["model"]["stateful"], report["model"]["window"]):
        assert keys | {"coverage90"} <= set(m)
    assert keys <= set(report["persistence"]) and keys <= set(report["ar60"])
    assert isinstance(report["train_seconds"], float)
    assert png.stat().st_size > 10_000


def test_clear_errors():
    proc = tickcast("evaluate", "--data", "/nonexistent.csv", check=False)
    assert proc.returncode == 2 and "neither a file nor a bundled" in proc.stderr
    assert tickcast("train", check=False).returncode == 2  # argparse: --data is required


@pytest.mark.heavy
def test_evaluating_on_a_period_the_model_trained_on_is_flagged():
    own = json.loads(tickcast("evaluate", "--data", "msft", "--json").stdout)
    assert own["test_overlaps_training_period"] is False
    # The scale-free block (model/quality.py) and the EWMA random walk beside the baselines.
    q = own["quality"]
    assert q["n"] == own["n_test"] and 0.8 < q["coverage90"] < 1.0 and 0.9 < q["error_ratio"] < 1.1
    assert own["interval_score_vs_ewma_rw"] == q["interval_score_ratio"]
    assert {"coverage90", "interval_width", "interval_score"} <= set(own["ewma_rw"])
    proc = tickcast("evaluate", "--data", "stocks", "--model", "model/bundled/msft", "--json")
    assert json.loads(proc.stdout)["test_overlaps_training_period"] is True
    assert "look-ahead" in proc.stderr


@pytest.mark.heavy
def test_train_never_deletes_a_directory_that_is_not_a_model(tmp_path: Path, csv_file: Path):
    (tmp_path / "keep.txt").write_text("mine")
    proc = tickcast("train", "--data", str(csv_file), "--out", str(tmp_path), "--max-steps", "1",
                    "--layers", "1", "--units", "4", "--no-progress", check=False)  # fmt: skip
    assert proc.returncode == 2 and "refusing to replace" in proc.stderr
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_datasets_lists_the_bundled_series():
    out = tickcast("datasets").stdout
    for name in ("taylor", "msft", "stocks", "sp500", "nasdaq"):
        assert name in out


def test_evaluate_json_is_strict_json() -> None:
    """A score with no value (NaN: a ratio to a persistence that was exact) prints as null."""
    from streamer.cli.model_commands import _json_safe

    report = {"rmse_ratio": float("nan"), "n": np.int64(3), "x": [float("inf"), 1.5]}
    text = json.dumps(_json_safe(report), allow_nan=False)
    assert json.loads(text) == {"rmse_ratio": None, "n": 3, "x": [None, 1.5]}
