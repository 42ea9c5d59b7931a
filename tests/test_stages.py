"""Stages 1–5 on a tiny world: the world, the bandit log, the oracle ranker, numerics errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny import tiny_config

from twostage.errors import NumericsError
from twostage.losses import ips_loss
from twostage.pipeline.cache import StageCache
from twostage.pipeline.config import with_overrides
from twostage.pipeline.experiment import prepare


def test_stages_produce_a_consistent_world(tiny_world: Path, tmp_path: Path):
    prepared = prepare(tiny_config(tiny_world), cache=StageCache(tmp_path), verbose=False)
    world, log = prepared.world, prepared.log
    n_users, n_items = prepared.data.n_users, prepared.data.n_items
    assert world.probabilities.shape == (n_users, n_items)
    assert world.positive_share == pytest.approx(0.08, abs=0.01)  # default rule off ML-1M
    assert torch.equal(world.labels, world.probabilities >= world.cut)
    assert len(log) == n_users * 5
    # five distinct items per user, propensities are the policy's single-draw probabilities
    per_user = log.items.view(n_users, 5)
    assert all(len(set(row.tolist())) == 5 for row in per_user)
    assert ((log.propensities > 0) & (log.propensities <= 1)).all()
    assert torch.equal(log.rewards, world.labels[log.users, log.items].float())


def test_the_oracle_ranker_scores_by_the_simulators_truth(tiny_world: Path, tmp_path: Path):
    config = tiny_config(tiny_world, ranker={"epochs": 1, "oracle": True})
    prepared = prepare(config, cache=StageCache(tmp_path), verbose=False)
    scores = prepared.context.ranker_scores
    order = scores.argsort(dim=1)
    assert torch.equal(order, prepared.world.probabilities_at_mean.argsort(dim=1))
    # the oracle's top candidate is always a true positive when one exists in the catalogue
    top = scores.argmax(1)
    has_positive = prepared.world.truth.any(1)
    assert prepared.world.truth[torch.arange(len(top)), top][has_positive].all()


def test_nan_propensities_stop_training_with_a_clear_message():
    logits = torch.zeros(3, 4, requires_grad=True)
    with pytest.raises(NumericsError, match="propensit"):
        ips_loss(logits, torch.tensor([0, 1, 2]), torch.tensor([0.2, float("nan"), 0.3]))


def test_a_numerics_error_in_training_names_stage_epoch_and_step(tiny_world, tmp_path):
    from twostage.pipeline.candidates import train_candidate_generator

    config = tiny_config(tiny_world)
    prepared = prepare(config, cache=StageCache(tmp_path), verbose=False)
    context = prepared.context
    context.propensities = context.propensities.clone()
    context.propensities[3] = float("nan")  # slipped past the log check
    small = with_overrides(config, {"candidates": {"batch_size": 8}}).candidates
    with pytest.raises(NumericsError, match=r"candidate generator ips seed 0, epoch 0, step 0"):
        train_candidate_generator("ips", 0, context, small, prepared.device)
