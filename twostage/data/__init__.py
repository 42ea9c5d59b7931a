"""MovieLens data: loading either layout, finding or fetching it by name, or a synthetic world."""

from __future__ import annotations

from pathlib import Path

from twostage.data.download import ARCHIVES, default_data_dir, fetch_movielens, find_or_fetch
from twostage.data.movielens import GENRES, Catalog, MovieLens, detect_layout, read_movielens_dir
from twostage.data.synthetic import (
    SPEC_FORM,
    SPEC_PREFIX,
    SyntheticShape,
    parse_synthetic_spec,
    synthetic_spec,
    write_synthetic_movielens,
)
from twostage.errors import ConfigError

SYNTHETIC_SOURCES = {"synthetic": "ml-1m", "synthetic-small": "small"}
NAMED_SOURCES = (*ARCHIVES, *SYNTHETIC_SOURCES)


def synthetic_dir(
    shape: str | SyntheticShape = "ml-1m", seed: int = 0, cache_dir: str | Path | None = None
) -> Path:
    """Write (once) and return the directory of the seeded synthetic world of `shape`.

    A named shape lives in `synthetic-NAME-seedS`, any other in `synthetic-uN-iM-rR-seedS`
    (users, items, ratings), so that two shapes or seeds never share a folder.
    """
    root = Path(cache_dir) if cache_dir is not None else default_data_dir()
    if isinstance(shape, str):
        folder = f"synthetic-{shape}-seed{seed}"
    else:
        folder = f"synthetic-u{shape.n_users}-i{shape.n_items}-r{shape.n_ratings}-seed{seed}"
    return write_synthetic_movielens(root / folder, shape=shape, seed=seed)


def check_source(source: str | Path) -> Path | None:
    """Refuse an unusable `source` before any work: None for a known name or a valid synthetic
    spec (`synthetic:users=N,items=M[,ratings=R][,seed=S]`), else its directory.

    Reads nothing, writes nothing and downloads nothing; a directory must hold one of the two
    layouts. A bad spec raises `ConfigError(..., "dataset")` naming the key at fault.
    """
    text = str(source)
    if text in NAMED_SOURCES:
        return None
    if text.startswith(SPEC_PREFIX):
        parse_synthetic_spec(text)
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
            f"Unknown dataset {text!r}: expected one of {', '.join(NAMED_SOURCES)}, "
            f"{SPEC_FORM} or the path of a directory holding MovieLens files "
            "(ML-1M or ML-100K layout).",
            "dataset",
        )
    detect_layout(path)
    return path


def resolve_source(
    source: str | Path, *, cache_dir: str | Path | None = None, download: bool = True
) -> tuple[Path, str]:
    """The directory holding `source` and a display name for it.

    `source` is `"ml-1m"`, `"ml-100k"`, `"synthetic"` (the ML-1M-shaped synthetic world),
    `"synthetic-small"`, a synthetic world of any size
    (`"synthetic:users=N,items=M[,ratings=R][,seed=S]"`, written once under `cache_dir`), or a
    directory in either MovieLens layout. A spec's display name spells out all four keys.
    """
    text = str(source)
    if text in ARCHIVES:
        return find_or_fetch(text, cache_dir, download), text
    if text in SYNTHETIC_SOURCES:
        return synthetic_dir(SYNTHETIC_SOURCES[text], 0, cache_dir), text
    if text.startswith(SPEC_PREFIX):
        shape, seed = parse_synthetic_spec(text)
        return synthetic_dir(shape, seed, cache_dir), synthetic_spec(shape, seed)
    path = check_source(text)
    return path, path.resolve().name


def load_movielens(
    source: str | Path, *, cache_dir: str | Path | None = None, download: bool = True
) -> MovieLens:
    """Load MovieLens by name (`"ml-1m"`, `"ml-100k"`, `"synthetic"`, …), a synthetic world by
    spec (`"synthetic:users=100000,items=1000000"`, see `resolve_source`) or from a directory.

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
