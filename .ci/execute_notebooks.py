"""Regenerate the paired .ipynb of notebooks/*.md and execute them in place (outputs committed).

Usage: python .ci/execute_notebooks.py [notebooks/NAME.md ...]   (default: every notebooks/*.md)

Runs with TWOSTAGE_PROFILE=smoke (unless set) and cwd notebooks/, as nbval and the book do, and
without cell timings, so that two runs give identical files. The outputs of cells tagged
`nbval-check-output` are compared exactly by .ci/notebooks; the trained numbers the chapters
record are checked against notebooks/recorded_values.json (.ci/calibrate_notebook_values.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import jupytext
import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"


def run_cells(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Execute `nb` in place as nbval and the book do: a fresh kernel, cwd notebooks/."""
    client = NotebookClient(nb, timeout=600, kernel_name="python3", record_timing=False,
                            resources={"metadata": {"path": str(NOTEBOOKS)}})  # fmt: skip
    client.execute()
    return nb


def execute(md: Path) -> float:
    notebook = md.with_suffix(".ipynb")
    formats = jupytext.read(md).metadata.get("jupytext", {}).get("formats")
    if formats != "ipynb,md":
        # Not fixed here: the .md belongs to its author. `jupytext --set-formats ipynb,md` adds it.
        print(f"warning: {md.name} does not declare `formats: ipynb,md` in its header",
              file=sys.stderr)  # fmt: skip
    subprocess.run(["jupytext", "--quiet", "--to", "ipynb", "--update", str(md)], check=True)
    nb = nbformat.read(notebook, as_version=4)
    start = time.perf_counter()
    run_cells(nb)
    nbformat.write(nb, notebook)
    return time.perf_counter() - start


def main(argv: list[str]) -> int:
    os.environ.setdefault("TWOSTAGE_PROFILE", "smoke")
    paths = [Path(p).resolve() for p in argv] or sorted(NOTEBOOKS.glob("*.md"))
    for md in paths:
        seconds = execute(md)
        print(f"{md.relative_to(ROOT)}: executed in {seconds:.1f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
