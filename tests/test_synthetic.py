"""The offline synthetic MovieLens world: ML-1M's file layout, its shape, and learnable labels."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from twostage.data import synthetic
from twostage.data.synthetic import (
    GENRES,
    MARKER_NAME,
    SYNTHETIC_SHAPES,
    SyntheticShape,
    generate_synthetic_tables,
    read_synthetic_marker,
    write_synthetic_movielens,
)
from twostage.errors import ConfigError

EPOCH_START, EPOCH_END = 956_703_932, 1_046_454_590  # ML-1M's first and last rating
AGES = {1, 18, 25, 35, 45, 50, 56}
SMALL = SYNTHETIC_SHAPES["small"]


@pytest.fixture(scope="module")
def small_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_movielens(
        tmp_path_factory.mktemp("world") / "small", shape="small", seed=0
    )


def read_lines(path: Path, n_fields: int) -> list[list[str]]:
    """Split every line on `::` by hand, checking the field count (a reference parser)."""
    raw = path.read_bytes()
    assert raw.endswith(b"\n") and b"\r" not in raw and b"\t" not in raw
    rows = [line.split("::") for line in raw.decode("latin-1").split("\n")[:-1]]
    bad = [i + 1 for i, row in enumerate(rows) if len(row) != n_fields]
    assert not bad, f"{path.name}: lines {bad[:5]} do not have {n_fields} fields"
    return rows


@pytest.fixture(scope="module")
def tables(small_world: Path) -> dict[str, pd.DataFrame]:
    users = pd.DataFrame(
        read_lines(small_world / "users.dat", 5),
        columns=["UserID", "Gender", "Age", "Occupation", "Zip"],
    )
    movies = pd.DataFrame(
        read_lines(small_world / "movies.dat", 3), columns=["MovieID", "Title", "Genres"]
    )
    ratings = pd.DataFrame(
        read_lines(small_world / "ratings.dat", 4),
        columns=["UserID", "MovieID", "Rating", "Timestamp"],
    ).astype(np.int64)
    return {"users": users, "movies": movies, "ratings": ratings}


def test_users_have_ml1m_demographics(tables):
    users = tables["users"]
    assert users["UserID"].astype(int).tolist() == list(range(1, SMALL.n_users + 1))
    assert set(users["Gender"]) == {"M", "F"}
    assert 0.6 < (users["Gender"] == "M").mean() < 0.85
    assert set(users["Age"].astype(int)) <= AGES
    assert set(users["Occupation"].astype(int)) <= set(range(21))
    assert users["Zip"].str.fullmatch(r"\d{5}").all()
    assert users["Zip"].nunique() < len(users)  # a pool shared by several users


def test_movies_are_marked_synthetic_with_year_and_ml1m_genres(tables):
    movies = tables["movies"]
    assert movies["MovieID"].astype(int).tolist() == list(range(1, SMALL.n_items + 1))
    years = movies["Title"].str.extract(r"^Synthetic Movie \d+ \((\d{4})\)$")[0]
    assert years.notna().all()
    assert years.astype(int).between(1919, 2000).all()
    genre_lists = movies["Genres"].str.split("|")
    assert genre_lists.map(len).between(1, 3).all()
    assert set(genre_lists.explode()) <= set(GENRES)
    assert genre_lists.map(lambda g: len(set(g)) == len(g)).all()


def test_genre_names_match_the_loader():
    from twostage.data.movielens import GENRES as LOADER_GENRES

    assert GENRES == LOADER_GENRES
    assert len(GENRES) == 18


def test_every_rated_id_exists_and_everyone_has_ratings(tables):
    ratings = tables["ratings"]
    assert len(ratings) == SMALL.n_ratings
    assert set(ratings["UserID"]) == set(range(1, SMALL.n_users + 1))
    assert set(ratings["MovieID"]) == set(range(1, SMALL.n_items + 1))
    assert ratings.groupby("UserID").size().min() >= 20
    assert not ratings.duplicated(["UserID", "MovieID"]).any()
    assert ratings["Rating"].between(1, 5).all()


def test_ratings_are_grouped_by_increasing_user_id(tables):
    user_ids = tables["ratings"]["UserID"].to_numpy()
    assert np.all(np.diff(user_ids) >= 0)


def test_timestamps_fall_in_a_few_bursts_within_the_ml1m_epoch(tables):
    ratings = tables["ratings"]
    assert ratings["Timestamp"].between(EPOCH_START, EPOCH_END).all()
    for _, stamps in ratings.groupby("UserID")["Timestamp"]:
        gaps = np.diff(np.sort(stamps.to_numpy()))
        assert np.count_nonzero(gaps > 3600) <= 4  # at most 5 sessions, an hour apart or more


def test_rating_histogram_and_positive_share_are_ml1m_like(tables):
    stars = tables["ratings"]["Rating"]
    assert 0.52 <= (stars > 3).mean() <= 0.62
    shares = stars.value_counts(normalize=True).sort_index().to_numpy()
    np.testing.assert_allclose(shares, [0.06, 0.11, 0.26, 0.35, 0.22], atol=0.02)


def test_item_popularity_is_long_tailed(tables):
    counts = np.sort(tables["ratings"]["MovieID"].value_counts().to_numpy())[::-1]
    top_decile = counts[: len(counts) // 10].sum() / counts.sum()
    assert top_decile > 0.30
    activity = tables["ratings"].groupby("UserID").size()
    assert activity.max() > 3 * activity.median()


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve by the rank-sum (Mann-Whitney) formula, ties averaged."""
    ranks = pd.Series(scores).rank().to_numpy()
    n_pos, n_neg = labels.sum(), (~labels).sum()
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def test_labels_depend_on_user_and_item_features(tables):
    # Predict rating > 3 from demographics x genre alone: the positive rate of each
    # (gender, age, genre) cell on a training split, averaged over the movie's genres.
    rows = tables["ratings"].merge(tables["users"].astype({"UserID": int}), on="UserID")
    rows = rows.merge(tables["movies"].astype({"MovieID": int}), on="MovieID")
    rows["label"] = rows["Rating"] > 3
    rows["train"] = np.random.default_rng(0).random(len(rows)) < 0.7
    cells = rows.assign(genre=rows["Genres"].str.split("|")).explode("genre")
    keys = ["Gender", "Age", "genre"]
    rate = cells[cells["train"]].groupby(keys)["label"].mean().rename("rate")
    cells = cells.join(rate, on=keys)
    scores = cells.groupby(level=0)["rate"].mean().fillna(rows["label"].mean())
    test = ~rows["train"].to_numpy()
    assert auc(scores.to_numpy()[test], rows["label"].to_numpy()[test]) > 0.56

    per_item = rows.groupby("MovieID")["label"]
    means = per_item.mean()[per_item.size() >= 20]
    assert means.std() > 0.1


