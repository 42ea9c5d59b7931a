"""The results report: summary tables (`summary.csv`, `summary.md`), figures, and the comparison
of a run's summary with a reference.

Reads only what the pipeline wrote into an output directory `OUT`: `results.csv` (through
`twostage.results`), `run.json` and `world_probabilities.json`. Values are fractions; the report
shows them in percent, as the paper's Tables 2 and 3 do, with the standard error over seeds.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection
from pathlib import Path

import numpy as np
import pandas as pd

from twostage import plots
from twostage.errors import DataFormatError, TwoStageError
from twostage.files import atomic_write_text
from twostage.results import (
    BASELINE,
    EVALUATIONS,
    SELECTION_RULE,
    TABLE_COLUMNS,
    display_name,
    load_results,
    method_order,
    summary_table,
)


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


def run_summary(out_dir: str | Path) -> tuple[pd.DataFrame, list[int], str]:
    """The summary table (`SUMMARY_COLUMNS`), the seeds and the data set's name of a run.

    From `OUT/results.csv` when present; else from `OUT/summary.csv` and `OUT/run.json`, which is
    what a committed `results/` folder keeps.
    """
    out_dir = Path(out_dir)
    run = _read_json(out_dir / "run.json")
    if (out_dir / "results.csv").is_file() or not (out_dir / "summary.csv").is_file():
        results = load_results(out_dir)
        seeds = sorted(int(s) for s in results["seed"].unique())
        dataset = run.get("dataset") or ", ".join(map(str, results["dataset"].unique()))
        return summary_table(results), seeds, dataset
    if "config" not in run:
        raise DataFormatError(
            out_dir / "results.csv",
            "file not found, and run.json (which names the seeds beside summary.csv) is missing",
        )
    return read_summary(out_dir), sorted(run["config"]["seeds"]), run.get("dataset", "?")


STOP_RULES = {"authors": "the authors' code", "run": "the paper's text"}


def provenance(run: dict) -> list[str]:
    """The lines that say what produced a run: profile, command, data, versions and the
    simulator's stop rule."""
    config, data = run.get("config", {}), run.get("data", {})
    profile = config.get("profile", "?")
    lines = []
    if profile != "paper":
        lines += [
            f"**Profile `{profile}`: short schedules — a check that everything runs, not a "
            "result to cite.**",
            "",
        ]
    command = run.get("command") or "not recorded (made before commands were)"
    if command.startswith("twostage"):
        command = f"`{command}`"
    fingerprint = data.get("fingerprint", "?")
    lines += [
        f"Profile `{profile}` · command {command} · data `{run.get('dataset', '?')}` "
        f"(fingerprint `{str(fingerprint)[:12]}`) · twostage {run.get('package_version', '?')}, "
        f"torch {run.get('torch_version', '?')}, device {run.get('device', '?')}.",
        "",
    ]
    simulator = config.get("simulator", {})
    if simulator:
        # Older runs lack the setting added later: they were made with the rule then in force.
        rule = simulator.get("early_stop", "run")
        steps = run.get("simulator", {}).get("steps")
        lines += [
            f"Simulator stop rule `{rule}` ({STOP_RULES.get(rule, 'unknown rule')})"
            + (f", {steps:,} steps" if isinstance(steps, int) else "")
            + f"; ratings order `{simulator.get('ratings_order', 'file')}`.",
            "",
        ]
    return lines


