"""Tests of twostage.losses against plain per-row implementations and exact expectations."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from twostage.errors import ConfigError, NumericsError
from twostage.losses import cross_entropy_loss, ips_loss, ips_weights, two_stage_ips_loss
from twostage.sampling import sample_slates


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- plain per-row references ------------------------------------------------------------------


def ref_cross_entropy(logits: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    terms = [-torch.log_softmax(logits[i], dim=0)[int(actions[i])] for i in range(len(actions))]
    return torch.stack(terms).mean()


def ref_weights(
    logits: torch.Tensor,
    propensities: torch.Tensor,
    actions: torch.Tensor,
    cap: float = 10.0,
    floor: float = 0.01,
    clip: bool = True,
) -> torch.Tensor:
    raw = []
    for i in range(len(actions)):
        pi = torch.softmax(logits[i].detach().double(), dim=0)
        raw.append(float(pi[int(actions[i])]) / float(propensities[i]))
    if not clip:
        return torch.tensor(raw, dtype=torch.float64)
    clipped = [min(max(w, floor), cap) for w in raw]
    mean = sum(clipped) / len(clipped)
    return torch.tensor([w / mean for w in clipped], dtype=torch.float64)


def ref_ips(logits, actions, propensities, cap=10.0, floor=0.01) -> torch.Tensor:
    weights = ref_weights(logits, propensities, actions, cap, floor)
    terms = [
        -float(weights[i]) * torch.log_softmax(logits[i], dim=0)[int(actions[i])]
        for i in range(len(actions))
    ]
    return torch.stack(terms).mean()


def ref_q(ranker_row: torch.Tensor, slate: list[int], action: int) -> float:
    """The ranker's softmax at the logged item over the distinct items of slate ∪ {action}."""
    items = sorted(set(slate) | {action})
    scores = ranker_row.detach().double()[items]
    return float(torch.softmax(scores, dim=0)[items.index(action)])


def ref_two_stage_terms(
    logits, actions, propensities, ranker_logits, slates, alpha, cap=10.0, floor=0.01
) -> torch.Tensor:
    """(batch,) per-row contributions whose sum is the 2-IPS loss, computed slate by slate."""
    batch, n_slates = slates.shape[:2]
    weights = ref_weights(logits, propensities, actions, cap, floor)
    terms = []
    for i in range(batch):
        a = int(actions[i])
        log_pi = torch.log_softmax(logits[i], dim=0)
        first = torch.zeros((), dtype=logits.dtype)
        second = torch.zeros((), dtype=logits.dtype)
        for k in range(n_slates):
            slate = slates[i, k].tolist()
            q = ref_q(ranker_logits[i], slate, a)
            first = first + q * log_pi[a]
            for j in set(slate) - {a}:
                second = second + q * log_pi[j]
        row = float(weights[i]) * (first + alpha * second) / n_slates
        terms.append(-row / batch)
    return torch.stack(terms)


def _problem(batch: int, n_items: int, seed: int, scale: float = 1.0, dtype=torch.float64):
    g = _gen(seed)
    logits = (torch.randn(batch, n_items, generator=g, dtype=dtype) * scale).requires_grad_()
    actions = torch.randint(0, n_items, (batch,), generator=g)
    propensities = torch.rand(batch, generator=g, dtype=dtype) * 0.9 + 0.05
    ranker = torch.randn(batch, n_items, generator=g, dtype=dtype) * 2
    return logits, actions, propensities, ranker


