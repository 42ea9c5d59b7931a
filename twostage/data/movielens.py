"""MovieLens as the paper uses it: binary labels, normalised timestamps, categorical features.

Two layouts are read: ML-1M (`ratings.dat`, `users.dat`, `movies.dat`, `::`-separated) and ML-100K
(`u.data`, `u.user`, `u.item`, tab- and pipe-separated). Users and items are re-indexed densely in
file order: row `r` of the feature tables is the user/item with dense id `r + 1`; id 0 is the
embeddings' padding row. Ratings refer to users and items by row (0-based).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from twostage.data.parsing import (
    check_unique_ids,
    integer_column,
    lookup_rows,
    read_text,
    split_fields,
)
from twostage.errors import DataFormatError

GENRES: tuple[str, ...] = (
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)
ML100K_FLAGS: tuple[str, ...] = ("unknown", *GENRES)
UNKNOWN_YEAR = "unknown"

# A year in parentheses at the end of a title, possibly followed by "(V)"-style tags or spaces.
_TITLE_YEAR = r"\((\d{4})\)(?:\s*\([^()]*\))*\s*$"
_RELEASE_YEAR = r"(\d{4})\s*$"


@dataclass(frozen=True)
class Catalog:
    """The users' and items' features, and the cardinalities that size the models' embeddings.

    Attributes:
        user_features: (n_users, 5) long — [dense id 1..n_users, gender, age, occupation, zip].
        item_features: (n_items, 2) long — [dense id 1..n_items, year].
        item_genres: (n_items, n_genres) float — genre flags divided by their row sum (0 rows
            stay 0).
        n_genders: the number of genders (the side features' cardinalities size the
            embeddings; so do the next four).
        n_ages: the number of age groups.
        n_occupations: the number of occupations.
        n_zips: the number of zip codes.
        n_years: the number of release years.
    """

    user_features: torch.Tensor
    item_features: torch.Tensor
    item_genres: torch.Tensor
    n_genders: int
    n_ages: int
    n_occupations: int
    n_zips: int
    n_years: int

    @property
    def n_users(self) -> int:
        return int(self.user_features.shape[0])

    @property
    def n_items(self) -> int:
        return int(self.item_features.shape[0])

    @property
    def n_genres(self) -> int:
        return int(self.item_genres.shape[1])

    def cardinalities(self) -> dict[str, int]:
        return {
            "users": self.n_users,
            "items": self.n_items,
            "genders": self.n_genders,
            "ages": self.n_ages,
            "occupations": self.n_occupations,
            "zips": self.n_zips,
            "years": self.n_years,
            "genres": self.n_genres,
        }


@dataclass(frozen=True)
class MovieLens:
    """A MovieLens ratings file with its users and movies, as tensors.

    users, items: (n_ratings,) long — row indices into the catalog (0-based), in file order
    ratings: (n_ratings,) long — the raw 1–5 stars
    labels: (n_ratings,) float — 1.0 where rating > 3
    timestamps: (n_ratings,) float — min-max normalised over the whole file to [0, 1]
    """

    name: str
    layout: str  # "ml-1m" or "ml-100k"
    path: str
    fingerprint: str  # sha256 over the three files' bytes (first 16 hex digits)
    synthetic: bool
    catalog: Catalog
    users: torch.Tensor
    items: torch.Tensor
    ratings: torch.Tensor
    labels: torch.Tensor
    timestamps: torch.Tensor
    user_ids: tuple[str, ...] = field(repr=False)  # original id of each user row
    item_ids: tuple[str, ...] = field(repr=False)  # original id of each item row
    item_titles: tuple[str, ...] = field(repr=False)
    years: tuple[str, ...] = field(repr=False)  # year category index -> year text
    genres: tuple[str, ...] = field(repr=False)

    @property
    def n_users(self) -> int:
        return self.catalog.n_users

    @property
    def n_items(self) -> int:
        return self.catalog.n_items

    @property
    def n_ratings(self) -> int:
        return int(self.users.shape[0])

    def title_of(self, item_row: int) -> str:
        """The movie title of an item row (0-based)."""
        return self.item_titles[item_row]

    def summary(self) -> str:
        """A few lines describing the data set, for the terminal and the book."""
        label = " (SYNTHETIC — not real MovieLens data)" if self.synthetic else ""
        c = self.catalog
        lines = [
            f"{self.name}{label}: {self.layout} layout at {self.path}",
            f"  fingerprint {self.fingerprint}",
            f"  {self.n_ratings:,} ratings, {c.n_users:,} users, {c.n_items:,} items",
            f"  positive share (rating > 3): {self.labels.mean().item():.3f}",
            f"  density: {self.n_ratings / (c.n_users * c.n_items):.4f}",
            "  cardinalities: "
            + ", ".join(f"{k} {v:,}" for k, v in c.cardinalities().items() if k not in ("users",)),
        ]
        return "\n".join(lines)


def detect_layout(directory: Path) -> str:
    """`"ml-1m"` or `"ml-100k"` from the files present; `DataFormatError` when neither fits."""
    if (directory / "ratings.dat").is_file() or (directory / "movies.dat").is_file():
        return "ml-1m"
    if (directory / "u.data").is_file() or (directory / "u.item").is_file():
        return "ml-100k"
    raise DataFormatError(
        directory,
        "holds neither MovieLens layout; expected ratings.dat, users.dat and movies.dat (ML-1M) "
        "or u.data, u.user and u.item (ML-100K)",
    )


def read_movielens_dir(directory: str | Path, *, name: str | None = None) -> MovieLens:
    """Parse an unpacked MovieLens directory in either layout (see `detect_layout`)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DataFormatError(directory, "not a directory; expected an unpacked MovieLens folder")
    layout = detect_layout(directory)
    if layout == "ml-1m":
        ratings_file, users_file, items_file = "ratings.dat", "users.dat", "movies.dat"
    else:
        ratings_file, users_file, items_file = "u.data", "u.user", "u.item"
    digest = hashlib.sha256()

    users, user_raw = _read_users(directory / users_file, layout)
    items, item_raw = _read_items(directory / items_file, layout)
    ratings, rating_raw = _read_ratings(directory / ratings_file, layout, users, items)
    for raw in (rating_raw, user_raw, item_raw):
        digest.update(hashlib.sha256(raw).digest())

    synthetic = (directory / "SYNTHETIC.json").is_file()
    catalog = Catalog(
        user_features=torch.tensor(users["features"]),
        item_features=torch.tensor(items["features"]),
        item_genres=torch.tensor(items["genres"]),
        n_genders=users["n_genders"],
        n_ages=users["n_ages"],
        n_occupations=users["n_occupations"],
        n_zips=users["n_zips"],
        n_years=len(items["years"]),
    )
    return MovieLens(
        name=name or directory.name,
        layout=layout,
        path=str(directory),
        fingerprint=digest.hexdigest()[:16],
        synthetic=synthetic,
        catalog=catalog,
        users=torch.tensor(ratings["users"]),
        items=torch.tensor(ratings["items"]),
        ratings=torch.tensor(ratings["ratings"]),
        labels=torch.tensor((ratings["ratings"] > 3).astype(np.float32)),
        timestamps=torch.tensor(ratings["timestamps"]),
        user_ids=tuple(users["ids"].astype(str)),
        item_ids=tuple(items["ids"].astype(str)),
        item_titles=tuple(items["titles"]),
        years=tuple(items["years"]),
        genres=GENRES,
    )