def format_summary(out_dir: str | Path) -> str:
    """`summary.md`'s text: what produced it, then the paper's Table 2/3 layout, values in % as
    'mean±stderr'."""
    out_dir = Path(out_dir)
    summary, seeds, dataset = run_summary(out_dir)
    run = _read_json(out_dir / "run.json")
    table = summary.set_index(["method", "evaluation", "metric"])
    methods = method_order(summary["method"].unique())
    lines = [f"# Off-policy two-stage recommendation — results on {dataset}", ""]
    if run.get("synthetic"):
        lines += ["**SYNTHETIC data — not MovieLens.**", ""]
    lines += provenance(run)
    evaluated = run.get("world", {}).get("evaluated_users")
    if run.get("world", {}).get("mode") == "on-demand" and evaluated:
        reward_users = f"the {evaluated:,} evaluated users (on-demand world), the validation users"
    else:
        reward_users = "all users, the validation users"
    lines += [
        f"Values in %, mean ± standard error over seeds {_seed_note(seeds)} "
        f"({len(seeds)} per method); {SELECTION_RULE}; test users, except the reward column: "
        f"{reward_users} included.",
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
    others = [m for m in methods if m != BASELINE]
    if BASELINE in methods and others:
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
    table, _, _ = run_summary(out_dir)
    text = format_summary(out_dir)  # before summary.csv is rewritten: nothing half-written
    return {
        "csv": _write_text(out_dir / "summary.csv", table.to_csv(index=False)),
        "md": _write_text(out_dir / "summary.md", text),
    }


def write_figures(out_dir: str | Path) -> list[Path]:
    """Write the PNGs under `OUT/figures/`; a figure whose input file is absent is skipped (a
    committed folder keeps `summary.csv`, not the per-epoch `results.csv` the curves need)."""
    out_dir = Path(out_dir)
    figures = out_dir / "figures"
    run = _read_json(out_dir / "run.json")
    synthetic = bool(run.get("synthetic", False))
    written = []
    if (out_dir / "results.csv").is_file():
        results = load_results(out_dir)
        methods = method_order(results["method"].unique())
        fig = plots.validation_curves(results, methods, synthetic)
        written.append(plots.save_png(fig, figures / "validation_curves.png"))
    if (out_dir / "results.csv").is_file() or (out_dir / "summary.csv").is_file():
        table, _, _ = run_summary(out_dir)
        methods = method_order(table["method"].unique())
        for name, fig in (
            ("test_metrics.png", plots.test_metrics(table, methods, synthetic)),
            ("rewards.png", plots.rewards(table, methods, synthetic)),
        ):
            written.append(plots.save_png(fig, figures / name))
    hist = _read_json(out_dir / "world_probabilities.json")
    if hist:
        share = hist.get("positive_share", run.get("world", {}).get("positive_share"))
        fig = plots.world_probabilities(hist, share, synthetic)
        written.append(plots.save_png(fig, figures / "simulator_probabilities.png"))
    return written


# --- Comparing a run's summary with a reference ----------------------------------------------
# Used by the GPU job: a `paper`-profile run on CUDA is not bitwise equal to the committed CPU
# run, so each mean must agree with the reference within `n_se` combined standard errors (with a
# small absolute floor for rows whose standard error rounds to zero). Only runs of the same
# experiment are compared: same data, profile and settings; seeds, methods, device may differ.

KEYS = ["method", "evaluation", "metric"]
# Settings of run.json's config that may differ between runs compared: the seeds (the point of a
# comparison), the methods (only those in both are compared), where and how fast it ran, and the
# dataset's path (the data are compared by fingerprint).
FREE_SETTINGS = {"seeds", "methods", "device", "threads", "world.chunk_users", "dataset"}
_ABSENT = "(not set)"


def _flatten(values: dict, prefix: str = "") -> dict[str, object]:
    """{"world": {"cut": 0.5}} → {"world.cut": 0.5}; tuples as lists, as JSON gives them back."""
    flat: dict[str, object] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
    return flat


def config_differences(
    first: dict, second: dict, *, free: Collection[str] = (), defaults: dict | None = None
) -> list[tuple[str, object, object]]:
    """(setting, first's value, second's value) for each leaf setting that differs between two
    `ExperimentConfig.to_dict()`-shaped configs (a `run.json`'s "config"), the profile first.

    Settings in `free` may differ; `defaults` stands in for a setting a config lacks because it
    was written before the setting existed."""
    mine, theirs, known = _flatten(first), _flatten(second), _flatten(defaults or {})
    differences = []
    for setting in sorted(mine.keys() | theirs.keys(), key=lambda s: (s != "profile", s)):
        default = known.get(setting, _ABSENT)
        a, b = mine.get(setting, default), theirs.get(setting, default)
        if setting not in free and a != b:
            differences.append((setting, a, b))
    return differences


def run_differences(
    run_dir: str | Path, reference_dir: str | Path, defaults: dict | None = None
) -> list[str]:
    """What makes two runs different experiments, as 'setting: run vs reference': the data (by
    fingerprint where both `run.json` have one, else by name), then every setting of the config
    outside `FREE_SETTINGS`, the profile first. Empty when they match or a `run.json` is absent.

    `defaults` (an `ExperimentConfig().to_dict()`) stands in for a setting a `run.json` lacks
    because it was made before the setting existed."""
    run = _read_json(Path(run_dir) / "run.json")
    reference = _read_json(Path(reference_dir) / "run.json")
    if not run or not reference:
        return []
    (name, other), (data, other_data) = zip(
        *((r.get("dataset"), r.get("data", {}).get("fingerprint")) for r in (run, reference)),
        strict=True,
    )
    same_data = data == other_data if None not in (data, other_data) else name == other
    differences = [] if same_data else [f"dataset: {name} vs {other}"]
    if not same_data and name == other:
        differences = [f"dataset: {name} (data {data}) vs {other} (data {other_data})"]
    configs = run.get("config", {}), reference.get("config", {})
    for setting, first, second in config_differences(
        *configs, free=FREE_SETTINGS, defaults=defaults
    ):
        differences.append(f"{setting}: {first} vs {second}")
    return differences


def combined_stderr(first: pd.Series, second: pd.Series) -> pd.Series:
    """sqrt(se₁² + se₂²), the standard error of a difference of two means; a missing standard
    error (fewer than two seeds) counts as 0."""
    return np.sqrt(first.fillna(0) ** 2 + second.fillna(0) ** 2)


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
    run_dir: str | Path,
    reference_dir: str | Path,
    *,
    n_se: float = 3.0,
    floor: float = 0.005,
    allow_different: bool = False,
    defaults: dict | None = None,
) -> pd.DataFrame:
    """One row per (method, evaluation, metric) present in both, with `agrees`.

    A mean agrees when ``|run − reference|`` ≤ max(n_se · sqrt(se_run² + se_ref²), floor); values
    are fractions, so the default floor is half a percentage point. Runs of different experiments
    (`run_differences`) are refused unless `allow_different`.
    """
    differences = run_differences(run_dir, reference_dir, defaults)
    if differences and not allow_different:
        raise TwoStageError(
            f"{run_dir} and {reference_dir} are runs of different experiments, not comparable "
            f"({'; '.join(differences)}); only seeds, methods and device may differ. "
            "Compare anyway with --allow-different (allow_different=True in Python)."
        )
    run, reference = read_summary(run_dir), read_summary(reference_dir)
    both = run.merge(reference, on=KEYS, suffixes=("_run", "_reference"))
    if both.empty:
        raise DataFormatError(
            Path(run_dir) / "summary.csv",
            f"no method/metric in common with {Path(reference_dir) / 'summary.csv'}",
        )
    se = combined_stderr(both["stderr_run"], both["stderr_reference"])
    both["difference"] = both["mean_run"] - both["mean_reference"]
    both["allowed"] = np.maximum(n_se * se, floor)
    both["agrees"] = both["difference"].abs() <= both["allowed"]
    return both[[*KEYS, "mean_run", "mean_reference", "difference", "allowed", "agrees"]]


