"""Compare a run's summary with a committed one, within the stated standard errors.

Used by the GPU job: a `paper`-profile run on CUDA is not bitwise equal to the committed CPU run,
so each mean must agree with the reference within `n_se` combined standard errors (with a small
absolute floor for rows whose standard error rounds to zero).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from twostage.errors import DataFormatError

KEYS = ["method", "evaluation", "metric"]


def read_summary(directory: str | Path) -> pd.DataFrame:
    path = Path(directory) / "summary.csv"
    if not path.is_file():
        raise DataFormatError(path, "file not found; expected a summary.csv written by twostage")
    table = pd.read_csv(path)
    missing = {*KEYS, "mean", "stderr"} - set(table.columns)
    if missing:
        raise DataFormatError(path, f"missing columns {sorted(missing)}")
    return table


def compare_summaries(
    run_dir: str | Path, reference_dir: str | Path, *, n_se: float = 3.0, floor: float = 0.005
) -> pd.DataFrame:
    """One row per (method, evaluation, metric) present in both, with `agrees`.

    A mean agrees when |run − reference| ≤ max(n_se · sqrt(se_run² + se_ref²), floor); values
    are fractions, so the default floor is half a percentage point.
    """
    run, reference = read_summary(run_dir), read_summary(reference_dir)
    both = run.merge(reference, on=KEYS, suffixes=("_run", "_reference"))
    if both.empty:
        raise DataFormatError(
            Path(run_dir) / "summary.csv",
            f"no method/metric in common with {Path(reference_dir) / 'summary.csv'}",
        )
    se = np.sqrt(both["stderr_run"].fillna(0) ** 2 + both["stderr_reference"].fillna(0) ** 2)
    both["difference"] = both["mean_run"] - both["mean_reference"]
    both["allowed"] = np.maximum(n_se * se, floor)
    both["agrees"] = both["difference"].abs() <= both["allowed"]
    return both[[*KEYS, "mean_run", "mean_reference", "difference", "allowed", "agrees"]]
