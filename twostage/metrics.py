"""Ranking metrics over a batch of users: Precision@k, Recall@k, NDCG@k and MAP.

The definitions are those of the authors' code (classes ``PrecisionRecall``, ``NormalizedDCG``
and ``MeanAP``), computed for all users at once. Every metric works on a hit matrix

    hits: (users, L) bool — ``hits[u, i]`` is True when the item ranked at position i for user u
    is relevant to u, i.e. ``relevant.gather(1, rankings)``,

the number of relevant items of each user ``n_relevant: (users,)`` (which may count items that
are not in the ranking at all), and optionally ``lengths: (users,)``, how many positions of each
row are real items (a ranking shorter than L, padded on the right; pads must not be hits).

- Precision@k = #hits in the first k / min(k, length). As in the original, which divides by
  ``len(predictions[:k])``, a ranking shorter than k is judged on the items it has; an empty
  ranking has precision 0.
- Recall@k = #hits in the first k / #relevant.
- NDCG@k: k is first cut to k' = min(k, #relevant); DCG sums 1/log2(i + 2) over hits in the first
  k' positions and the ideal DCG sums it over positions 0..k'-1 (even past the ranking's end).
- AP@k (k = ∞ by default) = Σ_i hit_i · precision@(i+1), over the first k positions, divided by
  min(#relevant, k). MAP is its mean over users.

Users with no relevant item have no defined score: their per-user values are NaN and averages
leave them out. Items within a row of ``rankings`` are assumed distinct.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from twostage.errors import ConfigError

DEFAULT_PRECISION_KS: tuple[int, ...] = (1, 5, 10)
DEFAULT_RECALL_KS: tuple[int, ...] = (1, 5, 10)
DEFAULT_NDCG_KS: tuple[int, ...] = (5, 10, 20)


def _check_k(k: int, name: str = "k") -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"{name} must be a positive integer, got {k!r}")


def _undefined_where_no_relevant(values: Tensor, n_relevant: Tensor) -> Tensor:
    return torch.where(n_relevant > 0, values, torch.full_like(values, math.nan))


def precision_at_k(hits: Tensor, k: int, lengths: Tensor | None = None) -> Tensor:
    """Precision@k per user: hits in the first k positions / min(k, length).

    hits: (users, L) bool; lengths: (users,) long, default L. Returns (users,) float64; 0 for an
    empty ranking. Defined whether or not the user has relevant items.
    """
    _check_k(k)
    n_hits = hits[:, :k].sum(1, dtype=torch.float64)
    if lengths is None:
        shown = torch.full_like(n_hits, min(k, hits.shape[1]))
    else:
        shown = lengths.clamp(max=k).to(torch.float64)
    return n_hits / shown.clamp(min=1)


def recall_at_k(hits: Tensor, n_relevant: Tensor, k: int) -> Tensor:
    """Recall@k per user: hits in the first k positions / #relevant.

    hits: (users, L) bool; n_relevant: (users,) long. Returns (users,) float64, NaN where
    n_relevant == 0.
    """
    _check_k(k)
    n_hits = hits[:, :k].sum(1, dtype=torch.float64)
    recall = n_hits / n_relevant.to(torch.float64).clamp(min=1)
    return _undefined_where_no_relevant(recall, n_relevant)


def _discounts(width: int, device: torch.device) -> Tensor:
    """1 / log2(i + 2) for i = 0..width-1: (width,) float64."""
    return 1.0 / torch.log2(torch.arange(width, device=device, dtype=torch.float64) + 2.0)


def ndcg_at_k(hits: Tensor, n_relevant: Tensor, k: int) -> Tensor:
    """NDCG@k per user with k cut to min(k, #relevant) for both the DCG and the ideal DCG.

    hits: (users, L) bool; n_relevant: (users,) long. Returns (users,) float64, NaN where
    n_relevant == 0.
    """
    _check_k(k)
    cut = n_relevant.clamp(max=k)  # (users,)
    width = min(k, hits.shape[1])
    positions = torch.arange(width, device=hits.device)
    in_cut = positions < cut[:, None]  # (users, width)
    gains = (hits[:, :width] & in_cut).to(torch.float64)
    dcg = gains @ _discounts(width, hits.device)
    # Ideal DCG of k' positions, looked up from a running sum of discounts: ideal[k'].
    longest = int(cut.max()) if cut.numel() else 0
    ideal = torch.cat(
        [torch.zeros(1, dtype=torch.float64, device=hits.device), _discounts(longest, hits.device)]
    ).cumsum(0)
    idcg = ideal[cut]
    return _undefined_where_no_relevant(dcg / idcg.clamp(min=1e-12), n_relevant)


def average_precision(hits: Tensor, n_relevant: Tensor, k: int | None = None) -> Tensor:
    """AP@k per user (k = None: the whole ranking), divided by min(#relevant, k).

    hits: (users, L) bool; n_relevant: (users,) long. Returns (users,) float64, NaN where
    n_relevant == 0.
    """
    if k is not None:
        _check_k(k)
    width = hits.shape[1] if k is None else min(k, hits.shape[1])
    h = hits[:, :width].to(torch.float64)
    ranks = torch.arange(1, width + 1, device=hits.device, dtype=torch.float64)
    score = (h * h.cumsum(1) / ranks).sum(1)
    denominator = n_relevant if k is None else n_relevant.clamp(max=k)
    ap = score / denominator.to(torch.float64).clamp(min=1)
    return _undefined_where_no_relevant(ap, n_relevant)


def per_user_ranking_metrics(
    hits: Tensor,
    n_relevant: Tensor,
    lengths: Tensor | None = None,
    *,
    precision_ks: Sequence[int] = DEFAULT_PRECISION_KS,
    recall_ks: Sequence[int] = DEFAULT_RECALL_KS,
    ndcg_ks: Sequence[int] = DEFAULT_NDCG_KS,
    mean_ap: bool = False,
) -> dict[str, Tensor]:
    """Every requested metric per user, keyed "Precision@k", "Recall@k", "NDCG@k", "MAP".

    hits: (users, L) bool; n_relevant: (users,) long; lengths: (users,) long or None (hits past a
    row's length are ignored). Each value is (users,) float64, NaN for users with no relevant item,
    so that ``values[~values.isnan()]`` gives the users that count (e.g. for standard errors).
    """
    if hits.dim() != 2 or hits.dtype != torch.bool:
        raise ConfigError(f"hits must be a 2-D bool tensor, got {hits.dtype} {tuple(hits.shape)}")
    if n_relevant.shape != (hits.shape[0],):
        raise ConfigError(
            f"n_relevant must have shape ({hits.shape[0]},), got {tuple(n_relevant.shape)}"
        )
    if lengths is not None:
        if lengths.shape != (hits.shape[0],):
            raise ConfigError(
                f"lengths must have shape ({hits.shape[0]},), got {tuple(lengths.shape)}"
            )
        positions = torch.arange(hits.shape[1], device=hits.device)
        hits = hits & (positions < lengths[:, None])
    out: dict[str, Tensor] = {}
    for k in precision_ks:
        precision = precision_at_k(hits, k, lengths)
        out[f"Precision@{k}"] = _undefined_where_no_relevant(precision, n_relevant)
    for k in recall_ks:
        out[f"Recall@{k}"] = recall_at_k(hits, n_relevant, k)
    for k in ndcg_ks:
        out[f"NDCG@{k}"] = ndcg_at_k(hits, n_relevant, k)
    if mean_ap:
        out["MAP"] = average_precision(hits, n_relevant)
    return out


def mean_over_users(per_user: dict[str, Tensor]) -> dict[str, float]:
    """Average each per-user metric over the users for which it is defined (not NaN).

    NaN when no user has a relevant item.
    """
    return {name: float(values.nanmean()) for name, values in per_user.items()}


def ranking_metrics(
    rankings: Tensor,
    relevant: Tensor,
    *,
    lengths: Tensor | None = None,
    precision_ks: Sequence[int] = DEFAULT_PRECISION_KS,
    recall_ks: Sequence[int] = DEFAULT_RECALL_KS,
    ndcg_ks: Sequence[int] = DEFAULT_NDCG_KS,
    mean_ap: bool = False,
) -> dict[str, float]:
    """Mean ranking metrics over the users with at least one relevant item.

    rankings: (users, L) long — item indices, best first, distinct within a row;
    relevant: (users, n_items) bool — the relevant set, which may include items absent from the
    ranking (they still count in Recall's and MAP's denominators); lengths: (users,) long or None.
    """
    if rankings.dim() != 2 or relevant.dim() != 2 or rankings.shape[0] != relevant.shape[0]:
        raise ConfigError(
            "rankings (users, L) and relevant (users, n_items) must be 2-D with the same number "
            f"of rows, got {tuple(rankings.shape)} and {tuple(relevant.shape)}"
        )
    hits = relevant.gather(1, rankings)
    per_user = per_user_ranking_metrics(
        hits,
        relevant.sum(1),
        lengths,
        precision_ks=precision_ks,
        recall_ks=recall_ks,
        ndcg_ks=ndcg_ks,
        mean_ap=mean_ap,
    )
    return mean_over_users(per_user)
