"""The sampled softmax (`candidates.softmax = "sampled"`) against the full softmax on a small
catalogue: exact when the head holds every item, unbiased normaliser, how far the loss and its
gradient move, the FAISS head against the exact one, and a run end to end."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from tiny import tiny_config

from twostage.errors import ConfigError
from twostage.losses import cross_entropy_loss, ips_loss, slate_policy, two_stage_ips_loss
from twostage.models import Nominator
from twostage.pipeline.config import CandidateConfig, validate
from twostage.pipeline.pools import PoolSampler

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def setting(tiny_world: Path):
    """A random generator on the tiny catalogue (60 items), a batch of 16 rows."""
    from twostage.data import load_movielens

    data = load_movielens(str(tiny_world))
    torch.manual_seed(0)
    model = Nominator(data.catalog)
    g = torch.Generator().manual_seed(1)
    users = torch.randint(0, data.n_users, (16,), generator=g)
    logged = torch.randint(0, data.n_items, (16,), generator=g)
    propensities = torch.rand(16, generator=g) * 0.5 + 0.01
    ranker = torch.randn(data.n_users, data.n_items, generator=g)
    return data, model, users, logged, propensities, ranker


def pooled_logits(model, sampler, users, logged):
    """(B, P) logits over each row's pool, the pool's items and log-mass (as the training loop)."""
    vectors = model.user_vectors(users)
    pool = sampler.pool(vectors, logged)
    columns = pool.items(logged)
    logits = (vectors[:, None, :] * model.items(columns.reshape(-1)).view(*columns.shape, -1)).sum(
        2
    )
    return logits, columns, pool.log_mass


def sampler_for(data, model, seed=0, **settings):
    config = replace(CandidateConfig(), softmax="sampled", **settings)
    sampler = PoolSampler(data.n_items, config, torch.Generator().manual_seed(seed), CPU)
    sampler.refresh(model)
    return sampler


def test_with_every_item_in_the_head_the_losses_are_the_full_softmaxs(setting) -> None:
    data, model, users, logged, propensities, ranker = setting
    sampler = sampler_for(data, model, head_size=data.n_items, n_negatives=7)
    zero = torch.zeros_like(logged)
    for loss in ("ce", "ips"):
        model.zero_grad()
        logits, _, log_mass = pooled_logits(model, sampler, users, logged)
        if loss == "ce":
            pooled = cross_entropy_loss(logits, zero, log_mass)
        else:
            pooled = ips_loss(logits, zero, propensities, log_mass=log_mass)
        pooled.backward()
        pooled_grads = [p.grad.clone() for p in model.parameters()]
        model.zero_grad()
        full_logits = model.score_all(users)
        if loss == "ce":
            full = cross_entropy_loss(full_logits, logged)
        else:
            full = ips_loss(full_logits, logged, propensities)
        full.backward()
        torch.testing.assert_close(pooled, full, rtol=1e-5, atol=1e-6)
        for got, want in zip(pooled_grads, [p.grad for p in model.parameters()], strict=True):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_with_every_item_in_the_head_two_stage_ips_is_the_full_softmaxs(setting) -> None:
    """The same slates, given in item ids to the full loss and in pool columns to the pooled one."""
    data, model, users, logged, propensities, ranker = setting
    sampler = sampler_for(data, model, head_size=data.n_items, n_negatives=5)
    logits, columns, log_mass = pooled_logits(model, sampler, users, logged)
    g = torch.Generator().manual_seed(3)
    slates = torch.randint(0, data.n_items, (16, 6, 4), generator=g)  # item ids
    # each item's column: the first column holding it whose mass is finite
    kept = torch.isfinite(log_mass)
    position = torch.full((16, data.n_items), -1)
    for col in reversed(range(columns.shape[1])):  # the test's own reference, not a hot path
        rows = kept[:, col]
        position[rows, columns[rows, col]] = col
    pool_slates = position.gather(1, slates.view(16, -1)).view_as(slates)
    assert (pool_slates >= 0).all()
    settings = {"alpha": 0.1, "cap": 10.0, "floor": 0.01}
    pooled = two_stage_ips_loss(
        logits, torch.zeros_like(logged), propensities, ranker[users[:, None], columns],
        slates=pool_slates, log_mass=log_mass, **settings,
    )  # fmt: skip
    full = two_stage_ips_loss(
        model.score_all(users), logged, propensities, ranker[users], slates=slates, **settings
    )
    torch.testing.assert_close(pooled, full, rtol=1e-5, atol=1e-6)


def test_slates_are_drawn_from_the_tempered_pool(setting) -> None:
    """A tail column weighs exp(log_mass) items: its odds against a head column are
    exp((l_t − l_h) / T + log_mass_t); left-out columns are never drawn."""
    data, model, users, logged, _, _ = setting
    sampler = sampler_for(data, model, head_size=5, n_negatives=10)
    with torch.no_grad():
        logits, _, log_mass = pooled_logits(model, sampler, users, logged)
    probs = slate_policy(logits, 2.0, log_mass)
    assert torch.equal(probs == 0, torch.isinf(log_mass))
    kept = torch.isfinite(log_mass[:, 6:])
    odds = probs[:, 6:] / probs[:, :1]
    want = ((logits[:, 6:] - logits[:, :1]) / 2.0 + log_mass[:, 6:]).exp()
    torch.testing.assert_close(odds[kept], want[kept], rtol=1e-4, atol=0)


@pytest.mark.parametrize("proposal", ["uniform", "popularity"])
def test_the_pools_normaliser_is_unbiased(setting, proposal) -> None:
    """Ẑ = Σ exp(logit + log_mass) averaged over 4,000 pools is within 1% of Σ_items exp(logit)."""
    data, model, users, logged, _, _ = setting
    config = replace(CandidateConfig(), softmax="sampled", head_size=5, n_negatives=10)
    popularity = torch.arange(data.n_items).float() % 7  # any positive proposal will do
    config = replace(config, proposal=proposal)
    sampler = PoolSampler(data.n_items, config, torch.Generator().manual_seed(0), CPU, popularity)
    sampler.refresh(model)
    with torch.no_grad():
        exact = model.score_all(users).exp().sum(1)
        estimates = []
        for _ in range(4000):
            logits, _, log_mass = pooled_logits(model, sampler, users, logged)
            estimates.append((logits + log_mass).exp().sum(1))
        mean = torch.stack(estimates).mean(0)
    torch.testing.assert_close(mean, exact, rtol=0.01, atol=0)


def test_how_far_a_small_pool_moves_the_loss_and_its_gradient(setting) -> None:
    """Head 10 and 20 uniform tail items of 60: the cross-entropy loss averaged over 200 pools is
    within 2% of the full softmax's, and its gradient points the same way (cosine > 0.99)."""
    data, model, users, logged, _, _ = setting
    sampler = sampler_for(data, model, head_size=10, n_negatives=20)

    def flat_grad(loss):
        model.zero_grad()
        loss.backward()
        return torch.cat([p.grad.reshape(-1) for p in model.parameters()])

    full_loss = cross_entropy_loss(model.score_all(users), logged)
    full = flat_grad(full_loss)
    losses, grads = [], []
    for _ in range(200):
        logits, _, log_mass = pooled_logits(model, sampler, users, logged)
        loss = cross_entropy_loss(logits, torch.zeros_like(logged), log_mass)
        losses.append(loss.item())
        grads.append(flat_grad(loss))
    mean_grad = torch.stack(grads).mean(0)
    assert sum(losses) / len(losses) == pytest.approx(full_loss.item(), rel=0.02)
    assert torch.nn.functional.cosine_similarity(mean_grad, full, dim=0) > 0.99


