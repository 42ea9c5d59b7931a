from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from conftest import ML1M_FEATURES, ML100K, MOVIES_DAT, RATINGS_DAT, USERS_DAT, needs, write_ml1m

from twostage.data import load_movielens
from twostage.errors import ConfigError, DataFormatError, DownloadError


def test_tiny_ml1m_is_reindexed_from_one_in_file_order(tiny_ml1m: Path):
    data = load_movielens(tiny_ml1m)
    assert data.layout == "ml-1m"
    assert data.item_ids == ("1", "5", "7")
    assert data.catalog.item_features[:, 0].tolist() == [1, 2, 3]
    assert data.catalog.user_features[:, 0].tolist() == [1, 2, 3]
    # Ratings point at rows: movie 5 is row 1, movie 7 is row 2.
    assert data.items.tolist() == [0, 1, 2, 0, 1]
    assert data.users.tolist() == [0, 0, 1, 2, 2]
    assert data.title_of(2) == "Sabrina (1954)"


def test_labels_are_rating_above_three_and_timestamps_min_max(tiny_ml1m: Path):
    data = load_movielens(tiny_ml1m)
    assert data.labels.tolist() == [1.0, 0.0, 1.0, 0.0, 1.0]
    stamps = torch.tensor(
        [978300760, 978302109, 978301968, 978300275, 978824291], dtype=torch.float64
    )
    expected = (stamps - stamps.min()) / (stamps.max() - stamps.min())
    torch.testing.assert_close(data.timestamps.double(), expected, atol=1e-6, rtol=0)


def test_user_features_are_factorised_in_file_order(tiny_ml1m: Path):
    features = load_movielens(tiny_ml1m).catalog.user_features
    # gender F, M, M → 0, 1, 1; ages 1, 56, 25 → 0, 1, 2
    assert features[:, 1].tolist() == [0, 1, 1]
    assert features[:, 2].tolist() == [0, 1, 2]


def test_genres_are_divided_by_their_row_sum(tiny_ml1m: Path):
    data = load_movielens(tiny_ml1m)
    genres = data.catalog.item_genres
    torch.testing.assert_close(genres.sum(1), torch.ones(3))
    assert genres[0, data.genres.index("Comedy")].item() == pytest.approx(1 / 3)
    assert data.years[data.catalog.item_features[2, 1]] == "1954"


def test_fingerprint_changes_with_the_files(tiny_ml1m: Path, tmp_path: Path):
    other = write_ml1m(tmp_path / "other", ratings=RATINGS_DAT.replace("::5::3::", "::5::2::"))
    assert load_movielens(tiny_ml1m).fingerprint == load_movielens(tiny_ml1m).fingerprint
    assert load_movielens(tiny_ml1m).fingerprint != load_movielens(other).fingerprint


@needs(ML1M_FEATURES)
def test_ml1m_cardinalities_match_the_papers_constants(tmp_path: Path):
    directory = tmp_path / "ml-1m"
    directory.mkdir()
    for name in ("users.dat", "movies.dat"):
        shutil.copy(ML1M_FEATURES / name, directory / name)
    (directory / "ratings.dat").write_text("1::1193::5::978300760\n6040::3952::2::978824291\n")
    data = load_movielens(directory)
    assert data.catalog.cardinalities() == {
        "users": 6040,
        "items": 3883,
        "genders": 2,
        "ages": 7,
        "occupations": 21,
        "zips": 3439,
        "years": 81,
        "genres": 18,
    }


@needs(ML100K)
def test_real_ml100k_counts_and_traps():
    data = load_movielens(ML100K)
    assert (data.n_users, data.n_items, data.n_ratings) == (943, 1682, 100_000)
    assert data.layout == "ml-100k"
    assert torch.isfinite(data.catalog.item_genres).all()
    row = {int(i): r for r, i in enumerate(data.item_ids)}

    def year(movie_id: int) -> str:
        return data.years[data.catalog.item_features[row[movie_id], 1]]

    # Items 267 and 1373 carry only the "unknown" genre: an all-zero genre vector, not NaN.
    for movie_id in (267, 1373):
        assert data.catalog.item_genres[row[movie_id]].sum().item() == 0.0
    assert year(267) == "unknown"  # no year in the title and no release date
    assert year(1412) == "1995"  # title ends "(1995) (V)"
    for movie_id in (1128, 1201, 1635):  # titles with a trailing space
        assert data.item_titles[row[movie_id]].endswith(" ")
        assert year(movie_id).isdigit()
    assert year(1) == "1995"
    assert data.labels.mean().item() == pytest.approx((data.ratings > 3).float().mean().item())
    assert data.timestamps.min().item() == 0.0 and data.timestamps.max().item() == 1.0


