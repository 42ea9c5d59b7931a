"""Every figure of the package: the book's chapters, a run's report and a sweep.

Each helper takes tensors or result tables and returns a matplotlib `Figure` (never pyplot's
global state); `save_png` writes one atomically. The small computations behind the chapters'
figures (reliability bins, Lorenz curve, top-item shares) are separate functions, so that the
chapters can print the numbers the figures show.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from twostage.files import atomic_write_bytes
from twostage.results import EVALUATIONS, display_name, mean_stderr


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


# ---------------------------------------------------------------- a run's report and a sweep
# The figures of `OUT/figures/` (written by `twostage.report.write_figures`) and of a sweep.


def save_png(fig: Figure, path: Path, *, dpi: int = 150, tight: bool = True) -> Path:
    """Write `fig` as a PNG to `path` atomically (never a half-written file); return `path`."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight" if tight else None)
    atomic_write_bytes(path, buffer.getvalue())
    return path


SPREAD = "mean ± s.e. over seeds"
ONE_SEED = "one seed, no spread"


def _spread(n_seeds: int) -> str:
    """The title's note on the bands and error bars: a single seed has no standard error."""
    return ONE_SEED if n_seeds == 1 else SPREAD


def _title(text: str, synthetic: bool) -> str:
    """'Test metrics … · synthetic data' (never a second pair of parentheses)."""
    return f"{text} · synthetic data" if synthetic else text


def _legend_below(fig: Figure, ax) -> None:
    """`ax`'s legend in one row under the panels, outside every axes (the constrained layout
    makes room), so that it covers no bar, line or peak."""
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=max(1, len(labels)))


def _grouped_bars(ax, stats: pd.DataFrame, methods: list[str], ylabel: str) -> None:
    """Bars of `stats` (index (method, evaluation); mean, stderr) — one-stage beside two-stage."""
    x = np.arange(len(methods))
    for k, evaluation in enumerate(["one-stage", "two-stage"]):
        part = stats.reindex([(m, evaluation) for m in methods])
        ax.bar(
            x + (k - 0.5) * 0.4,
            100 * part["mean"].to_numpy(),
            width=0.4,
            label=evaluation,
            yerr=100 * part["stderr"].fillna(0.0).to_numpy(),
            capsize=3,
        )
    ax.set_xticks(x, [display_name(m) for m in methods])
    ax.set_ylabel(ylabel)


def validation_curves(results: pd.DataFrame, methods: list[str], synthetic: bool) -> Figure:
    """Validation Precision@10 per epoch (mean ± standard error over seeds) per evaluation."""
    val = results[(results["split"] == "val") & (results["metric"] == "Precision@10")]
    per_seed = val.groupby(["method", "evaluation", "epoch", "seed"])["value"].mean()
    stats = mean_stderr(per_seed.groupby(level=["method", "evaluation", "epoch"]))
    fig = Figure(figsize=(10, 4.4), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    for ax, evaluation in zip(axes, EVALUATIONS, strict=True):
        for method in methods:
            if (method, evaluation) not in stats.droplevel("epoch").index:
                continue
            curve = stats.xs((method, evaluation), level=["method", "evaluation"])
            epochs, mean = curve.index.to_numpy(), 100 * curve["mean"].to_numpy()
            band = 100 * curve["stderr"].fillna(0.0).to_numpy()
            (line,) = ax.plot(epochs, mean, marker="o", label=display_name(method))
            ax.fill_between(epochs, mean - band, mean + band, color=line.get_color(), alpha=0.2)
        ax.set_title(f"{evaluation.capitalize()} evaluation")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].set_ylabel("validation Precision@10 (%)")
    _legend_below(fig, axes[0])
    spread = _spread(int(val["seed"].nunique()))
    fig.suptitle(_title(f"Validation Precision@10, {spread}", synthetic))
    return fig


