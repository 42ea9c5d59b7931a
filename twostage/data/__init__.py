"""MovieLens data: loading either layout, finding or fetching it by name, or a synthetic world."""

from __future__ import annotations

from pathlib import Path

from twostage.data.download import ARCHIVES, default_data_dir, fetch_movielens, find_or_fetch
from twostage.data.movielens import GENRES, Catalog, MovieLens, detect_layout, read_movielens_dir
from twostage.errors import ConfigError

SYNTHETIC_SOURCES = {"synthetic": "ml-1m", "synthetic-small": "small"}
NAMED_SOURCES = (*ARCHIVES, *SYNTHETIC_SOURCES)


def synthetic_dir(shape: str = "ml-1m", seed: int = 0, cache_dir: str | Path | None = None) -> Path:
    """Write (once) and return the directory of the seeded synthetic world of `shape`."""
    from twostage.data.synthetic import write_synthetic_movielens

    root = Path(cache_dir) if cache_dir is not None else default_data_dir()
    directory = root / f"synthetic-{shape}-seed{seed}"
    return write_synthetic_movielens(directory, shape=shape, seed=seed)


def check_source(source: str | Path) -> Path | None:
    """Refuse an unusable `source` before any work: None for a known name, else its directory.

    Reads nothing and downloads nothing; a directory must hold one of the two layouts.
    """
    text = str(source)
    if text in NAMED_SOURCES:
        return None
    path = Path(text).expanduser()
    if path.exists() and not path.is_dir():
        raise ConfigError(
            f"dataset {text!r} is a file; expected a directory holding MovieLens files "
            "(ML-1M or ML-100K layout).",
            "dataset",
        )
    if not path.is_dir() and (path.is_absolute() or len(path.parts) > 1 or text.startswith(".")):
        raise ConfigError(f"dataset directory {text!r}: no such directory.", "dataset")
    if not path.is_dir():
        raise ConfigError(
            f"Unknown dataset {text!r}: expected one of {', '.join(NAMED_SOURCES)} "
            "or the path of a directory holding MovieLens files (ML-1M or ML-100K layout).",
            "dataset",
        )
    detect_layout(path)
    return path


def resolve_source(
    source: str | Path, *, cache_dir: str | Path | None = None, download: bool = True
) -> tuple[Path, str]:
    """The directory holding `source` and a display name for it.

    `source` is `"ml-1m"`, `"ml-100k"`, `"synthetic"` (the ML-1M-shaped synthetic world),
    `"synthetic-small"`, or a directory in either MovieLens layout.
    """
    text = str(source)
    if text in ARCHIVES:
        return find_or_fetch(text, cache_dir, download), text
    if text in SYNTHETIC_SOURCES:
        return synthetic_dir(SYNTHETIC_SOURCES[text], 0, cache_dir), text
    path = check_source(text)
    return path, path.resolve().name


def load_movielens(
    source: str | Path, *, cache_dir: str | Path | None = None, download: bool = True
) -> MovieLens:
    """Load MovieLens by name (`"ml-1m"`, `"ml-100k"`, `"synthetic"`, …) or from a directory.

    By name, the data is looked up under `cache_dir` (default `$TWOSTAGE_DATA`, else the user
    cache directory) and, when missing and `download=True`, fetched from GroupLens with its MD5
    checked. Raises `DataFormatError` for malformed files and `DownloadError` when offline.
    """
    directory, name = resolve_source(source, cache_dir=cache_dir, download=download)
    return read_movielens_dir(directory, name=name)


__all__ = [
    "ARCHIVES",
    "GENRES",
    "NAMED_SOURCES",
    "Catalog",
    "check_source",
    "MovieLens",
    "default_data_dir",
    "detect_layout",
    "fetch_movielens",
    "load_movielens",
    "read_movielens_dir",
    "resolve_source",
    "synthetic_dir",
]
