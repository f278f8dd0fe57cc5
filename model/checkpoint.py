"""Checkpoints: Orbax for the weights, a JSON metadata file for everything else.

Layout of a model directory:

    DIR/metadata.json   format, version id, model config, feature statistics, data range, scores
    DIR/params/         Orbax StandardCheckpointer tree of the LSTM's parameters

`load(DIR)` returns a ready `LoadedModel`. It refuses, with a `CheckpointError` that says why,
a directory whose format is from other code, whose config does not build, or whose stored
arrays do not have the shapes the config implies, so a bad checkpoint never replaces a
serving model.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from model.config import ModelConfig
from model.errors import CheckpointError
from model.features import FeatureStats
from model.lstm import LSTMForecaster, Params, params_of
from model.runtime import Runtime

__all__ = ["FORMAT", "CheckpointError", "LoadedModel", "load", "save"]

FORMAT = "tickcast-lstm/1"  # bump when the parameter layout or feature semantics change
META = "metadata.json"


@dataclass
class LoadedModel:
    """A loaded model: parameters, config, feature statistics and metadata."""

    model: LSTMForecaster
    config: ModelConfig
    stats: FeatureStats
    metadata: dict[str, Any]

    @property
    def version(self) -> str:
        return str(self.metadata["version"])

    @property
    def params(self) -> Params:
        return params_of(self.model)

    def runtime(self, n_slots: int, **kwargs: Any) -> Runtime:
        """A fresh `Runtime` with `n_slots` symbol slots running this model."""
        return Runtime(self.params, self.config, n_slots, **kwargs)


def _param_tree(model: LSTMForecaster) -> dict[str, Any]:
    """The parameters as nested dicts with string keys (Orbax stores list indices as text)."""

    def str_keys(t: Any) -> Any:
        return {str(k): str_keys(v) for k, v in t.items()} if isinstance(t, dict) else t

    return dict(str_keys(nnx.to_pure_dict(nnx.state(model, nnx.Param))))


def _int_keys(t: Any) -> Any:
    if not isinstance(t, dict):
        return t
    return {(int(k) if k.isdigit() else k): _int_keys(v) for k, v in t.items()}


def _digest(tree: dict[str, Any], config: dict[str, Any], stats: dict[str, Any]) -> str:
    """sha256 over the weights, the config and the feature statistics: what a forecast depends
    on, so an edit to any of them (a reordered feature list keeps every shape) is caught."""
    h = hashlib.sha256(json.dumps([config, stats], sort_keys=True).encode())
    for leaf in jax.tree.leaves(tree):
        h.update(np.asarray(leaf).tobytes())
    return h.hexdigest()


def save(
    path: str | Path,
    model: LSTMForecaster,
    stats: FeatureStats,
    extra: dict[str, Any] | None = None,
    *,
    overwrite: bool = False,
) -> str:
    """Write `model` to directory `path`; returns the new version id.

    The version id is the UTC time plus a digest of the weights, so retraining to identical
    weights gives an identical digest and any change of weights a new id.
    """
    path = Path(path).resolve()
    if path.exists():
        is_model = path.is_dir() and ((path / META).is_file() or not any(path.iterdir()))
        if not overwrite or not is_model:
            what = "a model directory" if is_model else "not an empty or tickcast model directory"
            raise FileExistsError(f"{path} exists ({what}); refusing to replace it")
    # Write beside the target and rename into place: a crash leaves the old model intact.
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tree = _param_tree(model)
    config, stat_d = model.config.to_dict(), stats.to_dict()
    digest = _digest(tree, config, stat_d)
    version = f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{digest[:8]}"
    ckpt = ocp.StandardCheckpointer()
    ckpt.save(tmp / "params", tree)
    ckpt.wait_until_finished()
    ckpt.close()
    meta = {
        "format": FORMAT,
        "version": version,
        "created": datetime.now(UTC).isoformat(),
        "config": config,
        "feature_stats": stat_d,
        "digest": digest,
        **(extra or {}),
    }
    (tmp / META).write_text(json.dumps(meta, indent=2, default=float) + "\n")
    if path.exists():
        shutil.rmtree(path)
    tmp.rename(path)
    return version


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata of a model directory, checked for format; raises `CheckpointError`."""
    f = Path(path) / META
    try:
        meta = json.loads(f.read_text())
    except FileNotFoundError:
        from model.paths import bundled_names

        what = "not a tickcast model directory" if Path(path).is_dir() else "no such directory"
        raise CheckpointError(
            f"{path}: no {META}; {what} (bundled models by name: {', '.join(bundled_names())})",
            "missing",
        ) from None
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{f}: unreadable metadata ({e})") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise CheckpointError(f"{path}: format {got!r}, this code reads {FORMAT!r}", "mismatch")
    return meta


