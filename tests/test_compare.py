from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from twostage.cli import main
from twostage.compare import compare_summaries
from twostage.errors import DataFormatError


def write(directory: Path, means: list[float], stderrs: list[float]) -> Path:
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
    ref = write(tmp_path / "ref", [0.90, 0.80, 0.50], [0.01, 0.0, 0.02])
    run = write(tmp_path / "run", [0.93, 0.804, 0.65], [0.01, 0.0, 0.02])
    table = compare_summaries(run, ref, n_se=3.0)
    # 0.03 ≤ 3·√2·0.01 = 0.042; 0.004 ≤ floor 0.005; 0.15 > 3·√2·0.02 = 0.085
    assert table["agrees"].tolist() == [True, True, False]


def test_the_cli_exits_1_when_a_mean_disagrees(tmp_path: Path, capsys):
    ref = write(tmp_path / "ref", [0.9, 0.8, 0.5], [0.01, 0.01, 0.01])
    assert (
        main(["compare", str(write(tmp_path / "same", [0.9, 0.8, 0.5], [0.01] * 3)), str(ref)]) == 0
    )
    assert (
        main(["compare", str(write(tmp_path / "off", [0.9, 0.8, 0.9], [0.01] * 3)), str(ref)]) == 1
    )
    assert "2 of 3 means agree" in capsys.readouterr().out


def test_a_missing_summary_is_a_clear_error(tmp_path: Path):
    with pytest.raises(DataFormatError, match="summary.csv"):
        compare_summaries(tmp_path, tmp_path)
