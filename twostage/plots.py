"""Figures for the book's chapters; each helper takes tensors and returns a matplotlib Figure.

The small computations behind them (reliability bins, Lorenz curve, top-item shares) are
separate functions, so that the chapters can print the numbers the figures show.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure


def _figure(ncols: int = 1, width: float = 6.4, height: float = 3.6) -> tuple[Figure, list]:
    fig = Figure(figsize=(width, height), layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, list(axes)


def _numpy(values: torch.Tensor | np.ndarray | Sequence[float]) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().double().numpy()
    return np.asarray(values, dtype=np.float64)


# ---------------------------------------------------------------- data
def ratings_overview(ratings: torch.Tensor, timestamps: torch.Tensor) -> Figure:
    """Stars (1–5, the label is stars > 3) and normalised timestamps of every rating.

    ratings: (n_ratings,) long; timestamps: (n_ratings,) float in [0, 1].
    """
    fig, (left, right) = _figure(2, width=9)
    counts = np.bincount(ratings.numpy(), minlength=6)[1:]
    left.bar(np.arange(1, 6), counts, color=["C7", "C7", "C7", "C0", "C0"])
    left.set(xlabel="stars (blue: label 1)", ylabel="ratings", title="Ratings")
    right.hist(_numpy(timestamps), bins=50, color="C1")
    right.set(xlabel="normalised timestamp", ylabel="ratings", title="Timestamps")
    return fig


# ---------------------------------------------------------------- training curves
def curve(
    x: Sequence[float],
    y: Sequence[float],
    *,
    xlabel: str,
    ylabel: str,
    title: str = "",
    target: float | None = None,
) -> Figure:
    """A training curve (e.g. validation AUC per step, loss per epoch), optionally a target line."""
    fig, (ax,) = _figure()
    ax.plot(list(x), list(y), marker="o")
    if target is not None:
        ax.axhline(target, color="C3", linestyle="--", label=f"target {target:g}")
        ax.legend()
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    return fig


# ---------------------------------------------------------------- calibration
def reliability_bins(
    probabilities: torch.Tensor, labels: torch.Tensor, bins: int = 10
) -> pd.DataFrame:
    """Predicted vs observed positive rate in equal-width probability bins (empty bins dropped).

    probabilities, labels: (n,). Columns: bin, count, predicted (mean p), observed (mean label).
    """
    p, y = _numpy(probabilities), _numpy(labels)
    index = np.minimum((p * bins).astype(int), bins - 1)
    frame = pd.DataFrame({"bin": index, "p": p, "y": y})
    table = frame.groupby("bin").agg(
        count=("p", "size"), predicted=("p", "mean"), observed=("y", "mean")
    )
    return table.reset_index()


def expected_calibration_error(table: pd.DataFrame) -> float:
    """Count-weighted mean of ``|predicted − observed|`` over the bins of `reliability_bins`."""
    weights = table["count"] / table["count"].sum()
    return float((weights * (table["predicted"] - table["observed"]).abs()).sum())


def reliability(probabilities: torch.Tensor, labels: torch.Tensor, bins: int = 10) -> Figure:
    """Reliability diagram: observed positive rate against mean predicted probability per bin."""
    table = reliability_bins(probabilities, labels, bins)
    fig, (ax,) = _figure(width=4.8, height=4.2)
    ax.plot([0, 1], [0, 1], color="C7", linestyle="--", label="perfect calibration")
    ax.plot(table["predicted"], table["observed"], marker="o", label="simulator")
    ax.set(
        xlabel="mean predicted probability",
        ylabel="observed share of label 1",
        xlim=(0, 1),
        ylim=(0, 1),
        title="Reliability (test split)",
    )
    ax.legend()
    return fig


# ---------------------------------------------------------------- world
def probability_histogram(probabilities: torch.Tensor, cut: float) -> Figure:
    """Histogram of every pair's simulator probability, the cut marked. probabilities: any shape."""
    fig, (ax,) = _figure()
    ax.hist(_numpy(probabilities).reshape(-1), bins=50, color="C0")
    ax.axvline(cut, color="C3", label=f"cut {cut:.3f}")
    ax.set(xlabel="simulator probability", ylabel="user–item pairs", title="World probabilities")
    ax.legend()
    return fig


