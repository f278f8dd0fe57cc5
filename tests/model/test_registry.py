from __future__ import annotations

import json

import pytest
from flax import nnx

from model.checkpoint import CheckpointError
from model.features import FeatureStats
from model.lstm import LSTMForecaster
from model.registry import Registry, RegistryError

STATS = FeatureStats(ret_mean=0.0, ret_std=0.01)


def _add(reg: Registry, config, seed: int, **extra) -> str:
    return reg.add(LSTMForecaster(config, rngs=nnx.Rngs(seed)), STATS, {"seed": seed, **extra})


def test_add_promote_history_and_rollback_twice(tmp_path, tiny_config):
    reg = Registry(tmp_path / "reg")
    assert reg.champion() is None and reg.versions() == []
    v1, v2, v3 = (_add(reg, tiny_config, s) for s in (1, 2, 3))
    assert len({v1, v2, v3}) == 3 and all(reg.has(v) for v in (v1, v2, v3))
    assert reg.load(v2).metadata["seed"] == 2
    rec = reg.promote(v1, "seed")
    assert rec["previous"] is None and reg.champion() == v1
    reg.promote(v2, "retrain", scores={"challenger": 1.0})
    reg.promote(v3, "promote")
    assert [h["version"] for h in reg.changes()] == [v1, v2, v3]
    assert reg.changes()[1]["scores"] == {"challenger": 1.0}
    # Rolling back twice goes back two steps, then there is nothing left.
    assert reg.rollback_target() == v2
    reg.promote(v2, "rollback")
    assert reg.rollback_target() == v1
    reg.promote(v1, "rollback")
    assert reg.champion() == v1
    with pytest.raises(RegistryError):
        reg.rollback_target()
    # A new promotion after rollbacks: rollback returns to where it was promoted from.
    reg.promote(v3, "promote")
    assert reg.rollback_target() == v1


def test_attempts_are_appended(tmp_path):
    reg = Registry(tmp_path / "reg")
    assert reg.attempts() == []
    reg.record_attempt({"attempt": "a", "outcome": "rejected"})
    reg.record_attempt({"attempt": "b", "outcome": "promoted"})
    with (reg.root / "attempts.jsonl").open("a") as f:
        f.write('{"attempt": "torn')  # a crash mid-line is skipped, not fatal
    assert [a["attempt"] for a in reg.attempts()] == ["a", "b"]


def test_promote_refuses_a_corrupt_checkpoint(tmp_path, tiny_config):
    reg = Registry(tmp_path / "reg")
    good, bad = _add(reg, tiny_config, 1), _add(reg, tiny_config, 2)
    reg.promote(good, "seed")
    meta = reg.path(bad) / "metadata.json"
    m = json.loads(meta.read_text())
    m["feature_stats"]["ret_std"] = 0.02  # an edit the digest catches
    meta.write_text(json.dumps(m))
    with pytest.raises(CheckpointError, match="digest"):
        reg.promote(bad, "promote")
    with pytest.raises(CheckpointError, match="not in the registry"):
        reg.promote("20000101T000000Z-00000000", "promote")
    with pytest.raises(RegistryError):
        reg.promote("../escape", "promote")
    assert reg.champion() == good and len(reg.changes()) == 1


def test_remove_refuses_the_champion(tmp_path, tiny_config):
    reg = Registry(tmp_path / "reg")
    a, b = _add(reg, tiny_config, 1), _add(reg, tiny_config, 2)
    reg.promote(a, "seed")
    with pytest.raises(RegistryError, match="champion"):
        reg.remove(a)
    reg.remove(b)
    assert [m["version"] for m in reg.versions()] == [a]


def test_import_dir_copies_a_checkpoint_once(tmp_path, tiny_config):
    from model.checkpoint import save

    v = save(tmp_path / "m", LSTMForecaster(tiny_config, rngs=nnx.Rngs(0)), STATS)
    reg = Registry(tmp_path / "reg")
    assert reg.import_dir(tmp_path / "m") == v == reg.import_dir(tmp_path / "m")
    assert reg.load(v).config == tiny_config
