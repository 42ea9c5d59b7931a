"""The results report: summary tables (`summary.csv`, `summary.md`) and figures from a run's files.

Reads only what the pipeline wrote into an output directory `OUT`: `results.csv` (tidy rows, one
per dataset × method × seed × epoch × split × evaluation × metric), `run.json` and
`world_probabilities.json`. Values are fractions; the report shows them in percent, as the paper's
Tables 2 and 3 do, with the standard error over seeds (std with ddof=1 / sqrt(n_seeds)).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from twostage.errors import DataFormatError
from twostage.files import atomic_write_bytes, atomic_write_text
from twostage.pipeline.config import METHOD_NAMES

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
    """`ce`, `ips`, `2s` first (those present), then any others alphabetically."""
    present = set(methods)
    return [m for m in METHOD_NAMES if m in present] + sorted(present - set(METHOD_NAMES))


def display_name(method: str) -> str:
    return METHOD_NAMES.get(method, method)


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


def _mean_stderr(values: pd.core.groupby.SeriesGroupBy) -> pd.DataFrame:
    """mean, stderr (NaN for fewer than two seeds) and n_seeds of each group."""
    stats = values.agg(["mean", "std", "count"]).rename(columns={"count": "n_seeds"})
    stats["stderr"] = stats["std"] / np.sqrt(stats["n_seeds"])
    stats.loc[stats["n_seeds"] < 2, "stderr"] = np.nan
    return stats.drop(columns="std")


def summary_table(results: pd.DataFrame) -> pd.DataFrame:
    """Test metrics and rewards at each run's best epoch: mean, stderr, n_seeds, % gain over CE.

    One row per method × evaluation × metric, with columns `SUMMARY_COLUMNS`.
    """
    chosen = results[
        (results["epoch"] == results["best_epoch"]) & results["split"].isin(["test", "all"])
    ]
    per_seed = chosen.groupby(["method", "evaluation", "metric", "seed"])["value"].mean()
    table = _mean_stderr(per_seed.groupby(level=["method", "evaluation", "metric"])).reset_index()
    ce = table[table["method"] == "ce"].set_index(["evaluation", "metric"])["mean"]
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


def format_cell(mean: float, stderr: float) -> str:
    """A fraction as the paper prints it: '95.8±0.1' (percent, one decimal); '95.8±n/a'."""
    if np.isnan(mean):
        return "—"
    spread = "n/a" if np.isnan(stderr) else f"{100 * stderr:.1f}"
    return f"{100 * mean:.1f}±{spread}"


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataFormatError(path, f"not valid JSON ({err})") from None


def _seed_note(seeds: list[int]) -> str:
    if len(seeds) > 2 and seeds == list(range(seeds[0], seeds[-1] + 1)):
        return f"{seeds[0]}–{seeds[-1]}"
    return ", ".join(str(s) for s in seeds)


def _markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def format_summary(out_dir: str | Path) -> str:
    """`summary.md`'s text: the paper's Table 2/3 layout, values in % as 'mean±stderr'."""
    out_dir = Path(out_dir)
    results = load_results(out_dir)
    run = _read_json(out_dir / "run.json")
    table = summary_table(results).set_index(["method", "evaluation", "metric"])
    methods = method_order(results["method"].unique())
    dataset = run.get("dataset") or ", ".join(map(str, results["dataset"].unique()))
    lines = [f"# Off-policy two-stage recommendation — results on {dataset}", ""]
    if run.get("synthetic"):
        lines += ["**SYNTHETIC data — not MovieLens.**", ""]
    seeds = sorted(int(s) for s in results["seed"].unique())
    lines += [
        f"Values in %, mean ± standard error over seeds {_seed_note(seeds)} "
        f"({len(seeds)} per method); {SELECTION_RULE}; test users.",
        "",
    ]

    def cell(method: str, evaluation: str, metric: str, column: str) -> str:
        if (method, evaluation, metric) not in table.index:
            return "—"
        row = table.loc[(method, evaluation, metric)]
        if column == "gain":
            gain = row["gain_vs_ce_pct"]
            return "n/a" if np.isnan(gain) else f"{gain:+.1f}"
        return format_cell(row["mean"], row["stderr"])

    for evaluation in EVALUATIONS:
        rows = [
            [display_name(m)] + [cell(m, evaluation, k, "cell") for k in TABLE_COLUMNS.values()]
            for m in methods
        ]
        lines += [f"## {evaluation.capitalize()} evaluation", ""]
        lines += _markdown_table(["method", *TABLE_COLUMNS], rows) + [""]
    others = [m for m in methods if m != "ce"]
    if "ce" in methods and others:
        rows = [
            [display_name(m), e] + [cell(m, e, metric, "gain") for metric in TABLE_COLUMNS.values()]
            for m in others
            for e in EVALUATIONS
        ]
        lines += ["## Relative gain over Cross-entropy (% of its mean)", ""]
        lines += _markdown_table(["method", "evaluation", *TABLE_COLUMNS], rows) + [""]
    return "\n".join(lines)


def _write_text(path: Path, text: str) -> Path:
    atomic_write_text(path, text)
    return path


def write_summary(out_dir: str | Path) -> dict[str, Path]:
    """Write `OUT/summary.csv` (tidy, `SUMMARY_COLUMNS`) and `OUT/summary.md`; return paths."""
    out_dir = Path(out_dir)
    table = summary_table(load_results(out_dir))
    return {
        "csv": _write_text(out_dir / "summary.csv", table.to_csv(index=False)),
        "md": _write_text(out_dir / "summary.md", format_summary(out_dir)),
    }


def _save(fig: Figure, path: Path) -> Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=150, bbox_inches="tight")
    atomic_write_bytes(path, buffer.getvalue())
    return path


def _title(text: str, synthetic: bool) -> str:
    return f"{text} (synthetic data)" if synthetic else text


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


def _validation_curves(results: pd.DataFrame, methods: list[str], synthetic: bool) -> Figure:
    val = results[(results["split"] == "val") & (results["metric"] == "Precision@10")]
    per_seed = val.groupby(["method", "evaluation", "epoch", "seed"])["value"].mean()
    stats = _mean_stderr(per_seed.groupby(level=["method", "evaluation", "epoch"]))
    fig = Figure(figsize=(10, 4))
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
    axes[0].legend()
    fig.suptitle(_title("Validation Precision@10, mean ± standard error over seeds", synthetic))
    return fig


def _test_metrics(table: pd.DataFrame, methods: list[str], synthetic: bool) -> Figure:
    stats = table.set_index(["metric", "method", "evaluation"])
    fig = Figure(figsize=(12, 4))
    axes = fig.subplots(1, 3)
    for ax, metric in zip(axes, ["Precision@10", "Recall@10", "NDCG@10"], strict=True):
        _grouped_bars(ax, stats.xs(metric, level="metric"), methods, f"test {metric} (%)")
        ax.set_title(metric)
    axes[0].legend()
    fig.suptitle(_title("Test metrics at the best epoch (± standard error)", synthetic))
    return fig


def _rewards(table: pd.DataFrame, methods: list[str], synthetic: bool) -> Figure:
    stats = table[table["metric"] == "reward"].set_index(["method", "evaluation"])
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    _grouped_bars(ax, stats, methods, "reward of the shown item (% of users)")
    ax.legend()
    ax.set_title(_title("Reward of the single shown item (± standard error)", synthetic))
    return fig


def _probabilities(hist: dict, positive_share: float | None, synthetic: bool) -> Figure:
    edges, counts = np.asarray(hist["bin_edges"], float), np.asarray(hist["counts"], float)
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    ax.bar(edges[:-1], counts, width=np.diff(edges), align="edge", edgecolor="white")
    share = "" if positive_share is None else f": {100 * positive_share:.1f}% of pairs positive"
    ax.axvline(hist["cut"], color="tab:red", linestyle="--", label=f"cut {hist['cut']:.3f}{share}")
    ax.set_xlabel("simulator probability of a positive reward")
    ax.set_ylabel("user × item pairs")
    ax.set_yscale("log" if counts.max(initial=0) > 100 * max(np.median(counts), 1) else "linear")
    ax.legend()
    ax.set_title(_title("Simulator probabilities over all user × item pairs", synthetic))
    return fig


def write_figures(out_dir: str | Path) -> list[Path]:
    """Write the PNGs under `OUT/figures/`; a figure whose input file is absent is skipped."""
    out_dir = Path(out_dir)
    figures = out_dir / "figures"
    run = _read_json(out_dir / "run.json")
    synthetic = bool(run.get("synthetic", False))
    written = []
    if (out_dir / "results.csv").is_file():
        results = load_results(out_dir)
        methods = method_order(results["method"].unique())
        table = summary_table(results)
        for name, fig in (
            ("validation_curves.png", _validation_curves(results, methods, synthetic)),
            ("test_metrics.png", _test_metrics(table, methods, synthetic)),
            ("rewards.png", _rewards(table, methods, synthetic)),
        ):
            written.append(_save(fig, figures / name))
    hist = _read_json(out_dir / "world_probabilities.json")
    if hist:
        share = hist.get("positive_share", run.get("world", {}).get("positive_share"))
        fig = _probabilities(hist, share, synthetic)
        written.append(_save(fig, figures / "simulator_probabilities.png"))
    return written
