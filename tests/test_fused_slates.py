"""Tests of twostage.fused_slates: the fused slate sampler of 2-IPS (`slate_sampler = "fused"`).

Its sets must have exactly the default sampler's distribution (i.i.d. draws from the row's
policy), and its coefficients must be those the default bookkeeping computes from the same sets.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats
from tiny import tiny_config

pytest.importorskip("numba")

from twostage import fused_slates, losses, sampling_kernel  # noqa: E402
from twostage.counter_random import splitmix64  # noqa: E402
from twostage.errors import ConfigError, NumericsError  # noqa: E402
from twostage.losses import slate_policy, two_stage_ips_loss  # noqa: E402
from twostage.pipeline import config as config_module  # noqa: E402
from twostage.sampling import bucket_count  # noqa: E402

CPU = torch.device("cpu")


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _p_value(counts: list[int] | torch.Tensor, probs: list[float] | torch.Tensor) -> float:
    counts, probs = torch.as_tensor(counts).double(), torch.as_tensor(probs).double()
    kept = probs > 0
    expected = probs[kept] / probs[kept].sum() * counts.sum()
    return float(stats.chisquare(counts[kept].numpy(), expected.numpy()).pvalue)


@pytest.mark.parametrize("slate_size", [2, 3])
def test_sets_have_the_distribution_of_iid_draws(slate_size: int) -> None:
    probs = torch.tensor([[0.5, 0.25, 0.15, 0.1], [0.05, 0.05, 0.1, 0.8]])
    n_items = probs.size(1)
    draws = fused_slates.slate_draws(probs, np.uint64(11), 40_000, slate_size)
    code = torch.zeros(draws.shape[:2], dtype=torch.long)
    for position in range(slate_size):  # the draws in order: each ordered tuple has mass Π p
        code = code * n_items + draws[..., position]
    for row in range(2):
        tuples = list(itertools.product(range(n_items), repeat=slate_size))
        expected = [math.prod(float(probs[row, item]) for item in items) for items in tuples]
        observed = torch.bincount(code[row], minlength=n_items**slate_size)
        assert _p_value(observed, expected) > 1e-4, row


def test_draws_follow_a_peaked_policy_over_a_catalogue_and_skip_zero_weights() -> None:
    n_items = 500
    logits = torch.randn(3, n_items, generator=_gen(30)) * 2
    logits[2, 200:] = -25.0  # near-zero items crowd the low buckets: scanned draws
    probs = torch.softmax(logits, dim=1)
    probs[1, ::7] = 0.0  # items of weight zero are never drawn
    draws = fused_slates.slate_draws(probs, np.uint64(3), 4000, 30)
    for row in range(3):
        counts = torch.bincount(draws[row].reshape(-1), minlength=n_items).double()
        order = probs[row].argsort()  # pool items of similar mass into 40 cells
        cell = (probs[row][order].double().cumsum(0) * 40).long().clamp(max=39)
        observed = torch.zeros(40, dtype=torch.float64).index_add_(0, cell, counts[order])
        mass = torch.zeros(40, dtype=torch.float64).index_add_(0, cell, probs[row][order].double())
        assert _p_value(observed, mass) > 1e-4, row
    assert (torch.bincount(draws[1].reshape(-1), minlength=n_items)[::7] == 0).all()


def test_each_draw_is_the_inverse_cdf_of_its_counter_hash() -> None:
    # Integer weights: every CDF is exact, so the draws are pinned to the item.
    weights = torch.randint(0, 6, (4, 37), generator=_gen(8)).double()
    weights[:, 0] = 1.0
    n_slates, slate_size, key = 5, 7, np.uint64(123456789)
    draws = fused_slates.slate_draws(weights, key, n_slates, slate_size)
    m = bucket_count(37)
    counters = np.arange(4 * n_slates * slate_size, dtype=np.uint64)
    bits = splitmix64(counters ^ key)  # SplitMix64 of counter ^ key, as twostage.counter_random
    u = (bits >> np.uint64(11)).astype(np.float64) * 2.0**-53
    edges = (weights.cumsum(1) / weights.sum(1, keepdim=True) * m).numpy()
    v = u.reshape(4, -1) * m
    expected = np.stack([np.searchsorted(edges[row], v[row], side="right") for row in range(4)])
    assert draws.reshape(4, -1).tolist() == expected.tolist()


def _problem(batch: int = 16, n_items: int = 50, seed: int = 0, dtype=torch.float32):
    g = _gen(seed)
    logits = (torch.randn(batch, n_items, generator=g, dtype=dtype) * 1.5).requires_grad_()
    actions = torch.randint(0, n_items, (batch,), generator=g)
    propensities = torch.rand(batch, generator=g) * 0.1 + 1e-3
    ranker = torch.randn(batch, n_items, generator=g) * 2
    return logits, actions, propensities, ranker


@pytest.mark.parametrize(
    ("pooled", "dtype", "rtol"),
    [(False, torch.float32, 1e-5), (True, torch.float32, 1e-5), (False, torch.float64, 1e-12)],
)
def test_the_loss_is_the_default_bookkeeping_of_the_same_sets(
    pooled: bool, dtype: torch.dtype, rtol: float
) -> None:
    logits, actions, propensities, ranker = _problem(dtype=dtype)
    log_mass = None
    if pooled:  # a pool: column 0 exact, a column left out, the rest weighted
        log_mass = torch.randn(logits.shape, generator=_gen(1)).abs()
        log_mass[:, 0], log_mass[:, 7] = 0.0, -torch.inf
        actions = torch.zeros_like(actions)
    settings = {"alpha": 0.3, "n_slates": 40, "slate_size": 6, "temperature": 2.0}
    fused = two_stage_ips_loss(
        logits, actions, propensities, ranker, generator=_gen(5), log_mass=log_mass,
        slate_sampler="fused", **settings,
    )  # fmt: skip
    (fused_grad,) = torch.autograd.grad(fused, logits)
    probs = slate_policy(logits.detach(), settings["temperature"], log_mass)
    sets = fused_slates.slate_draws(
        probs, fused_slates.step_key(_gen(5)), settings["n_slates"], settings["slate_size"]
    )
    if pooled:
        assert not (sets == 7).any()  # a column left out is never drawn
    default = two_stage_ips_loss(
        logits, actions, propensities, ranker, slates=sets, log_mass=log_mass,
        alpha=settings["alpha"], temperature=settings["temperature"],
    )  # fmt: skip
    (default_grad,) = torch.autograd.grad(default, logits)
    torch.testing.assert_close(fused, default, rtol=rtol, atol=0)
    torch.testing.assert_close(fused_grad, default_grad, rtol=rtol, atol=rtol * 1e-4)


def test_coefficients_at_the_training_size_match_a_direct_sum() -> None:
    batch, n_items, n_slates, slate_size = 8, 3883, 100, 30
    g = _gen(2)
    probs = torch.softmax(torch.randn(batch, n_items, generator=g) * 3, dim=1)
    ranker = torch.randn(batch, n_items, generator=g)
    actions = torch.randint(0, n_items, (batch,), generator=g)
    odds = (ranker - ranker.gather(1, actions[:, None])).exp().scatter_(1, actions[:, None], 0.0)
    scale = torch.rand(batch, generator=g, dtype=torch.float64)
    key = np.uint64(77)
    coef = fused_slates.slate_coefficients(probs, odds, actions, scale, key, n_slates, slate_size)
    sets = fused_slates.slate_draws(probs, key, n_slates, slate_size)
    expected = torch.zeros(batch, n_items, dtype=torch.float64)
    for row in range(batch):  # a plain loop over sets: the definition, slowly
        for k in range(n_slates):
            distinct = sets[row, k].unique()
            q = 1.0 / (1.0 + float(odds[row, distinct].double().sum()))
            expected[row, distinct] += q
            expected[row, actions[row]] += q if actions[row] not in distinct else 0.0
    torch.testing.assert_close(coef.double(), expected * scale[:, None], rtol=1e-6, atol=0)


def test_the_same_key_gives_the_same_sets_whatever_the_threads() -> None:
    probs = torch.softmax(torch.randn(64, 300, generator=_gen(4)), dim=1)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = fused_slates.slate_draws(probs, np.uint64(9), 20, 10)
        torch.set_num_threads(2)
        two = fused_slates.slate_draws(probs, np.uint64(9), 20, 10)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)
    assert not torch.equal(one, fused_slates.slate_draws(probs, np.uint64(10), 20, 10))
    assert fused_slates.step_key(_gen(1)) == fused_slates.step_key(_gen(1))


def test_rows_that_cannot_be_drawn_from_are_named() -> None:
    probs = torch.softmax(torch.randn(3, 20, generator=_gen(6)), dim=1)
    for bad in (0.0, torch.nan, torch.inf):
        weights = probs.clone()
        weights[2] = bad
        with pytest.raises(NumericsError, match="row 2"):
            fused_slates.slate_draws(weights, np.uint64(1), 4, 3)


def test_the_option_is_refused_where_it_cannot_run(monkeypatch: pytest.MonkeyPatch) -> None:
    logits, actions, propensities, ranker = _problem()
    with pytest.raises(ConfigError, match="slate_sampler"):
        two_stage_ips_loss(logits, actions, propensities, ranker, slate_sampler="alias")
    monkeypatch.setenv(sampling_kernel.ENV, "0")
    with pytest.raises(ConfigError, match="numba"):
        two_stage_ips_loss(logits, actions, propensities, ranker, slate_sampler="fused")


def test_the_setting_is_checked_before_any_work(
    tiny_world: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert config_module.SLATE_SAMPLERS == losses.SLATE_SAMPLERS
    config = tiny_config(tiny_world)
    fused = replace(config, candidates=replace(config.candidates, slate_sampler="fused"))
    config_module.validate(fused)
    with pytest.raises(ConfigError, match="candidates.slate_sampler"):
        bad = replace(config.candidates, slate_sampler="alias")
        config_module.validate(replace(config, candidates=bad))
    monkeypatch.setenv(sampling_kernel.ENV, "0")
    with pytest.raises(ConfigError, match="numba"):
        config_module.validate(fused)
    config_module.validate(replace(fused, methods=("ce", "ips")))  # no method reads it


def test_a_run_with_the_fused_sampler_repeats_itself(tiny_world: Path, tmp_path: Path) -> None:
    from twostage.pipeline.cache import StageCache
    from twostage.pipeline.candidates import train_candidate_generator
    from twostage.pipeline.experiment import prepare, run_key

    config = tiny_config(tiny_world)
    prepared = prepare(config, cache=StageCache(tmp_path), verbose=False)
    fused = replace(config.candidates, slate_sampler="fused")
    first = train_candidate_generator("2s", 0, prepared.context, fused, CPU)
    again = train_candidate_generator("2s", 0, prepared.context, fused, CPU)
    default = train_candidate_generator("2s", 0, prepared.context, config.candidates, CPU)
    assert first["rows"] == again["rows"]
    assert first["rows"] != default["rows"]  # another random stream
    fused_config = replace(config, candidates=fused)
    assert run_key(prepared, fused_config, "2s", 0) != run_key(prepared, config, "2s", 0)


CHILD_PROBS = torch.softmax(torch.randn(32, 200, generator=_gen(12)), dim=1)


def _draws_in_child() -> list:
    return fused_slates.slate_draws(CHILD_PROBS, np.uint64(21), 20, 10).tolist()


def test_a_forked_worker_draws_after_the_parent_ran_in_parallel() -> None:
    # GNU OpenMP, numba's usual threading layer, hangs in a child forked after the parent used
    # it; `--jobs` workers are such children, so they run the kernels serially.
    import multiprocessing

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        parent = _draws_in_child()  # the parallel kernel, where two threads exist
        with multiprocessing.get_context("fork").Pool(1) as pool:
            child = pool.apply_async(_draws_in_child).get(timeout=120)
    finally:
        torch.set_num_threads(threads)
    assert child == parent
