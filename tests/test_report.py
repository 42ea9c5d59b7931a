from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fake_results import (
    METHODS,
    TEST_METRICS,
    expected_cell,
    fake_results,
    reference_values,
    write_out,
)

from twostage import report
from twostage.cli import main
from twostage.errors import DataFormatError, TwoStageError
from twostage.report import compare_summaries
from twostage.results import SUMMARY_COLUMNS, display_name, load_results, summary_table


def test_markdown_has_expected_cells_and_synthetic_note(out: Path):
    results = load_results(out)
    paths = report.write_summary(out)
    text = paths["md"].read_text()
    assert text == report.format_summary(out)
    assert "toy" in text.splitlines()[0]
    assert "**SYNTHETIC data — not MovieLens.**" in text
    assert "validation two-stage Precision@10" in text
    two, one = text.index("## Two-stage evaluation"), text.index("## One-stage evaluation")
    for method, name in (("ce", "Cross-entropy"), ("ips", "1-IPS"), ("2s", "2-IPS")):
        cells = [
            expected_cell(reference_values(results, method, "two-stage", m))
            for m in ("Precision@5", "Precision@10", "Recall@5")
        ]
        assert f"| {name} | " + " | ".join(cells) + " |" in text[two:one]
        reward = expected_cell(reference_values(results, method, "one-stage", "reward"))
        one_stage_rows = [
            line for line in text[one:].splitlines() if line.startswith(f"| {name} |")
        ]
        assert one_stage_rows[0].endswith(f"| {reward} |")
    ce = reference_values(results, "ce", "one-stage", "NDCG@10").mean()
    ips = reference_values(results, "ips", "one-stage", "NDCG@10").mean()
    assert "## Relative gain over Cross-entropy" in text
    gain_row = next(line for line in text.splitlines() if line.startswith("| 1-IPS | one-stage |"))
    assert f"{100 * (ips - ce) / ce:+.1f}" in gain_row.split(" | ")[7]


def test_no_synthetic_note_for_real_data(tmp_path: Path):
    out = write_out(tmp_path / "real", fake_results(), synthetic=False)
    assert "SYNTHETIC" not in report.format_summary(out)


def test_the_reward_users_are_named_by_the_world(tmp_path: Path):
    """A dense world's reward is over all users; an on-demand world's over its evaluated users."""
    out = write_out(tmp_path / "dense", fake_results())
    assert "reward column: all users, the validation users included" in report.format_summary(out)
    run = json.loads((out / "run.json").read_text())
    run["world"] = {"mode": "on-demand", "evaluated_users": 4000, "validation_users": 2000}
    (out / "run.json").write_text(json.dumps(run))
    text = report.format_summary(out)
    assert "reward column: the 4,000 evaluated users (on-demand world)" in text
    assert "all users" not in text


def test_one_seed_prints_na_instead_of_crashing(tmp_path: Path):
    out = write_out(tmp_path / "one", fake_results(seeds=[5]))
    table = summary_table(load_results(out))
    assert table["stderr"].isna().all() and (table["n_seeds"] == 1).all()
    text = report.write_summary(out)["md"].read_text()
    assert "±n/a" in text and "±nan" not in text
    assert len(report.write_figures(out)) == 4


def test_figures_are_non_empty_pngs(out: Path):
    paths = report.write_figures(out)
    names = {p.name for p in paths}
    assert names == {
        "validation_curves.png",
        "test_metrics.png",
        "rewards.png",
        "simulator_probabilities.png",
    }
    for path in paths:
        assert path.parent == out / "figures"
        data = path.read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 1000
    assert not [p for p in (out / "figures").iterdir() if p.name.endswith(".tmp")]


def test_figures_skip_missing_inputs(tmp_path: Path):
    out = write_out(tmp_path / "partial", fake_results())
    (out / "world_probabilities.json").unlink()
    assert "simulator_probabilities.png" not in {p.name for p in report.write_figures(out)}
    (out / "results.csv").unlink()
    assert report.write_figures(out) == []