def format_comparison(table: pd.DataFrame) -> str:
    """`compare_summaries`' table for a person: method names, means in %, differences in points."""
    shown = pd.DataFrame(
        {
            "method": table["method"].map(display_name),
            "evaluation": table["evaluation"],
            "metric": table["metric"],
            "run (%)": 100 * table["mean_run"],
            "reference (%)": 100 * table["mean_reference"],
            "difference (points)": 100 * table["difference"],
            "allowed (± points)": 100 * table["allowed"],
            "agrees": table["agrees"].map({True: "yes", False: "NO"}),
        }
    )
    formats = ["{:.1f}", "{:.1f}", "{:+.2f}", "{:.2f}"]
    columns = ["run (%)", "reference (%)", "difference (points)", "allowed (± points)"]
    formatters = {c: f.format for c, f in zip(columns, formats, strict=True)}
    return shown.to_string(index=False, formatters=formatters)


def format_sweep(summary: pd.DataFrame, metric: str = "Precision@10") -> str:
    """A sweep's `metric` rows for the console: a heading naming it, method names, values in %."""
    rows = summary[summary["metric"] == metric]
    shown = pd.DataFrame(
        {
            "factor": rows["factor"],
            "value": rows["value"],
            "method": rows["method"].map(display_name),
            "evaluation": rows["evaluation"],
            "mean (%)": 100 * rows["mean"],
            "s.e. (%)": 100 * rows["stderr"],
            "seeds": rows["n_seeds"],
        }
    )
    heading = f"Test {metric} (%), mean and standard error over seeds ({SELECTION_RULE}):"
    return heading + "\n" + shown.to_string(index=False, float_format="{:.1f}".format)


