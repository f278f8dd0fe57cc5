"""`tickcast retrain` and `tickcast models` against a real Kafka broker."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from model.checkpoint import save
from model.config import ModelConfig, TrainConfig
from model.data import synthetic
from model.registry import Registry
from model.train import fit
from streamer.cli import main
from streamer.jobs.replay import interleave
from streamer.jobs.retrain import (
    Options,
    RetrainMetrics,
    parse_duration,
)
from streamer.jobs.retrain_loop import RetrainLoop, run_loop
from streamer.jobs.tick_range import group_series
from streamer.kafka import announcements as models
from streamer.settings import Settings
from tests.streamer.harness import fresh_settings, produce_raw, tick_records

CONFIG = ModelConfig(layers=2, units=8, dropout=0.1, window=12, features=("ret", "dlogvol"))
N, HALF = 1000, 500
FAST = ["--max-steps", "150", "--lr", "5e-3", "--batch-size", "8", "--no-progress"]


@pytest.fixture(scope="module")
def drift():
    return synthetic(3, N, seed=0, kind="drift")


@pytest.fixture(scope="module")
def champion_dir(drift, tmp_path_factory) -> Path:
    """A tiny model fitted on regime one of the drift series."""
    first = [dataclasses.replace(s, ts=s.ts[:HALF], price=s.price[:HALF], volume=s.volume[:HALF])
             for s in drift]  # fmt: skip
    tc = TrainConfig(max_steps=150, eval_every=25, batch_size=8, chunks=3, progress=False,
                     max_seconds=None, learning_rate=1e-2)  # fmt: skip
    r = fit(first, CONFIG, tc)
    out = tmp_path_factory.mktemp("champ") / "m"
    save(out, r.model, r.stats, {"data": {"test_start_ms": r.split.test_start}})
    return out


def _args(s) -> list[str]:
    return ["--kafka-bootstrap", s.kafka_bootstrap, "--ticks-topic", s.ticks_topic,
            "--models-topic", s.models_topic, "--registry", s.registry]  # fmt: skip


def _latest(s):
    return asyncio.run(models.read_latest(s.kafka_bootstrap, s.models_topic))


def test_one_shot_promotes_on_the_new_regime_and_announces(kafka, tmp_path, drift, champion_dir):
    s = fresh_settings(kafka.bootstrap, registry=str(tmp_path / "reg"))
    ticks = list(interleave(drift))
    bad = [(b"S000", b"{not json", None),
           (b"S001", b'{"symbol":"S001","ts":1700000000000,"price":-3}', None),
           (b"XX", b'{"symbol":"S002","ts":1700000000000,"price":3}', None)]  # fmt: skip
    stale = [("S000", int(drift[0].ts[HALF + 10]), 1.0, 1.0)]  # older than its predecessor
    asyncio.run(produce_raw(s, tick_records(ticks) + bad + tick_records(stale)))
    since = int(drift[0].ts[HALF])  # regime two only
    rc = main(["retrain", *_args(s), "--model", str(champion_dir), "--since-ms", str(since), *FAST])
    assert rc == 0
    reg = Registry(s.registry)
    (att,) = reg.attempts()
    assert att["outcome"] == "promoted", att["reason"]
    assert att["data"]["first_ts_ms"] == since and att["n_ticks"] == 3 * (N - HALF)
    assert att["read"]["malformed"] == {"bad_json": 1, "bad_price": 1, "key_mismatch": 1}
    assert att["read"]["stale"] == 1 and att["read"]["out_of_range"] == 3 * HALF
    sc = {k: v["rmse"] for k, v in att["scores"].items()}
    assert sc["challenger"] < sc["persistence"] < sc["champion"]
    assert set(att["scores"]) == {"champion", "challenger", "persistence", "ar60", "ewma_rw"}
    assert Path(att["plot"]).is_file() and Path(att["plot"]).parent == reg.plots_dir
    # The registry's champion moved, and serving is told so on the models topic.
    assert reg.champion() == att["challenger"]
    assert [h["reason"] for h in reg.changes()] == ["seed", "retrain"]
    assert reg.changes()[0]["version"] == att["champion"]
    latest = _latest(s)
    assert latest is not None and latest["version"] == att["challenger"]
    assert latest["previous"] == att["champion"] and latest["reason"] == "retrain"
    assert latest["scores"]["challenger"] == pytest.approx(sc["challenger"])
    meta = reg.load(att["challenger"]).metadata
    assert meta["parent"] == att["champion"] and meta["data"]["first_ts_ms"] == since

    # Again with a margin no challenger meets: rejected, stored, the champion stays.
    rc = main(["retrain", *_args(s), "--since-ms", str(since), "--margin", "0.9", *FAST])
    assert rc == 0
    att2 = reg.attempts()[-1]
    assert att2["outcome"] == "rejected" and att2["champion"] == att["challenger"]
    assert reg.champion() == att["challenger"] and _latest(s)["version"] == att["challenger"]
    assert reg.has(att2["challenger"])
    out = _models(s, "list")
    assert "rejected" in out and "champion" in out and "promoted-before" in out


def _models(s, *argv: str) -> str:
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["models", *argv, "--kafka-bootstrap", s.kafka_bootstrap, "--models-topic",
                   s.models_topic, "--registry", s.registry])  # fmt: skip
    assert rc == 0, buf.getvalue()
    return buf.getvalue()


def test_until_selects_and_too_little_is_skipped_with_exit_3(kafka, tmp_path, drift, champion_dir):
    s = fresh_settings(kafka.bootstrap, registry=str(tmp_path / "reg"))
    asyncio.run(produce_raw(s, tick_records(interleave(drift))))
    until = int(drift[0].ts[100])
    rc = main(["retrain", *_args(s), "--model", str(champion_dir), "--until-ms", str(until),
               *FAST])  # fmt: skip
    assert rc == 3
    reg = Registry(s.registry)
    (att,) = reg.attempts()
    assert att["outcome"] == "skipped" and "not enough data" in att["reason"]
    assert att["challenger"] is None and att["plot"] is None
    assert att["read"]["out_of_range"] == 3 * (N - 100)
    # The registry was seeded from --model and the seed announced.
    assert _latest(s)["version"] == reg.champion() and reg.changes()[0]["reason"] == "seed"


def loop(s: Settings, opts: Options, every_s: float, **kw: Any) -> int:
    """`tickcast retrain --every` as the CLI runs it (streamer.jobs.retrain_loop)."""
    return run_loop(RetrainLoop(s, opts, every_s=every_s, **kw))


def test_loop_counts_runs_and_failures(kafka, tmp_path, champion_dir):
    s = fresh_settings(kafka.bootstrap, registry=str(tmp_path / "reg"), model=str(champion_dir))
    m = RetrainMetrics()
    assert loop(s, Options(progress=False, quiet=True), 0.05, metrics=m, max_runs=2) == 0
    assert m.registry.get_sample_value("tickcast_retrain_runs_total", {"outcome": "skipped"}) == 2
    assert m.registry.get_sample_value("tickcast_retrain_seconds_count") == 2
    assert m.registry.get_sample_value("tickcast_retrain_last_success_timestamp") > 0
    # A champion pointer naming a missing version: the run fails, is counted, the loop goes on.
    (Path(s.registry) / "champion.json").write_text(json.dumps({"version": "gone"}))
    assert loop(s, Options(progress=False, quiet=True), 0.05, metrics=m, max_runs=2) == 0
    assert m.registry.get_sample_value("tickcast_retrain_runs_total", {"outcome": "failed"}) == 2
    # The CLI's loop: --every, its own metrics endpoint, exit 0.
    (Path(s.registry) / "champion.json").unlink()
    rc = main(["retrain", *_args(s), "--model", str(champion_dir), "--every", "0.1s",
               "--max-runs", "1", "--metrics-port", "0", "--no-progress"])  # fmt: skip
    assert rc == 0


def test_models_list_promote_rollback_announce(kafka, tmp_path, champion_dir):
    from flax import nnx

    from model.features import FeatureStats
    from model.lstm import LSTMForecaster

    s = fresh_settings(kafka.bootstrap, registry=str(tmp_path / "reg"))
    reg = Registry(s.registry)
    v0 = reg.import_dir(champion_dir)
    stats = FeatureStats(0.0, 0.01)
    v1, v2 = (reg.add(LSTMForecaster(CONFIG, rngs=nnx.Rngs(k)), stats, {"parent": v0})
              for k in (1, 2))  # fmt: skip
    for v in (v0, v1, v2):
        assert f"champion: {v}" in _models(s, "promote", v)
        assert _latest(s)["version"] == v and _latest(s)["reason"] == "promote"
    table = _models(s, "list")
    line = next(x for x in table.splitlines() if v2 in x)
    assert line.startswith("*") and line.rstrip().endswith("champion")
    assert _models(s, "rollback").startswith(f"champion: {v1}")
    assert _latest(s) | {} and _latest(s)["version"] == v1 and _latest(s)["reason"] == "rollback"
    _models(s, "rollback")
    assert reg.champion() == v0 == _latest(s)["version"]
    # A version that does not load is refused (exit 2) and nothing is announced.
    meta = reg.path(v2) / "metadata.json"
    meta.write_text(meta.read_text().replace('"ret_std"', '"ret_std_x"'))
    args = ["--kafka-bootstrap", s.kafka_bootstrap, "--models-topic", s.models_topic,
            "--registry", s.registry]  # fmt: skip
    assert main(["models", "promote", v2, *args]) == 2
    assert main(["models", "promote", "no-such-version", *args]) == 2
    assert main(["models", "promote", "../x", *args]) == 2
    assert reg.champion() == v0 == _latest(s)["version"]


def test_group_series_and_durations():
    series, stale = group_series(
        ["A", "B", "A", "A", "B", "A"], [1, 5, 2, 2, 4, 3], [1.0, 2.0, 1.1, 9.0, 2.1, 1.2],
        [float("nan"), 7.0] + [float("nan")] * 4,
    )  # fmt: skip
    assert stale == 1  # B's ts=4 (A's second ts=2 is a duplicate time, kept as on the stream)
    a, b = series
    assert a.symbol == "A" and list(a.ts) == [1, 2, 2, 3]
    assert list(a.price) == [1.0, 1.1, 9.0, 1.2]
    assert a.volume is None and b.volume is not None and list(b.ts) == [5]
    assert parse_duration("30m") == 1800 and parse_duration("2h") == 7200
    assert parse_duration("250ms") == 0.25 and parse_duration("90") == 90
    with pytest.raises(ValueError):
        parse_duration("soon")