def test_how_far_a_small_pool_moves_two_stage_ips(setting) -> None:
    """2-IPS (α = 0.1, 20 slates of 5) with head 10 and 20 tail items of 60, 300 draws each: the
    mean loss lies within 8% of the full softmax's (measured: +4%, from log Ẑ's Jensen gap and
    the pooled slates) and the mean gradient points the same way (measured cosine 0.9999)."""
    data, model, users, logged, propensities, ranker = setting
    sampler = sampler_for(data, model, head_size=10, n_negatives=20)
    settings = {"alpha": 0.1, "cap": 10.0, "floor": 0.01, "n_slates": 20, "slate_size": 5}
    g = torch.Generator().manual_seed(5)

    def mean_loss_and_grad(pooled: bool) -> tuple[float, torch.Tensor]:
        losses, grads = [], []
        for _ in range(300):
            if pooled:
                logits, columns, log_mass = pooled_logits(model, sampler, users, logged)
                loss = two_stage_ips_loss(
                    logits, torch.zeros_like(logged), propensities, ranker[users[:, None], columns],
                    log_mass=log_mass, generator=g, **settings,
                )  # fmt: skip
            else:
                loss = two_stage_ips_loss(
                    model.score_all(users), logged, propensities, ranker[users], generator=g,
                    **settings,
                )  # fmt: skip
            model.zero_grad()
            loss.backward()
            losses.append(loss.item())
            grads.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
        return sum(losses) / len(losses), torch.stack(grads).mean(0)

    full_loss, full_grad = mean_loss_and_grad(False)
    pooled_loss, pooled_grad = mean_loss_and_grad(True)
    assert pooled_loss == pytest.approx(full_loss, rel=0.08)
    assert torch.nn.functional.cosine_similarity(pooled_grad, full_grad, dim=0) > 0.99