# --- Embedding a summary, and the paper's claims judged on a summary --------------------------


def demote_headings(markdown: str, levels: int = 2) -> str:
    """`markdown` with every ATX heading `levels` deeper (`# T` → `### T` for levels=2), so that
    a summary embedded in a page does not add top-level sections to it."""
    return re.sub(
        r"(?m)^(#{1,6}) ", lambda m: "#" * min(6, len(m.group(1)) + levels) + " ", markdown
    )


CLAIM_METRICS = tuple(TABLE_COLUMNS.values())


def verdicts(
    summary: pd.DataFrame, method: str, other: str, evaluation: str, n_se: float = 2.0
) -> pd.Series:
    """Per metric of `CLAIM_METRICS`: +1 where `method`'s mean is above `other`'s by more than
    `n_se` combined standard errors (sqrt(se₁² + se₂²)), −1 where below by as much, 0 otherwise."""
    rows = summary[summary["evaluation"] == evaluation].set_index(["method", "metric"])
    mine = rows.loc[method].reindex(list(CLAIM_METRICS))
    theirs = rows.loc[other].reindex(list(CLAIM_METRICS))
    se = combined_stderr(mine["stderr"], theirs["stderr"])
    difference = mine["mean"] - theirs["mean"]
    return np.sign(difference.where(difference.abs() > n_se * se, 0.0)).astype(int)


SHORT_NAMES = {metric: short for short, metric in TABLE_COLUMNS.items()}


def _tally(signs: pd.Series, subject: str, n_se: float) -> str:
    """'**partly** — 2-IPS ahead on P@1, reward; behind on P@10; within 2 s.e. on the other 7'."""
    ahead = [SHORT_NAMES[m] for m in signs.index[signs > 0]]
    behind = [SHORT_NAMES[m] for m in signs.index[signs < 0]]
    level = len(signs) - len(ahead) - len(behind)
    verdict = "yes" if len(ahead) == len(signs) else "no" if not ahead else "partly"
    parts = [f"ahead on {', '.join(ahead)}" if ahead else "ahead on none"]
    if behind:
        parts.append(f"behind on {', '.join(behind)}")
    if level:
        other = "the other " if ahead or behind else ""
        parts.append(f"within {n_se:g} s.e. on {other}{level}")
    return f"**{verdict}** — {subject} " + "; ".join(parts) + f" (of {len(signs)} metrics)"


def claims_table(summaries: dict[str, pd.DataFrame], n_se: float = 2.0) -> pd.DataFrame:
    """The paper's claims judged on each summary (columns: the summaries' names).

    (i) 2-IPS is best: ahead of both cross-entropy and 1-IPS on a metric counts as ahead, behind
    either as behind; (ii) 1-IPS beats cross-entropy one-stage and loses to it two-stage. A
    difference counts only beyond `n_se` combined standard errors over seeds.
    """
    table = {}
    for name, summary in summaries.items():
        column = {}
        for evaluation in ("two-stage", "one-stage"):
            vs_ce = verdicts(summary, "2s", "ce", evaluation, n_se)
            vs_ips = verdicts(summary, "2s", "ips", evaluation, n_se)
            signs = np.minimum(vs_ce, vs_ips)  # ahead of both is ahead, behind either behind
            column[f"(i) 2-IPS best, {evaluation}"] = _tally(signs, "2-IPS", n_se)
        one = verdicts(summary, "ips", "ce", "one-stage", n_se)
        two = verdicts(summary, "ce", "ips", "two-stage", n_se)
        column["(ii) 1-IPS > CE, one-stage"] = _tally(one, "1-IPS", n_se)
        column["(ii) 1-IPS < CE, two-stage"] = _tally(two, "CE", n_se)
        table[name] = column
    frame = pd.DataFrame(table)
    frame.index.name = "claim"
    return frame


def markdown_table(frame: pd.DataFrame) -> str:
    """`frame` (its index as the first column) as a Markdown table."""
    header = [str(frame.index.name or ""), *map(str, frame.columns)]
    rows = [[str(index), *map(str, row)] for index, row in frame.iterrows()]
    return "\n".join(_markdown_table(header, rows)) + "\n"