def positives_per_user(labels: torch.Tensor) -> Figure:
    """Histogram of each user's number of positive items. labels: (n_users, n_items) bool."""
    counts = labels.sum(dim=1).numpy()
    fig, (ax,) = _figure()
    ax.hist(counts, bins=np.arange(counts.max() + 2) - 0.5, color="C2")
    ax.set(xlabel="positive items", ylabel="users", title="Positives per user")
    return fig


# ---------------------------------------------------------------- logging policy and log
def propensity_histogram(propensities: torch.Tensor, uniform: float | None = None) -> Figure:
    """Logged propensities on a log-scaled axis; `uniform` (1 / n_items) marked when given."""
    p = _numpy(propensities)
    fig, (ax,) = _figure()
    ax.hist(p, bins=np.logspace(np.log10(p.min()), np.log10(p.max()), 40), color="C4")
    ax.set_xscale("log")
    if uniform is not None:
        ax.axvline(uniform, color="C7", linestyle="--", label=f"uniform 1/{round(1 / uniform)}")
        ax.legend()
    ax.set(xlabel="propensity β(a | x)", ylabel="logged impressions", title="Propensities")
    return fig


def lorenz(items: torch.Tensor, n_items: int) -> tuple[np.ndarray, np.ndarray]:
    """Lorenz curve of impressions over the catalogue: (share of items, share of impressions).

    items: (n,) long. Both arrays have n_items + 1 points from (0, 0) to (1, 1), items sorted
    from least to most shown (never-shown items included).
    """
    counts = np.sort(np.bincount(items.numpy(), minlength=n_items))
    y = np.concatenate([[0.0], np.cumsum(counts) / counts.sum()])
    return np.linspace(0.0, 1.0, n_items + 1), y


def gini(items: torch.Tensor, n_items: int) -> float:
    """Gini coefficient of impressions per item: 0 when every item is shown equally often."""
    x, y = lorenz(items, n_items)
    area = float(((y[1:] + y[:-1]) / 2 * np.diff(x)).sum())  # trapezoid rule
    return 1.0 - 2.0 * area


def top_share(items: torch.Tensor, top: int = 10) -> float:
    """Share of the impressions that go to the `top` most shown items. items: (n,) long."""
    counts = torch.bincount(items).sort(descending=True).values
    return float(counts[:top].sum() / counts.sum())


def lorenz_curve(items: torch.Tensor, n_items: int) -> Figure:
    """Lorenz curve of the log's impressions over the catalogue, with the diagonal of equality."""
    x, y = lorenz(items, n_items)
    fig, (ax,) = _figure(width=4.8, height=4.2)
    ax.plot([0, 1], [0, 1], color="C7", linestyle="--", label="every item equally often")
    ax.plot(x, y, label=f"bandit log (Gini {gini(items, n_items):.2f})")
    ax.set(
        xlabel="share of items (least shown first)",
        ylabel="share of impressions",
        title="Concentration of the log",
    )
    ax.legend()
    return fig


def importance_weights(
    raw: torch.Tensor, clipped: torch.Tensor, cap: float, floor: float
) -> Figure:
    """Importance weights π(a)/β(a) before and after clipping to [floor, cap] (log-scaled axis)."""
    r, c = _numpy(raw), _numpy(clipped)
    low = min(r.min(), c.min(), floor) / 2
    high = max(r.max(), c.max(), cap) * 2
    bins = np.logspace(np.log10(low), np.log10(high), 40)
    fig, (ax,) = _figure()
    ax.hist(r, bins=bins, alpha=0.6, label="raw π/β")
    ax.hist(c, bins=bins, alpha=0.6, label="clipped, batch-normalised")
    for value in (floor, cap):
        ax.axvline(value, color="C3", linestyle=":")
    ax.set_xscale("log")
    ax.set(xlabel="importance weight", ylabel="logged positives", title="Importance weights")
    ax.legend()
    return fig


# ---------------------------------------------------------------- comparisons
def bars(values: dict[str, float], *, ylabel: str, title: str = "") -> Figure:
    """One bar per named value (e.g. one- vs two-stage reward of several generators)."""
    fig, (ax,) = _figure()
    names = list(values)
    ax.bar(names, [values[n] for n in names], color=[f"C{i}" for i in range(len(names))])
    ax.set(ylabel=ylabel, title=title)
    return fig