def _value_and_grad(loss_fn, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    logits.grad = None
    loss = loss_fn()
    loss.backward()
    grad = logits.grad.clone()
    logits.grad = None
    return loss.detach(), grad


# --- (1) equality with the per-row references ------------------------------------------------


def test_cross_entropy_matches_reference() -> None:
    logits, actions, _, _ = _problem(6, 9, seed=0)
    value, grad = _value_and_grad(lambda: cross_entropy_loss(logits, actions), logits)
    ref_value, ref_grad = _value_and_grad(lambda: ref_cross_entropy(logits, actions), logits)
    torch.testing.assert_close(value, ref_value)
    torch.testing.assert_close(grad, ref_grad)
    torch.testing.assert_close(value, torch.nn.functional.cross_entropy(logits, actions).detach())


def test_ips_loss_matches_reference_values_and_gradients() -> None:
    logits, actions, propensities, _ = _problem(8, 7, seed=1, scale=3.0)
    propensities[:3] = torch.tensor([1e-3, 0.9, 1.0], dtype=torch.float64)  # clip both ways
    value, grad = _value_and_grad(lambda: ips_loss(logits, actions, propensities), logits)
    ref_value, ref_grad = _value_and_grad(lambda: ref_ips(logits, actions, propensities), logits)
    torch.testing.assert_close(value, ref_value)
    torch.testing.assert_close(grad, ref_grad)


def test_ips_weights_are_clipped_then_normalised() -> None:
    logits, actions, propensities, _ = _problem(10, 5, seed=2, scale=4.0)
    propensities[:4] = torch.tensor([1e-4, 1e-3, 0.99, 1.0], dtype=torch.float64)
    raw = ips_weights(logits, propensities, actions, clip=False)
    torch.testing.assert_close(raw, ref_weights(logits, propensities, actions, clip=False))
    assert raw.max() > 10 and raw.min() < 0.01  # the clipping range is exercised
    weights = ips_weights(logits, propensities, actions, cap=10.0, floor=0.01)
    torch.testing.assert_close(weights, ref_weights(logits, propensities, actions))
    torch.testing.assert_close(weights.mean(), torch.tensor(1.0, dtype=torch.float64))
    clipped = ips_weights(logits, propensities, actions, normalise=False)
    assert clipped.max() == 10.0 and clipped.min() == 0.01
    assert not weights.requires_grad


TWO_STAGE_CASES = {
    # batch, n_items, n_slates, slate_size, logit scale, alpha
    "spread": (5, 12, 6, 4, 1.0, 0.3),
    "duplicate_heavy": (4, 3, 5, 8, 4.0, 0.7),  # tiny catalogue, peaked policy
    "single_item_slates": (3, 6, 4, 1, 1.0, 1.0),
}


@pytest.mark.parametrize("case", TWO_STAGE_CASES)
def test_two_stage_matches_reference_given_the_same_slates(case: str) -> None:
    batch, n_items, n_slates, slate_size, scale, alpha = TWO_STAGE_CASES[case]
    logits, actions, propensities, ranker = _problem(batch, n_items, seed=3, scale=scale)
    probs = torch.softmax(logits.detach() * scale, dim=1)  # peaked: many repeated items
    slates = sample_slates(probs, n_slates, slate_size, generator=_gen(4))
    slates = slates[..., torch.randperm(slate_size, generator=_gen(5))]  # any order is accepted
    if case == "duplicate_heavy":
        slates[0, 0] = actions[0]  # a slate made only of the logged item
        assert (slates[..., 1:] == slates[..., :-1]).any()

    def batched() -> torch.Tensor:
        return two_stage_ips_loss(logits, actions, propensities, ranker, alpha=alpha, slates=slates)

    def reference() -> torch.Tensor:
        return ref_two_stage_terms(logits, actions, propensities, ranker, slates, alpha).sum()

    value, grad = _value_and_grad(batched, logits)
    ref_value, ref_grad = _value_and_grad(reference, logits)
    torch.testing.assert_close(value, ref_value)
    torch.testing.assert_close(grad, ref_grad)


def test_two_stage_in_float32_matches_float64_reference() -> None:
    logits, actions, propensities, ranker = _problem(6, 50, seed=6, scale=2.0)
    slates = torch.randint(0, 50, (6, 8, 10), generator=_gen(7))
    logits32 = logits.detach().float().requires_grad_()
    value, grad = _value_and_grad(
        lambda: two_stage_ips_loss(
            logits32, actions, propensities.float(), ranker.float(), alpha=0.5, slates=slates
        ),
        logits32,
    )
    ref_value, ref_grad = _value_and_grad(
        lambda: ref_two_stage_terms(logits, actions, propensities, ranker, slates, 0.5).sum(),
        logits,
    )
    assert value.dtype == torch.float32
    torch.testing.assert_close(value.double(), ref_value, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=1e-4, atol=1e-6)


def test_two_stage_samples_slates_from_the_tempered_policy() -> None:
    logits, actions, propensities, ranker = _problem(4, 20, seed=8, scale=2.0)
    temperature = 1.7
    probs = torch.softmax(logits.detach() / temperature, dim=1)
    slates = sample_slates(probs, 9, 5, generator=_gen(9))
    sampled = two_stage_ips_loss(
        logits,
        actions,
        propensities,
        ranker,
        n_slates=9,
        slate_size=5,
        temperature=temperature,
        generator=_gen(9),
    )
    given = two_stage_ips_loss(
        logits, actions, propensities, ranker, temperature=temperature, slates=slates
    )
    torch.testing.assert_close(sampled, given)


# --- (2) Monte Carlo convergence to the estimator's exact expectation -------------------------


def _exact_moments(logits, actions, propensities, ranker, alpha, temperature, slate_size):
    """Mean and per-slate variance of each row's contribution (value and gradient).

    Enumerates every ordered slate of `slate_size` draws on a tiny catalogue.
    """
    batch, n_items = logits.shape
    tempered = torch.softmax(logits.detach() / temperature, dim=1)
    mean_value = torch.zeros(batch, dtype=torch.float64)
    mean_sq_value = torch.zeros(batch, dtype=torch.float64)
    mean_grad = torch.zeros(batch, n_items, dtype=torch.float64)
    mean_sq_grad = torch.zeros(batch, n_items, dtype=torch.float64)
    for slate in itertools.product(range(n_items), repeat=slate_size):
        slates = torch.tensor(slate).expand(batch, 1, slate_size)
        mass = tempered[:, list(slate)].prod(dim=1)  # (batch,)
        logits.grad = None
        terms = ref_two_stage_terms(logits, actions, propensities, ranker, slates, alpha)
        terms.sum().backward()  # row i of the gradient depends on row i's term only
        value, grad = terms.detach(), logits.grad
        mean_value += mass * value
        mean_sq_value += mass * value**2
        mean_grad += mass[:, None] * grad
        mean_sq_grad += mass[:, None] * grad**2
    logits.grad = None
    return mean_value, mean_sq_value - mean_value**2, mean_grad, mean_sq_grad - mean_grad**2


@pytest.mark.parametrize("slate_sampler", ["torch", "fused"])
def test_two_stage_converges_to_its_exact_expectation(slate_sampler: str) -> None:
    if slate_sampler == "fused":
        pytest.importorskip("numba")
    alpha, temperature, slate_size = 0.5, math.e, 2
    logits, actions, propensities, ranker = _problem(3, 5, seed=10, scale=1.5)
    mean_value, var_value, mean_grad, var_grad = _exact_moments(
        logits, actions, propensities, ranker, alpha, temperature, slate_size
    )
    exact_value, exact_grad = mean_value.sum(), mean_grad
    rms_value, rms_grad = {}, {}
    for n_slates in (16, 256, 4096):
        value_se = math.sqrt(float(var_value.sum()) / n_slates)
        grad_se = (var_grad / n_slates).sqrt()
        value_errors, grad_errors = [], []
        for seed in range(6):

            def monte_carlo(n_slates: int = n_slates, seed: int = seed) -> torch.Tensor:
                return two_stage_ips_loss(
                    logits,
                    actions,
                    propensities,
                    ranker,
                    alpha=alpha,
                    n_slates=n_slates,
                    slate_size=slate_size,
                    temperature=temperature,
                    generator=_gen(100 + seed),
                    slate_sampler=slate_sampler,
                )

            value, grad = _value_and_grad(monte_carlo, logits)
            value_error = float(value - exact_value)
            grad_error = grad - exact_grad
            assert abs(value_error) < 5 * value_se, (n_slates, seed, value_error, value_se)
            assert (grad_error.abs() <= 5 * grad_se + 1e-12).all(), (n_slates, seed)
            value_errors.append(value_error)
            grad_errors.append(grad_error)
        rms_value[n_slates] = math.sqrt(sum(e**2 for e in value_errors) / len(value_errors))
        rms_grad[n_slates] = float(torch.stack(grad_errors).pow(2).mean().sqrt())
    # 256× more slates should shrink the error about 16×.
    assert rms_value[4096] < rms_value[256] < rms_value[16]
    assert rms_value[4096] < rms_value[16] / 4
    assert rms_grad[4096] < rms_grad[256] < rms_grad[16]
    assert rms_grad[4096] < rms_grad[16] / 4


# --- (3) edge cases ----------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [0.0, float("nan"), -0.2, 1.5])
@pytest.mark.parametrize("loss", ["ips", "two_stage", "weights"])
def test_bad_propensity_is_refused_naming_the_row(bad: float, loss: str) -> None:
    logits, actions, propensities, ranker = _problem(4, 6, seed=11)
    propensities = propensities.clone()
    propensities[2] = bad
    with pytest.raises(NumericsError, match="row 2"):
        if loss == "ips":
            ips_loss(logits, actions, propensities)
        elif loss == "two_stage":
            two_stage_ips_loss(logits, actions, propensities, ranker, n_slates=2, slate_size=2)
        else:
            ips_weights(logits, propensities, actions)


def test_non_finite_logits_are_refused() -> None:
    logits, actions, propensities, ranker = _problem(3, 6, seed=12)
    bad = logits.detach().clone()
    bad[1, 4] = float("inf")
    with pytest.raises(NumericsError, match="logits row 1"):
        cross_entropy_loss(bad, actions)
    with pytest.raises(NumericsError, match="logits row 1"):
        ips_loss(bad, actions, propensities)
    bad_ranker = ranker.clone()
    bad_ranker[0, 0] = float("nan")
    with pytest.raises(NumericsError, match="ranker_logits row 0"):
        two_stage_ips_loss(logits, actions, propensities, bad_ranker)


def test_bad_actions_and_shapes_are_refused() -> None:
    logits, actions, propensities, ranker = _problem(3, 6, seed=13)
    with pytest.raises(ConfigError, match="row 1"):
        cross_entropy_loss(logits, torch.tensor([0, 6, 1]))
    with pytest.raises(ConfigError, match="row 0"):
        ips_loss(logits, torch.tensor([-1, 0, 1]), propensities)
    with pytest.raises(ConfigError):
        ips_loss(logits, actions[:2], propensities)
    with pytest.raises(ConfigError):
        ips_loss(logits, actions, propensities[:2])
    with pytest.raises(ConfigError):  # ips_weights takes propensities before actions
        ips_weights(logits, actions, propensities)
    with pytest.raises(ConfigError):
        two_stage_ips_loss(logits, actions, propensities, ranker[:, :5])
    with pytest.raises(ConfigError):
        two_stage_ips_loss(logits, actions, propensities, ranker, slates=torch.zeros(3, 2))
    with pytest.raises(ConfigError, match="row 2"):
        slates = torch.zeros(3, 2, 2, dtype=torch.long)
        slates[2, 1, 0] = 6
        two_stage_ips_loss(logits, actions, propensities, ranker, slates=slates)
    with pytest.raises(ConfigError):
        ips_loss(logits, actions, propensities, cap=0.001, floor=0.01)
    with pytest.raises(ConfigError):
        two_stage_ips_loss(logits, actions, propensities, ranker, temperature=0.0)


def test_batch_of_one() -> None:
    logits, actions, propensities, ranker = _problem(1, 6, seed=14)
    assert ips_weights(logits, propensities, actions).item() == pytest.approx(1.0)
    torch.testing.assert_close(
        ips_loss(logits, actions, propensities), cross_entropy_loss(logits, actions)
    )
    slates = torch.randint(0, 6, (1, 3, 4), generator=_gen(15), dtype=torch.int32)
    value = two_stage_ips_loss(logits, actions, propensities, ranker, alpha=0.2, slates=slates)
    ref = ref_two_stage_terms(logits, actions, propensities, ranker, slates, 0.2).sum()
    torch.testing.assert_close(value, ref)
    sampled = two_stage_ips_loss(logits, actions, propensities, ranker, generator=_gen(16))
    assert sampled.shape == () and torch.isfinite(sampled)


@pytest.mark.parametrize("propensity", [1e-6, 1.0])
def test_when_every_weight_is_clipped_the_weights_are_all_one(propensity: float) -> None:
    # Propensity 1e-6 pushes every raw weight above the cap; a near-uniform policy over 500 items
    # with propensity 1 pushes every raw weight below the floor.
    logits, actions, propensities, ranker = _problem(5, 500, seed=17, scale=0.01)
    propensities = torch.full_like(propensities, propensity)
    raw = ips_weights(logits, propensities, actions, clip=False)
    assert ((raw > 10.0).all() or (raw < 0.01).all()) and raw.std() > 0
    weights = ips_weights(logits, propensities, actions)
    torch.testing.assert_close(weights, torch.ones_like(weights))
    torch.testing.assert_close(
        ips_loss(logits, actions, propensities), cross_entropy_loss(logits, actions)
    )


def test_alpha_zero_is_the_q_weighted_one_stage_loss() -> None:
    logits, actions, propensities, ranker = _problem(5, 8, seed=18, scale=2.0)
    slates = torch.randint(0, 8, (5, 6, 3), generator=_gen(19))
    weights = ref_weights(logits, propensities, actions)
    q_bar = torch.tensor(
        [
            sum(ref_q(ranker[i], slates[i, k].tolist(), int(actions[i])) for k in range(6)) / 6
            for i in range(5)
        ],
        dtype=torch.float64,
    )

    def q_weighted_ips() -> torch.Tensor:
        log_pi_a = torch.log_softmax(logits, dim=1)[torch.arange(5), actions]
        return -(weights * q_bar * log_pi_a).mean()

    value, grad = _value_and_grad(
        lambda: two_stage_ips_loss(logits, actions, propensities, ranker, alpha=0, slates=slates),
        logits,
    )
    ref_value, ref_grad = _value_and_grad(q_weighted_ips, logits)
    torch.testing.assert_close(value, ref_value)
    torch.testing.assert_close(grad, ref_grad)


def test_a_ranker_that_always_picks_the_logged_item_gives_one_stage_ips() -> None:
    logits, actions, propensities, ranker = _problem(4, 10, seed=20)
    ranker = torch.full_like(ranker, -1e4)
    ranker[torch.arange(4), actions] = 1e4  # q(a|S) = 1 for every slate; exp overflows elsewhere
    value = two_stage_ips_loss(logits, actions, propensities, ranker, alpha=0, generator=_gen(21))
    torch.testing.assert_close(value, ips_loss(logits, actions, propensities))


def test_a_ranker_that_never_picks_the_logged_item_gives_zero() -> None:
    logits, actions, propensities, ranker = _problem(4, 10, seed=22)
    ranker = torch.full_like(ranker, 1e4)
    ranker[torch.arange(4), actions] = -1e4  # q(a|S) = 0 unless S = {a}; no NaN from overflow
    slates = (actions.view(4, 1, 1) + 1 + torch.randint(0, 9, (4, 5, 3))) % 10  # a never drawn
    value = two_stage_ips_loss(logits, actions, propensities, ranker, alpha=1.0, slates=slates)
    assert value.item() == 0.0


def test_two_stage_gradient_reaches_neither_ranker_nor_weights() -> None:
    logits, actions, propensities, ranker = _problem(3, 7, seed=23)
    ranker = ranker.clone().requires_grad_()
    propensities = propensities.clone().requires_grad_()
    two_stage_ips_loss(logits, actions, propensities, ranker, generator=_gen(24)).backward()
    assert ranker.grad is None and propensities.grad is None
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
