"""Worlds as a source of variance: results over several semi-synthetic worlds × seeds.

Each world (`reproduce --world-seeds`) is another draw of stages 1–5 — simulator, world, logging
policy, bandit log, ranker — with the same candidate-generator seeds. For every method ×
evaluation × metric, with W worlds and S seeds per world (value y_ws at each run's best epoch):

- the grand mean ȳ is the mean of the world means ȳ_w, and its standard error is
  sd(ȳ_w) / √W (ddof 1): the uncertainty of a result that is to hold beyond one world;
- the variance components of the one-way random-effects model y_ws = μ + a_w + e_ws:
  MS_between = S · Σ_w (ȳ_w − ȳ)² / (W − 1), MS_within = Σ_w Σ_s (y_ws − ȳ_w)² / (W (S − 1)),
  σ²_within = MS_within, σ²_between = max(0, (MS_between − MS_within) / S), and the share of the
  variance between worlds σ²_between / (σ²_between + σ²_within).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from twostage.results import (
    EVALUATIONS,
    METRICS,
    display_name,
    method_order,
    seed_values,
)

KEYS = ["method", "evaluation", "metric"]
WORLD_COLUMNS = [
    *KEYS,
    "n_worlds",
    "n_seeds",
    "mean",
    "stderr_between_worlds",
    "sd_between_worlds",
    "sd_within_world",
    "share_between_worlds",
]


def world_values(results: dict[int, pd.DataFrame]) -> pd.DataFrame:
    """One row per world × method × evaluation × metric × seed: each run's best-epoch value.

    `results` maps a world seed to that world's `results.csv` frame.
    """
    frames = [
        seed_values(frame).rename("value").reset_index().assign(world=world)
        for world, frame in results.items()
    ]
    return pd.concat(frames, ignore_index=True)[["world", *KEYS, "seed", "value"]]


def variance_components(values: pd.DataFrame) -> pd.DataFrame:
    """The grand mean, its standard error between worlds and the variance components (module
    docstring) of each method × evaluation × metric, columns `WORLD_COLUMNS`.

    Every world must hold the same number of seeds (a balanced design); worlds with fewer seeds
    than the others are a ValueError, not silently weighted.
    """
    cells = values.groupby([*KEYS, "world"])["value"].agg(["mean", "var", "count"])
    counts = cells["count"].groupby(level=KEYS).agg(["min", "max"])
    if (counts["min"] != counts["max"]).any():
        raise ValueError("every world needs the same seeds for the variance components")
    grouped = cells.groupby(level=KEYS)
    n_worlds = grouped["mean"].count()
    seeds = grouped["count"].first()
    world_sd = grouped["mean"].std()  # ddof 1
    ms_between = seeds * world_sd**2
    ms_within = grouped["var"].mean()  # each world's var (ddof 1) averaged: MS_within
    between = np.maximum(0.0, (ms_between - ms_within) / seeds)
    total = between + ms_within
    table = pd.DataFrame(
        {
            "n_worlds": n_worlds,
            "n_seeds": seeds,
            "mean": grouped["mean"].mean(),
            "stderr_between_worlds": world_sd / np.sqrt(n_worlds),
            "sd_between_worlds": np.sqrt(between),
            "sd_within_world": np.sqrt(ms_within),
            "share_between_worlds": np.where(total > 0, between / total.where(total > 0), np.nan),
        }
    ).reset_index()
    ranks = {m: i for i, m in enumerate(method_order(table["method"].unique()))}
    order = np.lexsort(
        [
            table["metric"].map({m: i for i, m in enumerate(METRICS)}).fillna(len(METRICS)),
            table["evaluation"].map({e: i for i, e in enumerate(EVALUATIONS)}),
            table["method"].map(ranks),
        ]
    )
    return table.iloc[order][WORLD_COLUMNS].reset_index(drop=True)


def format_worlds(
    values: pd.DataFrame, table: pd.DataFrame, metrics: tuple[str, ...] = ("Precision@10",)
) -> str:
    """Markdown: for each metric, each world's mean per method, then the grand mean ± its
    standard error between worlds, the two standard deviations and the share between worlds."""
    worlds = sorted(values["world"].unique())
    seeds = sorted(values["seed"].unique())
    lines = [
        f"{len(worlds)} worlds (world seeds {', '.join(map(str, worlds))}) × {len(seeds)} seeds "
        f"({', '.join(map(str, seeds))}); values in %; test users (the reward: all users); the "
        "grand mean's ± is sd(world means)/√W. Share between worlds: σ²_between / (σ²_between + "
        "σ²_within), one-way random effects (`twostage.worlds`).",
        "",
    ]
    means = values.groupby(["world", *KEYS])["value"].mean()
    indexed = table.set_index(KEYS)
    for metric in metrics:
        for evaluation in EVALUATIONS:
            header = ["method", *[f"world {w}" for w in worlds], "grand mean", "sd between",
                      "sd within", "share between"]  # fmt: skip
            lines += [f"### {evaluation.capitalize()} {metric}", ""]
            lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            for method in method_order(table["method"].unique()):
                if (method, evaluation, metric) not in indexed.index:
                    continue
                row = indexed.loc[(method, evaluation, metric)]
                cells = [f"{100 * means[(w, method, evaluation, metric)]:.1f}" for w in worlds]
                share = row["share_between_worlds"]
                cells += [
                    f"{100 * row['mean']:.1f}±{100 * row['stderr_between_worlds']:.1f}",
                    f"{100 * row['sd_between_worlds']:.1f}",
                    f"{100 * row['sd_within_world']:.1f}",
                    "—" if np.isnan(share) else f"{100 * share:.0f}%",
                ]
                lines.append("| " + " | ".join([display_name(method), *cells]) + " |")
            lines.append("")
    return "\n".join(lines)
