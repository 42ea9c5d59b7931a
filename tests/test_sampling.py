"""Tests of twostage.sampling: exact categorical draws, sorted slates and the distinct mask."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from scipy import stats

from twostage import sampling_kernel
from twostage.errors import ConfigError, NumericsError
from twostage.sampling import (
    _inverse_cdf,
    _normalised_cdf,
    bucket_count,
    distinct_mask,
    sample_categorical,
    sample_slates,
)

BACKENDS = ("numba", "torch")


@pytest.fixture(autouse=True, params=BACKENDS)
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test runs with the compiled lookup (`twostage.sampling_kernel`) and without it."""
    if request.param == "numba":
        pytest.importorskip("numba")
    monkeypatch.setenv(sampling_kernel.ENV, "1" if request.param == "numba" else "0")
    assert sampling_kernel.available(torch.device("cpu")) == (request.param == "numba")
    return request.param


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _chi_square_p_value(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """p-value of observed counts (k,) against probabilities (k,), over cells of positive mass."""
    mass = probs[probs > 0].double()
    expected = mass / mass.sum() * counts.sum()
    return float(stats.chisquare(counts[probs > 0].double().numpy(), expected.numpy()).pvalue)


def _pooled_p_value(probs: torch.Tensor, counts: torch.Tensor, cells: int) -> float:
    """χ² p-value of item counts (n,) against probabilities (n,), the items pooled into `cells`
    cells of similar mass so that every cell expects many draws."""
    order = probs.argsort()
    cell = (probs[order].double().cumsum(0) * cells).long().clamp(max=cells - 1)
    cell_counts = torch.zeros(cells, dtype=torch.float64).index_add_(0, cell, counts[order])
    cell_probs = torch.zeros(cells, dtype=torch.float64).index_add_(0, cell, probs[order].double())
    return _chi_square_p_value(cell_counts, cell_probs)


def test_sample_categorical_never_draws_zero_probability_items() -> None:
    probs = torch.tensor(
        [
            [0.0, 0.5, 0.0, 0.0, 0.5, 0.0],  # zeros at both ends and between
            [0.0, 0.0, 0.0, 0.0, 0.0, 3.0],  # one item, unnormalised
            [1e-300, 0.0, 1.0, 0.0, 1e-12, 0.0],  # tiny but positive weights next to zeros
        ],
        dtype=torch.float64,
    )
    draws = sample_categorical(probs, 50_000, generator=_gen(0))
    assert draws.shape == (3, 50_000)
    assert draws.dtype == torch.long
    drawn_weight = probs.gather(1, draws)
    assert (drawn_weight > 0).all()
    assert (draws[1] == 5).all()


def test_sample_categorical_matches_the_probabilities() -> None:
    probs = torch.tensor(
        [
            [0.1, 0.2, 0.3, 0.4, 0.0, 0.0, 0.0, 0.0],
            [0.7, 0.1, 0.05, 0.05, 0.04, 0.03, 0.02, 0.01],
            [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0],
        ]
    )
    n = 200_000
    draws = sample_categorical(probs, n, generator=_gen(1))
    for row in range(probs.size(0)):
        counts = torch.bincount(draws[row], minlength=probs.size(1))
        assert _chi_square_p_value(counts, probs[row]) > 1e-4, row


def test_sample_categorical_on_a_large_skewed_catalogue() -> None:
    # Many tiny items crowd a few guide buckets, so the bucket search needs several halvings.
    n_items = 3883
    logits = torch.randn(2, n_items, generator=_gen(2)) * 3
    logits[1, 100:1100] = -30.0
    probs = torch.softmax(logits, dim=1)
    draws = sample_categorical(probs, 400_000, generator=_gen(3))
    for row in range(2):
        counts = torch.bincount(draws[row], minlength=n_items).double()
        assert _pooled_p_value(probs[row], counts, cells=20) > 1e-4, row


def test_inverse_cdf_agrees_with_searchsorted_on_adversarial_cdfs() -> None:
    g = _gen(4)
    weights = torch.rand(6, 300, generator=g, dtype=torch.float64)
    weights[0, ::2] = 0.0  # many ties in the CDF
    weights[1, :250] = 1e-12  # most items crowd the first bucket
    weights[2, 1:] = 0.0  # a single item
    weights[3] = weights[3] ** 20  # strongly skewed
    weights[4, -100:] = 0.0  # trailing zeros
    weights[5] = 2.0 ** -torch.arange(300, dtype=torch.float64)  # masses on exact binary grid
    cdf = _normalised_cdf(weights)
    u = torch.rand(6, 20_000, generator=g, dtype=torch.float64)
    # Uniforms that sit exactly on CDF entries and bucket edges test the tie-breaking.
    on_grid = torch.cat([cdf[:, :100], torch.arange(100).expand(6, 100) / 128.0], dim=1)
    u = torch.cat([u, on_grid.clamp(max=1 - 2.0**-53), torch.zeros(6, 1)], dim=1)
    expected = torch.searchsorted(cdf, u, right=True)
    assert torch.equal(_inverse_cdf(cdf, u * bucket_count(300)), expected)


def test_inverse_cdf_reads_a_uniform_rounded_up_to_one_as_just_below_one() -> None:
    # Trailing zero-weight items share the last CDF entry, 1; x = m must give the last item of
    # positive weight, as the largest float64 below 1 does, never an item past it.
    weights = torch.tensor(
        [[0.2, 0.5, 0.3, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0, 0.0]], dtype=torch.float64
    )
    cdf = _normalised_cdf(weights)
    m = bucket_count(5)
    x = torch.tensor([[m, m * (1 - 2.0**-53)], [m, 0.0]], dtype=torch.float64)
    assert _inverse_cdf(cdf, x).tolist() == [[2, 2], [1, 1]]


def test_slate_draws_have_the_policy_as_marginal_at_the_training_size() -> None:
    # 30 order statistics per slate (Rényi spacings): every position pooled is one draw of p.
    n_items = 500
    logits = torch.randn(3, n_items, generator=_gen(30)) * 2
    logits[2, 200:] = -25.0  # many near-zero items crowd the low buckets: searched draws
    probs = torch.softmax(logits, dim=1)
    slates = sample_slates(probs, 4000, 30, generator=_gen(31))
    for row in range(3):
        counts = torch.bincount(slates[row].reshape(-1), minlength=n_items).double()
        assert _pooled_p_value(probs[row], counts, cells=40) > 1e-4, row


def test_same_seed_gives_same_draws() -> None:
    probs = torch.softmax(torch.randn(4, 50, generator=_gen(5)), dim=1)
    first = sample_categorical(probs, 1000, generator=_gen(7))
    again = sample_categorical(probs, 1000, generator=_gen(7))
    other = sample_categorical(probs, 1000, generator=_gen(8))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    slates = sample_slates(probs, 10, 5, generator=_gen(7))
    assert torch.equal(slates, sample_slates(probs, 10, 5, generator=_gen(7)))


def test_slates_are_sorted_and_shaped() -> None:
    probs = torch.softmax(torch.randn(3, 40, generator=_gen(9)), dim=1)
    slates = sample_slates(probs, 7, 6, generator=_gen(10))
    assert slates.shape == (3, 7, 6)
    assert slates.dtype == torch.long
    assert (slates[..., 1:] >= slates[..., :-1]).all()


@pytest.mark.parametrize("slate_size", [2, 3])
def test_slates_have_the_distribution_of_iid_draws(slate_size: int) -> None:
    probs = torch.tensor([[0.5, 0.25, 0.15, 0.1], [0.05, 0.05, 0.1, 0.8]], dtype=torch.float64)
    n_items = probs.size(1)
    slates = sample_slates(probs, 40_000, slate_size, generator=_gen(11))
    # Each sorted tuple has the multinomial probability of its multiset.
    tuples = list(itertools.combinations_with_replacement(range(n_items), slate_size))
    code = torch.zeros(slates.shape[:2], dtype=torch.long)
    for position in range(slate_size):
        code = code * n_items + slates[..., position]
    for row in range(probs.size(0)):
        expected = []
        observed = []
        for items in tuples:
            mass = math.factorial(slate_size)
            for item in set(items):
                mass /= math.factorial(items.count(item))
            for item in items:
                mass *= float(probs[row, item])
            expected.append(mass)
            tuple_code = 0
            for item in items:
                tuple_code = tuple_code * n_items + item
            observed.append(int((code[row] == tuple_code).sum()))
        assert sum(observed) == slates.size(1)
        p_value = _chi_square_p_value(torch.tensor(observed), torch.tensor(expected))
        assert p_value > 1e-4, (row, p_value)


def test_distinct_mask_marks_first_occurrences() -> None:
    slates = torch.randint(0, 4, (3, 5, 9), generator=_gen(12))
    mask = distinct_mask(slates)
    assert mask.shape == slates.shape
    for row in range(3):
        for slate in range(5):
            seen: set[int] = set()
            for position, item in enumerate(slates[row, slate].tolist()):
                assert bool(mask[row, slate, position]) == (item not in seen)
                seen.add(item)


def test_distinct_mask_of_one_dimension() -> None:
    assert distinct_mask(torch.tensor([3, 1, 3, 3, 0, 1])).tolist() == [
        True,
        True,
        False,
        False,
        True,
        False,
    ]


@pytest.mark.parametrize(
    "row",
    [[0.5, -0.1, 0.6], [0.5, float("nan"), 0.5], [0.5, float("inf"), 0.5], [0.0, 0.0, 0.0]],
)
def test_bad_probabilities_are_refused(row: list[float]) -> None:
    probs = torch.tensor([[0.2, 0.3, 0.5], row])
    with pytest.raises(NumericsError, match="row 1"):
        sample_categorical(probs, 3)


def test_bad_sizes_are_refused() -> None:
    probs = torch.full((2, 3), 1 / 3)
    with pytest.raises(ConfigError):
        sample_categorical(probs, -1)
    with pytest.raises(ConfigError):
        sample_slates(probs, 0, 3)
    with pytest.raises(ConfigError):
        sample_categorical(probs[0], 3)
    assert sample_categorical(probs, 0).shape == (2, 0)


def test_gumbel_top_k_draws_distinct_items_first_by_the_softmax():
    from twostage.sampling import gumbel_top_k

    log_probs = torch.log_softmax(torch.tensor([[2.0, 1.0, 0.0, -1.0, -8.0]]), dim=1)
    draws = gumbel_top_k(log_probs.expand(20_000, 5).double(), 3, torch.Generator().manual_seed(0))
    assert draws.shape == (20_000, 3)
    assert all(len(set(row)) == 3 for row in draws[:500].tolist())
    first = torch.bincount(draws[:, 0], minlength=5).double() / 20_000
    assert torch.allclose(first, log_probs.exp().squeeze(0).double(), atol=0.01)
