"""Stacked LSTM with a Gaussian head, as a Flax NNX module and as pure functions.

The math lives in pure functions over a plain parameter pytree (`Params`) so that the
training loop, the offline evaluator and the live runtime all run the same code:

* `step_fn(params, state, x)`: one time step for a batch, carrying `(h, c)`.
* `forward_fn(params, window)`: `lax.scan` of `step_fn` over a window.

`LSTMForecaster` is the NNX module that owns the parameters; its `forward` and `step`
methods call the pure functions. The runtime (`model.runtime`) extracts `Params` once and
jit-compiles `step_fn` directly, which avoids NNX's per-call overhead on the hot path.

Gate order in each layer's kernel is (i, f, o, g). The three sigmoid gates are computed as
`0.5 + 0.5 * tanh(x / 2)`, so one `tanh` over the whole `[batch, 4 * units]` gate block
serves all four gates: on CPU the transcendental functions, not the matrix products,
dominate a large-batch step.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from model.config import ModelConfig

__all__ = [
    "LSTMForecaster",
    "LSTMState",
    "Params",
    "forward_fn",
    "params_of",
    "step_fn",
    "zero_state",
]

SCALE_FLOOR = 1e-3  # smallest predicted standard deviation (in standardized units)


class LayerParams(NamedTuple):
    kernel: jax.Array  # [in + units, 4 * units]; rows: input then recurrent
    bias: jax.Array  # [4 * units]


class Params(NamedTuple):
    layers: tuple[LayerParams, ...]
    head_kernel: jax.Array  # [units, 2] -> (mean, raw scale)
    head_bias: jax.Array  # [2]
    linear: jax.Array  # [features]: linear path from the inputs straight to the mean


class LSTMState(NamedTuple):
    h: jax.Array  # [layers, batch, units]
    c: jax.Array  # [layers, batch, units]


def zero_state(config: ModelConfig, batch: int) -> LSTMState:
    """All-zero `(h, c)`, each `[layers, batch, units]` float32."""
    z = jnp.zeros((config.layers, batch, config.units), jnp.float32)
    return LSTMState(z, z)


def _gate_scale(units: int) -> jax.Array:
    # i, f, o are sigmoids: sigmoid(x) = 0.5 + 0.5 * tanh(x / 2); g is a plain tanh.
    return jnp.concatenate([jnp.full((3 * units,), 0.5), jnp.ones((units,))]).astype(jnp.float32)


def _cell(p: LayerParams, h: jax.Array, c: jax.Array, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """One LSTM cell. x `[batch, in]`, h and c `[batch, units]`."""
    units = h.shape[-1]
    z = jnp.concatenate([x, h], axis=-1) @ p.kernel + p.bias
    t = jnp.tanh(z * _gate_scale(units))
    sig = 0.5 + 0.5 * t[:, : 3 * units]
    i, f, o = sig[:, :units], sig[:, units : 2 * units], sig[:, 2 * units :]
    g = t[:, 3 * units :]
    c_new = f * c + i * g
    h_new = o * jnp.tanh(c_new)
    return h_new, c_new


def _head(params: Params, h_top: jax.Array, x: jax.Array) -> jax.Array:
    """`[batch, units]`, inputs `[batch, features]` -> `[batch, 2]`: (mean, scale) of the
    next standardized return. The mean adds a linear function of the inputs (LSTNet's
    autoregressive highway): with the `lags` feature that is an AR model on returns, and the
    LSTM learns what it leaves."""
    out = h_top @ params.head_kernel + params.head_bias
    scale = jax.nn.softplus(out[:, 1]) + SCALE_FLOOR
    return jnp.stack([out[:, 0] + x @ params.linear, scale], axis=-1)


def step_fn(
    params: Params,
    state: LSTMState,
    x: jax.Array,
    dropout: float = 0.0,
    key: jax.Array | None = None,
) -> tuple[LSTMState, jax.Array]:
    """Advance every row of the batch by one step.

    Args:
      params: the network's parameters.
      state: `(h, c)`, each `[layers, batch, units]`.
      x: inputs `[batch, features]`.
      dropout: rate applied to each layer's output (training only; needs `key`).
      key: PRNG key for dropout.

    Returns:
      The new state and the forecast `[batch, 2]`: mean and scale (> 0) of the next
      standardized return.
    """
    hs, cs = [], []
    units = params.head_kernel.shape[0]
    inp = x[:, : params.layers[0].kernel.shape[0] - units]  # `lags` columns bypass the LSTM
    for li, lp in enumerate(params.layers):
        h, c = _cell(lp, state.h[li], state.c[li], inp)
        hs.append(h)
        cs.append(c)
        inp = h
        if dropout > 0.0 and key is not None:
            keep = jax.random.bernoulli(jax.random.fold_in(key, li), 1.0 - dropout, h.shape)
            inp = jnp.where(keep, h / (1.0 - dropout), 0.0)
    return LSTMState(jnp.stack(hs), jnp.stack(cs)), _head(params, inp, x)


def forward_fn(
    params: Params,
    window: jax.Array,
    state: LSTMState | None = None,
    dropout: float = 0.0,
    key: jax.Array | None = None,
) -> tuple[LSTMState, jax.Array]:
    """Run `step_fn` over a window.

    Args:
      window: inputs `[batch, time, features]`.
      state: initial `(h, c)`; zeros when None.

    Returns:
      The final state and forecasts `[batch, time, 2]` (mean, scale) made after each step.
    """
    batch, time, _ = window.shape
    layers, units = len(params.layers), params.head_kernel.shape[0]
    if state is None:
        z = jnp.zeros((layers, batch, units), window.dtype)
        init = LSTMState(z, z)
    else:
        init = state
    keys = (
        jax.random.split(key, time)
        if (dropout > 0.0 and key is not None)
        else jnp.zeros((time, 2), jnp.uint32)
    )
    use_dropout = dropout > 0.0 and key is not None

    def body(s: LSTMState, xs: tuple[jax.Array, jax.Array]) -> tuple[LSTMState, jax.Array]:
        x_t, k_t = xs
        return step_fn(
            params, s, x_t, dropout if use_dropout else 0.0, k_t if use_dropout else None
        )

    final, out = jax.lax.scan(body, init, (jnp.swapaxes(window, 0, 1), keys))
    return final, jnp.swapaxes(out, 0, 1)


class _Layer(nnx.Module):
    def __init__(self, n_in: int, units: int, rngs: nnx.Rngs) -> None:
        k_in = nnx.initializers.glorot_uniform()(rngs.params(), (n_in, 4 * units))
        k_rec = nnx.initializers.orthogonal()(rngs.params(), (units, 4 * units))
        self.kernel = nnx.Param(jnp.concatenate([k_in, k_rec], axis=0))
        # Forget-gate bias 1 (Jozefowicz et al., 2015): remember by default.
        bias = jnp.zeros((4 * units,), jnp.float32).at[units : 2 * units].set(1.0)
        self.bias = nnx.Param(bias)


class LSTMForecaster(nnx.Module):
    """Stacked LSTM + Gaussian head over standardized features.

    `forward(window [batch, time, features])` and `step(state, x [batch, features])`
    compute the same function: stepping through a window from the zero state gives the
    windowed pass's outputs.
    """

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs) -> None:
        self.config = config
        n_in = config.n_features - config.n_lags
        layers = []
        for _ in range(config.layers):
            layers.append(_Layer(n_in, config.units, rngs))
            n_in = config.units
        self.layers = nnx.List(layers)
        self.head_kernel = nnx.Param(
            nnx.initializers.glorot_uniform()(rngs.params(), (config.units, 2))
        )
        self.head_bias = nnx.Param(jnp.zeros((2,), jnp.float32))
        self.linear = nnx.Param(jnp.zeros((config.n_features,), jnp.float32))

    def params(self) -> Params:
        return params_of(self)

    def forward(self, window: jax.Array) -> jax.Array:
        """Deterministic pass over `[batch, time, features]` -> `[batch, time, 2]`."""
        return forward_fn(self.params(), window)[1]

    def step(self, state: LSTMState, x: jax.Array) -> tuple[LSTMState, jax.Array]:
        """One deterministic step: `x [batch, features]` -> (state, `[batch, 2]`)."""
        return step_fn(self.params(), state, x)


def params_of(model: LSTMForecaster) -> Params:
    """The module's parameters as a plain pytree of arrays (what `jax.jit` functions take)."""
    return Params(
        layers=tuple(LayerParams(lay.kernel[...], lay.bias[...]) for lay in model.layers),
        head_kernel=model.head_kernel[...],
        head_bias=model.head_bias[...],
        linear=model.linear[...],
    )


def load_params_into(model: LSTMForecaster, params: Params) -> None:
    """Write a `Params` pytree back into the module (after training)."""
    for lay, lp in zip(model.layers, params.layers, strict=True):
        lay.kernel[...] = lp.kernel
        lay.bias[...] = lp.bias
    model.head_kernel[...] = params.head_kernel
    model.head_bias[...] = params.head_bias
    model.linear[...] = params.linear
