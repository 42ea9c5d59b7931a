"""The download path, exercised against a real HTTP server on the loopback address."""

from __future__ import annotations

import hashlib
import http.server
import io
import threading
import zipfile
from pathlib import Path

import pytest
from conftest import MOVIES_DAT, RATINGS_DAT, USERS_DAT

from twostage.data import download, load_movielens
from twostage.errors import DownloadError


def make_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, text in (
            ("users.dat", USERS_DAT),
            ("movies.dat", MOVIES_DAT),
            ("ratings.dat", RATINGS_DAT),
        ):
            zf.writestr(f"ml-1m/{name}", text)
    return buffer.getvalue()


@pytest.fixture
def server(tmp_path: Path):
    root = tmp_path / "www"
    root.mkdir()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, *args):  # keep test output quiet
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def serve_archive(monkeypatch, server, payload: bytes, md5: str) -> None:
    root, url = server
    (root / "ml-1m.zip").write_bytes(payload)
    archive = download.Archive("ml-1m", f"{url}/ml-1m.zip", md5, "ml-1m")
    monkeypatch.setitem(download.ARCHIVES, "ml-1m", archive)


def test_download_verifies_the_checksum_unpacks_and_loads(monkeypatch, server, tmp_path: Path):
    payload = make_zip()
    serve_archive(monkeypatch, server, payload, hashlib.md5(payload).hexdigest())
    data = load_movielens("ml-1m", cache_dir=tmp_path / "cache")
    assert data.n_ratings == 5 and data.name == "ml-1m"
    assert (tmp_path / "cache" / "ml-1m" / "ratings.dat").is_file()
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.startswith(".")]


def test_a_checksum_mismatch_fails_and_leaves_nothing(monkeypatch, server, tmp_path: Path):
    serve_archive(monkeypatch, server, make_zip(), "0" * 32)
    with pytest.raises(DownloadError, match="did not match its published MD5"):
        load_movielens("ml-1m", cache_dir=tmp_path / "cache")
    leftovers = list((tmp_path / "cache").rglob("*"))
    assert leftovers == []  # no partial zip, no half-unpacked folder


def test_an_unreachable_server_says_offline_and_names_alternatives(monkeypatch, tmp_path: Path):
    archive = download.Archive("ml-1m", "http://127.0.0.1:9/ml-1m.zip", "0" * 32, "ml-1m")
    monkeypatch.setitem(download.ARCHIVES, "ml-1m", archive)
    with pytest.raises(DownloadError) as info:
        load_movielens("ml-1m", cache_dir=tmp_path / "cache")
    assert "--dataset synthetic" in str(info.value)


def test_the_official_archives_keep_their_published_checksums():
    assert download.ARCHIVES["ml-1m"].md5 == "c4d9eecfca2ab87c1945afe126590906"
    assert download.ARCHIVES["ml-100k"].md5 == "0e33842e24a9c977be4e0107933c0723"
    assert all(a.url.startswith("https://") for a in download.ARCHIVES.values())
