"""Inclusion probabilities of a K-item log drawn without replacement: Monte Carlo vs enumeration."""

from __future__ import annotations

import pytest
import torch

from twostage.errors import ConfigError, NumericsError
from twostage.propensity import (
    exact_inclusion_probabilities,
    inclusion_probabilities,
    sample_top_k_sets,
)


def _probs() -> torch.Tensor:
    """Four rows over six items: spread, skewed, near-uniform, and one item holding 97%."""
    logits = torch.tensor(
        [
            [0.3, -1.0, 2.0, 0.0, 0.5, -0.2],
            [3.0, 1.0, -2.0, 0.0, -1.0, 0.5],
            [0.0, 0.1, 0.0, -0.1, 0.05, 0.0],
            [8.0, 0.0, 0.0, 0.0, 0.0, 0.0],
        ],
        dtype=torch.float64,
    )
    return torch.softmax(logits, dim=1)


def test_exact_enumeration_is_a_distribution_over_k_sets():
    probs = _probs()
    for k in (1, 2, 3):
        exact = exact_inclusion_probabilities(probs, k)
        assert torch.allclose(exact.sum(1), torch.full((4,), float(k), dtype=torch.float64))
        assert (exact <= 1 + 1e-12).all() and (exact >= probs - 1e-12).all()
    assert torch.allclose(exact_inclusion_probabilities(probs, 1), probs)


def test_exact_enumeration_matches_a_hand_computation():
    probs = torch.tensor([[0.5, 0.3, 0.2]], dtype=torch.float64)
    # P(item 0 in a 2-set) = 0.5 + 0.3·0.5/0.7 + 0.2·0.5/0.8
    expected = 0.5 + 0.3 * 0.5 / 0.7 + 0.2 * 0.5 / 0.8
    assert exact_inclusion_probabilities(probs, 2)[0, 0].item() == pytest.approx(expected)


@pytest.mark.parametrize("k", [2, 3])
def test_monte_carlo_is_within_four_standard_errors_of_exact(k: int):
    probs = _probs()
    items = torch.arange(6).expand(4, 6)
    estimate, stderr = inclusion_probabilities(
        probs, items, k, n_samples=20_000, generator=torch.Generator().manual_seed(k)
    )
    exact = exact_inclusion_probabilities(probs, k)
    # an item with probability ~1 has stderr ~0: allow a tiny absolute slack
    assert ((estimate - exact).abs() <= 4 * stderr + 2e-4).all(), (estimate - exact) / stderr


def test_queried_items_may_repeat_and_come_in_any_order():
    probs = _probs()
    items = torch.tensor([[5, 0, 5], [2, 2, 1], [0, 1, 2], [0, 3, 4]])
    g = torch.Generator().manual_seed(0)
    estimate, _ = inclusion_probabilities(probs, items, 2, n_samples=4000, generator=g)
    assert torch.equal(estimate[:, 0] == estimate[:, 2], torch.tensor([True, False, False, False]))
    assert estimate[1, 0] == estimate[1, 1]


def test_standard_error_shrinks_with_the_number_of_samples():
    probs = _probs()[:3]
    items = torch.arange(6).expand(3, 6)
    g = torch.Generator().manual_seed(1)
    _, small = inclusion_probabilities(probs, items, 2, n_samples=1000, generator=g)
    _, large = inclusion_probabilities(probs, items, 2, n_samples=16_000, generator=g)
    ratio = (small / large).median().item()
    assert ratio == pytest.approx(4.0, rel=0.15)  # sqrt(16000 / 1000)


def test_sampled_sets_hold_k_distinct_items_first_drawn_by_the_softmax():
    probs = _probs()
    sets = sample_top_k_sets(probs, 3, 20_000, generator=torch.Generator().manual_seed(2))
    assert sets.shape == (4, 20_000, 3)
    ordered = sets.sort(dim=2).values
    assert (ordered[..., 1:] != ordered[..., :-1]).all() and (sets >= 0).all()
    first = torch.nn.functional.one_hot(sets[..., 0], 6).double().mean(1)
    assert torch.allclose(first, probs, atol=0.015)


def test_bad_inputs_are_refused():
    probs = _probs()
    with pytest.raises(ConfigError, match="k must be"):
        inclusion_probabilities(probs, torch.zeros(4, 1, dtype=torch.long), 7)
    with pytest.raises(ConfigError, match="items must have shape"):
        inclusion_probabilities(probs, torch.zeros(3, 1, dtype=torch.long), 2)
    with pytest.raises(NumericsError, match="positive probability"):
        exact_inclusion_probabilities(torch.tensor([[1.0, 0.0, 0.0]]), 2)


def test_logged_inclusion_probabilities_are_at_least_the_single_draw_probability():
    from twostage.propensity import logged_inclusion_probabilities

    generator = torch.Generator().manual_seed(0)
    probs = torch.softmax(3 * torch.randn(4, 50, generator=generator, dtype=torch.float64), dim=1)
    items = torch.multinomial(probs, 3, generator=generator)
    estimate, stderr = logged_inclusion_probabilities(
        probs, items, 3, n_samples=50, generator=generator
    )
    assert estimate.shape == stderr.shape == (4, 3)
    assert (estimate >= probs.gather(1, items)).all() and (estimate <= 1).all()
