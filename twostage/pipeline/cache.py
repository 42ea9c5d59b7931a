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
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from filelock import FileLock, Timeout

from twostage.errors import TwoStageError
from twostage.files import atomic_write_bytes, atomic_write_text

T = TypeVar("T")

STAGES = ("simulator", "world", "logging_policy", "bandit_log", "ranker")  # the cached stages
# The cache's own files in a stage folder: <key>.pt, .sha256, .lock, and atomic-write temporaries.
OWN_FILE = re.compile(
    r"(?P<key>[0-9a-f]{16})\.(?:pt|sha256|lock)|\.(?P<tmp>[0-9a-f]{16})\.(?:pt|sha256)\..+\.tmp"
)


@dataclass(frozen=True)
class CacheEntry:
    """One artifact of the cache: its files (artifact, sidecar, lock, temporaries) together."""

    stage: str
    key: str
    files: tuple[Path, ...]
    size: int  # bytes
    modified: float  # POSIX time of its newest file
    complete: bool  # artifact and sidecar both present (not a build in progress or cut short)


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

    def entries(self, stage: str | None = None) -> list[CacheEntry]:
        """The cache's entries (of `stage` only, when given), by stage then key."""
        self._check_root()
        found: list[CacheEntry] = []
        for name in stages(stage):
            folder = self.root / name
            if not folder.is_dir():
                continue
            groups: dict[str, list[Path]] = {}
            for path in folder.iterdir():
                match = OWN_FILE.fullmatch(path.name)
                if match and path.is_file():
                    groups.setdefault(match["key"] or match["tmp"], []).append(path)
            for key, files in sorted(groups.items()):
                stats = [path.stat() for path in files]
                names = {path.name for path in files}
                found.append(
                    CacheEntry(
                        stage=name,
                        key=key,
                        files=tuple(sorted(files)),
                        size=sum(stat.st_size for stat in stats),
                        modified=max(stat.st_mtime for stat in stats),
                        complete={f"{key}.pt", f"{key}.sha256"} <= names,
                    )
                )
        return found

    def size(self) -> int:
        """Bytes of every entry."""
        return sum(entry.size for entry in self.entries())

    def clear(self, stage: str | None = None) -> tuple[list[CacheEntry], list[CacheEntry]]:
        """Remove every entry (of `stage` only, when given): the cache's own files, nothing else,
        then stage folders left empty. Returns (removed, skipped): an entry whose lock another
        process holds (a build in progress) is skipped. Later stages' entries stay valid without
        their parent's: keys name settings, and a rebuilt stage gets the same key."""
        names = stages(stage)
        self._check_root()
        if not self.is_cache() and self.root.is_dir() and any(self.root.iterdir()):
            raise TwoStageError(
                f"{self.root} is not a twostage stage cache (it has none of the folders "
                f"{', '.join(STAGES)}); nothing removed."
            )
        removed: list[CacheEntry] = []
        skipped: list[CacheEntry] = []
        for entry in self.entries(stage):
            lock = self.path(entry.stage, entry.key).with_suffix(".lock")
            try:
                with FileLock(str(lock), timeout=0):
                    for path in entry.files:
                        if path != lock:
                            path.unlink(missing_ok=True)
            except Timeout:
                skipped.append(entry)
                continue
            lock.unlink(missing_ok=True)
            removed.append(entry)
        for name in names:
            folder = self.root / name
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        return removed, skipped

    def is_cache(self) -> bool:
        """True when the root holds at least one stage folder."""
        return any((self.root / name).is_dir() for name in STAGES)

    def describe(self) -> str:
        """One line: where the cache is and its size."""
        return f"Stage cache: {self.root} ({megabytes(self.size())})"

    def _check_root(self) -> None:
        if self.root.exists() and not self.root.is_dir():
            raise TwoStageError(f"{self.root} is a file, not a stage cache directory.")


def stages(stage: str | None) -> tuple[str, ...]:
    """Every cached stage, or only `stage` when given; a clear error when it names none."""
    if stage is None:
        return STAGES
    if stage not in STAGES:
        raise TwoStageError(f"unknown stage {stage!r}: expected one of {', '.join(STAGES)}.")
    return (stage,)


def megabytes(size: int) -> str:
    return f"{size / 1e6:,.1f} MB"
