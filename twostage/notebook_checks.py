"""Regression checks of the numbers that the book's chapters record (`NotebookSetup.record`).

A number that depends on training differs in its last digits between CPUs, instruction sets and
thread counts, and discrete steps (an early stop, a sampled item) can turn that into a visible
change. So the chapters' trained numbers are not compared exactly. Each is compared with a
committed value within a tolerance measured for it::

    tolerance = max(SPREAD_FACTOR · spread, floor)
    spread    = max − min of the number over world seeds 0–4 (smoke profile, one thread)
    floor     = max(FLOOR_RELATIVE · |value|, FLOOR_ABSOLUTE)

The committed value is the one of world seed 0, the world the chapters run by default. The spread
says how much the number moves when the whole world (simulator, world, logging policy, bandit
log, ranker) is drawn again. Rounding moves it less, but not always much less: the training of
every stage amplifies a difference in the last digits, and once a sampled item of the bandit log
changes, what follows is partly a new draw. Measured on one machine, other thread counts and
instruction sets moved the numbers by up to 0.71× their spread, and MKL's conditional numerical
reproducibility mode (`MKL_CBWR=COMPATIBLE`, a stand-in for another CPU vendor's code path) one
small count by 1.11×; hence the factor 2. The floor keeps a number that hardly varies between
worlds from getting a tolerance that rounding alone can exceed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

SPREAD_FACTOR = 2.0
FLOOR_RELATIVE = 0.02
FLOOR_ABSOLUTE = 0.005

Records = Mapping[str, Mapping[str, float]]  # chapter → name → value


@dataclass(frozen=True)
class Comparison:
    """One recorded number beside its committed value."""

    chapter: str
    name: str
    committed: float
    measured: float
    tolerance: float

    @property
    def deviation(self) -> float:
        return abs(self.measured - self.committed)

    @property
    def ratio(self) -> float:
        """The deviation in units of the tolerance (above 1 fails)."""
        return self.deviation / self.tolerance

    @property
    def passed(self) -> bool:
        return math.isfinite(self.measured) and self.deviation <= self.tolerance

    def describe(self) -> str:
        verdict = "ok" if self.passed else "FAILED"
        return (
            f"{self.chapter}: {self.name} = {self.measured:.6g}, committed {self.committed:.6g} "
            f"± {self.tolerance:.3g} (deviation {self.ratio:.2f}× the tolerance) {verdict}"
        )


def floor(value: float) -> float:
    return max(FLOOR_RELATIVE * abs(value), FLOOR_ABSOLUTE)


def read_records(directory: str | Path) -> dict[str, dict[str, float]]:
    """Every `<chapter>.json` that `NotebookSetup.record` wrote into `directory`."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: no recorded values (is $TWOSTAGE_RECORD_DIR set?)")
    return {path.stem: json.loads(path.read_text()) for path in sorted(directory.glob("*.json"))}


def committed_values(per_seed: Sequence[Records], seeds: Sequence[int]) -> dict:
    """The `values` table of the committed file from the records of each world seed.

    `per_seed[0]` is the reference (world seed 0). Every seed must have recorded the same names.
    """
    if not per_seed or len(per_seed) != len(seeds):
        raise ValueError("one set of records per world seed is needed")
    reference = per_seed[0]
    table: dict[str, dict[str, dict]] = {}
    for chapter, names in sorted(reference.items()):
        table[chapter] = {}
        for name, value in sorted(names.items()):
            values = []
            for seed, records in zip(seeds, per_seed, strict=True):
                if name not in records.get(chapter, {}):
                    raise ValueError(f"world seed {seed} did not record {chapter}: {name}")
                values.append(float(records[chapter][name]))
            spread = max(values) - min(values)
            table[chapter][name] = {
                "value": value,
                "tolerance": max(SPREAD_FACTOR * spread, floor(value)),
                "spread": spread,
                "floor": floor(value),
                "world_seeds": values,
            }
    for seed, records in zip(seeds, per_seed, strict=True):
        extra = {(c, n) for c, names in records.items() for n in names} - {
            (c, n) for c, names in reference.items() for n in names
        }
        if extra:
            raise ValueError(f"world seed {seed} recorded names seed {seeds[0]} did not: {extra}")
    return table


def compare(measured: Records, values: Mapping[str, Mapping[str, Mapping]]) -> list[Comparison]:
    """Each committed number beside its measured value (NaN where it was not recorded)."""
    return [
        Comparison(
            chapter=chapter,
            name=name,
            committed=float(entry["value"]),
            measured=float(measured.get(chapter, {}).get(name, math.nan)),
            tolerance=float(entry["tolerance"]),
        )
        for chapter, names in sorted(values.items())
        for name, entry in sorted(names.items())
    ]


def unexpected(measured: Records, values: Mapping[str, Mapping]) -> list[str]:
    """Recorded names that have no committed value (`chapter: name`)."""
    return [
        f"{chapter}: {name}"
        for chapter, names in sorted(measured.items())
        for name in sorted(names)
        if name not in values.get(chapter, {})
    ]


def tolerance_table(document: Mapping) -> str:
    """The committed values and tolerances as a Markdown page section (for the book)."""
    measured = document["measured_with"]
    seeds = measured["world_seeds"]
    lines = [
        f"Measured on {measured['date']} ({measured['cpu']}, {measured['cpu_capability']}, torch "
        f"{measured['torch']}, {measured['threads']} thread) over world seeds "
        f"{seeds[0]}–{seeds[-1]}: tolerance = max({document['floor']['spread_factor']:g} × spread, "
        f"floor), floor = max({document['floor']['relative']:g} × |value|, "
        f"{document['floor']['absolute']:g}).",
        "",
        "| chapter | number | value | tolerance | spread over worlds | floor |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for chapter, names in document["values"].items():
        for name, entry in names.items():
            lines.append(
                f"| {chapter} | `{name}` | {entry['value']:.4g} | {entry['tolerance']:.3g} | "
                f"{entry['spread']:.3g} | {entry['floor']:.3g} |"
            )
    return "\n".join(lines) + "\n"