def test_same_seed_gives_byte_identical_files(small_world, tmp_path):
    again = write_synthetic_movielens(tmp_path / "again", shape="small", seed=0)
    for name in ("users.dat", "movies.dat", "ratings.dat", MARKER_NAME):
        assert (again / name).read_bytes() == (small_world / name).read_bytes(), name


def test_different_seed_gives_different_files(small_world, tmp_path):
    other = write_synthetic_movielens(tmp_path / "other", shape="small", seed=1)
    for name in ("users.dat", "movies.dat", "ratings.dat"):
        assert (other / name).read_bytes() != (small_world / name).read_bytes(), name


def test_marker_labels_the_world_as_synthetic(small_world):
    marker = read_synthetic_marker(small_world)
    assert marker is not None and marker["synthetic"] is True
    assert (marker["seed"], marker["shape"]) == (0, "small")
    assert (marker["n_users"], marker["n_items"], marker["n_ratings"]) == (300, 200, 12_000)
    assert json.loads((small_world / MARKER_NAME).read_text()) == marker


def test_complete_world_with_same_marker_is_left_alone(tmp_path, monkeypatch):
    world = write_synthetic_movielens(tmp_path / "w", shape="small", seed=0)
    before = {p.name: p.stat().st_mtime_ns for p in world.iterdir()}

    def must_not_run(*args, **kwargs):
        raise AssertionError("regenerated a complete world")

    monkeypatch.setattr(synthetic, "generate_synthetic_tables", must_not_run)
    assert write_synthetic_movielens(world, shape="small", seed=0) == world
    assert {p.name: p.stat().st_mtime_ns for p in world.iterdir()} == before


