"""An offline, seeded MovieLens-shaped world written in the GroupLens ML-1M file layout.

`write_synthetic_movielens` writes `users.dat`, `movies.dat`, `ratings.dat` and a
`SYNTHETIC.json` marker. Users get ML-1M-like demographics, movies get years and 1-3 of the 18
ML-1M genres, item popularity is Zipf-like, and ratings come from a latent-factor model with
user/item biases and genre x demographic effects, cut into five levels with ML-1M's histogram
(about 57% of ratings are above 3). It stands in for ML-1M where the real files are not at hand.

A world of any size is asked for by a spec, `synthetic:users=N,items=M[,ratings=R][,seed=S]`
(`parse_synthetic_spec`). Catalogues up to `EXACT_MAX_ITEMS` items are drawn exactly (a Gumbel
top-k over the whole catalogue per user); larger ones by sampling-importance-resampling from a
popularity proposal: 100,000 users x 1,000,000 items x 3,000,000 ratings take ~30 s and ~1.8 GB
to write on a 2-core CPU.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from twostage.data.movielens import GENRES
from twostage.errors import ConfigError

GENERATOR_VERSION = 1
MARKER_NAME = "SYNTHETIC.json"
DATA_FILES = ("users.dat", "movies.dat", "ratings.dat")

AGE_CODES = np.array([1, 18, 25, 35, 45, 50, 56])
MIN_RATINGS_PER_USER = 20
FIRST_YEAR, LAST_YEAR = 1919, 2000
# ML-1M's first and last rating: 2000-04-25 23:05:32 and 2003-02-28 17:49:50 UTC.
EPOCH_START, EPOCH_END = 956_703_932, 1_046_454_590


def _shares(values: list[float]) -> np.ndarray:
    """`values` rescaled to sum to one (the measured shares are rounded)."""
    array = np.asarray(values, dtype=float)
    return array / array.sum()


# Shares measured on ML-1M's users.dat, movies.dat and ratings.dat, and the genre effects on the
# rating score: ml1m_shares.json beside this file.
_ML1M = json.loads((Path(__file__).with_name("ml1m_shares.json")).read_text())
_MALE_SHARE = _ML1M["male_share"]
_AGE_SHARES = _shares(_ML1M["age_shares"])
_OCCUPATION_SHARES = _shares(_ML1M["occupation_shares"])
_GENRE_SHARES = _shares(_ML1M["genre_shares"])
_N_GENRE_SHARES = _shares(_ML1M["n_genre_shares"])  # 1, 2, 3 genres per movie
_YEAR_PROFILE = (_ML1M["year_profile"]["years"], _ML1M["year_profile"]["movies"])
_RATING_SHARES = _shares(_ML1M["rating_shares"])  # ratings 1..5
_GENRE_BASE = np.array(_ML1M["genre_effects"]["base"])
_GENRE_FEMALE = np.array(_ML1M["genre_effects"]["female"])
_GENRE_OLDER = np.array(_ML1M["genre_effects"]["older"])

_POP_OFFSET, _POP_EXPONENT = 0.03, 1.3  # Zipf-like, ML-1M-like top-10% share

# The exact draw of who rates what (`_choose_items`) keys every user x item pair, ~80 ns a pair on
# one laptop-class core: at 20,000 items, 100,000 users take ~2.5 min and a chunk of 512 users
# holds ~80 MB of keys; 10x the items would take 25 min. Every world written before the pooled
# draw existed (the ML-1M shape, small, the tests' custom shapes) is under the threshold and keeps
# its exact bytes, as would ML-10M-sized catalogues (10,681 items). Above it,
# `_choose_items_pooled` costs O(ratings) instead.
EXACT_MAX_ITEMS = 20_000
# Candidates drawn from the popularity proposal per rating asked for. The resampling step keeps 1
# in POOL_FACTOR, so the larger it is the more taste tilts the choice (with 1 it cannot). Against
# the exact draw on 2,000 users x 20,000 items: mean taste x item of the chosen items 0.30 at 8,
# 0.27 at 4, 0.33 exact; the top 10% of items by popularity get 54% of the ratings in both.
POOL_FACTOR = 8
_POOL_PAIRS = 1 << 19  # candidate (user, item) pairs held at once: ~110 MB of gathered features
_EXACT_KEYS = 1 << 22  # keys held at once when a user of a large catalogue is drawn exactly
_SCORE_ROWS = 1 << 18  # ratings whose taste x item score is computed at once

SPEC_PREFIX = "synthetic:"
SPEC_KEYS = ("users", "items", "ratings", "seed")
SPEC_FORM = "synthetic:users=N,items=M[,ratings=R][,seed=S]"


@dataclass(frozen=True)
class SyntheticShape:
    """How big a synthetic world is: users, items and ratings in all."""

    n_users: int
    n_items: int
    n_ratings: int


SYNTHETIC_SHAPES: dict[str, SyntheticShape] = {
    "ml-1m": SyntheticShape(n_users=6040, n_items=3883, n_ratings=1_000_209),
    "small": SyntheticShape(n_users=300, n_items=200, n_ratings=12_000),
}


@dataclass(frozen=True)
class SyntheticTables:
    """A generated world as tables with ML-1M's column names, in file order.

    users: UserID, Gender, Age, Occupation, Zip-code; movies: MovieID, Title, Genres;
    ratings: UserID, MovieID, Rating, Timestamp (grouped by increasing UserID).
    """

    users: pd.DataFrame
    movies: pd.DataFrame
    ratings: pd.DataFrame


def resolve_shape(shape: str | SyntheticShape) -> SyntheticShape:
    """The shape named `shape` (a key of `SYNTHETIC_SHAPES`), checked for feasibility."""
    if isinstance(shape, str):
        if shape not in SYNTHETIC_SHAPES:
            names = ", ".join(sorted(SYNTHETIC_SHAPES))
            raise ConfigError(f"unknown synthetic shape {shape!r}; choose one of: {names}")
        shape = SYNTHETIC_SHAPES[shape]
    if not isinstance(shape, SyntheticShape):
        raise ConfigError(f"shape must be a name or a SyntheticShape, not {type(shape).__name__}")
    n_users, n_items, n_ratings = shape.n_users, shape.n_items, shape.n_ratings
    if n_users < 1 or n_items < MIN_RATINGS_PER_USER:
        raise ConfigError(
            f"a synthetic world needs at least 1 user and {MIN_RATINGS_PER_USER} items, "
            f"got {n_users} users and {n_items} items"
        )
    if n_items > _activity_cap(shape) * n_users:
        raise ConfigError(
            f"{n_users} users cannot rate all {n_items} items: one user rates at most "
            f"{_activity_cap(shape)} (60% of the items), so at most "
            f"{_activity_cap(shape) * n_users} items get a rating; "
            "ask for more users or fewer items"
        )
    if n_ratings < max(MIN_RATINGS_PER_USER * n_users, n_items):
        raise ConfigError(
            f"{n_ratings} ratings are too few: every user needs {MIN_RATINGS_PER_USER} and every "
            f"item one, so at least {max(MIN_RATINGS_PER_USER * n_users, n_items)}"
        )
    if n_ratings > _activity_cap(shape) * n_users:
        raise ConfigError(
            f"{n_ratings} ratings are too many for {n_users} users x {n_items} items "
            f"(at most {_activity_cap(shape) * n_users})"
        )
    return shape


def _activity_cap(shape: SyntheticShape) -> int:
    """The most ratings one user may have (ML-1M's busiest user rated ~60% of the items)."""
    return min(shape.n_items, max(int(0.6 * shape.n_items), MIN_RATINGS_PER_USER))


def default_ratings(n_users: int, n_items: int) -> int:
    """Ratings of a spec that names none: `max(30 * users, items + 20 * users)`, capped.

    Every user needs at least 20 ratings and every item one, so `items + 20 * users` is the
    fewest that leave the draw some choice; 30 per user is ML-1M-like sparsity for small
    catalogues. The cap is the activity cap times the users (a user rates at most 60% of the
    items), which binds only when there are few users for the items.
    """
    wanted = max(30 * n_users, n_items + MIN_RATINGS_PER_USER * n_users)
    cap = _activity_cap(SyntheticShape(n_users, n_items, 0)) * n_users
    return min(wanted, cap)


def parse_synthetic_spec(spec: str) -> tuple[SyntheticShape, int]:
    """The shape and seed of `synthetic:users=N,items=M[,ratings=R][,seed=S]`, checked.

    Keys come in any order; `ratings` defaults to `default_ratings(users, items)` and `seed` to
    0. A bad spec (not key=value, an unknown or repeated key, a value that is not an integer or
    not positive, users or items missing, a shape no world can have) raises
    `ConfigError(..., "dataset")` naming the key and what is expected, before any work.
    """

    def refuse(problem: str) -> ConfigError:
        return ConfigError(f"dataset {spec!r}: {problem}; expected {SPEC_FORM}", "dataset")

    if not spec.startswith(SPEC_PREFIX):
        raise refuse(f"does not start with {SPEC_PREFIX!r}")
    values: dict[str, int] = {}
    for part in spec[len(SPEC_PREFIX) :].split(","):
        key, equals, text = (piece.strip() for piece in part.partition("="))
        if not equals or not key:
            raise refuse(f"{part!r} is not key=value")
        if key not in SPEC_KEYS:
            raise refuse(f"unknown key {key!r} (known: {', '.join(SPEC_KEYS)})")
        if key in values:
            raise refuse(f"{key} is given twice")
        if not re.fullmatch(r"[+-]?\d+", text):
            raise refuse(f"{key}={text!r} is not an integer")
        value = int(text)
        if value < (0 if key == "seed" else 1):
            floor = "non-negative" if key == "seed" else "positive"
            raise refuse(f"{key}={value} must be {floor}")
        values[key] = value
    missing = [key for key in ("users", "items") if key not in values]
    if missing:
        raise refuse(f"{' and '.join(missing)} missing")
    n_users, n_items = values["users"], values["items"]
    n_ratings = values.get("ratings", default_ratings(n_users, n_items))
    try:
        shape = resolve_shape(SyntheticShape(n_users, n_items, n_ratings))
    except ConfigError as err:
        raise ConfigError(f"dataset {spec!r}: {err}", "dataset") from None
    return shape, values.get("seed", 0)


def synthetic_spec(shape: SyntheticShape, seed: int = 0) -> str:
    """The spec of `shape` and `seed`, every key spelled out (`parse_synthetic_spec` reads it)."""
    return (
        f"{SPEC_PREFIX}users={shape.n_users},items={shape.n_items},"
        f"ratings={shape.n_ratings},seed={seed}"
    )


# --------------------------------------------------------------------------- users and movies


def _zip_codes(rng: np.random.Generator, n_users: int) -> np.ndarray:
    """(n_users,) 5-digit zip strings from a long-tailed pool (ML-1M: 3,439 zips, 6,040 users).

    The pool is n_users distinct codes while there are enough (99,000), else drawn with repeats.
    """
    codes = np.arange(1000, 100_000)
    pool = rng.choice(codes, size=n_users, replace=n_users > len(codes))
    weights = 1.0 / (np.arange(1, n_users + 1) + 3.0) ** 0.5
    picks = rng.choice(n_users, size=n_users, p=weights / weights.sum())
    return np.char.zfill(pool[picks].astype(str), 5)


def _users(rng: np.random.Generator, n_users: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "UserID": np.arange(1, n_users + 1),
            "Gender": np.where(rng.random(n_users) < _MALE_SHARE, "M", "F"),
            "Age": AGE_CODES[rng.choice(len(AGE_CODES), size=n_users, p=_AGE_SHARES)],
            "Occupation": rng.choice(21, size=n_users, p=_OCCUPATION_SHARES),
            "Zip-code": _zip_codes(rng, n_users),
        }
    )


