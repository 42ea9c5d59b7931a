"""The chapters' trained numbers agree with notebooks/recorded_values.json within its tolerances.

Run by .ci/notebooks after the chapters have been executed with `$TWOSTAGE_RECORD_DIR` set:

    TWOSTAGE_RECORD_DIR=DIR python -m pytest -q .ci/test_notebook_values.py
    python .ci/test_notebook_values.py DIR      # the table, largest deviation first

A missing `$TWOSTAGE_RECORD_DIR` is an error, not a skip: without it there is nothing to check.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from twostage.notebook_checks import Comparison, compare, read_records, unexpected

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "notebooks" / "recorded_values.json"
REGENERATE = "python .ci/calibrate_notebook_values.py (then commit notebooks/recorded_values.json)"


def comparisons(directory: str | Path) -> tuple[list[Comparison], list[str]]:
    values = json.loads(COMMITTED.read_text())["values"]
    measured = read_records(directory)
    return compare(measured, values), unexpected(measured, values)


if "pytest" in sys.modules and __name__ != "__main__":
    RECORDED = os.environ.get("TWOSTAGE_RECORD_DIR")
    if not RECORDED:
        raise RuntimeError("set $TWOSTAGE_RECORD_DIR to the folder the chapters recorded into")
    COMPARISONS, UNEXPECTED = comparisons(RECORDED)

    @pytest.mark.parametrize("comparison", COMPARISONS, ids=lambda c: f"{c.chapter}:{c.name}")
    def test_recorded_number_is_within_its_tolerance(comparison: Comparison):
        assert comparison.passed, (
            f"{comparison.describe()}. If the change is intended, regenerate: {REGENERATE}"
        )

    def test_every_recorded_number_has_a_committed_value():
        assert not UNEXPECTED, f"recorded but not committed: {UNEXPECTED}; {REGENERATE}"


def main(argv: list[str]) -> int:
    found, extra = comparisons(argv[0] if argv else os.environ["TWOSTAGE_RECORD_DIR"])
    for comparison in sorted(found, key=lambda c: -c.ratio if c.passed else -1e9):
        print(comparison.describe())
    for name in extra:
        print(f"{name}: recorded but not committed")
    worst = max((c.ratio for c in found), default=0.0)
    print(f"{len(found)} numbers; largest deviation {worst:.2f}× its tolerance")
    return 0 if all(c.passed for c in found) and not extra else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
