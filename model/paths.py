"""Where bundled models live, and how a model argument names one (no JAX import: the CLI
uses it for commands that never load a model)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["BUNDLED_MODELS", "bundled_model", "bundled_names", "resolve_model"]

BUNDLED_MODELS = Path(__file__).resolve().parent / "bundled"


def bundled_model(name: str) -> Path | None:
    """The directory of bundled model `name` (`stocks`, `taylor`, ...), or None if no bundled
    model has that name."""
    p = BUNDLED_MODELS / name
    return p if (p / "metadata.json").is_file() else None


def bundled_names() -> list[str]:
    """The bundled models' names, sorted."""
    return sorted(p.parent.name for p in BUNDLED_MODELS.glob("*/metadata.json"))


def resolve_model(name_or_dir: str | Path) -> Path:
    """A bundled model's name or a checkpoint directory: the directory to `checkpoint.load`."""
    return bundled_model(str(name_or_dir)) or Path(name_or_dir)