def _years(rng: np.random.Generator, n_items: int) -> np.ndarray:
    """(n_items,) release years in 1919..2000 (no 1924, as ML-1M), skewed recent.

    With room (ML-1M size), every one of the 81 years occurs at least once.
    """
    years = np.arange(FIRST_YEAR, LAST_YEAR + 1)
    years = years[years != 1924]
    weights = np.interp(years, *_YEAR_PROFILE)
    drawn = rng.choice(years, size=n_items, p=weights / weights.sum())
    if n_items >= 20 * len(years):
        drawn[: len(years)] = years
    return rng.permutation(drawn)


def _genre_matrix(rng: np.random.Generator, n_items: int) -> np.ndarray:
    """(n_items, 18) 0/1 genres, 1-3 per movie, drawn without replacement by ML-1M's shares."""
    n_genres = 1 + rng.choice(3, size=n_items, p=_N_GENRE_SHARES)
    keys = np.log(_GENRE_SHARES)[None, :] + rng.gumbel(size=(n_items, len(GENRES)))
    covered = min(n_items, len(GENRES))  # make every genre occur, then shuffle the movies
    keys[np.arange(covered), np.arange(covered)] = np.inf
    rank = np.argsort(np.argsort(-keys, axis=1), axis=1)
    return rng.permutation((rank < n_genres[:, None]).astype(np.int8))