def test_summary_csv_is_tidy(out: Path):
    frame = pd.read_csv(report.write_summary(out)["csv"])
    assert list(frame.columns) == SUMMARY_COLUMNS
    assert len(frame) == len(METHODS) * 2 * (len(TEST_METRICS) + 1)


# --- compare_summaries ---


def write_summary_csv(directory: Path, means: list[float], stderrs: list[float]) -> Path:
    directory.mkdir(parents=True)
    pd.DataFrame(
        {
            "method": ["ce", "ce", "2s"],
            "evaluation": ["two-stage", "one-stage", "two-stage"],
            "metric": ["Precision@10"] * 3,
            "mean": means,
            "stderr": stderrs,
            "n_seeds": 10,
            "gain_vs_ce_pct": 0.0,
        }
    ).to_csv(directory / "summary.csv", index=False)
    return directory


def test_means_within_the_combined_standard_errors_agree(tmp_path: Path):
    ref = write_summary_csv(tmp_path / "ref", [0.90, 0.80, 0.50], [0.01, 0.0, 0.02])
    run = write_summary_csv(tmp_path / "run", [0.93, 0.804, 0.65], [0.01, 0.0, 0.02])
    table = compare_summaries(run, ref, n_se=3.0)
    # 0.03 ≤ 3·√2·0.01 = 0.042; 0.004 ≤ floor 0.005; 0.15 > 3·√2·0.02 = 0.085
    assert table["agrees"].tolist() == [True, True, False]


def test_the_cli_exits_1_when_a_mean_disagrees(tmp_path: Path, capsys):
    ref = write_summary_csv(tmp_path / "ref", [0.9, 0.8, 0.5], [0.01, 0.01, 0.01])

    def compare(name: str, means: list[float]) -> int:
        run = write_summary_csv(tmp_path / name, means, [0.01] * 3)
        return main(["compare", str(run), str(ref)])

    assert compare("same", [0.9, 0.8, 0.5]) == 0
    assert compare("off", [0.9, 0.8, 0.9]) == 1
    assert "2 of 3 means agree" in capsys.readouterr().out


def test_a_missing_summary_is_a_clear_error(tmp_path: Path):
    with pytest.raises(DataFormatError, match="summary.csv"):
        compare_summaries(tmp_path, tmp_path)


# --- embedding summaries, and the paper's claims ---


def test_demote_headings_moves_every_heading_down_and_nothing_else():
    text = "# Title\n\n## Two-stage evaluation\n\n| a | b |\n|---|---|\n| #1 | x |\n"
    demoted = report.demote_headings(text)
    assert demoted.startswith("### Title\n\n#### Two-stage evaluation\n")
    assert "| #1 | x |" in demoted and "\n# " not in demoted and "\n## " not in demoted


def claim_summary(gap_in_se: float) -> pd.DataFrame:
    """2-IPS above CE and 1-IPS by `gap_in_se` combined standard errors on every metric."""
    rows = []
    for evaluation in ("one-stage", "two-stage"):
        for metric in report.CLAIM_METRICS:
            for method, mean in (("ce", 0.5), ("ips", 0.5), ("2s", 0.5 + gap_in_se * 0.01)):
                rows.append((method, evaluation, metric, mean, 0.01 / np.sqrt(2)))
    return pd.DataFrame(rows, columns=["method", "evaluation", "metric", "mean", "stderr"])