def test_tail_items_counted_exactly_elsewhere_are_left_out(setting) -> None:
    data, model, users, logged, _, _ = setting
    sampler = sampler_for(data, model, head_size=8, n_negatives=200)
    vectors = model.user_vectors(users)
    pool = sampler.pool(vectors, logged)
    head_mass = pool.log_mass[:, 1:9]
    assert torch.equal(torch.isinf(head_mass), pool.head == logged[:, None])
    tail_mass = pool.log_mass[:, 9:]
    in_head = (pool.tail[None, :, None] == pool.head[:, None, :]).any(2)
    counted = in_head | (pool.tail[None, :] == logged[:, None])
    assert torch.equal(torch.isinf(tail_mass), counted)
    assert counted.any()  # 200 draws of 60 items: collisions happen
    assert torch.allclose(tail_mass[~counted], torch.tensor(data.n_items / 200).log())


def test_the_faiss_head_is_the_exact_head_when_it_visits_every_list() -> None:
    faiss = pytest.importorskip("faiss")
    from twostage.pipeline.pools import _faiss_index

    g = torch.Generator().manual_seed(0)
    vectors = torch.randn(12_000, 8, generator=g)
    queries = torch.randn(32, 8, generator=g)
    index = _faiss_index(vectors.numpy(), nprobe=1)
    assert isinstance(index, faiss.IndexIVFFlat)
    index.nprobe = index.nlist
    _, ids = index.search(queries.numpy(), 20)
    exact = (queries @ vectors.T).topk(20, dim=1).indices
    assert torch.equal(torch.from_numpy(ids).sort(1).values, exact.sort(1).values)


def test_a_run_trains_with_the_sampled_softmax(tiny_world: Path, tmp_path: Path) -> None:
    from twostage.pipeline.cache import StageCache
    from twostage.pipeline.candidates import train_candidate_generator
    from twostage.pipeline.experiment import prepare

    config = tiny_config(tiny_world)
    prepared = prepare(config, cache=StageCache(tmp_path), verbose=False)
    sampled = replace(config.candidates, softmax="sampled", head_size=10, n_negatives=20)
    for method in ("ce", "ips", "2s"):
        result = train_candidate_generator(method, 0, prepared.context, sampled, CPU)
        again = train_candidate_generator(method, 0, prepared.context, sampled, CPU)
        assert result["rows"] == again["rows"]  # the same seed, the same pools
        assert {row["split"] for row in result["rows"]} == {"all", "val", "test"}


def test_objectives_without_a_pooled_loss_are_refused(tiny_world: Path) -> None:
    config = tiny_config(tiny_world, candidates={"softmax": "sampled"})
    validate(config)
    with pytest.raises(ConfigError, match="ips-topk"):
        validate(replace(config, methods=("ce", "ips-topk")))
    for bad in ({"softmax": "approx"}, {"proposal": "zipf"}, {"head_index": "hnsw"},
                {"n_negatives": 0}, {"head_size": -1}):  # fmt: skip
        with pytest.raises(ConfigError, match="candidates"):
            validate(replace(config, candidates=replace(config.candidates, **bad)))
