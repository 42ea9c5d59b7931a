"""Candidate-generator runs: test users evaluated once, at the best epoch, give today's results."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from tiny import TINY_OVERRIDES, tiny_config

from twostage.models import Nominator
from twostage.pipeline.cache import StageCache
from twostage.pipeline.candidates import evaluate_epoch, train_candidate_generator
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
    metrics = evaluator.metrics_from_top

    def without_selection(*args):  # no validation user with a true positive: every value NaN
        got = metrics(*args)
        return {**got, "two-stage": {**got["two-stage"], "Precision@10": float("nan")}}

    monkeypatch.setattr(evaluator, "metrics_from_top", without_selection)
    run = ("ce", 0, prepared.context, candidates, prepared.device)
    lazy_result = train_candidate_generator(*run)
    every_result = train_candidate_generator(*run, test_every_epoch=True)
    assert lazy_result["best_epoch"] == every_result["best_epoch"] == 0
    assert lazy_result["state"].keys() == every_result["state"].keys() != set()
    lazy, every = frame(lazy_result, "ce", 0), frame(every_result, "ce", 0)
    assert split(lazy, "test").equals(split(every[every["epoch"] == 0], "test"))


def test_an_epoch_evaluated_from_blocks_of_top_items_equals_the_whole_score_matrix(
    world: tuple[Prepared, CandidateConfig], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`evaluate_epoch` scores users in blocks (and large catalogues' items in chunks) and keeps
    their top items only; its rows equal the evaluator's rewards and metrics of the whole score
    matrix, in any block and chunk size."""
    prepared, candidates = world
    context = prepared.context
    torch.manual_seed(3)
    model = Nominator(context.catalog)
    with torch.no_grad():
        scores = model.score_all(torch.arange(context.catalog.n_users))
    ev = context.evaluator
    expected = {
        ("all", "one-stage", "reward"): ev.one_stage_reward(scores),
        ("all", "two-stage", "reward"): ev.two_stage_reward(scores),
    }
    for split_name, users in (("val", context.val_users), ("test", context.test_users)):
        for evaluation, metrics in (
            ("one-stage", ev.one_stage_metrics(scores[users], users)),
            ("two-stage", ev.two_stage_metrics(scores[users], users)),
        ):
            expected.update({(split_name, evaluation, k): v for k, v in metrics.items()})
    # Item chunks smaller than the catalogue take the chunked path of large catalogues.
    for block, chunk in ((1, 10**9), (7, 10**9), (10_000, 10**9), (7, 5), (10_000, 13)):
        monkeypatch.setattr("twostage.pipeline.candidates.EVAL_BLOCK_USERS", block)
        monkeypatch.setattr("twostage.pipeline.candidates.EVAL_BLOCK_ITEMS", chunk)
        rows = evaluate_epoch(model, context, prepared.device)
        got = {(r["split"], r["evaluation"], r["metric"]): r["value"] for r in rows}
        assert got.keys() == expected.keys()
        for key, value in expected.items():  # same rankings, so the same float arithmetic
            assert got[key] == pytest.approx(value, rel=1e-12, abs=1e-12), (block, chunk, key)
