"""Top-K off-policy correction (Chen et al., "Top-K Off-Policy Correction for a REINFORCE
Recommender System", WSDM 2019), as a candidate-generator loss beside those of `twostage.losses`.

When the learned policy π shows K items, drawn independently, an item a is shown with probability
α(a) = 1 − (1 − π(a))^K, whose gradient is λ_K(a) ∇π(a) with λ_K(a) = K (1 − π(a))^(K−1). The
correction multiplies the 1-IPS weight π(a)/p by λ_K(a): items π already favours get less push.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from twostage.errors import ConfigError
from twostage.losses import ips_weights, normalise_weights

__all__ = ["top_k_multiplier", "topk_ips_loss"]


def top_k_multiplier(pi_a: torch.Tensor, k: int) -> torch.Tensor:
    """λ_K(a) = K (1 − π(a))^(K−1) for π(a): (batch,) → (batch,)."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"k must be an integer ≥ 1, got {k!r}")
    return k * (1 - pi_a) ** (k - 1)


def topk_ips_loss(
    logits: torch.Tensor,
    actions: torch.Tensor,
    propensities: torch.Tensor,
    *,
    k: int = 5,
    cap: float = 10.0,
    floor: float = 0.01,
) -> torch.Tensor:
    """Top-K IPS loss: −mean_i w_i log π(a_i).

    w_i = clip(π(a_i) / p_i · λ_K(a_i), floor, cap) divided by its batch mean, without gradient
    (π = softmax(logits), detached in the weight).

    Args:
        logits: (batch, n_items) candidate-generator scores.
        actions: (batch,) long logged items.
        propensities: (batch,) logging propensities in (0, 1].
        k: items the policy shows (the bandit log's K).
        cap, floor: clipping range of the combined weight.

    Returns:
        () scalar loss.
    """
    # ips_weights validates every input and gives the raw ratios π(a)/p.
    ratio = ips_weights(logits, propensities, actions, cap=cap, floor=floor, clip=False)
    log_pi_a = F.log_softmax(logits, dim=1).gather(1, actions.view(-1, 1)).squeeze(1)
    with torch.no_grad():
        weights = ratio.to(log_pi_a.dtype) * top_k_multiplier(log_pi_a.detach().exp(), k)
        weights = normalise_weights(weights.clamp(min=floor, max=cap))
    return -(weights * log_pi_a).mean()
