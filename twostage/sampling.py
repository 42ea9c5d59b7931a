"""Fast exact sampling of slates (candidate sets) from per-row categorical distributions.

The two-stage IPS loss draws, for every row of a batch, `n_slates × slate_size` items with
replacement from that row's tempered policy. `torch.multinomial` (and `torch.searchsorted`) on the
CPU cost tens of milliseconds for the ~400k draws of one training step, so this module samples by
inverse CDF with a guide table: each uniform first falls into one of `m` equal buckets (about one
per item). Most buckets hold at most one CDF entry, and a draw there is settled by two table
lookups and one comparison; only draws in buckets holding several entries (about a fifth of
the draws for a peaked policy, almost none for a flat one) are binary-searched, with batched
gathers. On the CPU with numba, `twostage.sampling_kernel` does the same lookup in one compiled
loop and returns the same items, about five times faster.
"""

from __future__ import annotations

import torch

from twostage import sampling_kernel
from twostage.errors import ConfigError, NumericsError

__all__ = ["bucket_count", "distinct_mask", "sample_categorical", "sample_slates"]


def check_count(name: str, value: object, minimum: int) -> None:
    """Refuse a count that is not an integer ≥ `minimum` (a bool is not a count)."""
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


def bucket_count(n_items: int) -> int:
    """Guide-table buckets for `n_items` items: the least power of two ≥ n_items (so `u * m` is
    exact). One bucket per item keeps the tables as small as the CDF; larger tables settle a few
    more draws without a search but cost more to build than the search they save."""
    return 1 << max(n_items - 1, 1).bit_length()


def _inverse_cdf(cdf: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """First index j with cdf[j] · m > x, per row, where m = `bucket_count(n_items)`.

    Args:
        cdf: (batch, n_items) float64, non-decreasing, last entry exactly 1.
        x: (batch, n_draws) float64 uniforms scaled by m, in [0, m]; x = m (a uniform that
            rounded up to 1) counts as the largest float64 below m.

    Returns:
        (batch, n_draws) long. Items of zero weight are never returned.
    """
    batch, n_items = cdf.shape
    n_draws = x.size(1)
    m = bucket_count(n_items)
    device = cdf.device
    edges = cdf * m  # exact: m is a power of two
    if sampling_kernel.available(device):  # the same items from one compiled loop
        return sampling_kernel.inverse_cdf(edges, x, m)
    # float64 → int32 is vectorised on the CPU, float64 → int64 is not.
    bucket_of_item = edges.int().long()  # in [0, m]; an exact floor as edges ≥ 0
    counts = torch.zeros(batch, m + 1, dtype=torch.int32, device=device)
    one = torch.ones((), dtype=torch.int32, device=device)
    counts.scatter_add_(1, bucket_of_item, one.expand(bucket_of_item.shape))
    # lo[g] = #{j : bucket_of_item[j] < g}. For x in bucket g every item of a lower bucket has
    # edge ≤ x and every item of a higher bucket has edge > x, so the answer lies in
    # [lo[g], lo[g] + counts[g]]: lo[g] itself when the bucket holds no edge, lo[g] or lo[g] + 1
    # when it holds one (the threshold), and a binary search when it holds several.
    lo = torch.empty(batch, m + 1, dtype=torch.int32, device=device)
    lo[:, 0] = 0
    torch.cumsum(counts[:, :-1], dim=1, out=lo[:, 1:])
    threshold = torch.full((batch, m + 1), torch.inf, dtype=torch.float64, device=device)
    threshold.scatter_(1, bucket_of_item, edges)  # the edge of each one-edge bucket
    crowded = counts > 1
    threshold.masked_fill_(crowded, -1.0)  # marks the buckets that need a search
    # Bucket m holds only x = m: never above its edges, and never searched, so lo[m] is the last
    # item of positive weight, as if x were the largest float64 below m.
    threshold[:, m] = torch.inf

    # Flat int32 indices into the tables halve the memory traffic of int64 where they fit.
    index_dtype = torch.int32 if batch * (m + 1) < 2**31 else torch.long
    row_start = torch.arange(0, batch * (m + 1), m + 1, dtype=index_dtype, device=device)
    flat = x.to(index_dtype).add_(row_start.unsqueeze(1)).view(-1)
    found_lo = lo.view(-1).index_select(0, flat)
    drawn_threshold = threshold.view(-1).index_select(0, flat)
    above = x.view(-1) >= drawn_threshold
    found = torch.empty(batch * n_draws, dtype=torch.long, device=device)
    torch.add(found_lo, above, out=found)
    pending = (drawn_threshold < 0).nonzero().squeeze(1) if bool(crowded.any()) else None
    if pending is not None and pending.numel() > 0:
        # Binary search over the crowded bucket's items, by index into the flat (batch · n_items)
        # edges, for the first item whose edge exceeds x.
        bucket = flat.index_select(0, pending)
        offset = pending.div(n_draws, rounding_mode="floor").mul_(n_items)
        lo_p = found_lo.index_select(0, pending).long().add_(offset)
        hi_p = lo_p + counts.view(-1).index_select(0, bucket)
        target = x.reshape(-1).index_select(0, pending)
        flat_edges = edges.view(-1)
        for _ in range(int((hi_p - lo_p).max()).bit_length()):
            mid = (lo_p + hi_p) >> 1
            right = flat_edges.index_select(0, mid) <= target
            lo_p = torch.where(right, mid + 1, lo_p)
            hi_p = torch.where(right, hi_p, mid)
        found.index_copy_(0, pending, lo_p.sub_(offset))
    return found.view(batch, n_draws)


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
    check_count("n_samples", n_samples, 0)
    cdf = _normalised_cdf(probs)
    x = torch.rand(
        (probs.size(0), n_samples), generator=generator, dtype=torch.float64, device=probs.device
    )
    return _inverse_cdf(cdf, x.mul_(bucket_count(probs.size(1))))


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
    check_count("n_slates", n_slates, 1)
    check_count("slate_size", slate_size, 1)
    cdf = _normalised_cdf(probs)
    batch, n_items = probs.shape
    m = bucket_count(n_items)
    # Sorted uniforms without a sort (Rényi): with E_1 … E_{L+1} i.i.d. exponential and
    # S_k = E_1 + … + E_k, (S_1, …, S_L) / S_{L+1} are the L order statistics of L uniforms.
    # 1 − V lies in (0, 1], so every log is finite.
    v = torch.rand(
        (batch, n_slates, slate_size + 1),
        generator=generator,
        dtype=torch.float64,
        device=probs.device,
    )
    sums = torch.rsub(v, 1.0).log_().cumsum_(dim=2)  # −S_k, all ≤ 0
    # Ascending, in [0, m]: S_L / S_{L+1} rounds to 1 when E_{L+1} is tiny (see `_inverse_cdf`).
    x = sums[..., :slate_size] * (m / sums[..., slate_size:])
    return _inverse_cdf(cdf, x.view(batch, -1)).view(batch, n_slates, slate_size)


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
