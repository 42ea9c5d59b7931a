"""Fake results of a run (random values in the layout of `results.csv`) for the report tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from twostage.results import METRICS, RESULT_COLUMNS

METHODS = ["2s", "ce", "ips"]  # deliberately not in display order
SEEDS = [0, 1, 2]
EPOCHS = 4
TEST_METRICS = [m for m in METRICS if m != "reward"]  # the ranking metrics


def fake_results(seeds: list[int] = SEEDS, rng_seed: int = 0) -> pd.DataFrame:
    """Random values for every method × seed × epoch × split × evaluation × metric."""
    rng = np.random.default_rng(rng_seed)
    rows = []
    for method in METHODS:
        for seed in seeds:
            best = int(rng.integers(0, EPOCHS))
            for epoch in range(EPOCHS):
                for evaluation in ("one-stage", "two-stage"):
                    for split, metrics in (
                        ("val", TEST_METRICS),
                        ("test", TEST_METRICS),
                        ("all", ["reward"]),
                    ):
                        for metric in metrics:
                            rows.append(
                                (
                                    "toy",
                                    method,
                                    seed,
                                    epoch,
                                    split,
                                    evaluation,
                                    metric,
                                    float(rng.uniform(0.05, 0.95)),
                                    best,
                                )
                            )
    return pd.DataFrame(rows, columns=RESULT_COLUMNS)


def write_out(out: Path, results: pd.DataFrame, synthetic: bool = True) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    results.to_csv(out / "results.csv", index=False)
    run = {"dataset": "toy", "synthetic": synthetic, "world": {"cut": 0.7, "positive_share": 0.12}}
    (out / "run.json").write_text(json.dumps(run))
    edges = np.linspace(0, 1, 11)
    hist = {"bin_edges": edges.tolist(), "counts": [50, 40, 30, 20, 10, 8, 6, 4, 2, 1], "cut": 0.7}
    (out / "world_probabilities.json").write_text(json.dumps(hist))
    return out


def reference_values(
    results: pd.DataFrame, method: str, evaluation: str, metric: str
) -> np.ndarray:
    """Per-seed values at each run's best epoch, by a plain loop over rows."""
    values = []
    for seed in sorted(results["seed"].unique()):
        run = results[(results["method"] == method) & (results["seed"] == seed)]
        best = run["best_epoch"].iloc[0]
        split = "all" if metric == "reward" else "test"
        row = run[
            (run["epoch"] == best)
            & (run["split"] == split)
            & (run["evaluation"] == evaluation)
            & (run["metric"] == metric)
        ]
        assert len(row) == 1
        values.append(row["value"].iloc[0])
    return np.array(values)


def expected_cell(values: np.ndarray) -> str:
    mean, se = values.mean(), values.std(ddof=1) / np.sqrt(len(values))
    return f"{100 * mean:.1f}±{100 * se:.1f}"
