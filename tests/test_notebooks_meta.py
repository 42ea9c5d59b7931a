"""The book's notebooks: install cells, pairing, committed outputs, nbval, and their helpers."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jupytext
import nbformat
import pytest
import torch
import yaml

from twostage.notebook import choose_profile, setup

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
URL = re.compile(r"https://github\.com/[\w.-]+/[\w.-]+")


def repository_url() -> str:
    return yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"]


def toc_notebooks() -> list[Path]:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [chapter["file"] for chapter in toc["chapters"]]
    return [ROOT / f"{name}.md" for name in files if name.startswith("notebooks/")]


def code_cells(path: Path) -> list[str]:
    return [c.source for c in jupytext.read(path).cells if c.cell_type == "code"]


def test_config_and_pyproject_name_the_same_repository():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["urls"]["Repository"] == repository_url()


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.md")), ids=lambda p: p.stem)
def test_first_cell_installs_from_the_configured_repository_in_colab_only(path: Path):
    first = code_cells(path)[0]
    assert "google.colab" in first and "except ImportError" in first
    assert URL.findall(first) == [repository_url()]


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.md")), ids=lambda p: p.stem)
def test_no_other_cell_installs_anything(path: Path):
    for source in code_cells(path)[1:]:
        assert "pip install" not in source


def tagged(cell) -> bool:
    return "nbval-check-output" in cell.metadata.get("tags", [])


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.md")), ids=lambda p: p.stem)
def test_chapter_names_itself_when_it_sets_up(path: Path):
    calls = re.findall(r"\bsetup\(([^)]*)\)", "\n".join(code_cells(path)))
    assert calls and set(calls) == {f'"{path.stem}"'}, calls


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.md")), ids=lambda p: p.stem)
def test_exactly_compared_cells_record_no_trained_numbers(path: Path):
    cells = [c for c in jupytext.read(path).cells if c.cell_type == "code"]
    assert any(tagged(c) for c in cells), "no cell is compared exactly: tag the pre-training ones"
    for cell in cells:
        assert not (tagged(cell) and "nb.record(" in cell.source), cell.source[:200]
        assert "NBVAL_" not in cell.source, "use the cell tags nbval-check-output / nbval-skip"


def test_every_notebook_in_the_toc_exists_with_a_paired_ipynb():
    notebooks = toc_notebooks()
    assert notebooks, "_toc.yml lists no notebooks"
    for md in notebooks:
        assert md.is_file(), f"{md.relative_to(ROOT)} is in _toc.yml but missing"
        ipynb = md.with_suffix(".ipynb")
        assert ipynb.is_file(), f"{ipynb.relative_to(ROOT)} missing: run .ci/execute_notebooks.py"
        formats = json.loads(ipynb.read_text())["metadata"].get("jupytext", {}).get("formats")
        assert formats == "ipynb,md", (
            f"{md.name}: add `formats: ipynb,md` under `jupytext:` in its header "
            "(or run `jupytext --set-formats ipynb,md` on it), then .ci/execute_notebooks.py"
        )


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.stem)
def test_committed_notebooks_were_executed_without_errors(path: Path):
    cells = [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in cells), "not executed"
    for cell in cells:
        assert not [o for o in cell.outputs if o.output_type == "error"]
        assert "execution" not in cell.metadata, "timings recorded: use record_timing=False"


def test_profile_comes_from_argument_then_environment_then_smoke(monkeypatch):
    monkeypatch.delenv("TWOSTAGE_PROFILE", raising=False)
    assert choose_profile() == "smoke"
    monkeypatch.setenv("TWOSTAGE_PROFILE", "paper")
    assert choose_profile() == "paper"
    assert choose_profile("smoke") == "smoke"


def test_setup_prints_one_line_and_uses_the_profile(monkeypatch, capsys):
    monkeypatch.setenv("TWOSTAGE_PROFILE", "smoke")
    nb = setup()
    assert nb.config.dataset == "synthetic-small" and nb.profile == "smoke"
    assert nb.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert nb.cache.root == Path(os.environ["TWOSTAGE_CACHE"])
    assert (
        capsys.readouterr().out
        == f"profile smoke · device {nb.device.type} · dataset synthetic-small\n"
    )


@pytest.mark.slow
def test_nbval_fails_when_a_checked_number_changes(tmp_path: Path):
    source = nbformat.read(NOTEBOOKS / "02_data.ipynb", as_version=4)
    nbformat.write(source, tmp_path / "unchanged.ipynb")
    changed = 0
    for cell in source.cells:
        for output in cell.get("outputs", []):
            if output.get("name") == "stdout" and "share of labels 1" in output.text:
                number = re.search(r"\d\.\d{3}", output.text).group()
                altered = f"{float(number) + 0.001:.3f}"
                output.text = output.text.replace(number, altered)
                changed += 1
    assert changed == 1
    nbformat.write(source, tmp_path / "altered.ipynb")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--nbval-lax",
            "--nbval-current-env",
            "--nbval-sanitize-with",
            str(NOTEBOOKS / "nbval_sanitize.cfg"),
            "unchanged.ipynb",
            "altered.ipynb",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TWOSTAGE_PROFILE": "smoke"},
    )
    # One cell fails (the unchanged copy passes), and on the changed number.
    assert result.returncode != 0
    assert re.search(r"\b1 failed, \d+ passed", result.stdout), result.stdout[-3000:]
    assert altered in result.stdout and "Cell outputs differ" in result.stdout


def test_every_chapter_starts_with_the_same_install_cell_and_its_colab_badge():
    firsts = {p.stem: jupytext.read(p).cells for p in sorted(NOTEBOOKS.glob("*.md"))}
    cells = [next(c for c in cells if c.cell_type == "code") for cells in firsts.values()]
    assert len({(c.source, tuple(c.metadata.get("tags", []))) for c in cells}) == 1
    for name, chapter in firsts.items():
        assert f"/blob/main/notebooks/{name}.ipynb" in chapter[0].source + chapter[1].source


def test_install_cells_and_badges_follow_the_repository_url():
    result = subprocess.run([sys.executable, str(ROOT / ".ci" / "sync_colab.py"), "--check"],
                            capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.md")), ids=lambda p: p.stem)
def test_chapters_draw_with_the_plots_module_not_pyplot(path: Path):
    assert not [s for s in code_cells(path) if "pyplot" in s or "plt." in s]
