"""Open every page of the built book in headless Chromium and fail on what a reader would see wrong.

Usage: python .ci/check_book.py [BUILD_HTML] [--screenshots DIR] [--pages PAGE ...]

BUILD_HTML defaults to `_build/html`; every page of `_toc.yml` is opened (or the given pages,
paths relative to BUILD_HTML). Each must have a body of text, no raw Markdown table in its
visible text (outside code; smart quotes turn `---` into `—`), every image loaded, every internal
link resolving to an existing page and anchor, every formula typeset by MathJax without a TeX
error (the book serves MathJax itself, so this holds offline too), and no error or traceback
output. Images and links outside the book (the Colab badges) are not followed: the check runs
offline. A screenshot of each page goes to DIR (default `_build/screenshots/`).

Chromium and its driver are Debian's (`apt-get install chromium chromium-driver`, done by
`.ci/run`); nothing is downloaded at run time. As root, Chromium needs `--no-sandbox`.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

import yaml

ROOT = Path(__file__).resolve().parents[1]
CHROMEDRIVER = Path(os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver"))
CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
MIN_TEXT = 200  # characters of visible text below which a page counts as empty
# A Markdown table's separator row as a reader would see it: pipes around dashes or em dashes.
RAW_TABLE = re.compile(r"\|\s*:?[-—–]{1,}:?\s*\|")
ERRORS = re.compile(r"Traceback \(most recent call last\)|^\w*(Error|Exception): ", re.M)

# Visible text outside code, the images that did not load, the ids, and the links of the page.
INSPECT = """
const body = document.body.cloneNode(true);
body.querySelectorAll('pre, code, script, style, .highlight').forEach(e => e.remove());
const outputs = [...document.querySelectorAll('.cell_output, .output')].map(e => e.innerText);
return {
  text: body.innerText,
  main: (document.querySelector('main, article, [role=main]') || document.body).innerText,
  broken_images: [...document.images].filter(i => i.src.startsWith('file:'))
                                   .filter(i => !(i.complete && i.naturalWidth > 0))
                                   .map(i => i.getAttribute('src')),
  error_outputs: [...document.querySelectorAll('.output.traceback, .output.error, .ansi-red-fg')]
                   .map(e => e.innerText.slice(0, 200)),
  outputs: outputs,
  links: [...document.querySelectorAll('a[href]')].map(a => a.getAttribute('href')),
};
"""

# Once MathJax has typeset the page (or at once where it did not load): the formulas left as raw
# TeX, and those MathJax could not parse (shown in red to a reader).
MATH = """
const done = arguments[arguments.length - 1];
const report = () => {
  const formulas = [...document.querySelectorAll('.math')];
  done({
    formulas: formulas.length,
    raw: formulas.filter(e => !e.querySelector('mjx-container'))
                 .map(e => e.textContent.trim().slice(0, 80)),
    errors: [...document.querySelectorAll('mjx-merror')]
              .map(e => (e.getAttribute('data-mjx-error') || e.textContent).slice(0, 120)),
  });
};
const startup = window.MathJax && window.MathJax.startup && window.MathJax.startup.promise;
startup ? startup.then(report, report) : report();
"""


@dataclass
class PageReport:
    page: str
    problems: list[str] = field(default_factory=list)


def toc_pages(html: Path) -> list[str]:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"], *(chapter["file"] for chapter in toc.get("chapters", []))]
    return [f"{name}.html" for name in files]


def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,2000",
                     "--allow-file-access-from-files"):  # fmt: skip
        options.add_argument(argument)
    # An explicit driver path: Selenium Manager (which would download one) is never asked.
    return webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)


def ids_of(path: Path, cache: dict[Path, set[str]]) -> set[str]:
    if path not in cache:
        cache[path] = set(re.findall(r'\bid="([^"]+)"', path.read_text(errors="replace")))
    return cache[path]


def link_problems(page: Path, links: list[str], html: Path, cache: dict) -> list[str]:
    problems = []
    for href in links:
        parsed = urlparse(href)
        if parsed.scheme or href.startswith(("mailto:", "javascript:", "//")):
            continue
        target = page if not parsed.path else (page.parent / unquote(parsed.path)).resolve()
        if target.is_dir():
            target = target / "index.html"
        if not target.is_file():
            problems.append(f"broken link {href!r}: {target} does not exist")
            continue
        anchor = unquote(parsed.fragment)
        if anchor and target.suffix == ".html" and anchor not in ids_of(target, cache):
            problems.append(f"broken link {href!r}: no element with id {anchor!r}")
    return problems


def inspect(driver, html: Path, page: str, screenshots: Path, cache: dict) -> PageReport:
    report = PageReport(page)
    path = (html / page).resolve()
    if not path.is_file():
        report.problems.append("page not built")
        return report
    driver.get(path.as_uri())
    found = driver.execute_script(INSPECT)
    screenshots.mkdir(parents=True, exist_ok=True)
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1280, min(max(int(height), 800), 16_000))  # the whole page
    driver.save_screenshot(
        str(screenshots / (page.replace("/", "__").removesuffix(".html") + ".png"))
    )
    if len(found["main"].strip()) < MIN_TEXT:
        report.problems.append(f"empty page: {len(found['main'].strip())} characters of text")
    for line in found["text"].splitlines():
        if RAW_TABLE.search(line):
            report.problems.append(f"raw Markdown table in the text: {line.strip()[:120]!r}")
            break
    for src in found["broken_images"]:
        report.problems.append(f"image did not load: {src}")
    math = driver.execute_async_script(MATH)
    if math["raw"]:
        report.problems.append(
            f"{len(math['raw'])} of {math['formulas']} formulas shown as raw TeX (did MathJax "
            f"load? the book serves its own copy): {math['raw'][0]!r}"
        )
    for error in math["errors"]:
        report.problems.append(f"TeX error in a formula: {error!r}")
    for text in found["error_outputs"]:
        report.problems.append(f"error output: {text!r}")
    for text in found["outputs"]:
        if ERRORS.search(text):
            report.problems.append(f"error in a cell's output: {ERRORS.search(text).group()!r}")
    report.problems += link_problems(path, found["links"], html, cache)
    return report


def check(html: Path, pages: list[str], screenshots: Path) -> list[PageReport]:
    driver = browser()
    driver.set_script_timeout(60)  # MathJax typesetting the longest page
    cache: dict[Path, set[str]] = {}
    try:
        return [inspect(driver, html, page, screenshots, cache) for page in pages]
    finally:
        driver.quit()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("html", nargs="?", type=Path, default=ROOT / "_build" / "html")
    parser.add_argument("--screenshots", type=Path, default=ROOT / "_build" / "screenshots")
    parser.add_argument("--pages", nargs="+", help="pages relative to HTML (default: the toc)")
    args = parser.parse_args(argv)
    for tool in (CHROMIUM, CHROMEDRIVER):
        if not tool.is_file():
            print(f"{tool} not found: apt-get install chromium chromium-driver", file=sys.stderr)
            return 2
    reports = check(args.html, args.pages or toc_pages(args.html), args.screenshots)
    failed = [r for r in reports if r.problems]
    for report in reports:
        print(f"{report.page}: {'ok' if not report.problems else 'FAILED'}")
        for problem in report.problems:
            print(f"    {problem}")
    print(f"book check: {len(reports) - len(failed)} pages ok, {len(failed)} with problems")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
