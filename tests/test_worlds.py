"""Worlds as a source of variance: the variance components against direct computation, and
`reproduce --world-seeds` end to end on the tiny world."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from tiny import cli, env

from twostage.pipeline.config import WORLD_STAGES, profile_config
from twostage.pipeline.sweep import cell_config
from twostage.worlds import variance_components


def values_of(matrix: np.ndarray, method: str = "ce") -> pd.DataFrame:
    """A long table of y[w, s] for one method × evaluation × metric."""
    worlds, seeds = np.indices(matrix.shape)
    return pd.DataFrame(
        {
            "world": worlds.ravel(),
            "method": method,
            "evaluation": "two-stage",
            "metric": "Precision@10",
            "seed": seeds.ravel(),
            "value": matrix.ravel(),
        }
    )


def test_variance_components_match_the_one_way_anova_formulas():
    rng = np.random.default_rng(0)
    y = 0.6 + rng.normal(0, 0.05, size=(5, 1)) + rng.normal(0, 0.02, size=(5, 4))
    row = variance_components(values_of(y)).iloc[0]
    w, s = y.shape
    world_means = y.mean(axis=1)
    ms_between = s * world_means.var(ddof=1)
    ms_within = ((y - world_means[:, None]) ** 2).sum() / (w * (s - 1))
    between = max(0.0, (ms_between - ms_within) / s)
    assert row["mean"] == pytest.approx(y.mean())
    assert row["stderr_between_worlds"] == pytest.approx(world_means.std(ddof=1) / np.sqrt(w))
    assert row["sd_within_world"] == pytest.approx(np.sqrt(ms_within))
    assert row["sd_between_worlds"] == pytest.approx(np.sqrt(between))
    assert row["share_between_worlds"] == pytest.approx(between / (between + ms_within))
    assert (row["n_worlds"], row["n_seeds"]) == (5, 4)


def test_the_share_between_worlds_tells_world_noise_from_seed_noise():
    rng = np.random.default_rng(1)
    worlds_only = 0.5 + rng.normal(0, 0.1, size=(40, 1)) + rng.normal(0, 0.001, size=(40, 5))
    seeds_only = 0.5 + rng.normal(0, 0.1, size=(40, 5))
    share = variance_components(
        pd.concat([values_of(worlds_only, "ce"), values_of(seeds_only, "ips")])
    ).set_index("method")["share_between_worlds"]
    assert share["ce"] > 0.99 and share["ips"] < 0.1


def test_worlds_with_different_seed_counts_are_refused():
    values = values_of(np.ones((3, 3)))
    with pytest.raises(ValueError, match="same seeds"):
        variance_components(values.iloc[:-1])


def test_the_world_seed_factor_reseeds_every_stage_and_nothing_else():
    base = profile_config("smoke")
    cell = cell_config(base, "world_seed", 7)
    assert all(getattr(cell, stage).seed == 7 for stage in WORLD_STAGES)
    assert cell.seeds == base.seeds and cell.candidates == base.candidates


@pytest.mark.slow
def test_reproduce_world_seeds_end_to_end(tmp_path: Path, tiny_world: Path):
    plain, many = tmp_path / "plain", tmp_path / "many"
    base = cli(tmp_path, tiny_world, plain, seeds="0-1")
    assert subprocess.run(base, env=env(), capture_output=True).returncode == 0
    command = [*cli(tmp_path, tiny_world, many, seeds="0-1"), "--world-seeds", "0-2"]
    done = subprocess.run(command, env=env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    for seed in range(3):
        run = json.loads((many / f"world-{seed}" / "run.json").read_text())
        assert all(run["config"][stage]["seed"] == seed for stage in WORLD_STAGES)
    # World 0 is the default world: the same runs as a plain reproduce, bit for bit.
    assert (many / "world-0" / "results.csv").read_bytes() == (plain / "results.csv").read_bytes()
    table = pd.read_csv(many / "worlds_summary.csv")
    assert set(table["n_worlds"]) == {3} and set(table["n_seeds"]) == {2}
    assert len(pd.read_csv(many / "worlds.csv")) == 3 * 2 * len(table)
    text = (many / "summary.md").read_text()
    assert "over 3 worlds" in text and "share between" in text and "--world-seeds 0-2" in text


@pytest.mark.parametrize(
    ("value", "message"), [("x", "--world-seeds"), ("1", "at least two"), ("0-0", "at least two")]
)
def test_bad_world_seeds_are_refused(tmp_path: Path, tiny_world: Path, value: str, message: str):
    command = [*cli(tmp_path, tiny_world, tmp_path / "out"), "--world-seeds", value]
    done = subprocess.run(command, env=env(), capture_output=True, text=True)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()


def test_a_committed_multi_world_folder_is_summarized_from_its_worlds_csv(tmp_path: Path):
    """Committed folders keep `worlds.csv` and each world's summary, not every epoch's rows."""
    from twostage.pipeline.api import summarize

    committed = Path(__file__).resolve().parents[1] / "results" / "worlds-ml-100k"
    folder = tmp_path / "worlds"
    shutil.copytree(committed, folder)
    assert not list(folder.glob("world-*/results.csv"))
    (folder / "summary.md").unlink()
    text = summarize(folder)
    assert text == (committed / "summary.md").read_text()
    assert "over 5 worlds — ml-100k" in text.splitlines()[0]
    assert (folder / "worlds_summary.csv").read_text() == (
        committed / "worlds_summary.csv"
    ).read_text()
