"""The committed full-scale results — the repository's `results/` — wherever twostage runs.

`results/` is the one source. A built wheel carries a copy of it under `twostage/_committed/`
(made by the build, `setup.py`; a test checks that the copy equals `results/`), so that the book's
chapters show the committed tables and figures in Colab or any `pip install`; a source checkout
(or an editable install) reads `results/` itself.
"""

from __future__ import annotations

from pathlib import Path

PACKAGED = Path(__file__).resolve().parent / "_committed"
SOURCE = Path(__file__).resolve().parents[1] / "results"


def results_dir() -> Path | None:
    """The committed results: the wheel's copy, else the checkout's `results/`, else None."""
    for candidate in (PACKAGED, SOURCE):
        if candidate.is_dir():
            return candidate
    return None


def shipped_files(results: Path) -> list[Path]:
    """The files of `results` that the wheel carries (all of them), relative to `results`."""
    return sorted(p.relative_to(results) for p in results.rglob("*") if p.is_file())