def _movies(movie_ids: np.ndarray, years: np.ndarray, genres: np.ndarray) -> pd.DataFrame:
    genre_strings = np.full(len(movie_ids), "", dtype=object)
    for g, name in enumerate(GENRES):
        has = genres[:, g].astype(bool)
        genre_strings[has] = genre_strings[has] + np.where(genre_strings[has] == "", "", "|") + name
    titles = "Synthetic Movie " + movie_ids.astype(str) + " (" + years.astype(str) + ")"
    return pd.DataFrame({"MovieID": movie_ids, "Title": titles, "Genres": genre_strings})


# --------------------------------------------------------------------------- who rates what


def _activity(rng: np.random.Generator, shape: SyntheticShape) -> np.ndarray:
    """(n_users,) ratings per user: 20 + a lognormal share of the rest, capped, summing exactly."""
    cap = _activity_cap(shape) - MIN_RATINGS_PER_USER
    extra_total = shape.n_ratings - MIN_RATINGS_PER_USER * shape.n_users
    want = rng.lognormal(0.0, 1.15, size=shape.n_users)
    extra = extra_total * want / want.sum()
    for _ in range(50):  # move what the busiest users cannot take onto the others
        over = np.clip(extra - cap, 0.0, None).sum()
        extra = np.minimum(extra, cap)
        if over <= 1e-9:
            break
        room = extra < cap
        extra[room] += over * want[room] / want[room].sum()
    counts = np.floor(extra).astype(np.int64)
    short = extra_total - counts.sum()
    order = np.argsort(-(extra - counts) - (counts < cap), kind="stable")
    counts[order[:short]] += 1
    return counts + MIN_RATINGS_PER_USER


