"""What the command groups share: logging setup, the explicit JAX configuration, loading a
model by name, and the `argparse` subparsers type.

May import `model.paths`, `model.runtime` and `model.checkpoint` (the last two lazily: they
load JAX, which `tickcast replay` and `tickcast watch` never need) and the standard library.
"""

from __future__ import annotations

import argparse
import logging
from typing import TYPE_CHECKING, TypeAlias

from model.paths import resolve_model

if TYPE_CHECKING:
    from model.checkpoint import LoadedModel

__all__ = ["Subparsers", "jax", "load_model", "setup_logging"]

Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def setup_logging(level: str) -> None:
    """Log to stderr at `level`; the chattiest libraries only from WARNING up."""
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
    )
    quiet = max(logging.WARNING, logging.getLevelName(level.upper()))
    for noisy in ("aiokafka", "jax", "absl", "orbax"):
        logging.getLogger(noisy).setLevel(quiet)


def jax(compile_cache: bool = False) -> None:
    """Apply tickcast's JAX settings (`model.runtime.configure_jax`): called by the commands
    that step or train a model, never on import."""
    from model.runtime import configure_jax

    configure_jax(compile_cache=compile_cache)


def load_model(name: str) -> LoadedModel:
    """A bundled model's name or a checkpoint directory, loaded."""
    from model import checkpoint

    return checkpoint.load(resolve_model(name))
