"""Measure the chapters' recorded numbers over world seeds and commit them with their tolerances.

Usage: python .ci/calibrate_notebook_values.py [--seeds 0-4] [--out notebooks/recorded_values.json]

Runs every chapter of the book (smoke profile, one torch thread, a fresh stage cache per world
seed) once per world seed — `$TWOSTAGE_WORLD_SEED` moves the simulator, world, logging policy,
bandit log and ranker to another seed; seed 0 runs with it unset, as the book and CI do — and
writes, for every number a chapter passes to `nb.record(...)`, the value of world seed 0 and the
tolerance max(2 × spread over the seeds, floor) of `twostage.notebook_checks`, with the same as a
table in book/notebook_tolerances.md. Rerun it, and commit both files, whenever a change moves
the chapters' trained numbers (about five minutes on two cores).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import jupytext
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from execute_notebooks import NOTEBOOKS, ROOT, run_cells  # noqa: E402

from twostage import notebook_checks  # noqa: E402
from twostage.pipeline.config import parse_seeds  # noqa: E402
from twostage.runtime import cpu_model  # noqa: E402

DEFAULT_OUT = NOTEBOOKS / "recorded_values.json"
TABLE = ROOT / "book" / "notebook_tolerances.md"  # included by book/running.md
PROCEDURE = (
    "Every chapter run on the smoke profile with OMP_NUM_THREADS=1 and a fresh stage cache, once "
    "per world seed ($TWOSTAGE_WORLD_SEED: the seed of simulator, world, logging policy, bandit "
    "log and ranker). value: world seed 0 (the chapters' default). tolerance = "
    "max(spread_factor * spread, floor); spread = max - min over the world seeds; "
    "floor = max(relative * |value|, absolute). "
    "Written by .ci/calibrate_notebook_values.py; checked by .ci/test_notebook_values.py."
)


def record_world(seed: int, chapters: list[Path], work: Path) -> dict:
    """Run every chapter on world `seed`; return what they recorded (chapter → name → value)."""
    records = work / f"seed{seed}" / "recorded"
    os.environ["TWOSTAGE_CACHE"] = str(work / f"seed{seed}" / "stages")
    os.environ["TWOSTAGE_RECORD_DIR"] = str(records)
    if seed == 0:
        os.environ.pop("TWOSTAGE_WORLD_SEED", None)
    else:
        os.environ["TWOSTAGE_WORLD_SEED"] = str(seed)
    for md in chapters:
        start = time.perf_counter()
        run_cells(jupytext.read(md))
        print(f"world seed {seed}: {md.stem} in {time.perf_counter() - start:.1f}s", flush=True)
    return notebook_checks.read_records(records)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0-4", help="world seeds (first one must be 0)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    seeds = list(parse_seeds(args.seeds))
    if seeds[0] != 0 or len(seeds) < 2:
        parser.error("--seeds must start at 0 (the chapters' world) and name at least two seeds")
    os.environ["TWOSTAGE_PROFILE"] = "smoke"
    os.environ["OMP_NUM_THREADS"] = "1"
    chapters = sorted(NOTEBOOKS.glob("*.md"))
    with tempfile.TemporaryDirectory(prefix="twostage-calibrate-") as work:
        per_seed = [record_world(seed, chapters, Path(work)) for seed in seeds]
    values = notebook_checks.committed_values(per_seed, seeds)
    document = {
        "procedure": PROCEDURE,
        "measured_with": {
            "profile": "smoke",
            "world_seeds": seeds,
            "threads": 1,
            "cpu": cpu_model(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "date": datetime.date.today().isoformat(),
        },
        "floor": {
            "spread_factor": notebook_checks.SPREAD_FACTOR,
            "relative": notebook_checks.FLOOR_RELATIVE,
            "absolute": notebook_checks.FLOOR_ABSOLUTE,
        },
        "values": values,
    }
    args.out.write_text(json.dumps(document, indent=1) + "\n")
    if args.out == DEFAULT_OUT:
        TABLE.write_text(notebook_checks.tolerance_table(document))
    count = sum(len(names) for names in values.values())
    print(f"{args.out.relative_to(ROOT)}: {count} values from world seeds {seeds}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