def load(path: str | Path, *, expect: ModelConfig | None = None) -> LoadedModel:
    """Load a model directory into a ready `LoadedModel`.

    Args:
      path: the model directory.
      expect: if given, the checkpoint's config must equal it (a server swapping models
        refuses one with other features or shapes than the stream it serves).

    Raises:
      CheckpointError: missing or corrupt files, unknown format, config that does not match
        `expect`, or stored arrays whose shapes differ from what the config builds.
    """
    path = Path(path).resolve()
    meta = read_metadata(path)
    try:
        config = ModelConfig.from_dict(meta["config"])
        stats = FeatureStats(**meta["feature_stats"])
        spreads = (stats.ret_std, stats.vol_std, stats.lvl_std, stats.interval_scale)
        values = (stats.ret_mean, stats.vol_mean, *spreads)
        if not all(isinstance(v, int | float) and np.isfinite(v) for v in values):
            raise ValueError("feature statistics must be finite numbers")
        if min(spreads) <= 0:
            raise ValueError("standard deviations and interval_scale must be > 0")
        if not isinstance(meta.get("version"), str) or not isinstance(meta.get("digest"), str):
            raise ValueError("version and digest are required")
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: config or feature statistics invalid ({e})") from e
    if expect is not None and config != expect:
        raise CheckpointError(
            f"{path}: config {config} does not match the serving config {expect}", "mismatch"
        )
    if not (path / "params").is_dir():
        raise CheckpointError(f"{path}: no params/ directory; the weights are missing", "missing")
    model = LSTMForecaster(config, rngs=nnx.Rngs(0))
    target = _param_tree(model)
    ckpt = ocp.StandardCheckpointer()
    try:
        stored = ckpt.metadata(path / "params")
        stored_tree = getattr(stored, "item_metadata", stored)
        want = {
            jax.tree_util.keystr(k): tuple(v.shape)
            for k, v in jax.tree_util.tree_leaves_with_path(target)
        }
        have = {
            jax.tree_util.keystr(k): tuple(v.shape)
            for k, v in jax.tree_util.tree_leaves_with_path(stored_tree)
        }
        if want != have:
            diff = sorted(set(want.items()) ^ set(have.items()))[:4]
            raise CheckpointError(
                f"{path}: stored parameters do not match the config: {diff}", "mismatch"
            )
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        restored = ckpt.restore(path / "params", abstract)
    except CheckpointError:
        raise
    except Exception as e:  # Orbax raises many types for missing or corrupt files
        raise CheckpointError(f"{path}: cannot restore parameters ({type(e).__name__}: {e})") from e
    finally:
        ckpt.close()
    if _digest(restored, meta["config"], meta["feature_stats"]) != meta["digest"]:
        raise CheckpointError(f"{path}: digest differs from metadata (corrupt or edited)")
    if not all(np.all(np.isfinite(np.asarray(a))) for a in jax.tree.leaves(restored)):
        raise CheckpointError(f"{path}: parameters contain NaN or inf")
    state = nnx.state(model, nnx.Param)
    nnx.replace_by_pure_dict(state, _int_keys(restored))
    nnx.update(model, state)
    return LoadedModel(model=model, config=config, stats=stats, metadata=meta)
