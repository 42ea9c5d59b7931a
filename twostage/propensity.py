"""Propensities of a top-K bandit log: the probability that an item is among the K shown.

The logging policy shows K distinct items drawn in sequence without replacement from its softmax
p. The paper's log records p(a), the probability of the *first* draw only; the probability that
`a` is shown at all is the inclusion probability P(a ∈ S), which has no closed form.

It is estimated here by Monte Carlo without drawing the whole catalogue per sample: the first K
distinct items of an i.i.d. stream from p are distributed exactly as K successive draws without
replacement. Each sample draws a short stream (`oversample · K` items, by inverse CDF); a sample
whose stream holds fewer than K distinct items is completed by a Gumbel-top-k draw over the items
it has not seen, which is the exact conditional law of the rest of the stream.
"""

from __future__ import annotations

import itertools

import torch

from twostage.errors import ConfigError, NumericsError
from twostage.sampling import distinct_mask, gumbel_top_k, sample_categorical

__all__ = ["exact_inclusion_probabilities", "inclusion_probabilities", "sample_top_k_sets"]


def _check_probs(probs: torch.Tensor, k: int) -> None:
    if probs.dim() != 2 or probs.size(0) == 0 or probs.size(1) == 0:
        raise ConfigError(
            f"probs must have shape (rows ≥ 1, n_items ≥ 1), got {tuple(probs.shape)}"
        )
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= probs.size(1):
        raise ConfigError(f"k must be an integer in [1, n_items={probs.size(1)}], got {k!r}")
    if not (probs >= 0).all() or not torch.isfinite(probs).all():
        raise NumericsError("probs must be finite and ≥ 0")
    if int((probs > 0).sum(1).min()) < k:
        raise NumericsError(f"every row needs at least k={k} items of positive probability")


def sample_top_k_sets(
    probs: torch.Tensor,
    k: int,
    n_samples: int,
    *,
    generator: torch.Generator | None = None,
    oversample: int = 2,
) -> torch.Tensor:
    """Draw `n_samples` sets of k distinct items per row, successively without replacement.

    Args:
        probs: (rows, n_items) non-negative weights, at least k positive per row.
        k: items per set.
        n_samples: sets per row.
        oversample: stream length per set, in multiples of k (speed only; the law is exact).

    Returns:
        (rows, n_samples, k) long, each set in draw order.
    """
    _check_probs(probs, k)
    rows, n_items = probs.shape
    stream = sample_categorical(probs, n_samples * oversample * k, generator=generator)
    stream = stream.view(rows, n_samples, oversample * k)
    new = distinct_mask(stream)
    rank = new.cumsum(dim=2)  # 1-based rank of each new item among the stream's distinct items
    keep = new & (rank <= k)
    slot = torch.where(keep, rank - 1, k)  # slot k collects everything that is not kept
    sets = torch.full((rows, n_samples, k + 1), -1, dtype=torch.long, device=probs.device)
    sets.scatter_(2, slot, stream)
    sets = sets[..., :k].contiguous()
    found = keep.sum(dim=2)  # (rows, n_samples)
    short = (found < k).nonzero()
    if short.numel():
        row, sample = short[:, 0], short[:, 1]
        seen = sets[row, sample]  # (m, k), -1 in the missing slots
        # Column n_items absorbs the empty slots, so no index is written twice with two values.
        was_seen = torch.zeros(len(row), n_items + 1, dtype=torch.bool, device=probs.device)
        was_seen.scatter_(1, torch.where(seen >= 0, seen, n_items), True)
        logp = probs[row].double().log().masked_fill_(was_seen[:, :n_items], -torch.inf)
        extra = gumbel_top_k(logp, k, generator)  # (m, k) unseen items in draw order
        n_found = found[row, sample].unsqueeze(1)
        position = torch.arange(k, device=probs.device).unsqueeze(0)
        filled = extra.gather(1, (position - n_found).clamp_min(0))
        sets[row, sample] = torch.where(position < n_found, seen, filled)
    return sets


def inclusion_probabilities(
    probs: torch.Tensor,
    items: torch.Tensor,
    k: int,
    *,
    n_samples: int = 2000,
    generator: torch.Generator | None = None,
    chunk_rows: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Monte Carlo P(item ∈ S) for a set S of k items drawn successively without replacement.

    Args:
        probs: (rows, n_items) the logging policy's softmax per row (e.g. per user).
        items: (rows, m) long, the items whose inclusion probability is wanted in each row.
        k: set size.
        n_samples: sets drawn per row.
        chunk_rows: rows per block (bounds memory at about chunk_rows · n_samples · 2k longs).

    Returns:
        Two (rows, m) float64 tensors — the estimate (the share of sets holding the item) and
        its standard error sqrt(p̂ (1 − p̂) / n_samples).
    """
    _check_probs(probs, k)
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
        raise ConfigError(f"n_samples must be an integer ≥ 1, got {n_samples!r}")
    if items.dim() != 2 or items.size(0) != probs.size(0):
        raise ConfigError(f"items must have shape ({probs.size(0)}, m), got {tuple(items.shape)}")
    counts = torch.empty(items.shape, dtype=torch.float64, device=probs.device)
    for start in range(0, probs.size(0), chunk_rows):
        block = slice(start, start + chunk_rows)
        sets = sample_top_k_sets(probs[block], k, n_samples, generator=generator)
        wanted = items[block].long()
        # (c, n_samples, k, m) membership, reduced to counts per (row, item)
        hit = (sets.unsqueeze(3) == wanted[:, None, None, :]).any(dim=2)
        counts[block] = hit.sum(dim=1, dtype=torch.float64)
    estimate = counts / n_samples
    stderr = (estimate * (1 - estimate) / n_samples).sqrt()
    return estimate, stderr


def exact_inclusion_probabilities(probs: torch.Tensor, k: int) -> torch.Tensor:
    """P(item ∈ S) by enumerating every ordered k-sequence; for tiny catalogues (tests).

    Args:
        probs: (rows, n_items) weights, n_items ≤ 10.

    Returns:
        (rows, n_items) float64.
    """
    _check_probs(probs, k)
    rows, n_items = probs.shape
    if n_items > 10:
        raise ConfigError(f"exact enumeration is for n_items ≤ 10, got {n_items}")
    p = probs.double() / probs.double().sum(dim=1, keepdim=True)
    out = torch.zeros(rows, n_items, dtype=torch.float64)
    for sequence in itertools.permutations(range(n_items), k):
        chance = torch.ones(rows, dtype=torch.float64)
        left = torch.ones(rows, dtype=torch.float64)
        for item in sequence:
            chance = chance * torch.where(left > 0, p[:, item] / left, 0.0)
            left = left - p[:, item]
        out[:, list(sequence)] += chance.unsqueeze(1)
    return out


def logged_inclusion_probabilities(
    probs: torch.Tensor,
    items: torch.Tensor,
    k: int,
    *,
    n_samples: int,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """P(item ∈ the K shown) of each logged item, estimated, and the estimate's standard error.

    probs: (n_users, n_items) the logging policy's softmax; items: (n_users, K) logged items.
    Returns two (n_users, K) tensors. The estimate is bounded below by the single-draw
    probability (P(a ∈ S) ≥ P(a drawn first)), which keeps an item below the Monte Carlo
    resolution positive.
    """
    estimate, stderr = inclusion_probabilities(
        probs, items, k, n_samples=n_samples, generator=generator
    )
    return torch.maximum(estimate, probs.gather(1, items)), stderr
