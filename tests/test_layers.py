"""Imports point down: the command line, then the pipeline, then evaluation / objectives / models /
data / report, then the small shared modules. Checked on the source, lazy imports included."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "twostage"
LAYERS = {  # a module may import modules of its own layer or a lower one
    "twostage.cli": 4,
    "twostage.__main__": 4,
    "twostage.notebook": 3,  # the book's helper uses the pipeline
    "twostage.pipeline": 2,
    "twostage.data": 1,
    "twostage.models": 1,
    "twostage.losses": 1,
    "twostage.losses_topk": 1,
    "twostage.evaluation": 1,
    "twostage.ope": 1,
    "twostage.propensity": 1,
    "twostage.report": 1,
    "twostage.objectives": 1,
    "twostage.results": 1,
    "twostage.worlds": 1,
    "twostage.plots": 1,
    "twostage.runtime": 0,
    "twostage.metrics": 0,
    "twostage.sampling": 0,
    "twostage.fused_slates": 0,
    "twostage.counter_random": 0,
    "twostage.files": 0,
    "twostage.errors": 0,
    "twostage.notebook_checks": 0,
    "twostage.committed": 0,
    "twostage": 0,  # the package's __init__: its version and errors
}


def layer(module: str) -> int:
    for prefix in sorted(LAYERS, key=len, reverse=True):
        if module == prefix or module.startswith(prefix + "."):
            return LAYERS[prefix]
    raise KeyError(f"{module} has no layer: add it to LAYERS")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in names if name.split(".")[0] == "twostage"}


def known(name: str) -> str:
    """`twostage.pipeline.config.X` → the module `twostage.pipeline.config`."""
    while name.count(".") and not (
        (PACKAGE.parent / (name.replace(".", "/") + ".py")).is_file()
        or (PACKAGE.parent / name.replace(".", "/") / "__init__.py").is_file()
    ):
        name = name.rsplit(".", 1)[0]
    return name


SOURCES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: module_name(p))
def test_no_module_imports_one_above_it(path: Path):
    here = module_name(path)
    upward = sorted(
        target for target in {known(name) for name in imported(path)} if layer(target) > layer(here)
    )
    assert not upward, f"{here} (layer {layer(here)}) imports {upward}"


def test_the_check_sees_an_upward_import(tmp_path: Path, monkeypatch):
    source = PACKAGE / "results.py"
    assert layer("twostage.results") < layer("twostage.pipeline.config")
    text = (
        source.read_text() + "\n\ndef late():\n    from twostage.pipeline.config import PROFILES\n"
    )
    assert "twostage.pipeline.config" in {known(n) for n in imported(_write(tmp_path, text))}


def _write(directory: Path, text: str) -> Path:
    path = directory / "module.py"
    path.write_text(text)
    return path
