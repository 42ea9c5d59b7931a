"""The tidy results table: loading, checking and summarising it over seeds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fake_results import (
    EPOCHS,
    METHODS,
    SEEDS,
    TEST_METRICS,
    reference_values,
)

from twostage import results as R
from twostage.errors import DataFormatError


def test_load_results_round_trips_the_columns(out: Path):
    results = R.load_results(out)
    assert list(results.columns) == R.RESULT_COLUMNS
    assert len(results) == len(METHODS) * len(SEEDS) * EPOCHS * 2 * (2 * len(TEST_METRICS) + 1)


def test_summary_uses_each_runs_best_epoch_and_standard_error(out: Path):
    results = R.load_results(out)
    table = R.summary_table(results).set_index(["method", "evaluation", "metric"])
    for method in METHODS:
        for evaluation in ("one-stage", "two-stage"):
            for metric in ("Precision@10", "NDCG@20", "reward"):
                values = reference_values(results, method, evaluation, metric)
                row = table.loc[(method, evaluation, metric)]
                assert row["mean"] == pytest.approx(values.mean())
                assert row["stderr"] == pytest.approx(values.std(ddof=1) / np.sqrt(3))
                assert row["n_seeds"] == 3


def test_summary_selection_ignores_non_best_epochs(out: Path):
    results = R.load_results(out)
    shifted = results.copy()
    shifted.loc[shifted["epoch"] != shifted["best_epoch"], "value"] = 0.0  # only best epochs matter
    pd.testing.assert_frame_equal(R.summary_table(results), R.summary_table(shifted))


def test_summary_orders_methods_and_computes_gain_over_ce(out: Path):
    results = R.load_results(out)
    table = R.summary_table(results)
    assert list(dict.fromkeys(table["method"])) == ["ce", "ips", "2s"]
    assert list(table.columns) == R.SUMMARY_COLUMNS
    indexed = table.set_index(["method", "evaluation", "metric"])
    ce = reference_values(results, "ce", "two-stage", "Recall@5").mean()
    two = reference_values(results, "2s", "two-stage", "Recall@5").mean()
    assert indexed.loc[("2s", "two-stage", "Recall@5"), "gain_vs_ce_pct"] == pytest.approx(
        100 * (two - ce) / ce
    )
    assert np.allclose(table.loc[table["method"] == "ce", "gain_vs_ce_pct"], 0.0)


def test_gain_is_nan_without_cross_entropy(out: Path):
    results = R.load_results(out)
    table = R.summary_table(results[results["method"] != "ce"])
    assert table["gain_vs_ce_pct"].isna().all()


def test_other_methods_come_after_the_paper_methods_alphabetically():
    assert R.method_order(["zeta", "2s", "ips-topk", "ce"]) == [
        "ce",
        "2s",
        "ips-topk",
        "zeta",
    ]


def test_missing_column_raises_data_format_error(out: Path):
    frame = pd.read_csv(out / "results.csv").drop(columns="best_epoch")
    frame.to_csv(out / "results.csv", index=False)
    with pytest.raises(DataFormatError, match=r"results\.csv.*best_epoch"):
        R.load_results(out)


def test_non_numeric_value_names_the_line(out: Path):
    frame = pd.read_csv(out / "results.csv")
    frame["value"] = frame["value"].astype(object)
    frame.loc[3, "value"] = "oops"
    frame.to_csv(out / "results.csv", index=False)
    with pytest.raises(DataFormatError, match="line 5") as err:
        R.load_results(out)
    assert err.value.line == 5


def test_missing_results_file_raises_data_format_error(tmp_path: Path):
    with pytest.raises(DataFormatError, match="results.csv"):
        R.load_results(tmp_path)
