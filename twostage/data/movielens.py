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
class Table:
    """One file of a layout: its name, field separator, encoding and columns."""

    file: str
    sep: str
    columns: tuple[str, ...]
    encoding: str = "latin-1"


@dataclass(frozen=True)
class Layout:
    """How a MovieLens-style data set is written: the table of layouts below is all a reader
    knows about a format. A data set with other files or side features is one more entry.

    user_fields: (feature name, column) of each user side feature, in the models' order
    integer_fields: user columns that must hold integers
    genres: "names" (one `|`-separated column `Genres`) or "flags" (one 0/1 column per genre)
    release_column: a column whose trailing year stands in for a title without "(YYYY)"
    """

    name: str
    ratings: Table
    users: Table
    items: Table
    user_fields: tuple[tuple[str, str], ...]
    integer_fields: tuple[str, ...]
    genres: str
    release_column: str | None = None


_USER_FIELDS = (("gender", "Gender"), ("age", "Age"), ("occupation", "Occupation"),
                ("zip", "Zip-code"))  # fmt: skip
RATING_COLUMNS = ("UserID", "MovieID", "Rating", "Timestamp")
LAYOUTS: dict[str, Layout] = {
    "ml-1m": Layout(
        name="ml-1m",
        ratings=Table("ratings.dat", "::", RATING_COLUMNS, encoding="ascii"),
        users=Table("users.dat", "::", ("UserID", "Gender", "Age", "Occupation", "Zip-code")),
        items=Table("movies.dat", "::", ("MovieID", "Title", "Genres")),
        user_fields=_USER_FIELDS,
        integer_fields=("Age", "Occupation"),
        genres="names",
    ),
    "ml-100k": Layout(
        name="ml-100k",
        ratings=Table("u.data", "\t", RATING_COLUMNS, encoding="ascii"),
        users=Table("u.user", "|", ("UserID", "Age", "Gender", "Occupation", "Zip-code")),
        items=Table(
            "u.item", "|", ("MovieID", "Title", "Release", "VideoRelease", "URL", *ML100K_FLAGS)
        ),
        user_fields=_USER_FIELDS,
        integer_fields=("Age",),
        genres="flags",
        release_column="Release",
    ),
}
ITEM_FIELDS = ("year",)


