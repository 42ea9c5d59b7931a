"""The browser check of the built book (.ci/check_book.py) fails on what a reader would see."""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SPEC = importlib.util.spec_from_file_location("check_book", ROOT / ".ci" / "check_book.py")
check_book = sys.modules.setdefault("check_book", importlib.util.module_from_spec(SPEC))
SPEC.loader.exec_module(check_book)

HAVE_BROWSER = check_book.CHROMIUM.is_file() and check_book.CHROMEDRIVER.is_file()
# On CI the browser is installed by .ci/run: a missing one is a failure there, not a skip.
pytestmark = pytest.mark.skipif(
    not HAVE_BROWSER and not os.environ.get("CI"), reason="Debian's chromium is not installed"
)
TEXT = "<p>" + "A paragraph a reader can read. " * 12 + "</p>"
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489"
    "0000000d4944415478da63f8cfc0f01f0005000201a3e0d5cd0000000049454e44ae426082"
)


def site(tmp_path: Path, body: str) -> Path:
    (tmp_path / "img.png").write_bytes(PNG)
    (tmp_path / "other.html").write_text(f'<html><body><main><h1 id="there">Other</h1>{TEXT}'
                                         "</main></body></html>")  # fmt: skip
    (tmp_path / "page.html").write_text(f"<html><body><main>{body}</main></body></html>")
    return tmp_path


def problems(tmp_path: Path, body: str) -> list[str]:
    html = site(tmp_path, body)
    (report,) = check_book.check(html, ["page.html"], tmp_path / "shots")
    assert (tmp_path / "shots" / "page.png").is_file()
    return report.problems


def test_a_good_page_passes(tmp_path: Path):
    badge = '<img src="https://colab.research.google.com/assets/colab-badge.svg">'  # not followed
    body = (
        f'{TEXT}<img src="img.png">{badge}<a href="other.html#there">x</a><pre>| a |\n|---|</pre>'
    )
    assert problems(tmp_path, body) == []


def test_a_raw_markdown_table_fails(tmp_path: Path):
    body = f"{TEXT}<p>| method | P@5 |—|—| | Cross-entropy | 92.1±0.0 |</p>"
    assert any("raw Markdown table" in p for p in problems(tmp_path, body))


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (f'{TEXT}<img src="missing.png">', "image did not load"),
        (f'{TEXT}<a href="nowhere.html">x</a>', "does not exist"),
        (f'{TEXT}<a href="other.html#elsewhere">x</a>', "no element with id 'elsewhere'"),
        (
            f'{TEXT}<div class="cell_output">Traceback (most recent call last):\n  x</div>',
            "error in a cell's output",
        ),
        ("<p>Almost nothing.</p>", "empty page"),
    ],
)
def test_what_a_reader_would_see_wrong_fails(tmp_path: Path, body: str, expected: str):
    assert any(expected in p for p in problems(tmp_path, body))


def mathjax_site(tmp_path: Path) -> str:
    """Copies the book's own MathJax (the sphinx-mathjax-offline package) next to the page and
    returns the script tag the built book has."""
    spec = importlib.util.find_spec("sphinx-mathjax-offline")
    if spec is None:
        if os.environ.get("CI"):
            pytest.fail("sphinx-mathjax-offline (the book's MathJax) is not installed")
        pytest.skip("sphinx-mathjax-offline is not installed (pip install -e '.[book]')")
    shutil.copytree(Path(spec.origin).parent / "static" / "mathjax", tmp_path / "mathjax")
    return '<script defer src="mathjax/tex-chtml.js"></script>'


def test_formulas_typeset_by_the_books_own_mathjax_pass(tmp_path: Path):
    script = mathjax_site(tmp_path)
    body = f'{script}{TEXT}<p><span class="math">\\(x^2 + \\hat{{\\beta}}_i\\)</span></p>'
    assert problems(tmp_path, body) == []


def test_a_formula_left_as_raw_tex_fails(tmp_path: Path):
    """What a reader offline saw while MathJax came from a CDN: no script that loads, raw TeX."""
    script = '<script defer src="mathjax/missing.js"></script>'
    body = f'{script}{TEXT}<span class="math">\\(x\\)</span>'
    assert any("1 of 1 formulas shown as raw TeX" in p for p in problems(tmp_path, body))


def test_a_formula_with_a_tex_error_fails(tmp_path: Path):
    script = mathjax_site(tmp_path)
    body = f'{script}{TEXT}<span class="math">\\(\\frac{{a}}\\)</span>'
    assert any("TeX error in a formula" in p and "frac" in p for p in problems(tmp_path, body))
