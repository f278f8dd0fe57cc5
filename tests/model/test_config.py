"""model.config: a TrainConfig that cannot train a model is refused, naming the field."""

from __future__ import annotations

import pytest

from model.config import TrainConfig


@pytest.mark.parametrize(
    ("kw", "said"),
    [
        ({"batch_size": 0}, "batch_size must be at least 1, got 0"),
        ({"batch_size": -3}, "batch_size must be at least 1, got -3"),
        ({"max_steps": -1}, "max_steps must be >= 0"),
        ({"chunks": 0}, "chunks must be at least 1"),
        ({"eval_every": 0}, "eval_every must be at least 1"),
        ({"learning_rate": -1.0}, "learning_rate must be > 0"),
        ({"learning_rate": float("nan")}, "learning_rate must be > 0"),
        ({"val_fraction": 0.5, "test_fraction": 0.5}, "leave some training data"),
        ({"max_seconds": 0.0}, "max_seconds must be > 0"),
        ({"bptt": -1}, "bptt must be >= 0"),
    ],
)
def test_values_that_cannot_train_are_refused(kw: dict[str, float], said: str) -> None:
    with pytest.raises(ValueError, match=said):
        TrainConfig(**kw)  # type: ignore[arg-type]


def test_the_defaults_and_no_time_limit_are_fine() -> None:
    assert TrainConfig().batch_size == 32 and TrainConfig(max_seconds=None).max_seconds is None
