"""Off-policy estimators, the two-stage policy's probabilities, and `twostage evaluate`."""

from __future__ import annotations

import io
import itertools
import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from twostage.cli import build_parser, experiment_config, main
from twostage.data.synthetic import SyntheticShape, write_synthetic_movielens
from twostage.ope import (
    importance_weights,
    ips_estimate,
    snips_estimate,
    true_value,
    two_stage_policy,
)
from twostage.pipeline import reproduce
from twostage.pipeline.cache import StageCache
from twostage.pipeline.config import config_from_dict, profile_config, with_overrides
from twostage.pipeline.experiment import prepare
from twostage.propensity import exact_inclusion_probabilities

TOY_PROBS = torch.tensor([[0.2, 0.6, 0.2], [0.5, 0.25, 0.25], [0.1, 0.1, 0.8]])
TOY_LOG = dict(
    users=torch.tensor([0, 1, 2]),
    items=torch.tensor([1, 0, 2]),
    rewards=torch.tensor([1.0, 0.0, 1.0]),
    propensities=torch.tensor([0.5, 0.25, 0.2]),
)


def test_ips_and_snips_match_a_hand_computation():
    # weights 0.6/0.5 = 1.2, 0.5/0.25 = 2, 0.8/0.2 = 4; rewards 1, 0, 1
    assert ips_estimate(TOY_PROBS, **TOY_LOG) == pytest.approx((1.2 + 4.0) / 3)
    assert snips_estimate(TOY_PROBS, **TOY_LOG) == pytest.approx((1.2 + 4.0) / 7.2)
    weights = importance_weights(
        TOY_PROBS, TOY_LOG["users"], TOY_LOG["items"], TOY_LOG["propensities"]
    )
    assert weights.tolist() == pytest.approx([1.2, 2, 4])


def test_true_value_is_the_expected_label_under_the_policy():
    labels = torch.tensor([[1, 0, 0], [0, 1, 1], [0, 0, 0]], dtype=torch.bool)
    assert true_value(TOY_PROBS, labels) == pytest.approx((0.2 + 0.5 + 0.0) / 3)


def _simulate_logs(logging: torch.Tensor, k: int, n_logs: int, seed: int) -> torch.Tensor:
    """(n_logs, n_users, k) items drawn successively without replacement (Gumbel-top-k)."""
    g = torch.Generator().manual_seed(seed)
    uniform = torch.rand((n_logs, *logging.shape), generator=g, dtype=torch.float64)
    gumbel = -torch.log(-torch.log(uniform))
    return torch.topk(logging.log() + gumbel, k, dim=2).indices


@pytest.mark.parametrize(
    "k, propensity, unbiased",
    [
        (1, "single", True),
        (3, "inclusion", True),
        (3, "single", False),
    ],
)
def test_ips_is_unbiased_with_the_impressions_true_propensity(k, propensity, unbiased):
    g = torch.Generator().manual_seed(0)
    n_users, n_items, n_logs = 3, 5, 20_000
    logging = torch.softmax(torch.randn(n_users, n_items, generator=g, dtype=torch.float64), 1)
    target = torch.softmax(torch.randn(n_users, n_items, generator=g, dtype=torch.float64) * 2, 1)
    labels = torch.rand(n_users, n_items, generator=g) < 0.4
    labels[:, 0] = True
    items = _simulate_logs(logging, k, n_logs, seed=k)  # (n_logs, n_users, k)
    users = torch.arange(n_users)[None, :, None].expand_as(items).reshape(-1)
    items = items.reshape(-1)
    if propensity == "single":
        mu = logging[users, items]
    else:
        mu = exact_inclusion_probabilities(logging, k)[users, items] / k
    rewards = labels[users, items].double()
    # One call over every log at once is the mean of the per-log estimates (equal sizes).
    estimate = ips_estimate(target, users, items, rewards, mu)
    per_log = (importance_weights(target, users, items, mu) * rewards).view(n_logs, -1).mean(1)
    stderr = per_log.std().item() / n_logs**0.5
    truth = true_value(target, labels)
    assert estimate == pytest.approx(per_log.mean().item())
    if unbiased:
        assert abs(estimate - truth) < 4 * stderr
    else:
        assert abs(estimate - truth) > 10 * stderr  # single-draw propensities past position 1


def _exact_two_stage(candidate: torch.Tensor, ranker: torch.Tensor, slate_size: int):
    """p(a|x) by enumerating every ordered slate drawn with replacement."""
    n_users, n_items = candidate.shape
    out = torch.zeros(n_users, n_items, dtype=torch.float64)
    for slate in itertools.product(range(n_items), repeat=slate_size):
        chance = candidate[:, list(slate)].prod(dim=1)
        distinct = sorted(set(slate))
        q = torch.softmax(ranker[:, distinct], dim=1)
        out[:, distinct] += chance[:, None] * q
    return out


