from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from twostage import report
from twostage.errors import DataFormatError

METHODS = ["2s", "ce", "ips"]  # deliberately not in display order
SEEDS = [0, 1, 2]
EPOCHS = 4
TEST_METRICS = [
    "Precision@1",
    "Precision@5",
    "Precision@10",
    "Recall@1",
    "Recall@5",
    "Recall@10",
    "NDCG@5",
    "NDCG@10",
    "NDCG@20",
]


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
    return pd.DataFrame(rows, columns=report.RESULT_COLUMNS)


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


@pytest.fixture
def out(tmp_path: Path) -> Path:
    return write_out(tmp_path / "out", fake_results())


def test_load_results_round_trips_the_columns(out: Path):
    results = report.load_results(out)
    assert list(results.columns) == report.RESULT_COLUMNS
    assert len(results) == len(METHODS) * len(SEEDS) * EPOCHS * 2 * (2 * len(TEST_METRICS) + 1)


def test_summary_uses_each_runs_best_epoch_and_standard_error(out: Path):
    results = report.load_results(out)
    table = report.summary_table(results).set_index(["method", "evaluation", "metric"])
    for method in METHODS:
        for evaluation in ("one-stage", "two-stage"):
            for metric in ("Precision@10", "NDCG@20", "reward"):
                values = reference_values(results, method, evaluation, metric)
                row = table.loc[(method, evaluation, metric)]
                assert row["mean"] == pytest.approx(values.mean())
                assert row["stderr"] == pytest.approx(values.std(ddof=1) / np.sqrt(3))
                assert row["n_seeds"] == 3


def test_summary_selection_ignores_non_best_epochs(out: Path):
    results = report.load_results(out)
    shifted = results.copy()
    shifted.loc[shifted["epoch"] != shifted["best_epoch"], "value"] = 0.0  # only best epochs matter
    pd.testing.assert_frame_equal(report.summary_table(results), report.summary_table(shifted))


def test_summary_orders_methods_and_computes_gain_over_ce(out: Path):
    results = report.load_results(out)
    table = report.summary_table(results)
    assert list(dict.fromkeys(table["method"])) == ["ce", "ips", "2s"]
    assert list(table.columns) == report.SUMMARY_COLUMNS
    indexed = table.set_index(["method", "evaluation", "metric"])
    ce = reference_values(results, "ce", "two-stage", "Recall@5").mean()
    two = reference_values(results, "2s", "two-stage", "Recall@5").mean()
    assert indexed.loc[("2s", "two-stage", "Recall@5"), "gain_vs_ce_pct"] == pytest.approx(
        100 * (two - ce) / ce
    )
    assert np.allclose(table.loc[table["method"] == "ce", "gain_vs_ce_pct"], 0.0)


def test_gain_is_nan_without_cross_entropy(out: Path):
    results = report.load_results(out)
    table = report.summary_table(results[results["method"] != "ce"])
    assert table["gain_vs_ce_pct"].isna().all()


def test_other_methods_come_after_the_paper_methods_alphabetically():
    assert report.method_order(["zeta", "2s", "ips-topk", "ce"]) == ["ce", "2s", "ips-topk", "zeta"]


def test_markdown_has_expected_cells_and_synthetic_note(out: Path):
    results = report.load_results(out)
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


def test_summary_csv_is_tidy(out: Path):
    frame = pd.read_csv(report.write_summary(out)["csv"])
    assert list(frame.columns) == report.SUMMARY_COLUMNS
    assert len(frame) == len(METHODS) * 2 * (len(TEST_METRICS) + 1)


def test_no_synthetic_note_for_real_data(tmp_path: Path):
    out = write_out(tmp_path / "real", fake_results(), synthetic=False)
    assert "SYNTHETIC" not in report.format_summary(out)


def test_one_seed_prints_na_instead_of_crashing(tmp_path: Path):
    out = write_out(tmp_path / "one", fake_results(seeds=[5]))
    table = report.summary_table(report.load_results(out))
    assert table["stderr"].isna().all() and (table["n_seeds"] == 1).all()
    text = report.write_summary(out)["md"].read_text()
    assert "±n/a" in text and "±nan" not in text
    assert len(report.write_figures(out)) == 4


def test_missing_column_raises_data_format_error(out: Path):
    frame = pd.read_csv(out / "results.csv").drop(columns="best_epoch")
    frame.to_csv(out / "results.csv", index=False)
    with pytest.raises(DataFormatError, match=r"results\.csv.*best_epoch"):
        report.load_results(out)


def test_non_numeric_value_names_the_line(out: Path):
    frame = pd.read_csv(out / "results.csv")
    frame["value"] = frame["value"].astype(object)
    frame.loc[3, "value"] = "oops"
    frame.to_csv(out / "results.csv", index=False)
    with pytest.raises(DataFormatError, match="line 5") as err:
        report.load_results(out)
    assert err.value.line == 5


def test_missing_results_file_raises_data_format_error(tmp_path: Path):
    with pytest.raises(DataFormatError, match="results.csv"):
        report.load_results(tmp_path)


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
