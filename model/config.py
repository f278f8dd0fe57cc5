"""Configuration dataclasses for the model and its training.

Every field has a comment; defaults follow the reference tutorial (4 stacked LSTM(50),
dropout 0.2, 60-step windows, Adam) except where the stream needs something better.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["ModelConfig", "TrainConfig"]

# Feature names and the number of input columns each one contributes.
FEATURE_WIDTHS: dict[str, int] = {
    "ret": 1,  # log return of the price, standardized with training-split statistics
    "dlogvol": 1,  # change of log(1 + volume), standardized with training-split statistics
    "lvl": 1,  # log price minus its mean over the last `window` ticks, standardized
    "lags": -1,  # the last window-1 standardized returns, fed to the linear (AR) path only
    "tod": 2,  # time of day (UTC) as sin/cos: helps intraday series with a daily cycle
    "dow": 2,  # day of week as sin/cos: weekly cycle of intraday series
}


@dataclass(frozen=True)
class ModelConfig:
    """Shape of the network. Changing any field makes old checkpoints incompatible."""

    layers: int = 4  # stacked LSTM layers (tutorial: 4)
    units: int = 50  # hidden units per layer (tutorial: 50)
    dropout: float = 0.2  # dropout on each layer's output, training only (tutorial: 0.2)
    window: int = 60  # steps used to warm a fresh state and for the windowed pass (tutorial: 60)
    features: tuple[str, ...] = ("ret",)  # input features, see FEATURE_WIDTHS

    def __post_init__(self) -> None:
        unknown = [f for f in self.features if f not in FEATURE_WIDTHS]
        if unknown:
            raise ValueError(f"unknown features {unknown}; known: {sorted(FEATURE_WIDTHS)}")
        if "ret" not in self.features:
            raise ValueError("features must include 'ret': the model forecasts the next return")
        if "lags" in self.features and self.features[-1] != "lags":
            raise ValueError("'lags' must be the last feature (its columns bypass the LSTM)")
        if self.layers < 1 or self.units < 1 or self.window < 2:
            raise ValueError("layers and units must be >= 1 and window >= 2")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def n_lags(self) -> int:
        """Columns of the `lags` feature (last in every row), 0 without it."""
        return self.window - 1 if "lags" in self.features else 0

    @property
    def n_features(self) -> int:
        """Width F of one input row `[features]`."""
        return sum(FEATURE_WIDTHS[f] for f in self.features if f != "lags") + self.n_lags

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "features": list(self.features)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        return cls(**{**d, "features": tuple(d["features"])})


@dataclass(frozen=True)
class TrainConfig:
    """How a model is fitted. Not part of the checkpoint's compatibility check."""

    seed: int = 0  # seeds initialisation, dropout and segment sampling
    loss: Literal["nll", "mse"] = "nll"  # Gaussian negative log-likelihood, or MSE on the mean
    learning_rate: float = 1e-3  # Adam
    batch_size: int = 32  # parallel segments (lanes) per optimizer step
    chunks: int = 8  # each segment is `chunks` BPTT chunks long; state is carried between chunks
    bptt: int = 0  # steps per chunk (gradients are truncated at chunk borders); 0 = the window
    max_steps: int = 3000  # optimizer steps at most (the tutorial made about 3,800)
    eval_every: int = 40  # optimizer steps between validation passes
    patience: int = 10  # validation passes without improvement before stopping early
    val_fraction: float = 0.1  # chronological: train | validation | test
    test_fraction: float = 0.2  # the last 20%, as in the baselines of DATA.md
    grad_clip: float = 1.0  # global-norm gradient clipping
    weight_decay: float = 0.0  # decoupled weight decay (AdamW); 0 is plain Adam
    refit: bool = (
        True  # after early stopping, retrain on train + validation for the best step count
    )
    max_seconds: float | None = (
        240.0  # wall-clock budget of each phase (fit, refit); None: no limit
    )
    progress: bool = True  # tqdm progress bar with the loss
    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes stored in metadata

    def __post_init__(self) -> None:
        """Refuse values that cannot train a model (ValueError naming the field): a batch,
        chunk or pass count below 1, a negative step count, a learning rate not above 0,
        fractions outside [0, 1) that leave no training data, a time budget not above 0."""
        for name in ("batch_size", "chunks", "eval_every", "patience"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_steps < 0:  # 0: no step (a fine-tune then returns its starting model)
            raise ValueError(f"max_steps must be >= 0, got {self.max_steps}")
        if self.bptt < 0:
            raise ValueError(f"bptt must be >= 0 (0: the window), got {self.bptt}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if not (0 <= self.val_fraction < 1 and 0 <= self.test_fraction < 1
                and self.val_fraction + self.test_fraction < 1):  # fmt: skip
            raise ValueError(
                f"val_fraction {self.val_fraction} and test_fraction {self.test_fraction} must "
                "each be in [0, 1) and leave some training data"
            )
        if self.max_seconds is not None and not self.max_seconds > 0:
            raise ValueError(f"max_seconds must be > 0 (or None: no limit), got {self.max_seconds}")
