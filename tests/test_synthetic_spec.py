"""Synthetic worlds of any size: the `synthetic:users=N,items=M,...` spec, the pooled draw of who
rates what for large catalogues, and the worlds written before it, byte for byte."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from twostage.cli import main
from twostage.data import check_source, load_movielens, synthetic_dir
from twostage.data import synthetic as S
from twostage.data.synthetic import (
    SyntheticShape,
    default_ratings,
    parse_synthetic_spec,
    read_synthetic_marker,
    synthetic_spec,
)
from twostage.errors import ConfigError

# --------------------------------------------------------------------------- the spec


@pytest.mark.parametrize(
    ("spec", "shape", "seed"),
    [
        ("synthetic:users=100,items=2000", SyntheticShape(100, 2000, 4000), 0),
        ("synthetic:items=2000,users=100", SyntheticShape(100, 2000, 4000), 0),
        ("synthetic:seed=7,items=500,ratings=9000,users=300", SyntheticShape(300, 500, 9000), 7),
        ("synthetic:users=1000,items=300", SyntheticShape(1000, 300, 30_000), 0),
        ("synthetic: users = 40 , items = 300 ,seed=0", SyntheticShape(40, 300, 1200), 0),
        ("synthetic:users=2,items=100", SyntheticShape(2, 100, 120), 0),  # capped: 60 each
    ],
)
def test_valid_specs(spec: str, shape: SyntheticShape, seed: int):
    assert parse_synthetic_spec(spec) == (shape, seed)
    assert parse_synthetic_spec(synthetic_spec(shape, seed)) == (shape, seed)
    assert check_source(spec) is None


def test_default_ratings_give_every_user_20_and_every_item_one():
    assert default_ratings(100_000, 1_000_000) == 3_000_000
    assert default_ratings(6040, 3883) == 181_200  # 30 per user
    assert default_ratings(100, 20_000) == 22_000  # items + 20 per user
    assert default_ratings(2, 100) == 120  # a user rates at most 60% of the items


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("synthetic:", "'' is not key=value"),
        ("synthetic:users=100,items", "'items' is not key=value"),
        ("synthetic:users=100,items=2000,", "'' is not key=value"),
        ("synthetic:users=100,items=2000,user=3", "unknown key 'user' (known: users, items"),
        ("synthetic:users=100,users=200,items=2000", "users is given twice"),
        ("synthetic:users=1e5,items=2000", "users='1e5' is not an integer"),
        ("synthetic:users=100,items=2000.5", "items='2000.5' is not an integer"),
        ("synthetic:users=100,items=", "items='' is not an integer"),
        ("synthetic:users=0,items=2000", "users=0 must be positive"),
        ("synthetic:users=100,items=-5", "items=-5 must be positive"),
        ("synthetic:users=100,items=2000,ratings=0", "ratings=0 must be positive"),
        ("synthetic:users=100,items=2000,seed=-1", "seed=-1 must be non-negative"),
        ("synthetic:items=2000", "users missing"),
        ("synthetic:ratings=5000,seed=1", "users and items missing"),
        ("synthetic:users=100,items=10", "at least 1 user and 20 items"),
        ("synthetic:users=1,items=1000", "1 users cannot rate all 1000 items"),
        ("synthetic:users=100,items=2000,ratings=1999", "1999 ratings are too few"),
        ("synthetic:users=100,items=2000,ratings=200000", "200000 ratings are too many"),
    ],
)
def test_bad_specs_are_config_errors_naming_the_fault(spec: str, expected: str, tmp_path: Path):
    for check in (
        parse_synthetic_spec,
        check_source,
        lambda text: load_movielens(text, cache_dir=tmp_path, download=False),
    ):
        with pytest.raises(ConfigError) as info:
            check(spec)
        assert info.value.setting == "dataset"
        assert expected in str(info.value) and repr(spec) in str(info.value)
    assert list(tmp_path.iterdir()) == []  # refused before any work


def test_the_command_line_refuses_a_bad_spec_in_one_line(capsys):
    assert main(["data", "synthetic:users=100,items=2000,colour=3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("twostage: error: --dataset 'synthetic:") and "\n" not in err
    assert "unknown key 'colour'" in err and "users=N,items=M" in err


def test_reproduce_refuses_a_bad_spec_before_any_work(tmp_path: Path, monkeypatch, capsys):
    for name in ("TWOSTAGE_DATA", "TWOSTAGE_CACHE"):
        monkeypatch.setenv(name, str(tmp_path / name))
    monkeypatch.chdir(tmp_path)
    argv = ["reproduce", "--profile", "smoke", "--device", "cpu"]
    assert main([*argv, "--dataset", "synthetic:users=100,items=2000,ratings=10"]) == 2
    assert "--dataset 'synthetic:users=100,items=2000,ratings=10': 10 ratings are too few" in (
        capsys.readouterr().err
    )
    assert list(tmp_path.iterdir()) == []


def test_another_name_is_still_unknown_and_the_message_names_the_spec():
    with pytest.raises(ConfigError, match=r"synthetic-small, synthetic:users=N,items=M"):
        check_source("synthetics:users=10")


# --------------------------------------------------------------------------- worlds by spec


@pytest.mark.parametrize(
    ("spec", "users", "items", "ratings", "seed"),
    [
        ("synthetic:users=40,items=300", 40, 300, 1200, 0),
        ("synthetic:items=500,seed=3,users=25,ratings=2000", 25, 500, 2000, 3),
    ],
)
def test_a_spec_writes_and_reads_back_its_shape(spec, users, items, ratings, seed, tmp_path):
    data = load_movielens(spec, cache_dir=tmp_path)
    assert (data.n_users, data.n_items, data.n_ratings) == (users, items, ratings)
    assert data.synthetic and data.name == synthetic_spec(
        SyntheticShape(users, items, ratings), seed
    )
    folder = tmp_path / f"synthetic-u{users}-i{items}-r{ratings}-seed{seed}"
    assert Path(data.path) == folder and [p.name for p in tmp_path.iterdir()] == [folder.name]
    marker = read_synthetic_marker(folder)
    assert (marker["n_users"], marker["n_items"], marker["n_ratings"]) == (users, items, ratings)
    assert marker["seed"] == seed and "sampler" not in marker  # the exact draw
    assert np.bincount(data.users.numpy()).min() >= 20
    assert len(np.unique(data.items.numpy())) == items


def test_shapes_and_seeds_never_share_a_folder(tmp_path: Path):
    folders = {
        synthetic_dir(SyntheticShape(30, 200, 900), seed, tmp_path).name for seed in (0, 1)
    } | {synthetic_dir(SyntheticShape(30, 200, 1000), 0, tmp_path).name}
    assert folders == {
        "synthetic-u30-i200-r900-seed0",
        "synthetic-u30-i200-r900-seed1",
        "synthetic-u30-i200-r1000-seed0",
    }


def test_the_command_line_prints_a_spec_world(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.setenv("TWOSTAGE_DATA", str(tmp_path))
    assert main(["data", "synthetic:users=30,items=200,seed=4"]) == 0
    out = capsys.readouterr().out
    assert "synthetic:users=30,items=200,ratings=900,seed=4 (SYNTHETIC" in out
    assert "900 ratings, 30 users, 200 items" in out
    assert (tmp_path / "synthetic-u30-i200-r900-seed4" / "ratings.dat").is_file()


# --------------------------------------------------------------------------- large catalogues


@pytest.fixture
def pooled(monkeypatch: pytest.MonkeyPatch) -> dict[str, np.ndarray]:
    """Catalogues above 1,000 items take the pooled draw (and the exact one is refused);
    returns what the pooled draw was given and gave."""
    seen: dict[str, np.ndarray] = {}
    real = S._choose_items_pooled

    def spy(rng, log_pop, taste, item_vecs, counts, **kwargs):
        seen.update(log_pop=log_pop, counts=counts)
        seen["items"] = real(rng, log_pop, taste, item_vecs, counts, **kwargs)
        return seen["items"]

    def refuse(*args, **kwargs):
        raise AssertionError("the exact draw ran above the threshold")

    monkeypatch.setattr(S, "EXACT_MAX_ITEMS", 1000)
    monkeypatch.setattr(S, "_choose_items_pooled", spy)
    monkeypatch.setattr(S, "_choose_items", refuse)
    return seen


def check_draw(items: np.ndarray, counts: np.ndarray, n_items: int) -> None:
    """`counts[u]` items for user u, in user order, distinct within a user, all in range."""
    assert len(items) == counts.sum() and items.min() >= 0 and items.max() < n_items
    users = np.repeat(np.arange(len(counts)), counts)
    assert len(np.unique(users * n_items + items)) == len(items)


def test_a_large_catalogue_world_has_the_asked_shape(pooled, tmp_path: Path):
    data = load_movielens("synthetic:users=300,items=2000", cache_dir=tmp_path)
    assert (data.n_users, data.n_items, data.n_ratings) == (300, 2000, 9000)
    check_draw(pooled["items"], pooled["counts"], 2000)
    users, items = data.users.numpy(), data.items.numpy()
    assert len(np.unique(users * 2000 + items)) == len(items)  # no user rates an item twice
    assert np.bincount(users).min() >= 20
    assert np.array_equal(np.bincount(users), pooled["counts"])
    assert np.bincount(items, minlength=2000).min() >= 1  # every item rated
    assert read_synthetic_marker(data.path)["sampler"] == "pool"
    # The popular items are rated more often, after every item got its rating too: the top 10%
    # by popularity (about 52% of the popularity mass) hold well over their 10% share.
    top = np.argsort(-pooled["log_pop"])[:200]
    assert np.isin(items, top).mean() > 0.35


@pytest.mark.parametrize("budget", [1 << 19, 700])  # one chunk of users, or dozens
def test_heavy_users_are_drawn_exactly_within_the_pooled_draw(budget, monkeypatch):
    # 100 users x 2,000 items x 30,000 ratings: most users' pools would cover a quarter of the
    # catalogue (8 x 150 ratings > 500 items), the rest are pooled.
    monkeypatch.setattr(S, "_POOL_PAIRS", budget)
    monkeypatch.setattr(S, "_EXACT_KEYS", 5000)  # two heavy users at a time
    log_pop, taste, item_vecs, _ = draw_inputs()
    counts = S._activity(np.random.default_rng(1), SyntheticShape(100, 2000, 30_000))
    assert (S.POOL_FACTOR * counts >= 500).any() and (S.POOL_FACTOR * counts < 500).any()
    items = S._choose_items_pooled(np.random.default_rng(2), log_pop, taste, item_vecs, counts)
    check_draw(items, counts, 2000)


def draw_inputs(n_users: int = 300, n_items: int = 2000) -> tuple[np.ndarray, ...]:
    """log_pop (n_items,) Zipf-like as the generator's, taste (n_users, 4) ~ N(0, 1), item_vecs
    (n_items, 4) ~ N(0, 0.5²): taste @ item has standard deviation 1; counts (n_users,) 20-59."""
    rng = np.random.default_rng(0)
    popularity = 1.0 / (np.arange(1, n_items + 1) + S._POP_OFFSET * n_items) ** S._POP_EXPONENT
    log_pop = np.log(rng.permutation(popularity))
    taste = rng.normal(0.0, 1.0, size=(n_users, 4))
    item_vecs = rng.normal(0.0, 0.5, size=(n_items, 4))
    return log_pop, taste, item_vecs, rng.integers(20, 60, size=n_users)


def test_the_pooled_draw_follows_popularity_and_taste_as_the_exact_one_does():
    log_pop, taste, item_vecs, counts = draw_inputs()
    users = np.repeat(np.arange(len(counts)), counts)
    top = np.argsort(-log_pop)[: len(log_pop) // 10]  # 52% of the popularity mass

    def shares(items: np.ndarray) -> tuple[float, float]:
        """Share of ratings on the top 10% by popularity; mean taste @ item of the ratings."""
        liking = np.einsum("ij,ij->i", taste[users], item_vecs[items])
        return float(np.isin(items, top).mean()), float(liking.mean())

    rng = np.random.default_rng(1)
    pooled = S._choose_items_pooled(rng, log_pop, taste, item_vecs, counts)
    exact = S._choose_items(np.random.default_rng(1), log_pop, taste, item_vecs, counts)
    check_draw(pooled, counts, len(log_pop))
    (pool_top, pool_liking), (exact_top, exact_liking) = shares(pooled), shares(exact)
    # Exact: 0.51 and 0.95; pooled: 0.52 and 0.80. At random both would be 0.10 and 0.00, with a
    # uniform proposal the first ~0.10, with keys blind to taste the second ~0.00; the standard
    # error of either share is below 0.01 (13,000 ratings).
    assert abs(pool_top - exact_top) < 0.04 and pool_top > 0.4
    assert pool_liking > 0.7 * exact_liking and exact_liking > 0.8


# --------------------------------------------------------------------------- worlds of before


def dat_digest(tables: S.SyntheticTables) -> str:
    digest = hashlib.sha256()
    for frame in (tables.users, tables.movies, tables.ratings):
        digest.update(S._dat_bytes(frame))
    return digest.hexdigest()[:16]


@pytest.mark.parametrize(
    ("shape", "seed", "expected"),
    [
        ("small", 0, "c55acdc3134840dc"),
        (SyntheticShape(100, 60, 2500), 3, "9a09f337ccfe3009"),  # tests/tiny.py's world
        (SyntheticShape(200, 5000, 8000), 2, "46bcd6a454424e9f"),
        ("ml-1m", 0, "8e98881ab2e0b205"),  # `--dataset synthetic`, ~4 s
    ],
)
def test_worlds_up_to_the_threshold_keep_their_bytes(shape, seed, expected):
    # Digests of users.dat, movies.dat and ratings.dat as the generator wrote them before the
    # pooled draw existed: those worlds, and the stage caches keyed on them, stay valid.
    assert dat_digest(S.generate_synthetic_tables(shape, seed=seed)) == expected
