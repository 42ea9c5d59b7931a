"""The API page (`book/api.md`) is generated from the docstrings: it must name every module of the
package once, in its reference, and its map table must name no module that is gone."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "twostage"
PAGE = ROOT / "book" / "api.md"


def package_modules() -> set[str]:
    """Every module file; a package's `__init__` only re-exports, so listing it is optional."""
    return {
        ".".join(path.relative_to(ROOT).with_suffix("").parts)
        for path in PACKAGE.rglob("*.py")
        if not path.name.startswith("_")
    }


def packages() -> set[str]:
    return {".".join(p.parent.relative_to(ROOT).parts) for p in PACKAGE.rglob("__init__.py")}


def referenced(text: str) -> list[str]:
    return re.findall(r"^\.\. automodule:: (\S+)", text, flags=re.M)


def test_the_reference_documents_every_module_once():
    listed = referenced(PAGE.read_text())
    assert len(listed) == len(set(listed)), "a module is listed twice"
    missing = package_modules() - set(listed)
    gone = set(listed) - package_modules() - packages()
    assert not missing and not gone, f"missing: {sorted(missing)}, gone: {sorted(gone)}"


def test_the_map_names_only_modules_that_exist():
    table = PAGE.read_text().split("## Reference")[0]
    named = set(re.findall(r"^\| `(twostage[\w.]*)`", table, flags=re.M))
    assert named and named <= package_modules() | packages(), sorted(named - package_modules())


def test_the_check_sees_a_missing_module(tmp_path: Path):
    text = PAGE.read_text().replace(".. automodule:: twostage.results\n", "")
    assert package_modules() - set(referenced(text)) == {"twostage.results"}


def test_the_map_names_only_functions_and_classes_that_exist():
    import importlib

    table = PAGE.read_text().split("## Reference")[0]
    missing = []
    for row in (line for line in table.splitlines() if line.startswith("| `twostage")):
        cells = row.split("|")
        modules = [importlib.import_module(m) for m in re.findall(r"`(twostage[\w.]*)`", cells[1])]
        names = re.findall(r"`(\w+)`", re.sub(r"\([^)]*\)", "", cells[3]))  # (methods) of a class
        missing += [n for n in names if not any(hasattr(m, n) for m in modules)]
    assert not missing, missing
