"""A run's results as data: the tidy table's columns, the methods' names, the summary over seeds.

The pipeline writes `OUT/results.csv` with `RESULT_COLUMNS` (one row per dataset × method × seed
× epoch × split × evaluation × metric; values are fractions); `summary_table` reduces it to each
method's mean and standard error over seeds at each run's chosen epoch (std with ddof=1 /
sqrt(n_seeds)). The report, the sweep and the command line all read results through this module.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from twostage.errors import DataFormatError
from twostage.objectives import OBJECTIVES

BASELINE = "ce"  # the method relative gains are measured against (the paper's)

RESULT_COLUMNS = [
    "dataset",
    "method",
    "seed",
    "epoch",
    "split",
    "evaluation",
    "metric",
    "value",
    "best_epoch",
]
SUMMARY_COLUMNS = ["method", "evaluation", "metric", "mean", "stderr", "n_seeds", "gain_vs_ce_pct"]
EVALUATIONS = ["two-stage", "one-stage"]
METRICS = [
    "Precision@1",
    "Precision@5",
    "Precision@10",
    "Recall@1",
    "Recall@5",
    "Recall@10",
    "NDCG@5",
    "NDCG@10",
    "NDCG@20",
    "reward",
]
# The paper's Table 2/3 columns first, then the ones it does not publish.
TABLE_COLUMNS = {
    "P@5": "Precision@5",
    "P@10": "Precision@10",
    "R@5": "Recall@5",
    "R@10": "Recall@10",
    "NDCG@5": "NDCG@5",
    "NDCG@10": "NDCG@10",
    "P@1": "Precision@1",
    "R@1": "Recall@1",
    "NDCG@20": "NDCG@20",
    "reward": "reward",
}
SELECTION_RULE = "each run's epoch is chosen by validation two-stage Precision@10"


def method_order(methods: list[str] | pd.Index) -> list[str]:
    """Registered objectives first, in registration order (`ce`, `ips`, `2s`, …), then any
    others alphabetically."""
    present = set(methods)
    return [m for m in OBJECTIVES if m in present] + sorted(present - set(OBJECTIVES))


def display_name(method: str) -> str:
    """The objective's name in tables and figures (`2s` → `2-IPS`); unknown names as they are."""
    return OBJECTIVES[method].display_name if method in OBJECTIVES else method


def load_results(out_dir: str | Path) -> pd.DataFrame:
    """`OUT/results.csv` as a frame with columns `RESULT_COLUMNS`, checked for layout."""
    path = Path(out_dir) / "results.csv"
    if not path.is_file():
        raise DataFormatError(path, "file not found; run `twostage reproduce` to write it")
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise DataFormatError(path, f"not a readable CSV file ({err})") from None
    missing = [c for c in RESULT_COLUMNS if c not in frame.columns]
    if missing:
        raise DataFormatError(
            path,
            f"missing column(s) {', '.join(missing)}; expected columns {','.join(RESULT_COLUMNS)}",
        )
    frame = frame[RESULT_COLUMNS].copy()
    for column in ("seed", "epoch", "best_epoch", "value"):
        numbers = pd.to_numeric(frame[column], errors="coerce")
        bad = numbers.isna() & (frame[column].notna() if column == "value" else True)
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise DataFormatError(
                path,
                f"column {column!r} holds {frame[column].iloc[row]!r}, expected a number",
                line=row + 2,
            )
        frame[column] = numbers if column == "value" else numbers.astype(int)
    for column, allowed in (("split", {"val", "test", "all"}), ("evaluation", set(EVALUATIONS))):
        bad = ~frame[column].isin(allowed)
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            found = frame[column].iloc[row]
            message = f"column {column!r} holds {found!r}, expected one of {sorted(allowed)}"
            raise DataFormatError(path, message, line=row + 2)
    if frame["dataset"].nunique() > 1:
        found = sorted(frame["dataset"].unique())
        raise DataFormatError(path, f"rows of several datasets {found}; expected one per directory")
    best = frame.groupby(["method", "seed"])["best_epoch"].nunique()
    if (best > 1).any():
        method, seed = best[best > 1].index[0]
        raise DataFormatError(path, f"run {method} seed {seed} has more than one best_epoch")
    return frame


def mean_stderr(values: pd.core.groupby.SeriesGroupBy) -> pd.DataFrame:
    """mean, stderr (NaN for fewer than two seeds) and n_seeds of each group."""
    stats = values.agg(["mean", "std", "count"]).rename(columns={"count": "n_seeds"})
    stats["stderr"] = stats["std"] / np.sqrt(stats["n_seeds"])
    stats.loc[stats["n_seeds"] < 2, "stderr"] = np.nan
    return stats.drop(columns="std")


def seed_values(results: pd.DataFrame) -> pd.Series:
    """Each run's test metrics and rewards at its best epoch: a Series indexed by
    (method, evaluation, metric, seed)."""
    chosen = results[
        (results["epoch"] == results["best_epoch"]) & results["split"].isin(["test", "all"])
    ]
    return chosen.groupby(["method", "evaluation", "metric", "seed"])["value"].mean()


def summary_table(results: pd.DataFrame) -> pd.DataFrame:
    """Test metrics and rewards at each run's best epoch: mean, stderr, n_seeds, % gain over CE.

    One row per method × evaluation × metric, with columns `SUMMARY_COLUMNS`.
    """
    per_seed = seed_values(results)
    table = mean_stderr(per_seed.groupby(level=["method", "evaluation", "metric"])).reset_index()
    ce = table[table["method"] == BASELINE].set_index(["evaluation", "metric"])["mean"]
    baseline = table.set_index(["evaluation", "metric"]).index.map(ce).to_numpy(dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        gain = 100.0 * (table["mean"].to_numpy() / baseline - 1.0)
    table["gain_vs_ce_pct"] = np.where(np.isfinite(gain), gain, np.nan)
    ranks = {
        "method": {m: i for i, m in enumerate(method_order(table["method"].unique()))},
        "evaluation": {e: i for i, e in enumerate(EVALUATIONS)},
        "metric": {m: i for i, m in enumerate(METRICS)},
    }
    keys = [table[c].map(r).fillna(len(r)) for c, r in ranks.items()] + [table["metric"]]
    order = np.lexsort([k.to_numpy() for k in reversed(keys)])
    return table.iloc[order][SUMMARY_COLUMNS].reset_index(drop=True)