def test_metrics(table: pd.DataFrame, methods: list[str], synthetic: bool) -> Figure:
    """Test P@10, R@10, NDCG@10 at the best epoch of `summary_table` rows, one- beside two-stage."""
    stats = table.set_index(["metric", "method", "evaluation"])
    fig = Figure(figsize=(12, 4.4), layout="constrained")
    axes = fig.subplots(1, 3)
    for ax, metric in zip(axes, ["Precision@10", "Recall@10", "NDCG@10"], strict=True):
        _grouped_bars(ax, stats.xs(metric, level="metric"), methods, f"test {metric} (%)")
        ax.set_title(metric)
    _legend_below(fig, axes[0])
    spread = _spread(int(table["n_seeds"].max()))
    fig.suptitle(_title(f"Test metrics at the best epoch, {spread}", synthetic))
    return fig


def rewards(table: pd.DataFrame, methods: list[str], synthetic: bool) -> Figure:
    """The shown item's reward per method, one- beside two-stage."""
    stats = table[table["metric"] == "reward"].set_index(["method", "evaluation"])
    fig = Figure(figsize=(6, 4.4), layout="constrained")
    ax = fig.subplots()
    _grouped_bars(ax, stats, methods, "reward of the shown item (% of users)")
    _legend_below(fig, ax)
    spread = _spread(int(stats["n_seeds"].max()))
    ax.set_title(_title(f"Reward of the single shown item, {spread}", synthetic))
    return fig


def world_probabilities(hist: dict, positive_share: float | None, synthetic: bool) -> Figure:
    """The histogram of `world_probabilities.json` with the cut."""
    edges, counts = np.asarray(hist["bin_edges"], float), np.asarray(hist["counts"], float)
    fig = Figure(figsize=(6, 4.4), layout="constrained")
    ax = fig.subplots()
    ax.bar(edges[:-1], counts, width=np.diff(edges), align="edge", edgecolor="white")
    share = "" if positive_share is None else f": {100 * positive_share:.1f}% of pairs positive"
    ax.axvline(hist["cut"], color="tab:red", linestyle="--", label=f"cut {hist['cut']:.3f}{share}")
    ax.set_xlabel("simulator probability of a positive reward")
    ax.set_ylabel("user × item pairs")
    ax.set_yscale("log" if counts.max(initial=0) > 100 * max(np.median(counts), 1) else "linear")
    _legend_below(fig, ax)
    ax.set_title(_title("Simulator probabilities over all user × item pairs", synthetic))
    return fig


def factor_figure(rows: pd.DataFrame, name: str, metric: str = "Precision@10") -> Figure:
    """A sweep's rows of one factor: test `metric` (mean ± standard error) per value, one panel
    per evaluation, one line per method."""
    figure = Figure(figsize=(9, 4), layout="constrained")
    values = list(dict.fromkeys(rows["value"]))
    for ax, evaluation in zip(
        figure.subplots(1, 2, sharey=True), ("two-stage", "one-stage"), strict=True
    ):
        for method, group in rows[
            (rows.evaluation == evaluation) & (rows.metric == metric)
        ].groupby("method", sort=False):
            group = group.set_index("value").reindex(values)
            ax.errorbar(
                range(len(values)),
                group["mean"] * 100,
                yerr=group["stderr"] * 100,
                marker="o",
                capsize=3,
                label=display_name(method),
            )
        ax.set_xticks(range(len(values)), values)
        ax.set_xlabel(name)
        ax.set_title(f"{evaluation.capitalize()} evaluation")
        ax.grid(alpha=0.3)
    figure.axes[0].set_ylabel(f"test {metric} (%)")
    _legend_below(figure, figure.axes[0])
    figure.suptitle(f"Test {metric} by {name}, {_spread(int(rows['n_seeds'].max()))}")
    return figure


def inclusion_ratio(single: torch.Tensor, inclusion: torch.Tensor, k: int) -> Figure:
    """P(a ∈ S) / β(a) against the single-draw propensity β(a) of each logged impression."""
    fig, (ax,) = _figure()
    ax.scatter(_numpy(single).ravel(), (_numpy(inclusion) / _numpy(single)).ravel(), s=6, alpha=0.4)
    ax.axhline(k, ls="--", c="grey", label=f"K = {k} (rare items)")
    ax.axhline(1, ls=":", c="grey")
    ax.set_xscale("log")
    ax.set(xlabel="single-draw propensity β(a)", ylabel="P(a ∈ S) / β(a)",
           title="How far the logged propensity is from the inclusion probability")  # fmt: skip
    ax.legend()
    return fig
