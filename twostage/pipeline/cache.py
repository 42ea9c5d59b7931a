"""A content-keyed, crash-safe store for stage artifacts and per-run results.

Each artifact's key is a hash of the stage's name and version, its settings, the data fingerprint
and its inputs' keys, so a changed setting rebuilds that stage and those after it, nothing else.
Artifacts are written to a temporary name and renamed; a sidecar records their SHA-256, and an
artifact whose bytes no longer match (or that fails to load) is rebuilt with a warning. A file
lock per key keeps two processes sharing a cache from building the same artifact twice.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch
from filelock import FileLock

from twostage.files import atomic_write_bytes, atomic_write_text

T = TypeVar("T")


def stable_key(*parts: Any) -> str:
    """A short hex key of JSON-serialisable parts (dict keys sorted)."""
    text = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def default_cache_dir() -> Path:
    """`$TWOSTAGE_CACHE`, else the platform's user cache directory + `/stages`."""
    env = os.environ.get("TWOSTAGE_CACHE")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("twostage")) / "stages"


class StageCache:
    """Artifacts under `root/<stage>/<key>.pt`, each with a `.sha256` sidecar."""

    def __init__(self, root: str | Path | None = None, *, enabled: bool = True):
        self.root = Path(root) if root is not None else default_cache_dir()
        self.enabled = enabled

    def path(self, stage: str, key: str) -> Path:
        return self.root / stage / f"{key}.pt"

    def load(self, stage: str, key: str) -> Any | None:
        """The stored artifact, or None when absent or corrupt (a corrupt one is removed)."""
        path = self.path(stage, key)
        sidecar = path.with_suffix(".sha256")
        if not path.is_file() or not sidecar.is_file():
            return None
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != sidecar.read_text().strip():
            warnings.warn(
                f"Cached {stage} artifact {path} is corrupt (checksum); rebuilding it.",
                stacklevel=2,
            )
            self._remove(path)
            return None
        try:
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
        except Exception as err:  # noqa: BLE001 — any load failure means: do not trust it
            warnings.warn(
                f"Cached {stage} artifact {path} failed to load ({err}); rebuilding it.",
                stacklevel=2,
            )
            self._remove(path)
            return None

    def save(self, stage: str, key: str, artifact: Any) -> None:
        buffer = io.BytesIO()
        torch.save(artifact, buffer)
        data = buffer.getvalue()
        path = self.path(stage, key)
        # Sidecar last: an artifact without a matching sidecar is never trusted.
        path.with_suffix(".sha256").unlink(missing_ok=True)
        atomic_write_bytes(path, data)
        atomic_write_text(path.with_suffix(".sha256"), hashlib.sha256(data).hexdigest())

    def get_or_build(self, stage: str, key: str, build: Callable[[], T]) -> tuple[T, bool]:
        """(artifact, was_cached). Builds under a per-key file lock when missing."""
        if not self.enabled:
            return build(), False
        found = self.load(stage, key)
        if found is not None:
            return found, True
        lock_path = self.path(stage, key).with_suffix(".lock")
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(lock_path)):
            found = self.load(stage, key)  # another process may have built it meanwhile
            if found is not None:
                return found, True
            artifact = build()
            self.save(stage, key, artifact)
        return artifact, False

    def _remove(self, path: Path) -> None:
        path.unlink(missing_ok=True)
        path.with_suffix(".sha256").unlink(missing_ok=True)
