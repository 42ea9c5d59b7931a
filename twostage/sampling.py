"""Fast exact sampling of slates (candidate sets) from per-row categorical distributions.

The two-stage IPS loss draws, for every row of a batch, `n_slates × slate_size` items with
replacement from that row's tempered policy. `torch.multinomial` (and `torch.searchsorted`) on the
CPU cost tens of milliseconds for the ~400k draws of one training step, so this module samples by
inverse CDF with a guide table: each uniform first falls into one of `m` equal buckets, whose few
candidate items are then binary-searched with batched gathers.
"""

from __future__ import annotations

import torch

from twostage.errors import ConfigError, NumericsError

__all__ = ["distinct_mask", "sample_categorical", "sample_slates"]

_BELOW_ONE = 1.0 - 2.0**-53  # the largest float64 below 1


def _check_count(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer ≥ {minimum}, got {value!r}")


def _normalised_cdf(probs: torch.Tensor) -> torch.Tensor:
    """(batch, n_items) float64 CDF of each row, whose last entry is exactly 1."""
    if probs.dim() != 2 or probs.size(0) == 0 or probs.size(1) == 0:
        shape = tuple(probs.shape)
        raise ConfigError(f"probs must have shape (batch ≥ 1, n_items ≥ 1), got {shape}")
    if not probs.is_floating_point():
        raise ConfigError(f"probs must be a floating-point tensor, got {probs.dtype}")
    smallest, largest = torch.aminmax(probs)  # one pass; NaN propagates to both
    if not (smallest >= 0 and torch.isfinite(largest)):
        bad = ~(probs >= 0) | torch.isinf(probs)  # `~(p >= 0)` is also True for NaN
        row = int(bad.any(dim=1).nonzero()[0, 0])
        raise NumericsError(
            f"probs row {row} has a negative, NaN or infinite entry; weights must be finite ≥ 0"
        )
    cdf = probs.cumsum(dim=1, dtype=torch.float64)
    total = cdf[:, -1:]
    if not (total > 0).all():
        row = int((total[:, 0] <= 0).nonzero()[0, 0])
        raise NumericsError(f"probs row {row} sums to zero; nothing can be drawn from it")
    # x / x == 1 exactly, and items of zero weight keep a CDF entry equal to their predecessor's.
    return cdf / total


def _inverse_cdf(cdf: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """First index j with cdf[j] > u, per row.

    Args:
        cdf: (batch, n_items) float64, non-decreasing, last entry exactly 1.
        u: (batch, n_draws) float64 in [0, 1).

    Returns:
        (batch, n_draws) long. Items of zero weight are never returned.
    """
    batch, n_items = cdf.shape
    # At least 4 buckets per item, so most uniforms land in a bucket that no CDF entry crosses and
    # need no search at all. A power of two makes `x * n_buckets` exact: no rounding at the edges.
    n_buckets = 1 << (max(n_items - 1, 1).bit_length() + 2)
    bucket_of_item = (cdf * n_buckets).long()  # in [0, n_buckets]; exact floor as cdf ≥ 0
    # int32 tables: half the memory traffic of int64, and n_items < 2**31.
    counts = torch.zeros(batch, n_buckets + 1, dtype=torch.int32, device=cdf.device)
    counts.scatter_add_(1, bucket_of_item, torch.ones_like(bucket_of_item, dtype=torch.int32))
    # below[g] = #{j : bucket_of_item[j] < g}. For u in bucket g every item of a lower bucket has
    # cdf ≤ u and every item of a higher bucket has cdf > u, so the answer lies in
    # [below[g], below[g] + counts[g]].
    below = torch.empty(batch, n_buckets + 1, dtype=torch.int32, device=cdf.device)
    below[:, 0] = 0
    torch.cumsum(counts[:, :-1], dim=1, out=below[:, 1:])
    bucket = (u * n_buckets).long()
    found = below.gather(1, bucket).long()
    width = counts.gather(1, bucket)
    pending = width.view(-1).nonzero().squeeze(1)
    if pending.numel() == 0:
        return found
    # Binary search, on the pending draws only, for the first index in [lo, hi] with cdf > u.
    n_draws = u.size(1)
    offset = pending.div(n_draws, rounding_mode="floor").mul_(n_items)  # row start in flat cdf
    # index_select is much cheaper than advanced indexing on the CPU.
    lo = found.view(-1).index_select(0, pending)
    hi = lo + width.view(-1).index_select(0, pending)
    target = u.reshape(-1).index_select(0, pending)
    flat_cdf = cdf.reshape(-1)
    for _ in range(int(width.max()).bit_length()):
        mid = (lo + hi) >> 1
        right = flat_cdf.index_select(0, offset + mid) <= target
        lo = torch.where(right, mid + 1, lo)
        hi = torch.where(right, hi, mid)
    found.view(-1).index_copy_(0, pending, lo)
    return found


def _uniforms(
    shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device
) -> torch.Tensor:
    return torch.rand(shape, generator=generator, dtype=torch.float64, device=device)


def sample_categorical(
    probs: torch.Tensor, n_samples: int, *, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Draw `n_samples` items i.i.d. with replacement from each row's categorical distribution.

    Args:
        probs: (batch, n_items) non-negative weights; rows need not sum to one but need a
            positive total. Items of weight zero are never drawn.
        n_samples: draws per row (≥ 0).
        generator: source of the uniforms; the same seed gives the same draws.

    Returns:
        (batch, n_samples) long item indices.
    """
    _check_count("n_samples", n_samples, 0)
    cdf = _normalised_cdf(probs)
    return _inverse_cdf(cdf, _uniforms((probs.size(0), n_samples), generator, probs.device))


def sample_slates(
    probs: torch.Tensor,
    n_slates: int,
    slate_size: int,
    *,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Draw `n_slates` slates of `slate_size` items with replacement per row, each slate sorted.

    Each slate, as a multiset, is `slate_size` i.i.d. draws from the row's distribution; its items
    come out in ascending order, so equal items sit next to each other (see `distinct_mask`).

    Args:
        probs: (batch, n_items) non-negative weights (see `sample_categorical`).

    Returns:
        (batch, n_slates, slate_size) long item indices, ascending along the last dimension.
    """
    _check_count("n_slates", n_slates, 1)
    _check_count("slate_size", slate_size, 1)
    cdf = _normalised_cdf(probs)
    batch = probs.size(0)
    # Sorted uniforms without a sort (order statistics): U_(L) = V_L^(1/L) and
    # U_(k) = U_(k+1) · V_k^(1/k), i.e. log U_(k) = Σ_{m ≥ k} log(V_m) / m.
    inverse_rank = 1.0 / torch.arange(
        slate_size, 0, -1, dtype=torch.float64, device=probs.device
    )  # 1/L, …, 1/1
    v = _uniforms((batch, n_slates, slate_size), generator, probs.device)
    u = v.log_().mul_(inverse_rank).cumsum_(dim=2).exp_().flip(2)  # ascending
    # exp of a sum within 1e-16 of zero rounds to 1.0; keep every draw in [0, 1).
    u = u.clamp_(max=_BELOW_ONE)
    return _inverse_cdf(cdf, u.view(batch, -1)).view(batch, n_slates, slate_size)


def distinct_mask(slates: torch.Tensor) -> torch.Tensor:
    """Mark the first occurrence of each distinct item along the last dimension.

    Args:
        slates: (..., L) integer item indices.

    Returns:
        (..., L) bool, True where the item has not appeared earlier in its slate.
    """
    if slates.dim() == 0:
        raise ConfigError("slates must have at least one dimension")
    ordered, order = slates.sort(dim=-1, stable=True)
    first = torch.ones_like(ordered, dtype=torch.bool)
    first[..., 1:] = ordered[..., 1:] != ordered[..., :-1]
    # The stable sort keeps equal items in their original order, so the head of each run of equal
    # items is that item's first occurrence; scatter the flags back to the original positions.
    return torch.zeros_like(first).scatter_(-1, order, first)


def gumbel_top_k(log_probs: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """(rows, k) items drawn without replacement from each row's softmax, in draw order.

    The top k of log-probabilities plus Gumbel noise have exactly the distribution of k
    successive draws without replacement. `log_probs`: (rows, n_items), float64 recommended;
    items with log-probability −inf are never drawn while others remain.
    """
    uniform = torch.rand(
        log_probs.shape, generator=generator, dtype=torch.float64, device=log_probs.device
    )
    gumbel = -torch.log(-torch.log(uniform.clamp_min(1e-300)))
    return torch.topk(log_probs + gumbel, k, dim=1).indices
