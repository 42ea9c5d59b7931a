"""The build step pyproject.toml cannot express: copy `results/` into the wheel.

Everything else about the package is in pyproject.toml. `twostage.committed` reads the copy.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildWithCommittedResults(build_py):
    """build_py, then `results/` → `<build>/twostage/_committed/` (the book's committed runs)."""

    def run(self):
        super().run()
        source = Path(__file__).resolve().parent / "results"
        if source.is_dir() and not self.editable_mode:
            target = Path(self.build_lib) / "twostage" / "_committed"
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(source, target)


setup(cmdclass={"build_py": BuildWithCommittedResults})
