from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from model.config import ModelConfig
from model.lstm import LSTMForecaster, LSTMState, forward_fn, load_params_into, step_fn, zero_state


@pytest.mark.parametrize(
    ("layers", "units", "features", "seed"),
    [
        (4, 50, ("ret",), 0),
        (2, 16, ("ret", "dlogvol", "lvl", "tod", "dow", "lags"), 1),
        (1, 7, ("ret", "tod"), 2),
    ],
)
def test_stepping_through_a_window_equals_the_windowed_pass(layers, units, features, seed):
    cfg = ModelConfig(layers=layers, units=units, features=features)
    model = LSTMForecaster(cfg, rngs=nnx.Rngs(seed))
    # Random weights beyond the initialiser's range make the check less forgiving.
    params = jax.tree.map(
        lambda a: a + 0.3 * jax.random.normal(jax.random.key(seed + 7), a.shape), model.params()
    )
    load_params_into(model, params)
    window = 2.0 * jax.random.normal(jax.random.key(seed + 11), (5, cfg.window, cfg.n_features))
    windowed = np.asarray(model.forward(window))
    state = zero_state(cfg, 5)
    stepped = []
    for t in range(cfg.window):
        state, out = model.step(state, window[:, t])
        stepped.append(np.asarray(out))
    stepped_arr = np.stack(stepped, axis=1)
    assert windowed.dtype == np.float32
    assert windowed.shape == (5, cfg.window, 2)
    assert np.max(np.abs(stepped_arr - windowed)) <= 1e-5
    assert np.all(windowed[..., 1] > 0), "scale must be positive"


def test_forward_continues_from_a_given_state():
    cfg = ModelConfig(layers=2, units=12)
    params = LSTMForecaster(cfg, rngs=nnx.Rngs(3)).params()
    x = jax.random.normal(jax.random.key(0), (3, 40, cfg.n_features))
    whole_state, whole = forward_fn(params, x)
    mid, first = forward_fn(params, x[:, :25])
    end_state, second = forward_fn(params, x[:, 25:], mid)
    np.testing.assert_allclose(np.concatenate([first, second], 1), whole, atol=1e-6)
    np.testing.assert_allclose(end_state.h, whole_state.h, atol=1e-6)


def test_lag_columns_reach_only_the_linear_path():
    cfg = ModelConfig(layers=2, units=8, window=10, features=("ret", "lags"))
    model = LSTMForecaster(cfg, rngs=nnx.Rngs(0))
    assert model.layers[0].kernel.shape == (1 + 8, 32)  # the LSTM sees `ret` only
    x = jax.random.normal(jax.random.key(0), (3, cfg.n_features))
    bumped = x.at[:, 1:].add(1.0)
    s0 = zero_state(cfg, 3)
    (s1, a), (s2, b) = model.step(s0, x), model.step(s0, bumped)
    np.testing.assert_array_equal(s1.h, s2.h)
    np.testing.assert_array_equal(a, b)  # the linear path starts at zero
    model.linear[...] = jnp.ones(cfg.n_features)
    _, a = model.step(s0, x)
    _, b = model.step(s0, bumped)
    np.testing.assert_allclose(b[:, 0] - a[:, 0], 9.0, rtol=1e-5)
    np.testing.assert_array_equal(a[:, 1], b[:, 1])


def test_dropout_only_with_a_key_and_changes_outputs():
    cfg = ModelConfig(layers=2, units=12)
    params = LSTMForecaster(cfg, rngs=nnx.Rngs(3)).params()
    x = jax.random.normal(jax.random.key(0), (4, cfg.n_features))
    s = LSTMState(*(jnp.zeros((2, 4, 12)),) * 2)
    _, plain = step_fn(params, s, x)
    _, no_key = step_fn(params, s, x, dropout=0.5)
    _, dropped = step_fn(params, s, x, dropout=0.5, key=jax.random.key(1))
    np.testing.assert_array_equal(plain, no_key)
    assert not np.allclose(plain, dropped)


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="unknown features"):
        ModelConfig(features=("ret", "moon"))
    with pytest.raises(ValueError, match="must include 'ret'"):
        ModelConfig(features=("tod",))
    with pytest.raises(ValueError, match="dropout"):
        ModelConfig(dropout=1.0)
    with pytest.raises(ValueError, match="last feature"):
        ModelConfig(features=("ret", "lags", "tod"))
    assert ModelConfig(features=("ret", "tod")).n_features == 3
    assert ModelConfig(window=60, features=("ret", "lvl", "lags")).n_features == 2 + 59
    assert ModelConfig.from_dict(ModelConfig().to_dict()) == ModelConfig()