def _read_users(path: Path, layout: str) -> tuple[dict, bytes]:
    if layout == "ml-1m":
        names = ["UserID", "Gender", "Age", "Occupation", "Zip-code"]
        text, raw = read_text(path, encoding="latin-1", what="users")
        table = split_fields(path, text, sep="::", names=names)
    else:
        names = ["UserID", "Age", "Gender", "Occupation", "Zip-code"]
        text, raw = read_text(path, encoding="latin-1", what="users")
        table = split_fields(path, text, sep="|", names=names)
    ids = integer_column(path, table, "UserID")
    check_unique_ids(path, ids, "UserID")
    age = integer_column(path, table, "Age")
    gender = table["Gender"].to_numpy()
    bad = ~np.isin(gender, ["M", "F"])
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataFormatError(path, f"field Gender is {gender[row]!r}; expected M or F", row + 1)
    if layout == "ml-1m":
        occupation: np.ndarray = integer_column(path, table, "Occupation")
    else:
        occupation = table["Occupation"].to_numpy()
    zips = table["Zip-code"].to_numpy()
    # Factorised in file order, as the paper's code does (pd.factorize keeps first-seen order).
    columns = [pd.factorize(col)[0] for col in (gender, age, occupation, zips)]
    features = np.stack([np.arange(1, len(ids) + 1), *columns], axis=1).astype(np.int64)
    result = {
        "ids": ids,
        "features": features,
        "n_genders": int(columns[0].max()) + 1,
        "n_ages": int(columns[1].max()) + 1,
        "n_occupations": int(columns[2].max()) + 1,
        "n_zips": int(columns[3].max()) + 1,
    }
    return result, raw


