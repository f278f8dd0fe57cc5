"""Shared fixtures. Everything here is real: real CSV files, real models, real checkpoints."""

from __future__ import annotations

import os

# Tests run on the CPU even where a GPU is present, so results compare across machines.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest

from model.config import ModelConfig, TrainConfig
from model.runtime import configure_jax

configure_jax()  # what every entry point applies (CLI, services, benchmarks)

pytest_plugins = ["tests.kafka_fixtures"]


@pytest.fixture
def tiny_config() -> ModelConfig:
    return ModelConfig(
        layers=2, units=8, dropout=0.1, window=12, features=("ret", "dlogvol", "tod", "dow")
    )


@pytest.fixture
def tiny_train() -> TrainConfig:
    return TrainConfig(
        max_steps=60, eval_every=20, batch_size=8, chunks=3, progress=False, max_seconds=None
    )
