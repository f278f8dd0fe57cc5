"""The model registry: versioned checkpoints in one directory, a champion pointer, and a log
of every retraining attempt and every change of champion.

Layout:

    ROOT/versions/VERSION/   a checkpoint (`model.checkpoint.save`); its metadata.json holds
                             the parent version, the data range it saw and its scores
    ROOT/champion.json       {"version", "since", "reason"}: what the retrain job fine-tunes
                             next and what `tickcast models rollback` moves away from
    ROOT/history.jsonl       one line per change of champion (promote, retrain, rollback)
    ROOT/attempts.jsonl      one line per retraining attempt, promoted or not
    ROOT/plots/              champion vs challenger plots of the attempts

Plain files, written atomically (write beside, then rename), so a crash never leaves a half
written pointer. One writer at a time is assumed (the retrain job, or an operator);
serving instances only read versions/. The champion that *serving* follows is the latest
record of the compacted `tickcast.models` topic (`streamer.kafka.announcements`); the retrain
job and `tickcast models` write both.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from model import checkpoint
from model.checkpoint import CheckpointError, LoadedModel
from model.features import FeatureStats
from model.lstm import LSTMForecaster

__all__ = ["Registry", "RegistryError"]


class RegistryError(RuntimeError):
    """A registry operation that cannot be done (unknown version, nothing to roll back to)."""


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    tmp.replace(path)


def _append(path: Path, record: dict[str, Any]) -> None:
    with path.open("a") as f:
        f.write(json.dumps(record, default=float) + "\n")


def _read_lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a torn last line after a crash: skip it
                continue
    return out


class Registry:
    """Versioned checkpoints under `root` (created on first write)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    # ------------------------------------------------------------------ versions
    @property
    def versions_dir(self) -> Path:
        return self.root / "versions"

    @property
    def plots_dir(self) -> Path:
        return self.root / "plots"

    def path(self, version: str) -> Path:
        """The checkpoint directory of `version` (which may not exist)."""
        if not version or "/" in version or version.startswith("."):
            raise RegistryError(f"not a version id: {version!r}")
        return self.versions_dir / version

    def has(self, version: str) -> bool:
        return (self.path(version) / checkpoint.META).is_file()

    def add(
        self, model: LSTMForecaster, stats: FeatureStats, extra: dict[str, Any] | None = None
    ) -> str:
        """Save a model as a new version (not promoted); returns its version id."""
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.versions_dir / f".new-{os.getpid()}-{time.monotonic_ns()}"
        version = checkpoint.save(tmp, model, stats, extra)
        dest = self.path(version)
        if dest.exists():  # identical weights saved in the same second: keep the first
            shutil.rmtree(tmp)
        else:
            tmp.rename(dest)
        return version

    def import_dir(self, src: str | Path) -> str:
        """Copy an existing checkpoint directory in (e.g. a bundled model to seed the
        registry); it must load. Returns its version id."""
        pred = checkpoint.load(src)
        dest = self.path(pred.version)
        if not dest.exists():
            self.versions_dir.mkdir(parents=True, exist_ok=True)
            tmp = self.versions_dir / f".import-{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(src, tmp)
            tmp.rename(dest)
        return pred.version

    def load(self, version: str, **kw: Any) -> LoadedModel:
        """Load `version` (`checkpoint.load`; raises `CheckpointError` if it cannot serve)."""
        if not self.path(version).is_dir():
            raise CheckpointError(f"{version} is not in the registry {self.root}", "missing")
        return checkpoint.load(self.path(version), **kw)

    def versions(self) -> list[dict[str, Any]]:
        """Metadata of every stored version, oldest first (unreadable ones flagged)."""
        out: list[dict[str, Any]] = []
        if not self.versions_dir.is_dir():
            return out
        for d in sorted(self.versions_dir.iterdir()):
            if d.name.startswith(".") or not d.is_dir():
                continue
            try:
                out.append(checkpoint.read_metadata(d))
            except CheckpointError as e:
                out.append({"version": d.name, "error": str(e)})
        return out

    def remove(self, version: str) -> None:
        if version == self.champion():
            raise RegistryError(f"{version} is the champion; promote another version first")
        shutil.rmtree(self.path(version))

    # ------------------------------------------------------------------ champion
    def champion(self) -> str | None:
        f = self.root / "champion.json"
        if not f.exists():
            return None
        return str(json.loads(f.read_text())["version"])

    def promote(self, version: str, reason: str, **info: Any) -> dict[str, Any]:
        """Make `version` the champion after checking that it loads; logs the change.
        Returns the change record (what `streamer.kafka.announcements.announce` publishes)."""
        self.load(version)  # refuses a corrupt or foreign checkpoint here, not in serving
        record = {
            "version": version,
            "previous": self.champion(),
            "reason": reason,
            "time_ms": int(time.time() * 1000),
            **info,
        }
        self.root.mkdir(parents=True, exist_ok=True)
        _append(self.root / "history.jsonl", record)
        since = {"version": version, "since": record["time_ms"], "reason": reason}
        _write_atomic(self.root / "champion.json", json.dumps(since) + "\n")
        return record

    def changes(self) -> list[dict[str, Any]]:
        """Every change of champion, oldest first (the lines of history.jsonl)."""
        return _read_lines(self.root / "history.jsonl")

    def rollback_target(self) -> str:
        """The champion before the current one. The changes are read as a stack: a promotion
        pushes its version, a rollback pops one, so rolling back twice goes back two steps
        (versions no longer stored are skipped)."""
        current = self.champion()
        if current is None:
            raise RegistryError("no champion yet; nothing to roll back")
        stack: list[str] = []
        for h in self.changes():
            if h.get("reason") == "rollback":
                if stack:
                    stack.pop()
                if not stack or stack[-1] != h["version"]:
                    stack.append(h["version"])
            else:
                stack.append(h["version"])
        for v in reversed(stack[:-1]):
            if v != current and self.has(v):
                return v
        raise RegistryError(f"no earlier champion than {current} is stored")

    # ------------------------------------------------------------------ attempts
    def record_attempt(self, record: dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        _append(self.root / "attempts.jsonl", record)

    def attempts(self) -> list[dict[str, Any]]:
        return _read_lines(self.root / "attempts.jsonl")
