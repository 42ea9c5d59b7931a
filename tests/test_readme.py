"""Every example in README.md runs: the `twostage` lines and the Python snippet, at smoke size,
offline, on local data (issue #13). Full-size times are measured once and written in the README,
never timed here."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny import env

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(encoding="utf-8"), re.S)


def readme_commands() -> list[str]:
    """The `twostage …` lines of the README's bash blocks, comments removed."""
    lines = [
        line.split("  #")[0].strip() for block in blocks("bash") for line in block.splitlines()
    ]
    return [line for line in lines if line.startswith("twostage ")]


def test_the_readme_has_the_examples_this_test_runs():
    commands = readme_commands()
    assert len(commands) >= 12 and len(blocks("python")) == 1
    assert any(c.startswith("twostage reproduce --dataset synthetic") for c in commands)


def local(args: list[str], tiny: Path) -> list[str]:
    """A README command made to run here: the ML-1M-shaped synthetic world and your own data
    become the tiny world (ml-100k and ml-1m resolve to it by name through $TWOSTAGE_DATA);
    `--device cuda` becomes cpu without CUDA; run folders get the smoke profile's names."""
    out = []
    for word in args:
        if word in ("synthetic", "/path/to/my-movielens"):
            word = str(tiny)
        elif word == "cuda" and not torch.cuda.is_available():
            word = "cpu"
        elif word.startswith("runs/"):
            word = word.replace("synthetic-", f"{tiny.name}-").replace("-paper", "-smoke")
        out.append(word)
    return out


@pytest.mark.slow
def test_every_readme_example_runs_at_smoke_size_offline(tmp_path: Path, tiny_world: Path):
    data, work = tmp_path / "data", tmp_path / "work"
    for name in ("ml-100k", "ml-1m"):  # found by name, as if downloaded: nothing is fetched
        shutil.copytree(tiny_world, data / name)
    shutil.copytree(ROOT / "results", work / "results")  # `summarize results/…` writes there
    variables = {
        "TWOSTAGE_DATA": str(data),
        "TWOSTAGE_CACHE": str(tmp_path / "stages"),
        "TWOSTAGE_PROFILE": "smoke",
        "OMP_NUM_THREADS": "1",
    }
    ran = []
    for command in readme_commands():
        args = shlex.split(command)[1:]
        if args[:2] == ["data", "fetch"]:
            continue  # the download path: tests/test_download.py, with local archives
        result = subprocess.run(
            [sys.executable, "-m", "twostage", *local(args, tiny_world)],
            cwd=work, env={**env(), **variables}, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert "Traceback" not in result.stderr, (command, result.stderr[-2000:])
        if args[0] == "compare":  # the tiny world is not the committed one: refused, clearly
            assert result.returncode in (0, 1, 2), (command, result.stderr)
            if result.returncode == 2:
                assert result.stderr.startswith("twostage: error: ")
                assert len(result.stderr.strip().splitlines()) == 1
        else:
            assert result.returncode == 0, (command, result.stderr[-2000:])
        ran.append(command)
    assert (work / "runs" / "alpha" / "summary.md").is_file()
    assert (work / "runs" / "ml-100k-smoke" / "ope.md").is_file()
    assert (work / "runs" / "synthetic-small-smoke-propensity=inclusion" / "summary.md").is_file()
    assert "command `twostage summarize" not in (work / "results/ml-100k/summary.md").read_text()

    snippet = blocks("python")[0]
    result = subprocess.run(
        [sys.executable, "-c", snippet], cwd=work, env={**env(), **variables},
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "results on synthetic-small" in result.stdout
    assert "Profile `smoke`" in result.stdout
    assert len(ran) >= 11


def test_the_install_lines_get_the_cpu_build_anywhere_and_keep_the_venv_lean():
    install = blocks("bash")[0]
    assert "pip install torch --index-url https://download.pytorch.org/whl/cpu" in install
    lines = [line.split("#")[0].strip() for line in install.splitlines()]
    assert "pip install -e ." in lines  # running experiments needs no book or dev extras
    environment = (ROOT / "environment.yml").read_text()
    assert "download.pytorch.org/whl/cpu" in environment and "- -e .\n" in environment
    assert "torch==2.13.0" in (ROOT / ".ci" / "run").read_text()  # CI keeps its local wheel
