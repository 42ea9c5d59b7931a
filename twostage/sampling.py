"""Fast exact sampling of slates (candidate sets) from per-row categorical distributions.

The two-stage IPS loss draws, for every row of a batch, `n_slates × slate_size` items with
replacement from that row's tempered policy. `torch.multinomial` called per row is the bottleneck of
a naive implementation; inverse-CDF sampling does the whole batch in one `searchsorted`.
"""

from __future__ import annotations

import torch

from twostage.errors import ConfigError, NumericsError

__all__ = ["distinct_mask", "sample_categorical", "sample_slates"]


def _check_probs(probs: torch.Tensor) -> None:
    if probs.dim() != 2 or probs.size(1) == 0:
        raise ConfigError(
            f"probs must have shape (batch, n_items) with n_items ≥ 1, got {tuple(probs.shape)}"
        )
    if not probs.is_floating_point():
        raise ConfigError(f"probs must be a floating-point tensor, got {probs.dtype}")
    # `~(p >= 0)` is also True for NaN; one fused reduction keeps the check cheap.
    bad = ~(probs >= 0) | torch.isinf(probs)
    if bad.any():
        row = int(bad.any(dim=1).nonzero()[0, 0])
        raise NumericsError(
            f"probs row {row} has a negative, NaN or infinite entry; probabilities must be finite ≥ 0"
        )


def sample_categorical(
    probs: torch.Tensor, n_samples: int, *, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Draw `n_samples` items i.i.d. with replacement from each row's categorical distribution.

    Args:
        probs: (batch, n_items) non-negative weights; rows need not sum to one, but each row
            needs a positive total. Items of weight zero are never drawn.
        n_samples: draws per row (≥ 0).
        generator: source of the uniforms; the same seed gives the same draws.

    Returns:
        (batch, n_samples) long item indices.

    Exact inverse-CDF sampling: a uniform `u` in [0, total) picks the first item whose
    cumulative weight exceeds `u`. The CDF is built in float64 so its rounding is far below any
    probability that matters.
    """
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 0:
        raise ConfigError(f"n_samples must be an integer ≥ 0, got {n_samples!r}")
    _check_probs(probs)
    cdf = probs.to(torch.float64).cumsum(dim=1)
    total = cdf[:, -1:]
    if not (total > 0).all():
        row = int((total[:, 0] <= 0).nonzero()[0, 0])
        raise NumericsError(f"probs row {row} sums to zero; nothing can be drawn from it")
    u = torch.rand(
        probs.size(0), n_samples, generator=generator, dtype=torch.float64, device=probs.device
    )
    # Keep u strictly below the total even if `rand · total` rounds up, so that an item of zero
    # weight at the end of a row (whose CDF entry equals the total) can never be returned.
    u = torch.minimum(u * total, torch.nextafter(total, torch.zeros_like(total)))
    # right=True returns the first index whose CDF entry is > u, which skips every
    # zero-weight item (its CDF entry equals its predecessor's).
    return torch.searchsorted(cdf, u, right=True)


def sample_slates(
    probs: torch.Tensor,
    n_slates: int,
    slate_size: int,
    *,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Draw `n_slates` slates of `slate_size` items with replacement per row.

    Args:
        probs: (batch, n_items) non-negative weights (see `sample_categorical`).

    Returns:
        (batch, n_slates, slate_size) long item indices.
    """
    for name, value in (("n_slates", n_slates), ("slate_size", slate_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be an integer ≥ 1, got {value!r}")
    draws = sample_categorical(probs, n_slates * slate_size, generator=generator)
    return draws.view(probs.size(0), n_slates, slate_size)


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
