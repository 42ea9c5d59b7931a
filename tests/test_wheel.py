"""The built wheel: it carries `results/` for the chapters, and the chapters run from it alone."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

from twostage.committed import shipped_files

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out),
                    str(ROOT)], check=True, capture_output=True)  # fmt: skip
    (built,) = out.glob("twostage-*.whl")
    return built


def test_the_wheel_carries_an_exact_copy_of_results(wheel: Path):
    prefix = "twostage/_committed/"
    with zipfile.ZipFile(wheel) as archive:
        copied = {
            n[len(prefix) :]: archive.read(n) for n in archive.namelist() if n.startswith(prefix)
        }
        assert "twostage/data/ml1m_shares.json" in archive.namelist()
    expected = {
        str(p): (ROOT / "results" / p).read_bytes() for p in shipped_files(ROOT / "results")
    }
    assert copied.keys() == expected.keys() and copied == expected


CHAPTER_RUNNER = textwrap.dedent(
    """
    import sys
    import nbformat
    from nbclient import NotebookClient

    for path in sys.argv[2:]:
        nb = nbformat.read(path, as_version=4)
        nb.cells.append(nbformat.v4.new_code_cell(
            "import twostage, twostage.committed\\n"
            "print(f'FILE {twostage.__file__} RESULTS {twostage.committed.results_dir()}')"))
        NotebookClient(nb, timeout=600, kernel_name=sys.argv[1]).execute()
        # A busy kernel may flush one print as several stream outputs: join them.
        streams = [o["text"] for o in nb.cells[-1].outputs if o.get("name") == "stdout"]
        print("".join(streams).strip(), flush=True)
    """
)


@pytest.mark.slow
def test_the_chapters_run_from_the_installed_wheel_outside_the_repository(wheel, tmp_path):
    """A fresh venv with the wheel, its chapters executed by that venv's kernel elsewhere."""
    venv, work = tmp_path / "venv", tmp_path / "elsewhere"
    work.mkdir()
    # Nothing of the checkout may leak in: no PYTHONPATH, and never the repository as cwd (pip
    # would take a twostage.egg-info there for an installed twostage).
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(TWOSTAGE_PROFILE="smoke", TWOSTAGE_CACHE=str(tmp_path / "stages"))
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, cwd=work, env=env)
    python = venv / "bin" / "python"
    install = [str(python), "-m", "pip", "install", "-q", "torch==2.13.0", str(wheel),
               "nbclient", "nbformat", "ipykernel"]  # fmt: skip
    subprocess.run(install, check=True, capture_output=True, timeout=900, cwd=work, env=env)
    kernel = "twostage-wheel"  # this venv's python, by absolute path: no other kernel is used
    subprocess.run([str(python), "-m", "ipykernel", "install", "--prefix", str(venv), "--name",
                    kernel], check=True, capture_output=True, cwd=work, env=env)  # fmt: skip
    chapters = sorted((ROOT / "notebooks").glob("*.ipynb"))  # every chapter
    command = [str(python), "-c", CHAPTER_RUNNER, kernel, *map(str, chapters)]
    result = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith("FILE")]
    assert len(lines) == len(chapters)
    for line in lines:
        _, file, _, results = line.split()
        assert Path(file).is_relative_to(venv) and not Path(file).is_relative_to(ROOT)
        assert Path(results).is_relative_to(venv) and (Path(results) / "ml-100k").is_dir()