def test_two_stage_probabilities_sum_to_one_and_match_enumeration():
    g = torch.Generator().manual_seed(5)
    candidate = torch.softmax(torch.randn(3, 4, generator=g, dtype=torch.float64) * 1.5, 1)
    ranker = torch.randn(3, 4, generator=g, dtype=torch.float64) * 2
    labels = torch.rand(3, 4, generator=g) < 0.5
    generator = torch.Generator().manual_seed(1)
    policy = two_stage_policy(
        candidate,
        ranker,
        slate_size=3,
        n_slates=20_000,
        labels=labels,
        generator=generator,
        chunk_users=2,
    )
    exact = _exact_two_stage(candidate, ranker, 3)
    assert torch.allclose(policy.probs.sum(1), torch.ones(3, dtype=torch.float64))
    assert torch.allclose(exact.sum(1), torch.ones(3, dtype=torch.float64))
    assert ((policy.probs - exact).abs() <= 4 * policy.stderr + 1e-9).all()
    # the value is Σ p̂ · label on the same candidate sets, and within its MC error of the exact
    assert policy.value == pytest.approx(true_value(policy.probs, labels), rel=1e-9)
    assert abs(policy.value - true_value(exact, labels)) < 4 * policy.value_stderr


def test_a_one_item_candidate_set_shows_the_generators_draw():
    candidate = torch.softmax(torch.randn(2, 6, dtype=torch.float64), 1)
    policy = two_stage_policy(
        candidate,
        torch.randn(2, 6),
        slate_size=1,
        n_slates=30_000,
        generator=torch.Generator().manual_seed(0),
    )
    assert torch.allclose(policy.probs, candidate, atol=0.01)


# ---------------------------------------------------------------- end to end
TINY = {
    "seeds": (0, 1),
    "methods": ("ce", "ips-topk"),
    "simulator": {"epochs": 1, "validate_every": 20},
    "logging_policy": {"n_train": 600, "n_val": 300, "epochs": 2},
    "bandit": {"propensity": "inclusion", "inclusion_samples": 400},
    "ranker": {"epochs": 1},
    # small batches: the tiny log has too few positives for a batch of 128
    "candidates": {"epochs": 2, "n_slates": 4, "slate_size": 5, "eval_k": 5, "batch_size": 8},
}


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("ope")
    world = write_synthetic_movielens(root / "world", shape=SyntheticShape(60, 60, 1500), seed=3)
    config = with_overrides(profile_config("smoke"), TINY)
    config = with_overrides(config, {"dataset": str(world), "device": "cpu"})
    out = reproduce(config, root / "out", cache_dir=root / "cache", verbose=False)
    assert main(["evaluate", str(out), "--cache-dir", str(root / "cache"), "--n-slates", "50"]) == 0
    return config, root, out


def test_evaluate_writes_estimates_for_the_logging_policy_and_every_run(evaluated):
    config, _, out = evaluated
    frame = pd.read_csv(out / "ope.csv")
    assert set(frame.method) == {"logging", "ce", "ips-topk"}
    assert (
        len(frame) == (1 + 2 * 2) * 2 * 2 * 2
    )  # policies × evaluations × propensities × estimators
    assert set(frame.estimator) == {"ips", "snips", "two-stage-ips", "two-stage-snips"}
    assert (frame.bias - (frame.estimate - frame.true_value)).abs().max() < 1e-12
    truths = frame[frame.estimator == "ips"].groupby("method").true_value.unique()
    assert set(truths["ce"]).isdisjoint(truths["ips-topk"])  # both methods trained, differently
    text = (out / "ope.md").read_text()
    assert "Top-K IPS" in text and "Greedy top-item reward" in text


def test_evaluating_the_logging_policy_by_itself_recovers_the_logs_mean_reward(evaluated):
    config, root, out = evaluated
    prepared = prepare(config, cache=StageCache(root / "cache"), verbose=False)
    frame = pd.read_csv(out / "ope.csv")
    row = frame[
        (frame.method == "logging") & (frame.estimator == "ips") & (frame.propensity == "single")
    ].iloc[0]
    # every weight is π(a)/π(a) = 1, so IPS is the log's mean reward
    assert row.estimate == pytest.approx(prepared.log.rewards.mean().item(), rel=1e-6)


def test_the_inclusion_log_and_the_saved_best_epoch_models(evaluated):
    config, root, out = evaluated
    prepared = prepare(config, cache=StageCache(root / "cache"), verbose=False)
    log = prepared.log
    assert torch.equal(log.propensities, log.inclusion_propensities)
    assert (log.inclusion_propensities >= log.single_propensities).all()
    assert (log.inclusion_propensities <= 1).all() and log.inclusion_stderr.shape == (300,)
    results = pd.read_csv(out / "results.csv")
    from twostage.models import Nominator

    for method in config.methods:
        for seed in config.seeds:
            state = torch.load(io.BytesIO((out / "runs" / f"{method}-seed{seed}.pt").read_bytes()))
            model = Nominator(prepared.data.catalog)
            model.load_state_dict(state)
            with torch.no_grad():
                scores = model.eval().score_all(torch.arange(prepared.data.n_users))
            run = results[(results.method == method) & (results.seed == seed)]
            best = run[
                (run.epoch == run.best_epoch)
                & (run.metric == "reward")
                & (run.evaluation == "one-stage")
            ].value.item()
            assert prepared.context.evaluator.one_stage_reward(scores) == pytest.approx(best)


def test_config_round_trips_through_run_json(evaluated):
    config, _, out = evaluated
    assert config_from_dict(json.loads((out / "run.json").read_text())["config"]) == config


def test_the_propensity_flag_and_evaluate_errors(tmp_path: Path, capsys):
    args = build_parser().parse_args(["reproduce", "--propensity", "inclusion"])
    assert experiment_config(args).bandit.propensity == "inclusion"
    assert experiment_config(build_parser().parse_args(["reproduce"])).bandit.propensity == "single"
    assert main(["evaluate", str(tmp_path)]) == 2
    assert "run.json" in capsys.readouterr().err
