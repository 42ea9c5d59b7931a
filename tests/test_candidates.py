"""Candidate-generator runs: test users evaluated once, at the best epoch, give today's results."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from tiny import TINY_OVERRIDES, tiny_config

from twostage.pipeline.cache import StageCache
from twostage.pipeline.candidates import train_candidate_generator
from twostage.pipeline.config import CandidateConfig
from twostage.pipeline.experiment import Prepared, prepare
from twostage.results import summary_table

EPOCHS = 4


def frame(result: dict, method: str, seed: int) -> pd.DataFrame:
    rows = pd.DataFrame(result["rows"])
    return rows.assign(method=method, seed=seed, best_epoch=result["best_epoch"], dataset="tiny")


def split(rows: pd.DataFrame, name: str) -> pd.DataFrame:
    """The rows of one split, in a fixed order (the lazy path appends its test rows last)."""
    part = rows[rows["split"] == name]
    return part.sort_values(["epoch", "evaluation", "metric"]).reset_index(drop=True)


@pytest.fixture(scope="module")
def world(
    tiny_world: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Prepared, CandidateConfig]:
    """The tiny world's stages, and its candidate settings with `EPOCHS` epochs."""
    config = tiny_config(tiny_world, candidates={**TINY_OVERRIDES["candidates"], "epochs": EPOCHS})
    cache = StageCache(tmp_path_factory.mktemp("cache"))
    return prepare(config, cache=cache, verbose=False), config.candidates


@pytest.mark.parametrize(("method", "seed"), [("ce", 1), ("2s", 1)])
def test_test_users_evaluated_once_at_the_best_epoch_equal_every_epoch_evaluation(
    method: str, seed: int, world: tuple[Prepared, CandidateConfig]
):
    prepared, candidates = world
    run = (method, seed, prepared.context, candidates, prepared.device)
    lazy_result = train_candidate_generator(*run)
    every_result = train_candidate_generator(*run, test_every_epoch=True)
    lazy, every = frame(lazy_result, method, seed), frame(every_result, method, seed)

    best = lazy_result["best_epoch"]
    assert best == every_result["best_epoch"]
    for name in ("val", "all"):  # every epoch, the same floats
        assert split(lazy, name).equals(split(every, name))
        assert sorted(split(lazy, name)["epoch"].unique()) == list(range(EPOCHS))
    test = split(lazy, "test")
    assert set(test["epoch"]) == {best}
    assert test.equals(split(every[every["epoch"] == best], "test"))  # exact equality
    assert summary_table(lazy).equals(summary_table(every))
    # The world is chosen so that evaluating any other epoch (the last, say) would be caught.
    assert best < EPOCHS - 1
    for epoch in set(range(EPOCHS)) - {best}:
        other = split(every[every["epoch"] == epoch], "test").assign(epoch=best)
        assert not test.equals(other)


def test_without_a_valid_selection_metric_epoch_0_is_kept_and_evaluated(
    world: tuple[Prepared, CandidateConfig], monkeypatch: pytest.MonkeyPatch
):
    prepared, candidates = world
    evaluator = prepared.context.evaluator
    metrics = evaluator.two_stage_metrics
    monkeypatch.setattr(  # no validation user with a true positive: every selection value NaN
        evaluator, "two_stage_metrics", lambda *a: {**metrics(*a), "Precision@10": float("nan")}
    )
    run = ("ce", 0, prepared.context, candidates, prepared.device)
    lazy_result = train_candidate_generator(*run)
    every_result = train_candidate_generator(*run, test_every_epoch=True)
    assert lazy_result["best_epoch"] == every_result["best_epoch"] == 0
    assert lazy_result["state"].keys() == every_result["state"].keys() != set()
    lazy, every = frame(lazy_result, "ce", 0), frame(every_result, "ce", 0)
    assert split(lazy, "test").equals(split(every[every["epoch"] == 0], "test"))
