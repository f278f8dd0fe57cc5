"""Eviction frees a device slot, never a symbol's state, and never a tick: without Kafka.

Every tick given to the engine ends as exactly one forecast or one rejection, under any
pattern of symbols, partitions, batch sizes, slots and idle time, and the forecasts equal
a run with ample slots and no idle limit."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from model.checkpoint import LoadedModel
from streamer.core.engine import Engine
from streamer.core.statecache import StateCache
from streamer.core.ticks import decode, encode
from streamer.jobs.replay import synthetic


def test_a_reused_slot_never_skips_its_new_symbols_ticks(stocks: LoadedModel) -> None:
    """The lost ticks of issue 13 (16 symbols, 8 slots): a slot taken over by a symbol of
    a partition with lower offsets kept its previous symbol's last offset, so the replay
    filter (`skip_applied`, always on in serve) dropped the newcomer's later ticks of the
    batch silently: neither a forecast nor a dead letter."""
    ticks = list(synthetic(16, 1760, seed=7))
    part_of = {f"SYN{i:04d}": p for i, p in enumerate([0] * 7 + [3] * 5 + [2] * 3 + [1])}
    eng = Engine(stocks, max_symbols=8)
    rng = np.random.default_rng(0)
    nxt = dict.fromkeys(range(4), 0)
    got = rejected = 0
    i = 0
    while i < len(ticks):
        n = int(rng.integers(1, 300))
        batch = sorted(ticks[i : i + n], key=lambda t: part_of[t[0]])  # as getmany groups
        i += n
        good, bad = decode([encode(*t) for t in batch], [t[0].encode() for t in batch])
        parts = np.asarray([part_of[t[0]] for t in batch], np.int32)
        offs = np.zeros(len(batch), np.int64)
        for j, p in enumerate(parts.tolist()):
            offs[j], nxt[p] = nxt[p], nxt[p] + 1
        a = eng.apply(good, parts, offs, skip_applied=True)
        got += len(a.forecasts)
        rejected += len(a.rejected) + len(bad)
    assert (got, rejected) == (len(ticks), 0)


class FakeTopic:
    """The compacted state topic, in memory: records per partition, offsets = positions."""

    def __init__(self) -> None:
        self.parts: dict[int, list[tuple[bytes, bytes | None]]] = {}

    def commit(self, eng: Engine, records: dict[int, list[tuple[bytes, bytes | None]]]) -> None:
        for p, recs in records.items():
            log = self.parts.setdefault(p, [])
            for key, value in recs:
                log.append((key, value))
                if value is not None:
                    eng.cache.committed(len(log) - 1, value)

    def latest(self) -> tuple[list[bytes], list[int]]:
        last: dict[bytes, tuple[bytes | None, int]] = {}
        for log in self.parts.values():
            for off, (key, value) in enumerate(log):
                last[key] = (value, off)
        kept = [(v, o) for v, o in last.values() if v is not None]
        return [v for v, _ in kept], [o for _, o in kept]

    def fetch(self, eng: Engine, symbols: list[str]) -> int:
        want = eng.wanted(symbols)
        for _, p, off in want:
            value = self.parts[p][off][1]
            assert value is not None
            eng.cache.fill(value, off)
        return len(want)


Row = tuple[float, float, float, bool]


def pattern(rng: np.random.Generator) -> list[tuple[str, int, float, float | None]]:
    """Ticks of a few symbols on one clock, in random bursts: some tick often, some pause
    long, and the market closes for 4 or 8 days now and then (within the age limit)."""
    n_sym = int(rng.integers(3, 14))
    logp = np.log(rng.uniform(5, 500, n_sym))
    t = 1_700_000_000_000
    weight = rng.uniform(0.05, 1.0, n_sym)
    out = []
    for _ in range(int(rng.integers(200, 500))):
        s = int(rng.choice(n_sym, p=weight / weight.sum()))
        logp[s] += rng.normal(0, 2e-3)
        closed = rng.random() < 0.02 and t < 1_700_000_000_000 + 12 * 86_400_000
        t += int(rng.integers(0, 3)) * (4 * 86_400_000 if closed else 1000)  # < 30 days in all
        vol = None if rng.random() < 0.1 else float(rng.integers(1, 1000))
        out.append((f"S{s:02d}", t, float(np.exp(logp[s])), vol))
    return out


@pytest.mark.parametrize("seed", range(8))
def test_every_tick_one_forecast_equal_to_ample_slots_under_any_eviction(
    stocks: LoadedModel, seed: int
) -> None:
    """Random symbols, partitions, batch sizes, slots (down to 1), host cache sizes (down to
    0: every state comes back from the topic), idle evictions, checkpoints and a restart:
    every tick gets exactly one forecast (no rejection: every tick is valid), equal to a run
    with ample slots and no idle limit, `seq` continuous."""
    rng = np.random.default_rng(seed)
    ticks = pattern(rng)
    n_parts = int(rng.integers(1, 4))
    part_of = {s: int(rng.integers(0, n_parts)) for s in {t[0] for t in ticks}}
    cuts = [0]
    while cuts[-1] < len(ticks):
        cuts.append(min(len(ticks), cuts[-1] + int(rng.integers(1, 40))))

    now = [0.0]
    slots = int(rng.integers(1, 6))
    topic = FakeTopic()

    def engine() -> Engine:
        return Engine(
            stocks, max_symbols=slots, idle_evict_s=5.0, clock=lambda: now[0],
            cache=StateCache(int(rng.integers(0, 4))),
        )  # fmt: skip

    eng = engine()
    ample = Engine(stocks, max_symbols=64, idle_evict_s=1e12)
    restart_at = int(rng.integers(1, len(cuts) - 1)) if len(cuts) > 2 else -1
    nxt = dict.fromkeys(range(n_parts), 0)
    got: dict[tuple[str, int], Row] = {}
    want: dict[tuple[str, int], Row] = {}
    fetched = 0
    for b, (i, j) in enumerate(itertools.pairwise(cuts)):
        batch = ticks[i:j]
        good, bad = decode([encode(*t) for t in batch], [t[0].encode() for t in batch])
        assert bad == []
        parts = np.asarray([part_of[t[0]] for t in batch], np.int32)
        offs = np.zeros(len(batch), np.int64)
        for k, p in enumerate(parts.tolist()):
            offs[k], nxt[p] = nxt[p], nxt[p] + 1
        now[0] += float(rng.choice([0.1, 1.0, 7.0]))  # idle evictions now and then
        if rng.random() < 0.3:  # a checkpoint commits, then the cache lets go
            topic.commit(eng, eng.checkpoint(range(n_parts)))
            eng.cache.trim()
        if b == restart_at:  # everything checkpointed, a new engine restores from the topic
            topic.commit(eng, eng.checkpoint(range(n_parts)))
            eng = engine()
            eng.restore(*topic.latest())
        fetched += topic.fetch(eng, good.symbols)
        a = eng.apply(good, parts, offs, skip_applied=True)
        assert (len(a.forecasts), a.rejected, a.skipped) == (len(batch), [], [])
        assert sorted(a.forecasts.index.tolist()) == list(range(len(batch)))
        r = ample.apply(good, parts, offs).forecasts
        for f, out in ((a.forecasts, got), (r, want)):
            for k, sym in enumerate(f.symbols):
                key = (sym, int(f.seq[k]))
                assert key not in out, (key, out is got, b, b == restart_at)
                out[key] = (f.forecast[k], f.lower[k], f.upper[k], bool(f.warming[k]))
    assert set(got) == set(want)
    for key, ref in want.items():
        np.testing.assert_allclose(got[key][:3], ref[:3], rtol=1e-5)
        assert got[key][3] == ref[3], key
    assert ample.cache.held == {}


T0 = 1_700_000_000_000  # epoch ms (`decode` reads integers below 1e11 as epoch seconds)


def one(eng: Engine, sym: str, ts: int, off: int) -> tuple[int, bool]:
    good, _ = decode([encode(sym, T0 + ts, 10.0 + off % 7)], [sym.encode()])
    f = eng.apply(good, np.zeros(1, np.int32), np.array([off]), skip_applied=True).forecasts
    return int(f.seq[0]), bool(f.warming[0])


@pytest.mark.parametrize("slots", [1, 4])
def test_a_state_older_than_the_limit_starts_afresh_wherever_it_is(
    stocks: LoadedModel, slots: int
) -> None:
    """One rule, on the device (4 slots) or in the host cache (1 slot: B evicts A)."""
    day = 86_400_000
    eng = Engine(stocks, max_symbols=slots, state_max_age_s=5 * 86_400.0)
    assert [one(eng, "A", k, k)[0] for k in range(3)] == [1, 2, 3]
    one(eng, "B", 0, 3)
    assert one(eng, "A", 2 + 5 * day, 4) == (4, True)  # exactly 5 days: kept
    assert one(eng, "A", 2 + 10 * day + 1, 5) == (1, True)  # more than 5 days: afresh
    assert one(eng, "A", 2 + 10 * day + 2, 6) == (2, True)


def test_an_evicted_state_of_another_model_is_rewarmed_from_its_buffer(
    stocks: LoadedModel,
) -> None:
    eng = Engine(stocks, max_symbols=1)
    for k in range(70):
        one(eng, "A", k, k)
    one(eng, "B", 70, 70)  # A goes to the host cache, made by this version
    eng.version = "another"  # as after a hot swap
    assert one(eng, "A", 71, 71) == (71, False)  # seq continues, no warming
    got = eng.runtime.states_of([eng.slot_of["A"]])
    ref = Engine(stocks, max_symbols=1)  # re-warmed from the buffer, then the new tick
    for k in range(70):
        one(ref, "A", k, k)
    ref.rewarm([ref.slot_of["A"]])
    one(ref, "A", 71, 71)
    np.testing.assert_allclose(got, ref.runtime.states_of([ref.slot_of["A"]]), rtol=1e-6)
    plain = Engine(stocks, max_symbols=1)  # not re-warmed: another state
    for k in [*range(70), 71]:
        one(plain, "A", k, k)
    assert not np.allclose(got, plain.runtime.states_of([plain.slot_of["A"]]), rtol=1e-3)
