from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from model import checkpoint
from model.checkpoint import CheckpointError
from model.config import ModelConfig
from model.data import synthetic
from model.features import fit_stats
from model.lstm import LSTMForecaster

BUNDLED = Path(__file__).resolve().parents[2] / "model" / "bundled"


@pytest.fixture
def saved(tmp_path):
    cfg = ModelConfig(layers=2, units=12, window=16, features=("ret", "tod"))
    model = LSTMForecaster(cfg, rngs=nnx.Rngs(7))
    stats = fit_stats(synthetic(1, 200))
    path = tmp_path / "m"
    version = checkpoint.save(path, model, stats, {"data": {"source": "synthetic"}})
    return path, model, stats, version


def test_round_trip_gives_the_same_forecasts(saved):
    path, model, stats, version = saved
    pred = checkpoint.load(path)
    assert pred.version == version and pred.stats == stats and pred.config == model.config
    assert pred.metadata["data"]["source"] == "synthetic"
    for a, b in zip(jax.tree.leaves(pred.params), jax.tree.leaves(model.params()), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    x = np.random.default_rng(0).normal(size=(3, 16, model.config.n_features)).astype(np.float32)
    r = pred.runtime(3)
    np.testing.assert_allclose(
        r.warm(np.arange(3), x), np.asarray(model.forward(x))[:, -1], atol=1e-6
    )


def test_save_refuses_to_overwrite_by_accident(saved, tmp_path):
    path, model, stats, _ = saved
    with pytest.raises(FileExistsError):
        checkpoint.save(path, model, stats)
    checkpoint.save(path, model, stats, overwrite=True)  # a model directory may be replaced
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not an empty or tickcast model directory"):
        checkpoint.save(other, model, stats, overwrite=True)
    assert (other / "keep.txt").read_text() == "mine"
    assert not list(tmp_path.glob(".*tmp-*")), "no temporary directory left behind"


def test_config_that_does_not_match_the_weights_is_refused(saved):
    path, *_ = saved
    meta = json.loads((path / "metadata.json").read_text())
    meta["config"]["units"] = 13
    (path / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="do not match the config"):
        checkpoint.load(path)


def test_expected_config_is_enforced(saved):
    path, model, *_ = saved
    other = ModelConfig(layers=2, units=12, window=16, features=("ret", "dow"))
    with pytest.raises(CheckpointError, match="does not match the serving config"):
        checkpoint.load(path, expect=other)
    assert checkpoint.load(path, expect=model.config).config == model.config


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        ("no_meta", "no metadata.json"),
        ("bad_json", "unreadable metadata"),
        ("format", "format"),
        ("bad_feature", "config or feature statistics invalid"),
        ("no_params", "weights are missing"),
        ("flipped_bytes", "corrupt|cannot restore|digest"),
        ("reordered_features", "digest"),
        ("edited_stats", "digest"),
        ("zero_std", "must be > 0"),
        ("no_version", "version and digest are required"),
    ],
)
def test_damaged_checkpoints_are_refused_with_a_reason(saved, damage, match):
    path, *_ = saved
    meta_file = path / "metadata.json"
    meta = json.loads(meta_file.read_text())
    if damage == "no_meta":
        meta_file.unlink()
    elif damage == "bad_json":
        meta_file.write_text("{not json")
    elif damage == "format":
        meta["format"] = "tickcast-lstm/0"
        meta_file.write_text(json.dumps(meta))
    elif damage == "bad_feature":
        meta["config"]["features"] = ["ret", "weather"]
        meta_file.write_text(json.dumps(meta))
    elif damage == "reordered_features":  # same shapes, other meaning: only the digest knows
        meta["config"]["features"] = ["tod", "ret"]
        meta_file.write_text(json.dumps(meta))
    elif damage == "edited_stats":
        meta["feature_stats"]["ret_std"] *= 2
        meta_file.write_text(json.dumps(meta))
    elif damage == "zero_std":
        meta["feature_stats"]["ret_std"] = 0.0
        meta_file.write_text(json.dumps(meta))
    elif damage == "no_version":
        del meta["version"]
        meta_file.write_text(json.dumps(meta))
    elif damage == "no_params":
        shutil.rmtree(path / "params")
    elif damage == "flipped_bytes":
        # Flip bytes in the middle of the largest stored data file: the weights change on disk.
        files = sorted(
            (p for p in (path / "params").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size
        )
        blob = bytearray(files[-1].read_bytes())
        mid = len(blob) // 2
        for i in range(mid, mid + 256):
            blob[i] ^= 0xFF
        files[-1].write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match=match):
        checkpoint.load(path)


def test_nan_weights_are_refused(saved, tmp_path):
    _, model, stats, _ = saved
    model.head_bias[...] = np.array([np.nan, 0.0], np.float32)
    bad = tmp_path / "nan"
    checkpoint.save(bad, model, stats)
    with pytest.raises(CheckpointError, match="NaN"):
        checkpoint.load(bad)


@pytest.mark.parametrize(
    "name", sorted(p.name for p in BUNDLED.iterdir() if (p / "metadata.json").exists())
)
def test_bundled_models_load(name):
    pred = checkpoint.load(BUNDLED / name)
    assert pred.metadata["data"]["source"] == name
    assert pred.config.layers == 4 and pred.config.units == 50 and pred.config.window == 60