def test_a_difference_counts_only_beyond_two_standard_errors():
    assert (report.verdicts(claim_summary(2.1), "2s", "ce", "two-stage") == 1).all()
    assert (report.verdicts(claim_summary(1.9), "2s", "ce", "two-stage") == 0).all()
    assert (report.verdicts(claim_summary(-2.1), "2s", "ce", "one-stage") == -1).all()
    table = report.claims_table({"ahead": claim_summary(2.1), "level": claim_summary(1.9)})
    assert table.loc["(i) 2-IPS best, two-stage", "ahead"].startswith("**yes**")
    assert table.loc["(i) 2-IPS best, two-stage", "level"].startswith(
        "**no** — 2-IPS ahead on none"
    )
    assert "within 2 s.e. on 10" in table.loc["(i) 2-IPS best, two-stage", "level"]
    assert report.markdown_table(table).startswith("| claim | ahead | level |\n|---|---|---|\n")


def test_run_differences_name_the_data_profile_and_settings_never_the_seeds(tmp_path: Path):
    def folder(name: str, fingerprint: str, **config) -> Path:
        directory = tmp_path / name
        directory.mkdir()
        run = {"dataset": "ml-100k", "data": {"fingerprint": fingerprint, "path": name}}
        settings = {"profile": "paper", "device": "cpu", "threads": 1, "seeds": [0]}
        run["config"] = settings | {"dataset": name, "candidates": {"alpha": 0.001}} | config
        (directory / "run.json").write_text(json.dumps(run))
        return directory

    base = folder("base", "f1")
    same = folder("same", "f1", device="cuda", threads=0, seeds=[1, 2], methods=["ce"])
    assert report.run_differences(base, same) == []
    other = folder("other", "f2", profile="smoke", candidates={"alpha": 0.1})
    assert report.run_differences(base, other) == [
        "dataset: ml-100k (data f1) vs ml-100k (data f2)",
        "profile: paper vs smoke",
        "candidates.alpha: 0.001 vs 0.1",
    ]
    with pytest.raises(TwoStageError, match="profile: paper vs smoke"):
        compare_summaries(base, other)
    assert report.run_differences(base, tmp_path) == []  # no run.json: nothing to check

    newer = folder("newer", "f1", simulator={"val_rows": None})  # a setting base predates
    assert report.run_differences(newer, base) == ["simulator.val_rows: None vs (not set)"]
    defaults = {"simulator": {"val_rows": None}}
    assert report.run_differences(newer, base, defaults) == []
    changed = folder("changed", "f1", simulator={"val_rows": 100})
    assert report.run_differences(changed, base, defaults) == ["simulator.val_rows: 100 vs None"]


def test_the_sweep_table_names_the_metric_and_prints_percent(out: Path):
    table = summary_table(load_results(out))
    summary = pd.concat([table.assign(factor="alpha", value=v) for v in ("0", "0.1")])
    text = report.format_sweep(summary, "Recall@10")
    heading, header, *rows = text.splitlines()
    assert heading.startswith("Test Recall@10 (%), mean and standard error over seeds")
    assert header.split() == ["factor", "value", "method", "evaluation", "mean", "(%)", "s.e.",
                              "(%)", "seeds"]  # fmt: skip
    chosen = summary[summary["metric"] == "Recall@10"]
    assert len(rows) == len(chosen)
    first = chosen.iloc[0]
    assert rows[0].split()[2:6] == [
        display_name(first["method"]),
        first["evaluation"],
        f"{100 * first['mean']:.1f}",
        f"{100 * first['stderr']:.1f}",
    ]
    assert not {row.split()[2] for row in rows} & set(METHODS)  # names, never codes


def test_provenance_names_the_simulators_stop_rule():
    run = {
        "config": {"profile": "paper", "simulator": {"early_stop": "run"}},
        "simulator": {"steps": 500},
        "command": "twostage reproduce",
    }
    text = "\n".join(report.provenance(run))
    assert "Simulator stop rule `run` (the paper's text), 500 steps; ratings order `file`" in text
    run["config"]["simulator"] = {"early_stop": "authors", "ratings_order": "user"}
    run["simulator"]["steps"] = 1876
    text = "\n".join(report.provenance(run))
    assert "`authors` (the authors' code), 1,876 steps; ratings order `user`" in text
    assert "stop rule" not in "\n".join(report.provenance({"config": {}}))
