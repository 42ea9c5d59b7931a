"""Off-policy evaluation of stochastic one- and two-stage policies, and their true values.

A one-stage policy is a softmax π(a|x) over the catalogue per user. The two-stage policy built on
it draws a candidate set S of `slate_size` items with replacement from π, and the ranker then
shows a from S's distinct items with probability q(a|S) = softmax of the ranker's scores over S:

    p(a|x) = E_S[ q(a|S) ],   estimated by Monte Carlo over `n_slates` sets per user.

The value of a policy is its expected reward per impression, V = mean_x Σ_a target(a|x) r(x, a).
From a bandit log of impressions (x_i, a_i, r_i) shown with probability μ_i:

    IPS   = mean_i  target(a_i|x_i) / μ_i · r_i
    SNIPS = Σ_i w_i r_i / Σ_i w_i,  w_i = target(a_i|x_i) / μ_i

IPS is unbiased when μ_i is the probability that impression i shows a_i. In a log of K distinct
items per user that is P(a ∈ S) / K (see `twostage.propensity`), not the single-draw softmax
probability the paper's log records; with the latter IPS is biased past the first position.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from twostage.errors import ConfigError, NumericsError
from twostage.sampling import distinct_mask, sample_categorical

__all__ = [
    "TwoStagePolicy",
    "importance_weights",
    "ips_estimate",
    "snips_estimate",
    "true_value",
    "two_stage_policy",
]


def importance_weights(
    probs: torch.Tensor, users: torch.Tensor, items: torch.Tensor, propensities: torch.Tensor
) -> torch.Tensor:
    """w_i = target(a_i|x_i) / μ_i, float64.

    Args:
        probs: (n_users, n_items) the target policy's probabilities.
        users, items: (n,) long, the logged impressions.
        propensities: (n,) the logging probability μ_i of each impression, in (0, 1].

    Returns:
        (n,) float64 weights.
    """
    n = users.numel()
    if users.shape != (n,) or items.shape != (n,) or propensities.shape != (n,) or n == 0:
        raise ConfigError(
            "users, items and propensities must be non-empty 1-D tensors of one length, got "
            f"{tuple(users.shape)}, {tuple(items.shape)}, {tuple(propensities.shape)}"
        )
    if not ((propensities > 0) & (propensities <= 1)).all():
        raise NumericsError("every logging propensity must lie in (0, 1]")
    return probs[users.long(), items.long()].double() / propensities.double()


def ips_estimate(
    probs: torch.Tensor,
    users: torch.Tensor,
    items: torch.Tensor,
    rewards: torch.Tensor,
    propensities: torch.Tensor,
) -> float:
    """Inverse propensity scoring: mean_i w_i r_i (shapes as `importance_weights`; rewards (n,))."""
    weights = importance_weights(probs, users, items, propensities)
    return float((weights * rewards.double()).mean())


def snips_estimate(
    probs: torch.Tensor,
    users: torch.Tensor,
    items: torch.Tensor,
    rewards: torch.Tensor,
    propensities: torch.Tensor,
) -> float:
    """Self-normalised IPS: Σ_i w_i r_i / Σ_i w_i (0 when every weight is 0)."""
    weights = importance_weights(probs, users, items, propensities)
    total = weights.sum()
    return float((weights * rewards.double()).sum() / total) if total > 0 else 0.0


def true_value(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """mean_x Σ_a probs(a|x) · label(x, a). probs: (n_users, n_items); labels: same shape."""
    if probs.shape != labels.shape:
        raise ConfigError(f"probs {tuple(probs.shape)} and labels {tuple(labels.shape)} differ")
    return float((probs.double() * labels.double()).sum(dim=1).mean())


@dataclass
class TwoStagePolicy:
    """The two-stage policy's probabilities, estimated over sampled candidate sets.

    Attributes:
        probs: (n_users, n_items) float64 — p̂(a|x); each row sums to 1.
        stderr: (n_users, n_items) float64 — the Monte Carlo standard error of each entry.
        value: mean_x Σ_a p̂(a|x) label(x, a), when labels were given (else None).
        value_stderr: its Monte Carlo standard error (else None).
    """

    probs: torch.Tensor
    stderr: torch.Tensor
    value: float | None = None
    value_stderr: float | None = None


def two_stage_policy(
    candidate_probs: torch.Tensor,
    ranker_scores: torch.Tensor,
    *,
    slate_size: int = 30,
    n_slates: int = 200,
    labels: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    chunk_users: int = 64,
) -> TwoStagePolicy:
    """p(a|x) = E_S[q(a|S)] by Monte Carlo over `n_slates` candidate sets per user.

    Args:
        candidate_probs: (n_users, n_items) the candidate generator's softmax π.
        ranker_scores: (n_users, n_items) the ranker's logits.
        slate_size: items drawn with replacement from π per candidate set.
        n_slates: candidate sets per user.
        labels: (n_users, n_items) optional rewards; gives the policy's value and its MC error.
        generator: random source of the candidate sets.
    """
    if candidate_probs.shape != ranker_scores.shape or candidate_probs.dim() != 2:
        raise ConfigError(
            f"candidate_probs {tuple(candidate_probs.shape)} and ranker_scores "
            f"{tuple(ranker_scores.shape)} must be of one (n_users, n_items) shape"
        )
    if labels is not None and labels.shape != candidate_probs.shape:
        raise ConfigError(f"labels {tuple(labels.shape)} must match {tuple(candidate_probs.shape)}")
    for name, value in (("slate_size", slate_size), ("n_slates", n_slates)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be an integer ≥ 1, got {value!r}")
    n_users, n_items = candidate_probs.shape
    probs = torch.zeros(n_users, n_items, dtype=torch.float64)
    squares = torch.zeros(n_users, n_items, dtype=torch.float64)
    values = torch.zeros(n_users, dtype=torch.float64)
    variances = torch.zeros(n_users, dtype=torch.float64)
    for start in range(0, n_users, chunk_users):
        block = slice(start, start + chunk_users)
        c = candidate_probs[block].shape[0]
        slates = sample_categorical(
            candidate_probs[block], n_slates * slate_size, generator=generator
        ).view(c, n_slates, slate_size)
        flat = slates.view(c, -1)
        distinct = distinct_mask(slates)
        scores = ranker_scores[block].double().gather(1, flat).view_as(slates)
        scores = scores.masked_fill(~distinct, -torch.inf)
        q = torch.softmax(scores, dim=2)  # (c, n_slates, slate_size), 0 on repeats
        probs[block] = probs[block].scatter_add_(1, flat, q.view(c, -1))
        squares[block] = squares[block].scatter_add_(1, flat, q.square().view(c, -1))
        if labels is not None:
            per_slate = (q * labels[block].double().gather(1, flat).view_as(q)).sum(dim=2)
            values[block] = per_slate.mean(dim=1)
            variances[block] = per_slate.var(dim=1) if n_slates > 1 else 0.0
    probs /= n_slates
    variance = (squares / n_slates - probs.square()).clamp_min(0) / max(n_slates - 1, 1)
    result = TwoStagePolicy(probs=probs, stderr=variance.sqrt())
    if labels is not None:
        result.value = float(values.mean())
        result.value_stderr = float((variances / n_slates).sum().sqrt() / n_users)
    return result
