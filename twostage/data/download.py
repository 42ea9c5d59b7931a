"""Finding MovieLens by name: the cache directory, and the official download with a checksum."""

from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from twostage.errors import DownloadError


@dataclass(frozen=True)
class Archive:
    """An official GroupLens archive: where it lives and the MD5 that GroupLens publishes for it."""

    name: str
    url: str
    md5: str
    folder: str  # the folder the zip unpacks into


ARCHIVES: dict[str, Archive] = {
    "ml-1m": Archive(
        "ml-1m",
        "https://files.grouplens.org/datasets/movielens/ml-1m.zip",
        "c4d9eecfca2ab87c1945afe126590906",
        "ml-1m",
    ),
    "ml-100k": Archive(
        "ml-100k",
        "https://files.grouplens.org/datasets/movielens/ml-100k.zip",
        "0e33842e24a9c977be4e0107933c0723",
        "ml-100k",
    ),
}


def default_data_dir() -> Path:
    """`$TWOSTAGE_DATA`, else the platform's user cache directory + `/data`."""
    env = os.environ.get("TWOSTAGE_DATA")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("twostage")) / "data"


def cached_dataset_dir(name: str, cache_dir: str | Path | None = None) -> Path:
    """The directory where dataset `name` lives once unpacked (it may not exist yet)."""
    if name not in ARCHIVES:
        raise KeyError(name)
    root = Path(cache_dir) if cache_dir is not None else default_data_dir()
    return root / ARCHIVES[name].folder


def _offline_message(name: str, target: Path, reason: str) -> str:
    return (
        f"Could not download MovieLens {name!r} ({reason}). "
        f"Alternatives: unpack the official {name}.zip yourself and pass its directory "
        f"(`--dataset /path/to/{name}` or `load_movielens('/path/to/{name}')`), "
        f"put it at {target}, "
        "or use the offline synthetic world (`--dataset synthetic`)."
    )


def fetch_movielens(name: str, cache_dir: str | Path | None = None) -> Path:
    """Download the official archive of `name`, verify its MD5, unpack it, return the directory.

    Nothing half-downloaded is ever used: the zip goes to a temporary name and is unpacked into a
    temporary folder that is renamed into place only after the checksum matched.
    """
    import pooch

    archive = ARCHIVES[name]
    target = cached_dataset_dir(name, cache_dir)
    if target.is_dir() and any(target.iterdir()):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        try:
            zip_path = pooch.retrieve(
                archive.url,
                known_hash=f"md5:{archive.md5}",
                fname=f"{name}.zip",
                path=workdir,
                progressbar=False,
            )
        except ValueError as err:  # pooch: hash mismatch (it removes the bad file itself)
            raise DownloadError(
                f"The download of {archive.url} did not match its published MD5 {archive.md5}; "
                f"the file was removed. ({err})"
            ) from err
        except Exception as err:  # network errors come in many types (requests, OSError, ...)
            raise DownloadError(
                _offline_message(name, target, f"{type(err).__name__}: {err}")
            ) from err
        unpacked = workdir / "unpacked"
        with zipfile.ZipFile(zip_path) as zf:
            zf.extractall(unpacked)
        source = unpacked / archive.folder
        if not source.is_dir():
            raise DownloadError(f"{archive.url} did not contain the folder {archive.folder}/")
        os.replace(source, target)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return target


def find_or_fetch(name: str, cache_dir: str | Path | None = None, download: bool = True) -> Path:
    """The unpacked directory of dataset `name`, downloading it when missing and allowed."""
    target = cached_dataset_dir(name, cache_dir)
    if target.is_dir() and any(target.iterdir()):
        return target
    if not download:
        raise DownloadError(_offline_message(name, target, "not in the cache and download=False"))
    return fetch_movielens(name, cache_dir)
