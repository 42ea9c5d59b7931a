from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
ML100K = Path(os.environ.get("TWOSTAGE_ML100K", SHARED / "ml-100k"))
ML1M_FEATURES = Path(os.environ.get("TWOSTAGE_ML1M_FEATURES", SHARED / "ml-1m-features"))

USERS_DAT = "1::F::1::10::48067\n2::M::56::16::70072\n3::M::25::15::55117\n"
MOVIES_DAT = (
    "1::Toy Story (1995)::Animation|Children's|Comedy\n"
    "5::Heat (1995)::Action|Crime|Thriller\n"
    "7::Sabrina (1954)::Comedy\n"
)
RATINGS_DAT = (
    "1::1::5::978300760\n1::5::3::978302109\n2::7::4::978301968\n"
    "3::1::1::978300275\n3::5::4::978824291\n"
)


@pytest.fixture
def out(tmp_path: Path) -> Path:
    """A run folder of fake results (`fake_results.py`) for the report and results tests."""
    from fake_results import fake_results, write_out

    return write_out(tmp_path / "out", fake_results())


def write_ml1m(directory: Path, users=USERS_DAT, movies=MOVIES_DAT, ratings=RATINGS_DAT) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in (("users.dat", users), ("movies.dat", movies), ("ratings.dat", ratings)):
        if text is not None:
            data = text if isinstance(text, bytes) else text.encode("latin-1")
            (directory / name).write_bytes(data)
    return directory


@pytest.fixture
def tiny_ml1m(tmp_path: Path) -> Path:
    return write_ml1m(tmp_path / "tiny")


@pytest.fixture(autouse=True)
def _isolated_caches(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """Never touch the user's real cache from tests."""
    root = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("TWOSTAGE_DATA", str(root / "data"))
    monkeypatch.setenv("TWOSTAGE_CACHE", str(root / "stages"))


def needs(path: Path):
    """Mark a test `realdata` and skip it when the MovieLens files at `path` are absent."""

    def mark(test):
        skip = pytest.mark.skipif(not path.is_dir(), reason=f"{path} not present")
        return pytest.mark.realdata(skip(test))

    return mark


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny synthetic world in the ML-1M layout (one per test module)."""
    from tiny import write_tiny_world

    return write_tiny_world(tmp_path_factory.mktemp("world"))