def test_incomplete_or_other_world_is_rewritten(tmp_path):
    world = write_synthetic_movielens(tmp_path / "w", shape="small", seed=0)
    reference = (world / "ratings.dat").read_bytes()
    (world / "ratings.dat").write_bytes(reference[: len(reference) // 2])  # truncated
    write_synthetic_movielens(world, shape="small", seed=0)
    assert (world / "ratings.dat").read_bytes() == reference

    write_synthetic_movielens(world, shape="small", seed=3)
    assert read_synthetic_marker(world)["seed"] == 3
    assert (world / "ratings.dat").read_bytes() != reference
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w"]  # no staging folders left


def test_failed_write_leaves_no_world_behind(tmp_path, monkeypatch):
    real = synthetic._dat_bytes
    calls = []

    def fail_on_ratings(table: pd.DataFrame) -> bytes:
        calls.append(1)
        if "Rating" in table.columns:
            raise KeyboardInterrupt  # as if the run was stopped mid-write
        return real(table)

    monkeypatch.setattr(synthetic, "_dat_bytes", fail_on_ratings)
    with pytest.raises(KeyboardInterrupt):
        write_synthetic_movielens(tmp_path / "w", shape="small", seed=0)
    assert len(calls) == 3
    assert list(tmp_path.iterdir()) == []


def test_folder_of_other_files_is_refused(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "ratings.dat").write_text("1::1::5::978300760\n")
    with pytest.raises(ConfigError, match="SYNTHETIC.json"):
        write_synthetic_movielens(tmp_path / "data", shape="small")


@pytest.mark.parametrize(
    "shape",
    [
        "huge",
        SyntheticShape(n_users=10, n_items=10, n_ratings=200),  # fewer items than 20 per user
        SyntheticShape(n_users=10, n_items=100, n_ratings=150),  # under 20 per user
        SyntheticShape(n_users=10, n_items=100, n_ratings=1000),  # over the activity cap
    ],
)
def test_impossible_shapes_are_config_errors(shape, tmp_path):
    with pytest.raises(ConfigError):
        write_synthetic_movielens(tmp_path / "w", shape=shape)
    assert not (tmp_path / "w").exists()


def test_negative_seed_is_a_config_error():
    with pytest.raises(ConfigError):
        generate_synthetic_tables("small", seed=-1)


def test_custom_shape_covers_every_user_and_item():
    shape = SyntheticShape(n_users=30, n_items=400, n_ratings=700)  # more items than users rate
    ratings = generate_synthetic_tables(shape, seed=5).ratings
    assert len(ratings) == 700
    assert ratings["UserID"].nunique() == 30 and ratings["MovieID"].nunique() == 400
    assert ratings.groupby("UserID").size().min() >= 20
    assert not ratings.duplicated(["UserID", "MovieID"]).any()


def test_load_movielens_reads_the_small_world(small_world):
    from twostage.data import load_movielens

    data = load_movielens(small_world)
    assert data.synthetic
    assert (data.n_users, data.n_items, data.n_ratings) == (300, 200, 12_000)
    assert 0.52 <= float(data.labels.mean()) <= 0.62


def test_ml1m_shape_has_ml1m_cardinalities_and_positive_share():
    tables_1m = generate_synthetic_tables("ml-1m", seed=0)
    ratings = tables_1m.ratings
    assert len(tables_1m.users) == 6040 and len(tables_1m.movies) == 3883
    assert len(ratings) == 1_000_209
    assert ratings["UserID"].nunique() == 6040 and ratings["MovieID"].nunique() == 3883
    assert ratings.groupby("UserID").size().min() >= 20
    assert 0.52 <= (ratings["Rating"] > 3).mean() <= 0.62
    years = tables_1m.movies["Title"].str.extract(r"\((\d{4})\)$")[0]
    assert years.nunique() == 81
    assert 2500 <= tables_1m.users["Zip-code"].nunique() <= 4500
    assert re.fullmatch(r"\d+::\d+::[1-5]::\d+\n", synthetic._dat_bytes(ratings.head(1)).decode())