def _read_items(path: Path, layout: str) -> tuple[dict, bytes]:
    text, raw = read_text(path, encoding="latin-1", what="movies")
    if layout == "ml-1m":
        table = split_fields(path, text, sep="::", names=["MovieID", "Title", "Genres"])
        flags = _genre_flags_from_names(path, table["Genres"])
        release_year = pd.Series([None] * len(table), dtype=object)
    else:
        names = ["MovieID", "Title", "Release", "VideoRelease", "URL", *ML100K_FLAGS]
        table = split_fields(path, text, sep="|", names=names)
        flags = _genre_flags_from_columns(path, table)
        release_year = table["Release"].str.extract(_RELEASE_YEAR, expand=False)
    ids = integer_column(path, table, "MovieID")
    check_unique_ids(path, ids, "MovieID")
    titles = table["Title"].to_numpy(dtype=object)
    year = table["Title"].str.extract(_TITLE_YEAR, expand=False)
    # ML-100K titles without "(YYYY)" fall back to the release date; neither → "unknown".
    year = year.fillna(release_year).fillna(UNKNOWN_YEAR)
    year_codes, year_values = pd.factorize(year)
    totals = flags.sum(axis=1, keepdims=True)
    # Items whose only genre is "unknown" (ML-100K items 267, 1373) get an all-zero genre vector
    # instead of the 0/0 = NaN the paper's code would produce.
    genres = np.divide(flags, totals, out=np.zeros_like(flags), where=totals > 0)
    features = np.stack([np.arange(1, len(ids) + 1), year_codes], axis=1).astype(np.int64)
    result = {
        "ids": ids,
        "titles": tuple(str(t) for t in titles),
        "features": features,
        "genres": genres.astype(np.float32),
        "years": tuple(str(y) for y in year_values),
    }
    return result, raw


def _genre_flags_from_names(path: Path, genres: pd.Series) -> np.ndarray:
    dummies = genres.str.get_dummies(sep="|")
    unknown = [g for g in dummies.columns if g not in GENRES]
    if unknown:
        row = int(np.flatnonzero(dummies[unknown[0]].to_numpy())[0])
        raise DataFormatError(
            path,
            f"genre {unknown[0]!r} is not an ML-1M genre; expected names from {', '.join(GENRES)}",
            row + 1,
        )
    return dummies.reindex(columns=list(GENRES), fill_value=0).to_numpy(dtype=np.float64)


def _genre_flags_from_columns(path: Path, table: pd.DataFrame) -> np.ndarray:
    flags = table[list(ML100K_FLAGS)].to_numpy()
    bad = ~np.isin(flags, ["0", "1"])
    if bad.any():
        row, col = (int(i[0]) for i in np.nonzero(bad))
        raise DataFormatError(
            path,
            f"genre flag {ML100K_FLAGS[col]} is {flags[row, col]!r}; expected 0 or 1",
            row + 1,
        )
    return (flags[:, 1:] == "1").astype(np.float64)  # drop "unknown": the paper's 18 genres


def _read_ratings(path: Path, layout: str, users: dict, items: dict) -> tuple[dict, bytes]:
    names = ["UserID", "MovieID", "Rating", "Timestamp"]
    text, raw = read_text(path, encoding="ascii", what="ratings")
    table = split_fields(path, text, sep="::" if layout == "ml-1m" else "\t", names=names)
    stars = integer_column(path, table, "Rating")
    bad = (stars < 1) | (stars > 5)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataFormatError(
            path, f"field Rating is {stars[row]}; expected an integer from 1 to 5", row + 1
        )
    user_file = "users.dat" if layout == "ml-1m" else "u.user"
    item_file = "movies.dat" if layout == "ml-1m" else "u.item"
    user_rows = lookup_rows(
        path, integer_column(path, table, "UserID"), users["ids"], "UserID", user_file
    )
    item_rows = lookup_rows(
        path, integer_column(path, table, "MovieID"), items["ids"], "MovieID", item_file
    )
    stamps = integer_column(path, table, "Timestamp").astype(np.float64)
    span = stamps.max() - stamps.min()
    normalised = (stamps - stamps.min()) / span if span > 0 else np.zeros_like(stamps)
    result = {
        "users": user_rows,
        "items": item_rows,
        "ratings": stars,
        "timestamps": normalised.astype(np.float32),
    }
    return result, raw
