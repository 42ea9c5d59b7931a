"""The on-demand world (`world.mode = "on-demand"`) against exact computation on a tiny catalogue:
counter-based times, labels of pairs, bit-packed truths, the sampled cut, the bandit log's
draws without replacement, and the pipeline end to end."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats
from tiny import tiny_config

from twostage.counter_random import pair_normals, uniforms
from twostage.errors import ConfigError
from twostage.evaluation import pack_truth
from twostage.models import ImpressionSimulator, Nominator
from twostage.pipeline import ondemand
from twostage.pipeline.cache import StageCache
from twostage.pipeline.config import WorldConfig, validate, with_overrides
from twostage.pipeline.experiment import prepare
from twostage.pipeline.training import load_model

CPU = torch.device("cpu")


# -- counter-based random numbers ----------------------------------------------------------------


def test_a_pairs_normal_does_not_depend_on_what_else_is_drawn() -> None:
    users, items = torch.randint(0, 1000, (5000,)), torch.randint(0, 10**6, (5000,))
    z = pair_normals(users, items, 10**6, seed=7)
    order = torch.randperm(5000)
    assert torch.equal(pair_normals(users[order], items[order], 10**6, seed=7), z[order])
    assert torch.equal(pair_normals(users[:10], items[:10], 10**6, seed=7), z[:10])
    assert not torch.equal(pair_normals(users, items, 10**6, seed=8), z)
    assert not torch.equal(pair_normals(users, items, 10**6, seed=7, stream=2), z)


def test_counter_normals_and_uniforms_have_their_distributions() -> None:
    n = 200_000
    z = pair_normals(torch.arange(n) // 500, torch.arange(n) % 500, 500, seed=0).numpy()
    assert stats.kstest(z, "norm").pvalue > 1e-3
    u = uniforms(np.arange(n, dtype=np.uint64), seed=3, stream=1)
    assert u.min() >= 0 and u.max() < 1 and stats.kstest(u, "uniform").pvalue > 1e-3
    # neighbouring seeds and counters are unrelated
    v = uniforms(np.arange(n, dtype=np.uint64), seed=4, stream=1)
    assert abs(np.corrcoef(u, v)[0, 1]) < 0.01 and abs(np.corrcoef(u[:-1], u[1:])[0, 1]) < 0.01


# -- the world's parts against the dense computation ----------------------------------------------


@pytest.fixture(scope="module")
def parts(tiny_world: Path):
    """The tiny world's data, a trained simulator and its on-demand world (all users evaluated)."""
    from twostage.data import load_movielens
    from twostage.models import ImpressionSimulator
    from twostage.pipeline.config import SimulatorConfig
    from twostage.pipeline.stages import train_simulator
    from twostage.pipeline.training import load_model

    data = load_movielens(str(tiny_world))
    state = train_simulator(data, SimulatorConfig(epochs=1, validate_every=4), CPU).state
    config = WorldConfig(mode="on-demand", eval_users=data.n_users, cut_sample=50_000)
    world = ondemand.build_ondemand_world(data, state, config, CPU)
    simulator = load_model(ImpressionSimulator, data.catalog, state, CPU)
    return data, state, simulator, world