@dataclass(frozen=True)
class Catalog:
    """The users' and items' features, and the cardinalities that size the models' embeddings.

    Attributes:
        user_features: (n_users, 1 + len(user_fields)) long — [dense id 1..n_users, one column
            per side feature], each feature coded 0..cardinality − 1.
        item_features: (n_items, 1 + len(item_fields)) long — [dense id 1..n_items, side
            features].
        item_genres: (n_items, n_genres) float — genre flags divided by their row sum (0 rows
            stay 0).
        user_fields: the user side features' names, in column order (ML: gender, age,
            occupation, zip).
        user_cardinalities: each user side feature's number of categories.
        item_fields: the item side features' names (ML: year).
        item_cardinalities: each item side feature's number of categories.
    """

    user_features: torch.Tensor
    item_features: torch.Tensor
    item_genres: torch.Tensor
    user_fields: tuple[str, ...]
    user_cardinalities: tuple[int, ...]
    item_fields: tuple[str, ...]
    item_cardinalities: tuple[int, ...]

    def __post_init__(self) -> None:
        for side, features, fields, sizes in (
            ("user", self.user_features, self.user_fields, self.user_cardinalities),
            ("item", self.item_features, self.item_fields, self.item_cardinalities),
        ):
            if len(fields) != len(sizes) or features.shape[1] != 1 + len(fields):
                raise ValueError(
                    f"{side} features: {features.shape[1]} columns for id + {len(fields)} "
                    f"fields with {len(sizes)} cardinalities"
                )

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
        """Users, items and every side feature's categories (`genders`, `ages`, …, `genres`)."""
        sides = zip(
            (*self.user_fields, *self.item_fields),
            (*self.user_cardinalities, *self.item_cardinalities),
            strict=True,
        )
        return {
            "users": self.n_users,
            "items": self.n_items,
            **{f"{name}s": size for name, size in sides},
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
    """The name of the layout whose ratings or items file is present (`"ml-1m"`, `"ml-100k"`);
    `DataFormatError` when none fits."""
    for name, layout in LAYOUTS.items():
        if (directory / layout.ratings.file).is_file() or (directory / layout.items.file).is_file():
            return name
    expected = " or ".join(
        f"{spec.ratings.file}, {spec.users.file} and {spec.items.file} ({name.upper()})"
        for name, spec in LAYOUTS.items()
    )
    raise DataFormatError(directory, f"holds neither MovieLens layout; expected {expected}")


def read_movielens_dir(directory: str | Path, *, name: str | None = None) -> MovieLens:
    """Parse an unpacked MovieLens directory in either layout (see `detect_layout`)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DataFormatError(directory, "not a directory; expected an unpacked MovieLens folder")
    layout = LAYOUTS[detect_layout(directory)]
    digest = hashlib.sha256()

    users, user_raw = _read_users(directory / layout.users.file, layout)
    items, item_raw = _read_items(directory / layout.items.file, layout)
    ratings, rating_raw = _read_ratings(directory / layout.ratings.file, layout, users, items)
    for raw in (rating_raw, user_raw, item_raw):
        digest.update(hashlib.sha256(raw).digest())

    synthetic = (directory / "SYNTHETIC.json").is_file()
    catalog = Catalog(
        user_features=torch.tensor(users["features"]),
        item_features=torch.tensor(items["features"]),
        item_genres=torch.tensor(items["genres"]),
        user_fields=tuple(name for name, _ in layout.user_fields),
        user_cardinalities=users["cardinalities"],
        item_fields=ITEM_FIELDS,
        item_cardinalities=(len(items["years"]),),
    )
    return MovieLens(
        name=name or directory.name,
        layout=layout.name,
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


def _read_users(path: Path, layout: Layout) -> tuple[dict, bytes]:
    text, raw = read_text(path, encoding=layout.users.encoding, what="users")
    table = split_fields(path, text, sep=layout.users.sep, names=list(layout.users.columns))
    ids = integer_column(path, table, "UserID")
    check_unique_ids(path, ids, "UserID")
    if "Gender" in table:
        gender = table["Gender"].to_numpy()
        bad = ~np.isin(gender, ["M", "F"])
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise DataFormatError(
                path, f"field Gender is {gender[row]!r}; expected M or F", row + 1
            )
    values = {
        column: integer_column(path, table, column)
        if column in layout.integer_fields
        else table[column].to_numpy()
        for _, column in layout.user_fields
    }
    # Factorised in file order, as the paper's code does (pd.factorize keeps first-seen order).
    columns = [pd.factorize(values[column])[0] for _, column in layout.user_fields]
    features = np.stack([np.arange(1, len(ids) + 1), *columns], axis=1).astype(np.int64)
    cardinalities = tuple(int(column.max()) + 1 for column in columns)
    return {"ids": ids, "features": features, "cardinalities": cardinalities}, raw


def _read_items(path: Path, layout: Layout) -> tuple[dict, bytes]:
    text, raw = read_text(path, encoding=layout.items.encoding, what="movies")
    table = split_fields(path, text, sep=layout.items.sep, names=list(layout.items.columns))
    if layout.genres == "names":
        flags = _genre_flags_from_names(path, table["Genres"])
    else:
        flags = _genre_flags_from_columns(path, table)
    if layout.release_column is None:
        release_year = pd.Series([None] * len(table), dtype=object)
    else:
        release_year = table[layout.release_column].str.extract(_RELEASE_YEAR, expand=False)
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
    """(n_items, 18) 0/1 flags of `|`-separated genre names; an unknown name (the first in
    alphabetical order) raises `DataFormatError` at the first line holding it."""
    # One (row, name) pair per listed genre: linear in the file (get_dummies took ~9 s on 1M).
    names = genres.reset_index(drop=True).str.split("|").explode()
    rows, names = names.index.to_numpy(), names.to_numpy(dtype=object)
    listed = pd.notna(names) & (names != "")
    codes = pd.Index(GENRES).get_indexer(names)
    unknown = listed & (codes < 0)
    if unknown.any():
        name = min(names[unknown])
        row = int(rows[unknown & (names == name)][0])
        raise DataFormatError(
            path,
            f"genre {name!r} is not an ML-1M genre; expected names from {', '.join(GENRES)}",
            row + 1,
        )
    flags = np.zeros((len(genres), len(GENRES)), dtype=np.float64)
    flags[rows[listed], codes[listed]] = 1.0
    return flags


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


def _read_ratings(path: Path, layout: Layout, users: dict, items: dict) -> tuple[dict, bytes]:
    spec = layout.ratings
    text, raw = read_text(path, encoding=spec.encoding, what="ratings")
    table = split_fields(path, text, sep=spec.sep, names=list(spec.columns))
    stars = integer_column(path, table, "Rating")
    bad = (stars < 1) | (stars > 5)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataFormatError(
            path, f"field Rating is {stars[row]}; expected an integer from 1 to 5", row + 1
        )
    user_file, item_file = layout.users.file, layout.items.file
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
