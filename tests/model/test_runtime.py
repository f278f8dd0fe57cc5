from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx

from model.config import ModelConfig
from model.lstm import LSTMForecaster, forward_fn, step_fn, zero_state
from model.runtime import Runtime, bucket


@pytest.fixture
def setup():
    cfg = ModelConfig(layers=3, units=16, features=("ret", "tod"))
    params = LSTMForecaster(cfg, rngs=nnx.Rngs(0)).params()
    return cfg, params


def test_bucket():
    assert [bucket(n) for n in (0, 1, 2, 3, 5, 64, 65)] == [1, 1, 2, 4, 8, 64, 128]
    assert bucket(3, smallest=16) == 16


def test_steps_on_subsets_equal_each_symbols_own_sequence(setup):
    cfg, params = setup
    n_slots, t_len = 7, 30
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n_slots, t_len, cfg.n_features)).astype(np.float32)
    # Reference: every symbol alone, straight through its sequence.
    ref_state = zero_state(cfg, n_slots)
    ref = []
    for t in range(t_len):
        ref_state, out = step_fn(params, ref_state, x[:, t])
        ref.append(np.asarray(out))
    ref_arr = np.stack(ref, 1)
    # Runtime: symbols tick at random moments, in random subsets and orders.
    r = Runtime(params, cfg, n_slots)
    pos = np.zeros(n_slots, int)
    got = np.zeros_like(ref_arr)
    while (pos < t_len).any():
        ready = np.flatnonzero(pos < t_len)
        subset = rng.permutation(ready)[: rng.integers(1, len(ready) + 1)]
        out = r.step(subset, x[subset, pos[subset]])
        got[subset, pos[subset]] = out
        pos[subset] += 1
    np.testing.assert_allclose(got, ref_arr, atol=1e-5)


def test_warm_equals_forward_and_leaves_other_slots_alone(setup):
    cfg, params = setup
    r = Runtime(params, cfg, 5)
    rng = np.random.default_rng(1)
    r.step(np.arange(5), rng.normal(size=(5, cfg.n_features)))
    h_before, c_before = r.state_of(4)
    windows = rng.normal(size=(2, cfg.window, cfg.n_features)).astype(np.float32)
    out = r.warm(np.array([1, 3]), windows)
    state, full = forward_fn(params, windows)
    np.testing.assert_allclose(out, np.asarray(full[:, -1]), atol=1e-6)
    np.testing.assert_allclose(r.state_of(3)[0], np.asarray(state.h[:, 1]), atol=1e-6)
    h_after, c_after = r.state_of(4)
    np.testing.assert_array_equal(h_before, h_after)
    np.testing.assert_array_equal(c_before, c_after)
    np.testing.assert_allclose(r.window_forecast(windows), out, atol=1e-6)


def test_state_round_trip_and_reset(setup):
    cfg, params = setup
    r = Runtime(params, cfg, 3)
    x = np.ones((1, cfg.n_features), np.float32)
    r.step(np.array([0]), x)
    h, c = r.state_of(0)
    after = r.step(np.array([0]), x)
    r.set_state(0, h, c)
    np.testing.assert_allclose(r.step(np.array([0]), x), after, atol=1e-7)
    r.reset([0])
    assert not np.any(r.state_of(0)[0])


def test_bad_batches_are_refused(setup):
    cfg, params = setup
    r = Runtime(params, cfg, 3)
    x = np.zeros((2, cfg.n_features), np.float32)
    with pytest.raises(ValueError, match="each slot once"):
        r.step(np.array([1, 1]), x)
    with pytest.raises(IndexError):
        r.step(np.array([0, 3]), x)
    for bad in (-1, 3):  # -1 or n_slots would otherwise reach the scratch slot
        with pytest.raises(IndexError):
            r.state_of(bad)
        with pytest.raises(IndexError):
            r.reset([bad])


def test_a_steady_stream_never_recompiles(setup):
    cfg, params = setup
    r = Runtime(params, cfg, 64, min_bucket=8)
    rng = np.random.default_rng(2)

    def burst() -> None:
        for n in (1, 3, 8, 9, 16, 33, 64, 5):
            slots = rng.choice(64, size=n, replace=False)
            r.step(slots, rng.normal(size=(n, cfg.n_features)))

    before = r._step._cache_size()  # the compiled kernels are shared by runtimes of one layout
    burst()  # compiles the buckets 8, 16, 32 and 64 once
    compiled = r._step._cache_size()
    assert compiled - before <= 4
    for _ in range(3):
        burst()
    assert r._step._cache_size() == compiled


def test_runtime_lives_on_the_requested_device(setup):
    cfg, params = setup
    dev = jax.devices()[0]
    r = Runtime(params, cfg, 2, device=dev)
    assert dev in r.hc.devices()


def test_advance_equals_successive_steps(setup):
    cfg, params = setup
    rng = np.random.default_rng(5)
    slots = np.array([4, 0, 2])
    counts = np.array([3, 1, 5])
    xs = rng.normal(size=(5, 3, cfg.n_features)).astype(np.float32)
    a = Runtime(params, cfg, n_slots=6)
    b = Runtime(params, cfg, n_slots=6)
    got = a.advance(slots, xs, counts)
    assert got.shape == (5, 3, 2)
    for t in range(5):
        live = np.flatnonzero(t < counts)
        want = b.step(slots[live], xs[t, live])
        np.testing.assert_allclose(got[t, live], want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(a.states_of(slots), b.states_of(slots), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(a.states_of([1, 3, 5]), 0.0)  # untouched slots
    b.set_states(np.array([1]), a.states_of([4]))
    np.testing.assert_array_equal(b.states_of([1]), a.states_of([4]))