def _choose_items(
    rng: np.random.Generator,
    log_pop: np.ndarray,
    taste: np.ndarray,
    item_vecs: np.ndarray,
    counts: np.ndarray,
    chunk: int = 512,
) -> np.ndarray:
    """(n_ratings,) 0-based items, user by user: `counts[u]` distinct items per user.

    Gumbel top-k without replacement, with log-odds `log_pop + taste @ item_vecs.T` so users
    pick popular items and items they like. taste: (n_users, d); item_vecs: (n_items, d).
    """
    picked = []
    for start in range(0, len(counts), chunk):
        stop = min(start + chunk, len(counts))
        keys = log_pop[None, :] + taste[start:stop] @ item_vecs.T
        keys += rng.gumbel(size=keys.shape)
        order = np.argsort(-keys, axis=1)
        picked.append(order[np.arange(order.shape[1])[None, :] < counts[start:stop, None]])
    return np.concatenate(picked)


def _choose_items_pooled(
    rng: np.random.Generator,
    log_pop: np.ndarray,
    taste: np.ndarray,
    item_vecs: np.ndarray,
    counts: np.ndarray,
    pool_factor: int = POOL_FACTOR,
) -> np.ndarray:
    """(n_ratings,) 0-based items grouped by user, `counts[u]` distinct items per user, at a cost
    of order `pool_factor * n_ratings` rather than n_users x n_items.

    Sampling-importance-resampling: each user draws a pool of `pool_factor * counts[u]` items
    from the popularity distribution (with replacement), then keeps the `counts[u]` distinct
    pool items with the largest `taste[u] @ item_vecs[i] + log(times drawn) + Gumbel` keys.
    Popularity enters through the proposal and taste through the keys, the two terms of
    `_choose_items`' log-odds; the times an item was drawn stand in for its popularity among
    the pool's distinct items (without them, a popular item drawn ten times would count once,
    and the most popular items lose ratings, more so the larger the pool).
    A user whose pool would be a quarter of the catalogue or more, or holds fewer than
    `counts[u]` distinct items, is drawn exactly as in `_choose_items`: that costs n_items keys,
    of the order of the pool it replaces. taste: (n_users, d); item_vecs: (n_items, d).
    """
    n_users, n_items = len(counts), len(log_pop)
    cumulative = np.cumsum(np.exp(log_pop - log_pop.max()))
    pool = np.where(pool_factor * counts < n_items // 4, pool_factor * counts, 0)
    # Users in chunks of about _POOL_PAIRS candidates; one user bigger than that is a chunk.
    ends = np.searchsorted(
        np.cumsum(pool), np.arange(1, pool.sum() // _POOL_PAIRS + 1) * _POOL_PAIRS
    )
    bounds = np.unique(np.r_[0, np.minimum(ends + 1, n_users), n_users])
    picked = []
    for start, stop in zip(bounds[:-1], bounds[1:], strict=True):
        size, want = pool[start:stop], counts[start:stop]
        owner = np.repeat(np.arange(stop - start), size)
        draws = np.searchsorted(cumulative, rng.random(len(owner)) * cumulative[-1], side="right")
        pairs, times = np.unique(
            owner * n_items + np.minimum(draws, n_items - 1), return_counts=True
        )
        owner, item = np.divmod(pairs, n_items)
        keys = np.einsum("ij,ij->i", taste[start + owner], item_vecs[item])
        keys += np.log(times) + rng.gumbel(size=len(keys))
        order = np.lexsort((-keys, owner))  # by user, best key first
        distinct = np.bincount(owner, minlength=stop - start)
        rank = np.arange(len(order)) - (np.cumsum(distinct) - distinct)[owner[order]]
        exact = (size == 0) | (distinct < want)
        keep = (rank < want[owner[order]]) & ~exact[owner[order]]
        owners, items = [owner[order][keep]], [item[order][keep]]
        rows = np.flatnonzero(exact)
        step = max(1, _EXACT_KEYS // n_items)
        for first in range(0, len(rows), step):
            block = rows[first : first + step]
            exact_keys = log_pop[None, :] + taste[start + block] @ item_vecs.T
            exact_keys += rng.gumbel(size=exact_keys.shape)
            best = np.argsort(-exact_keys, axis=1)
            chosen = np.arange(n_items)[None, :] < want[block, None]
            owners.append(np.broadcast_to(block[:, None], best.shape)[chosen])
            items.append(best[chosen])
        owner, item = np.concatenate(owners), np.concatenate(items)
        picked.append(item[np.argsort(owner, kind="stable")])
    return np.concatenate(picked)


def _cover_every_item(rng: np.random.Generator, items: np.ndarray, n_items: int) -> np.ndarray:
    """Give each never-rated item a rating taken from an item rated at least twice."""
    items = items.copy()
    while True:
        seen = np.bincount(items, minlength=n_items)
        missing = rng.permutation(np.flatnonzero(seen == 0))
        if len(missing) == 0:
            return items
        # One row per donor item each round, so no donor drops to zero ratings.
        rows = rng.permutation(np.flatnonzero(seen[items] >= 2))
        _, first = np.unique(items[rows], return_index=True)
        rows = rows[first][: len(missing)]
        items[rows] = missing[: len(rows)]


# --------------------------------------------------------------------------- when


def _timestamps(rng: np.random.Generator, user_rows: np.ndarray, n_users: int) -> np.ndarray:
    """(n_ratings,) unix seconds: each user active for a while, rating in 1-5 bursts."""
    span = EPOCH_END - EPOCH_START
    start = EPOCH_START + span * rng.beta(0.6, 4.0, size=n_users)
    duration = np.exp(rng.normal(math.log(3 * 86_400), 2.0, size=n_users))
    duration = np.clip(duration, 600.0, np.maximum(EPOCH_END - 86_400 - start, 600.0))
    n_bursts = 1 + np.minimum(rng.poisson(1.2, size=n_users), 4)
    burst_start = start[:, None] + duration[:, None] * rng.random((n_users, 5))
    burst_start[:, 0] = start
    burst = np.floor(rng.random(len(user_rows)) * n_bursts[user_rows]).astype(np.int64)
    gaps = rng.exponential(25.0, size=len(user_rows))
    # Seconds since the burst began: a running sum of gaps within each (user, burst).
    group = user_rows * 5 + burst
    order = np.argsort(group, kind="stable")
    running = np.cumsum(gaps[order])
    first = np.r_[True, group[order][1:] != group[order][:-1]]
    group_base = np.maximum.accumulate(np.where(first, running - gaps[order], 0.0))
    offset = np.empty_like(gaps)
    offset[order] = running - group_base
    stamps = burst_start[user_rows, burst] + offset
    return np.clip(np.round(stamps), EPOCH_START, EPOCH_END).astype(np.int64)


# --------------------------------------------------------------------------- the world


def _taste_scores(
    taste: np.ndarray, item_vecs: np.ndarray, user_rows: np.ndarray, items: np.ndarray
) -> np.ndarray:
    """(n_ratings,) `taste[user_rows[r]] @ item_vecs[items[r]]`, a block of ratings at a time
    (the whole gathered (n_ratings, d) pair would be GBs at millions of ratings)."""
    return np.concatenate(
        [
            np.sum(
                taste[user_rows[at : at + _SCORE_ROWS]] * item_vecs[items[at : at + _SCORE_ROWS]],
                axis=1,
            )
            for at in range(0, len(items), _SCORE_ROWS)
        ]
    )


def generate_synthetic_tables(
    shape: str | SyntheticShape = "ml-1m", *, seed: int = 0
) -> SyntheticTables:
    """Draw a synthetic MovieLens world in memory; the same seed gives the same tables."""
    shape = resolve_shape(shape)
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
    rng = np.random.default_rng(int(seed))
    n_users, n_items = shape.n_users, shape.n_items

    users = _users(rng, n_users)
    years = _years(rng, n_items)
    genres = _genre_matrix(rng, n_items)
    movie_ids = np.arange(1, n_items + 1)

    # User features, as numbers: female 0/1, age position -1..1, occupation.
    female = (users["Gender"].to_numpy() == "F").astype(float)
    older = (np.searchsorted(AGE_CODES, users["Age"].to_numpy()) - 3) / 3.0
    occupation = users["Occupation"].to_numpy()
    genre_mix = genres / genres.sum(axis=1, keepdims=True)  # (n_items, 18), rows sum to 1
    era = np.clip((1990 - years) / 20.0, -0.5, 2.0)  # older films > 0

    # Genre taste: (n_users, 18) = base + female/older shifts + occupation + personal noise.
    occupation_taste = rng.normal(0.0, 0.2, size=(21, len(GENRES)))
    genre_taste = (
        _GENRE_BASE[None, :]
        + female[:, None] * _GENRE_FEMALE[None, :]
        + older[:, None] * _GENRE_OLDER[None, :]
        + occupation_taste[occupation]
        + rng.normal(0.0, 0.25, size=(n_users, len(GENRES)))
    )
    n_factors = 8
    user_factors = rng.normal(0.0, 0.4, size=(n_users, n_factors))
    item_factors = rng.normal(0.0, 0.4, size=(n_items, n_factors))
    # A user's taste for an item: latent match + genre taste + old users liking old films.
    taste = np.hstack([user_factors, genre_taste, older[:, None]])
    item_vecs = np.hstack([item_factors, genre_mix, 0.4 * era[:, None]])

    popularity = 1.0 / (np.arange(1, n_items + 1) + _POP_OFFSET * n_items) ** _POP_EXPONENT
    popularity = rng.permutation(popularity)
    log_pop = np.log(popularity)

    counts = _activity(rng, shape)
    user_rows = np.repeat(np.arange(n_users), counts)
    choose = _choose_items if n_items <= EXACT_MAX_ITEMS else _choose_items_pooled
    items = choose(rng, log_pop, taste, item_vecs, counts)
    items = _cover_every_item(rng, items, n_items)
    # File order: grouped by user, in no particular order within a user (as ML-1M).
    within = np.lexsort((rng.random(len(items)), user_rows))
    items = items[within]

    stamps = _timestamps(rng, user_rows, n_users)
    time_frac = (stamps - EPOCH_START) / (EPOCH_END - EPOCH_START)

    pop_z = (log_pop - log_pop.mean()) / log_pop.std()
    user_bias = rng.normal(0.0, 0.35, size=n_users) + 0.15 * older + 0.05 * female
    item_bias = rng.normal(0.0, 0.45, size=n_items) + 0.25 * pop_z + 0.15 * era
    score = (
        user_bias[user_rows]
        + item_bias[items]
        + _taste_scores(taste, item_vecs, user_rows, items)
        - 0.3 * time_frac
        + rng.normal(0.0, 0.8, size=len(items))
    )
    cuts = np.quantile(score, np.cumsum(_RATING_SHARES)[:-1])
    rating = 1 + np.searchsorted(cuts, score, side="right")

    ratings = pd.DataFrame(
        {
            "UserID": user_rows + 1,
            "MovieID": movie_ids[items],
            "Rating": rating,
            "Timestamp": stamps,
        }
    )
    return SyntheticTables(users, _movies(movie_ids, years, genres), ratings)


# --------------------------------------------------------------------------- writing


def _dat_bytes(table: pd.DataFrame) -> bytes:
    """ML-1M's `a::b::c` lines, `\\n` ends, no header, latin-1."""
    buffer = io.StringIO()
    table.to_csv(
        buffer, sep="\t", header=False, index=False, lineterminator="\n", quoting=csv.QUOTE_NONE
    )
    return buffer.getvalue().replace("\t", "::").encode("latin-1")


def _marker(shape_name: str, shape: SyntheticShape, seed: int) -> dict[str, object]:
    return {
        "synthetic": True,
        "generator": "twostage.data.synthetic",
        "version": GENERATOR_VERSION,
        "seed": int(seed),
        "shape": shape_name,
        **asdict(shape),
        # Which draw of who rates what made the world; absent (the exact one) up to the threshold.
        **({"sampler": "pool"} if shape.n_items > EXACT_MAX_ITEMS else {}),
    }


def read_synthetic_marker(directory: str | os.PathLike[str]) -> dict[str, object] | None:
    """The `SYNTHETIC.json` marker of a world in `directory`, or None when it has none."""
    path = Path(directory) / MARKER_NAME
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _is_complete(directory: Path, marker: dict[str, object]) -> bool:
    found = read_synthetic_marker(directory)
    if found is None or {k: found.get(k) for k in marker} != marker:
        return False
    sizes = found.get("bytes", {})
    return isinstance(sizes, dict) and all(
        (directory / name).is_file() and (directory / name).stat().st_size == sizes.get(name)
        for name in DATA_FILES
    )


def write_synthetic_movielens(
    directory: str | os.PathLike[str], *, shape: str | SyntheticShape = "ml-1m", seed: int = 0
) -> Path:
    """Write a synthetic world in ML-1M's layout into `directory` and return its path.

    Writes into a temporary sibling folder and renames it into place, so a killed run leaves no
    half-written world. A complete world with the same marker is left as it is; one from another
    seed or shape is replaced; a non-empty folder without a marker is refused (ConfigError).
    """
    directory = Path(directory)
    shape_name = shape if isinstance(shape, str) else "custom"
    resolved = resolve_shape(shape)
    marker = _marker(shape_name, resolved, seed)
    if _is_complete(directory, marker):
        return directory
    old_marker = read_synthetic_marker(directory)
    if directory.is_dir() and any(directory.iterdir()) and old_marker is None:
        raise ConfigError(
            f"{directory} is not empty and holds no {MARKER_NAME}; "
            "refusing to write a synthetic world over files it did not write"
        )

    tables = generate_synthetic_tables(resolved, seed=seed)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.partial-", dir=directory.parent))
    try:
        frames = (tables.users, tables.movies, tables.ratings)
        blobs = {name: _dat_bytes(frame) for name, frame in zip(DATA_FILES, frames, strict=True)}
        for name, blob in blobs.items():
            (staging / name).write_bytes(blob)
        full_marker = {**marker, "bytes": {name: len(blob) for name, blob in blobs.items()}}
        text = json.dumps(full_marker, indent=2, sort_keys=True) + "\n"
        (staging / MARKER_NAME).write_text(text, encoding="utf-8")
        _move_into_place(staging, directory, marker)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return directory


def _move_into_place(staging: Path, directory: Path, marker: dict[str, object]) -> None:
    """Rename `staging` to `directory`, putting aside an older synthetic world first."""
    if directory.exists():
        if _is_complete(directory, marker):  # another process got there first
            return
        if any(directory.iterdir()):
            retired = Path(tempfile.mkdtemp(prefix=f".{directory.name}.old-", dir=directory.parent))
            os.replace(directory, retired / "world")
            shutil.rmtree(retired, ignore_errors=True)
        else:
            directory.rmdir()
    try:
        os.replace(staging, directory)
    except OSError:
        if not _is_complete(directory, marker):
            raise