def all_pairs(n_users: int, n_items: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.arange(n_users).repeat_interleave(n_items), torch.arange(n_items).repeat(n_users)


def test_labels_are_the_simulators_probability_at_the_pairs_time_cut(parts) -> None:
    data, _, simulator, world = parts
    users, items = all_pairs(data.n_users, data.n_items)
    labels, times = ondemand.pair_labels(simulator, world, users, items, CPU)
    z = pair_normals(users, items, data.n_items, world.seed)
    want_times = (world.time_mean[users] + world.time_std[users] * z).float()
    assert torch.equal(times, want_times)
    # the dense world's computation of the same pairs at the same times
    grid = times.view(data.n_users, data.n_items)
    dense = simulator.probabilities_all(torch.arange(data.n_users), grid).reshape(-1)
    sure = (dense - world.cut).abs() > 1e-5
    assert torch.equal(labels[sure], (dense >= world.cut)[sure])
    assert 0.02 < labels.float().mean() < 0.2


def test_the_evaluated_users_truth_is_the_probability_at_their_mean_time_cut(parts) -> None:
    data, _, simulator, world = parts
    users = world.eval_users
    dense = simulator.probabilities_all(users, world.mean_timestamps[users])
    truth = torch.zeros_like(dense, dtype=torch.bool)
    sure = (dense - world.cut).abs() > 1e-5
    truth[sure] = (dense > world.cut)[sure]
    unpacked = (world.eval_truth[:, :, None] >> torch.arange(8, dtype=torch.uint8)) & 1
    unpacked = unpacked.reshape(len(users), -1)[:, : data.n_items].bool()
    assert torch.equal(unpacked[sure], truth[sure])
    # blocks of items give the same truth as one block
    parts = simulator.first_layer_parts(users)
    chunked = ondemand.item_chunked_probabilities(
        simulator, *parts, world.mean_timestamps[users], 7
    )
    torch.testing.assert_close(chunked, dense, atol=1e-6, rtol=0)
    assert torch.equal(pack_truth(chunked > world.cut), world.eval_truth) or not sure.all()


def test_the_sampled_cut_is_near_the_exact_quantile(parts) -> None:
    data, _, simulator, world = parts
    users, items = all_pairs(data.n_users, data.n_items)
    labels, _ = ondemand.pair_labels(simulator, world, users, items, CPU)
    # 50,000 sampled pairs: the share of all pairs above the sampled cut is within ±0.5%
    # of the asked 8% (binomial s.e. 0.12%, and the 6,000 pairs are themselves a sample)
    assert labels.float().mean().item() == pytest.approx(0.08, abs=0.01)
    assert world.positive_share == pytest.approx(0.08, abs=1e-3)
    assert int(world.sample_histogram.sum()) == 50_000


# -- the bandit log's draws -----------------------------------------------------------------------


def exact_ordered_pairs(p: np.ndarray) -> dict[tuple[int, int], float]:
    """P(first draw i, second draw j) of two draws without replacement from p."""
    return {(i, j): p[i] * p[j] / (1 - p[i]) for i, j in itertools.permutations(range(len(p)), 2)}


@pytest.mark.parametrize(
    ("max_redraws", "chunk"), [(64, 1024), (0, 1024), (64, 2), (0, 2), (64, 1)]
)
def test_draws_without_replacement_have_the_sequential_distribution(
    monkeypatch, max_redraws, chunk
):
    """Two draws from a peaked softmax over 4 items, 40,000 users: the ordered pairs' counts
    fit p_i p_j / (1 − p_i) (χ²); with no redraws allowed, the masked draw gives the same, and
    so do chunks of the two-level inverse CDF that split the items."""
    monkeypatch.setattr(ondemand, "MAX_REDRAWS", max_redraws)
    monkeypatch.setattr(ondemand, "DRAW_CHUNK", chunk)
    p = np.array([0.55, 0.25, 0.15, 0.05])
    n = 40_000
    weights = torch.from_numpy(3 * p).expand(n, 4).contiguous()  # unnormalised
    drawn = ondemand.draw_without_replacement(weights, torch.arange(n), 2, seed=5)
    assert (drawn[:, 0] != drawn[:, 1]).all()
    exact = exact_ordered_pairs(p)
    keys = list(exact)
    codes = (drawn[:, 0] * 4 + drawn[:, 1]).numpy()
    counts = np.array([(codes == i * 4 + j).sum() for i, j in keys])
    expected = n * np.array([exact[key] for key in keys])
    assert counts.sum() == n
    assert stats.chisquare(counts, expected).pvalue > 1e-3


@pytest.mark.parametrize("chunk", [1024, 4])
def test_a_users_draws_do_not_depend_on_the_block_of_users(monkeypatch, chunk) -> None:
    monkeypatch.setattr(ondemand, "DRAW_CHUNK", chunk)
    g = torch.Generator().manual_seed(0)
    weights = torch.randn(50, 30, generator=g, dtype=torch.float64).exp()
    weights[:, ::7] = 0.0  # items of weight zero are never drawn
    users = torch.arange(100, 150)
    whole = ondemand.draw_without_replacement(weights, users, 5, seed=1)
    halves = torch.cat(
        [
            ondemand.draw_without_replacement(weights[:20], users[:20], 5, seed=1),
            ondemand.draw_without_replacement(weights[20:], users[20:], 5, seed=1),
        ]
    )
    assert torch.equal(whole, halves)
    assert all(len(set(row.tolist())) == 5 for row in whole)
    assert (weights.gather(1, whole) > 0).all()


def test_a_draw_that_rounding_points_at_a_zero_weight_is_flagged(monkeypatch) -> None:
    """The chunk sums and a chunk's running sum round differently; a uniform in the gap between
    them would point past the chunk's last positive item. Such a draw is flagged, not kept."""
    monkeypatch.setattr(ondemand, "DRAW_CHUNK", 4)
    weights = torch.tensor([[1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0]], dtype=torch.float64)
    chunk_cdf = torch.tensor([[2.0 + 1e-9, 6.0 + 1e-9]], dtype=torch.float64)  # rounded up
    x_in_gap = (2.0 + 0.5e-9) / (6.0 + 1e-9)
    u = torch.tensor([x_in_gap, 0.1, 0.9], dtype=torch.float64)
    rows = torch.zeros(3, dtype=torch.long)
    items, ok = ondemand._draw(weights, chunk_cdf, rows, u)
    assert ok.tolist() == [False, True, True]
    assert items[1] == 0 and items[2] == 7


# -- end to end -----------------------------------------------------------------------------------


def test_the_pipeline_runs_on_the_on_demand_world(tiny_world: Path, tmp_path: Path) -> None:
    from twostage.pipeline.candidates import train_candidate_generator

    config = tiny_config(tiny_world, world={"mode": "on-demand", "eval_users": 40})
    prepared = prepare(config, cache=StageCache(tmp_path), verbose=False)
    world, log, context = prepared.world, prepared.log, prepared.context
    assert len(world.eval_users) == 40 and world.n_val == 20
    assert torch.equal(context.val_users, torch.arange(20))
    assert torch.equal(context.test_users, torch.arange(20, 40))
    per_user = log.items.view(-1, 5)
    assert all(len(set(row.tolist())) == 5 for row in per_user)
    simulator = load_model(
        ImpressionSimulator, prepared.data.catalog, prepared.simulator.state, CPU
    )
    labels, times = ondemand.pair_labels(simulator, world, log.users, log.items, CPU)
    assert torch.equal(log.rewards, labels.float()) and torch.equal(log.timestamps, times)
    # the logged propensity is the policy's single-draw softmax probability
    policy = load_model(Nominator, prepared.data.catalog, prepared.logging_policy.state, CPU)
    with torch.no_grad():
        probs = torch.softmax(policy.score_all(torch.arange(prepared.data.n_users)).double(), 1)
    want = probs[log.users, log.items].float()
    torch.testing.assert_close(log.propensities, want, rtol=1e-5, atol=0)
    # 2-IPS reads the ranker's scores from its vectors
    scores = context.ranker_rows(CPU)(torch.tensor([3, 7]))
    assert scores.shape == (2, prepared.data.n_items)
    result = train_candidate_generator("2s", 0, context, config.candidates, CPU)
    splits = {row["split"] for row in result["rows"]}
    assert splits == {"all", "val", "test"}
    # cached stages give the same world
    again = prepare(config, cache=StageCache(tmp_path), verbose=False)
    assert all(again.cached.values())
    assert torch.equal(again.world.eval_truth, world.eval_truth)


def test_settings_the_on_demand_world_cannot_honour_are_refused(tiny_world: Path) -> None:
    config = tiny_config(tiny_world, world={"mode": "on-demand"})
    validate(config)
    bad = [
        ({"world": {"mode": "sparse"}}, "world.mode"),
        ({"world": {"mode": "on-demand", "eval_users": 1}}, "world.eval_users"),
        ({"world": {"mode": "on-demand", "cut_sample": 0}}, "world.cut_sample"),
        ({"world": {"mode": "on-demand"}, "ranker": {"oracle": True}}, "ranker.oracle"),
        ({"world": {"mode": "on-demand"}, "bandit": {"propensity": "inclusion"}}, "propensity"),
    ]
    for overrides, name in bad:
        with pytest.raises(ConfigError, match=name):
            validate(with_overrides(config, overrides))