@needs(ML100K)
def test_ml100k_users_are_reordered_to_the_papers_feature_order():
    data = load_movielens(ML100K)
    first = data.catalog.user_features[0]
    assert first[0].item() == 1 and data.user_ids[0] == "1"
    # u.user line 1 is "1|24|M|technician|85711": gender M and age 24 are the first seen (code 0).
    assert first[1:].tolist() == [0, 0, 0, 0]


BAD_CASES = {
    "missing ratings file": (dict(ratings=None), "ratings.dat", None, "file not found"),
    "wrong separator": (
        dict(ratings="1,1,5,978300760\n"),
        "ratings.dat",
        1,
        "found 1 field; expected 4",
    ),
    "truncated line": (
        dict(ratings=RATINGS_DAT + "2::5::4\n"),
        "ratings.dat",
        6,
        "found 3 fields",
    ),
    "too many fields": (
        dict(ratings="1::1::5::978300760::9\n"),
        "ratings.dat",
        1,
        "expected 4",
    ),
    "non-numeric": (
        dict(ratings="1::1::five::978300760\n"),
        "ratings.dat",
        1,
        "expected an integer",
    ),
    "rating out of range": (
        dict(ratings=RATINGS_DAT + "2::5::6::978300760\n"),
        "ratings.dat",
        6,
        "from 1 to 5",
    ),
    "unknown user": (
        dict(ratings="9::1::5::978300760\n"),
        "ratings.dat",
        1,
        "UserID 9 has no row",
    ),
    "unknown movie": (
        dict(ratings="1::1::5::978300760\n1::2::5::978300760\n"),
        "ratings.dat",
        2,
        "MovieID 2 has no row",
    ),
    "unknown genre": (
        dict(movies=MOVIES_DAT + "8::Space (1999)::Sci-Fi|Space Opera\n"),
        "movies.dat",
        4,
        "'Space Opera' is not an ML-1M genre",
    ),
    "undecodable bytes": (
        dict(ratings=RATINGS_DAT.encode() + b"2::7::4::97830\xe91968\n"),
        "ratings.dat",
        6,
        "undecodable byte",
    ),
    "duplicate user": (
        dict(users=USERS_DAT + "2::F::18::3::12345\n"),
        "users.dat",
        4,
        "appears twice",
    ),
    "bad gender": (
        dict(users=USERS_DAT.replace("2::M", "2::X")),
        "users.dat",
        2,
        "expected M or F",
    ),
    "empty file": (dict(ratings=""), "ratings.dat", None, "empty"),
}


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_input_raises_data_format_error_naming_file_and_line(case: str, tmp_path: Path):
    files, filename, line, expectation = BAD_CASES[case]
    directory = write_ml1m(tmp_path / "bad", **files)
    with pytest.raises(DataFormatError) as info:
        load_movielens(directory)
    message = str(info.value)
    assert filename in message
    assert expectation in message
    assert info.value.line == line
    if line is not None:
        assert f"line {line}" in message


def test_a_directory_with_neither_layout_is_refused(tmp_path: Path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataFormatError, match="neither MovieLens layout"):
        load_movielens(tmp_path)


def test_unknown_dataset_name_is_a_config_error():
    with pytest.raises(ConfigError, match="ml-1m, ml-100k"):
        load_movielens("ml-2m")


def test_by_name_offline_says_so_and_names_the_alternatives(tmp_path: Path):
    with pytest.raises(DownloadError) as info:
        load_movielens("ml-1m", cache_dir=tmp_path, download=False)
    assert "--dataset synthetic" in str(info.value)
    assert "directory" in str(info.value)


def test_by_name_finds_an_unpacked_copy_in_the_cache(tmp_path: Path):
    write_ml1m(tmp_path / "ml-1m")
    data = load_movielens("ml-1m", cache_dir=tmp_path, download=False)
    assert data.name == "ml-1m" and data.n_ratings == 5


def test_ml100k_layout_with_pipe_and_tab_separators(tmp_path: Path):
    directory = tmp_path / "small100k"
    directory.mkdir()
    flags = "|".join(["0"] * 19)
    action = "|".join(["0", "1"] + ["0"] * 17)
    (directory / "u.user").write_text("1|24|M|technician|85711\n2|53|F|other|94043\n")
    (directory / "u.item").write_text(
        f"1|Toy Story (1995)|01-Jan-1995||http://x|{action}\n"
        f"2|No Year|01-Jan-1971||http://y|{flags}\n"
    )
    (directory / "u.data").write_text("1\t1\t4\t881250949\n2\t2\t2\t891717742\n")
    data = load_movielens(directory)
    assert data.layout == "ml-100k"
    assert data.years[data.catalog.item_features[1, 1]] == "1971"  # from the release date
    assert data.catalog.item_genres[1].sum().item() == 0.0
    assert data.catalog.item_genres[0, data.genres.index("Action")].item() == 1.0
