"""Make the chapters' install cells and Colab badges, and the README's badge, follow `_config.yml`.

Usage: python .ci/sync_colab.py [--check]

The repository URL lives in one place, `repository.url` (and `branch`) in `_config.yml`; it is a
placeholder until the project is published. This script writes, in every `notebooks/*.md`, the
same first code cell (which installs the package from that repository when run in Colab) and an
"Open in Colab" badge under the title, and the README's badge. `--check` changes nothing and
exits 1 when a file is out of date (a unit test runs it).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BADGE_IMAGE = "https://colab.research.google.com/assets/colab-badge.svg"
INSTALL_CELL = """```python tags=["hide-cell"]
try:  # In Colab: install the package from the repository (Colab's own torch is kept).
    import google.colab  # noqa: F401
    %pip install -q "twostage @ git+{url}"
except ImportError:
    pass
```"""
FIRST_CELL = re.compile(r"```python[^\n]*\n(?:(?!```)[^\n]*\n)*?```")
BADGE = re.compile(r"^\[!\[Open in Colab\]\([^)]*\)\]\([^)]*\)\n\n", re.M)


def repository() -> tuple[str, str]:
    config = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]
    return config["url"].rstrip("/"), config.get("branch", "main")


def badge(url: str, branch: str, notebook: str) -> str:
    slug = url.removeprefix("https://github.com/")
    target = f"https://colab.research.google.com/github/{slug}/blob/{branch}/{notebook}"
    return f"[![Open in Colab]({BADGE_IMAGE})]({target})\n\n"


def with_badge(text: str, url: str, branch: str, notebook: str) -> str:
    """`text` with its Colab badge (any old one removed) right under its title."""
    text = BADGE.sub("", text)
    title = re.search(r"^# .*\n\n", text, re.M)
    return text[: title.end()] + badge(url, branch, notebook) + text[title.end() :]


def chapter(text: str, url: str, branch: str, name: str) -> str:
    text = FIRST_CELL.sub(lambda _: INSTALL_CELL.format(url=url), text, count=1)
    return with_badge(text, url, branch, f"notebooks/{name}.ipynb")


def main(argv: list[str]) -> int:
    check = "--check" in argv
    url, branch = repository()
    stale = []
    current = {p: p.read_text() for p in [*(ROOT / "notebooks").glob("*.md"), ROOT / "README.md"]}
    targets = {
        p: with_badge(text, url, branch, "notebooks/02_data.ipynb")  # the README: first chapter
        if p.name == "README.md"
        else chapter(text, url, branch, p.stem)
        for p, text in current.items()
    }
    for path, text in sorted(targets.items()):
        if current[path] != text:
            stale.append(path.relative_to(ROOT))
            if not check:
                path.write_text(text)
    if check and stale:
        print(f"out of date with _config.yml: {', '.join(map(str, stale))}; "
              "run python .ci/sync_colab.py (then python .ci/execute_notebooks.py)")  # fmt: skip
        return 1
    print("\n".join(f"updated {p}" for p in stale) or "all in sync")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
