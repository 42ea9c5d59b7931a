"""One-stage and two-stage evaluation of a candidate generator against the simulator's truth.

Pure tensor code: the pipeline precomputes the simulator's labels and the ranker's scores for
every (user, item) pair at the user's mean timestamp; the evaluator only ranks.

- One-stage: the candidate generator's own ranking of all items, the user's logged positives
  left out. Its reward is the share of users whose top item is a true positive.
- Two-stage: the generator's top-k items (logged positives left out) re-ordered by the ranker.
  Its reward is the share of users whose ranker-chosen item is a true positive.

A user's relevant set is every true positive, including logged positives that are kept out of
the ranking, so they count in Recall's denominator as in the authors' code. Logged positives are
never ranked: a user with fewer than L unlogged items gets a ranking shorter than L (Precision
then divides by its length, see `twostage.metrics`), and a user whose every item is logged is
shown nothing, which counts as reward 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from twostage.errors import ConfigError, NumericsError
from twostage.metrics import (
    DEFAULT_NDCG_KS,
    DEFAULT_PRECISION_KS,
    DEFAULT_RECALL_KS,
    mean_over_users,
    per_user_ranking_metrics,
)

# Users per block when ranking, to bound the (users, width) intermediates.
CHUNK_USERS = 2048


def _check_finite(name: str, scores: Tensor) -> None:
    # A finite sum implies every entry is finite, and costs far less than an elementwise check;
    # only when the sum is not finite (NaN, ±inf, or overflow) is the exact check needed.
    if not torch.isfinite(scores.sum()) and not torch.isfinite(scores).all():
        raise NumericsError(f"{name} must be finite; found NaN or ±inf")


def top_of_products(
    vectors: Tensor,
    items: Tensor,
    width: int,
    chunk_items: int,
    buffer: Tensor | None = None,
) -> Tensor:
    """The `width` best items of each row of the scores `vectors @ items.T`, best first:
    (m, min(width, n_items)) long; vectors: (m, d), items: (n_items, d). The scores are taken
    `chunk_items` items at a time (into `buffer`, ≥ m · chunk_items floats, when given), each
    chunk's best `width` kept and the kept ones ranked again, so no (m, n_items) matrix is held.
    A score is the same dot product whichever items share its chunk, so the items and their
    order are those of `topk` over whole rows, except among exactly equal scores."""
    m, n_items = vectors.shape[0], items.shape[0]
    width = min(width, n_items)
    if buffer is None:
        buffer = vectors.new_empty(m * min(chunk_items, n_items))
    values, indices = [], []
    for first in range(0, n_items, chunk_items):
        chunk = items[first : first + chunk_items]
        scores = torch.mm(vectors, chunk.T, out=buffer[: m * len(chunk)].view(m, len(chunk)))
        _check_finite("scores", scores)
        best = scores.topk(min(width, len(chunk)), dim=1)
        values.append(best.values)
        indices.append(best.indices + first)
    kept = torch.cat(values, dim=1).topk(width, dim=1).indices
    return torch.cat(indices, dim=1).gather(1, kept)


def _check_logged(logged_users: Tensor, logged_items: Tensor, n_items: int) -> None:
    """Refuse logged pairs that are not two 1-D tensors of one length, or items outside the
    catalogue."""
    if logged_users.dim() != 1 or logged_users.shape != logged_items.shape:
        raise ConfigError(
            "logged_users and logged_items must be 1-D of the same length, got "
            f"{tuple(logged_users.shape)} and {tuple(logged_items.shape)}"
        )
    if logged_items.numel() and not (
        0 <= int(logged_items.min()) and int(logged_items.max()) < n_items
    ):
        raise ConfigError(f"logged_items must lie in [0, {n_items})")


class Evaluator:
    """Ranks candidate generators' scores and judges them with the simulator's truth.

    truth: (n_users, n_items) bool — the simulator's label at the user's mean timestamp.
    logged_users, logged_items: (n_logged,) long — logged positive pairs (0-based), never ranked.
    ranker_scores: (n_users, n_items) float — the ranker's score at the user's mean timestamp.
    k: the candidate-set size of the two-stage evaluation (the paper's 30).
    precision_ks, recall_ks, ndcg_ks, mean_ap: which metrics the ``*_metrics`` methods report.

    Inputs are never modified; the evaluator keeps references to ``truth`` and ``ranker_scores``
    (contiguous copies if they are not contiguous).
    """

    def __init__(
        self,
        truth: Tensor,
        logged_users: Tensor,
        logged_items: Tensor,
        ranker_scores: Tensor,
        k: int = 30,
        *,
        precision_ks: Sequence[int] = DEFAULT_PRECISION_KS,
        recall_ks: Sequence[int] = DEFAULT_RECALL_KS,
        ndcg_ks: Sequence[int] = DEFAULT_NDCG_KS,
        mean_ap: bool = False,
    ) -> None:
        if truth.dim() != 2 or truth.dtype != torch.bool:
            raise ConfigError(f"truth must be a 2-D bool tensor, got {truth.dtype} {truth.shape}")
        n_users, n_items = truth.shape
        if ranker_scores.shape != truth.shape or not ranker_scores.is_floating_point():
            raise ConfigError(
                f"ranker_scores must be float of shape {tuple(truth.shape)}, "
                f"got {ranker_scores.dtype} {tuple(ranker_scores.shape)}"
            )
        _check_finite("ranker_scores", ranker_scores)
        _check_logged(logged_users, logged_items, n_items)
        if logged_users.numel() and not (
            0 <= int(logged_users.min()) and int(logged_users.max()) < n_users
        ):
            raise ConfigError(f"logged_users must lie in [0, {n_users})")
        self._set_ranking(k, precision_ks, recall_ks, ndcg_ks, mean_ap)

        # Contiguous (no copy when they already are, as the pipeline's are): `_pairs` reads
        # them by flat index.
        self.truth = truth.contiguous()
        self.ranker_scores = ranker_scores.contiguous()
        self.n_users, self.n_items = n_users, n_items
        excluded = torch.zeros(n_users, n_items, dtype=torch.bool, device=truth.device)
        excluded[logged_users.long(), logged_items.long()] = True
        self.excluded = excluded  # (n_users, n_items) bool
        n_logged = excluded.sum(1)  # (n_users,), duplicate pairs counted once
        self.max_logged = int(n_logged.max()) if n_users else 0
        self.n_available = n_items - n_logged  # (n_users,) unlogged items per user
        self.n_relevant = truth.sum(1)  # (n_users,), logged true positives included
        self.device = truth.device
        self.users = torch.arange(n_users, device=truth.device)  # global rows: all users

    def _set_ranking(
        self,
        k: int,
        precision_ks: Sequence[int],
        recall_ks: Sequence[int],
        ndcg_ks: Sequence[int],
        mean_ap: bool,
    ) -> None:
        """Check and keep the candidate-set size and the metric cut-offs (both evaluators)."""
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ConfigError(f"k must be a positive integer, got {k!r}")
        for ks in (precision_ks, recall_ks, ndcg_ks):
            for value in ks:
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    raise ConfigError(f"metric cut-offs must be positive integers, got {value!r}")
        self.k = k
        self.precision_ks = tuple(precision_ks)
        self.recall_ks = tuple(recall_ks)
        self.ndcg_ks = tuple(ndcg_ks)
        self.mean_ap = mean_ap

    # -- what is looked up per (user, item) pair: the subclass `CompactEvaluator` overrides these

    def _truth_at(self, users: Tensor, items: Tensor) -> Tensor:
        """Truth of (users[i], items[i, j]): (m, w) bool; users (m,) rows, items (m, w) long."""
        return self._pairs(self.truth, users, items)

    def _logged_at(self, users: Tensor, items: Tensor) -> Tensor:
        """Whether (users[i], items[i, j]) is a logged positive: (m, w) bool."""
        return self._pairs(self.excluded, users, items)

    def _ranker_at(self, users: Tensor, items: Tensor) -> Tensor:
        """The ranker's score of (users[i], items[i, j]): (m, w) float."""
        return self._pairs(self.ranker_scores, users, items)

    # -- ranking --------------------------------------------------------------------------

    def _check_users(self, users: Tensor | None) -> Tensor:
        """Validates users: (m,) row indices and returns them (all users if None)."""
        if users is None:
            return torch.arange(self.n_users, device=self.device)
        if users.dim() != 1 or users.numel() == 0:
            raise ConfigError(f"users must be a non-empty 1-D tensor, got {tuple(users.shape)}")
        if not (0 <= int(users.min()) and int(users.max()) < self.n_users):
            raise ConfigError(f"users must lie in [0, {self.n_users})")
        return users

    def _check_scores(self, scores: Tensor, users: Tensor | None) -> Tensor:
        """Validates scores: (m, n_items) and returns users: (m,) long (all users if None)."""
        users = self._check_users(users)
        if scores.shape != (users.numel(), self.n_items) or not scores.is_floating_point():
            raise ConfigError(
                f"scores must be float of shape ({users.numel()}, {self.n_items}), "
                f"got {scores.dtype} {tuple(scores.shape)}"
            )
        _check_finite("scores", scores)
        return users.long()

    def _wide(self, width: int) -> int:
        """How many raw top items hold the unlogged top `width` of every user: a user has at
        most `max_logged` logged items, so no masked copy of the score matrix is needed."""
        return min(self.n_items, min(width, self.n_items) + self.max_logged)

    @property
    def top_width(self) -> int:
        """The raw top items (`top`) from which every reward and metric here is computed: the
        one-stage ranking's and the k candidates' width, plus `max_logged`."""
        return self._wide(max(self.k, self._one_stage_width()))

    def _one_stage_width(self) -> int:
        cut_offs = self.precision_ks + self.recall_ks + self.ndcg_ks
        return self.n_items if self.mean_ap else max(cut_offs, default=1)

    def top(self, scores: Tensor, users: Tensor | None = None, width: int | None = None) -> Tensor:
        """Each user's `width` (default `top_width`) best-scored items, in score order, logged
        items included: (m, width) long. scores: (m, n_items), rows aligned with `users`
        (default all users). Every `*_from_top` method takes this, so a caller can score users
        in blocks and keep only their top items (`twostage.pipeline.candidates.evaluate_epoch`)."""
        self._check_scores(scores, users)
        return self._topk(scores, self.top_width if width is None else width)

    def _topk(self, scores: Tensor, width: int) -> Tensor:
        width = min(width, self.n_items)
        blocks = [
            scores[start : start + CHUNK_USERS].topk(width, dim=1).indices
            for start in range(0, scores.shape[0], CHUNK_USERS)
        ]
        return torch.cat(blocks)

    def _check_top(self, top: Tensor, users: Tensor | None, width: int) -> Tensor:
        """Validates top: (m, ≥ width) long and returns users: (m,) long (all users if None)."""
        users = self._check_users(users)
        if top.dim() != 2 or top.shape[0] != users.numel() or top.shape[1] < width:
            raise ConfigError(
                f"top must have shape ({users.numel()}, ≥ {width}) (Evaluator.top), "
                f"got {tuple(top.shape)}"
            )
        return users.long()

    def _pairs(self, table: Tensor, users: Tensor, items: Tensor) -> Tensor:
        """table[users[i], items[i, j]] for a (n_users, n_items) table: (m, w), by flat index
        (faster than indexing with two tensors)."""
        return table.view(-1)[users[:, None] * self.n_items + items]

    def _unlogged(self, top: Tensor, users: Tensor, width: int) -> Tensor:
        """The first `width` unlogged items of each raw top list (m, ≥ _wide(width)): (m, width)
        long. Positions at or past ``n_available[users]`` hold logged items, not real picks."""
        width = min(width, self.n_items)
        top = top[:, : self._wide(width)]
        logged = self._logged_at(users, top).to(torch.uint8)
        # Stable: unlogged items first, each group still in score order.
        keep = logged.argsort(dim=1, stable=True)[:, :width]
        return top.gather(1, keep)

    def _top_unlogged(self, scores: Tensor, users: Tensor, width: int) -> Tensor:
        """The `width` best-scored unlogged items of each user: (m, width) long."""
        return self._unlogged(self._topk(scores, self._wide(width)), users, width)

    def _rerank(self, top: Tensor, users: Tensor) -> tuple[Tensor, Tensor]:
        """The top-k candidates of each raw top list re-ordered by the ranker: (m, k) long, and
        their count (m,) long."""
        candidates = self._unlogged(top, users, self.k)
        n_candidates = self.n_available[users].clamp(max=candidates.shape[1])
        ranker = self._ranker_at(users, candidates)
        real = torch.arange(candidates.shape[1], device=users.device) < n_candidates[:, None]
        order = ranker.masked_fill(~real, -torch.inf).argsort(dim=1, descending=True, stable=True)
        return candidates.gather(1, order), n_candidates

    def _candidates(self, scores: Tensor, users: Tensor) -> tuple[Tensor, Tensor]:
        """Top-k candidates re-ordered by the ranker: (m, k) long, and their count (m,) long."""
        return self._rerank(self._topk(scores, self._wide(self.k)), users)

    def _reward(self, shown: Tensor, users: Tensor) -> float:
        """Share of users whose shown item (m,) is a true positive; users shown nothing score 0."""
        good = self._truth_at(users, shown[:, None])[:, 0] & (self.n_available[users] > 0)
        return float(good.to(torch.float64).mean())

    # -- rewards ----------------------------------------------------------------------------

    def one_stage_reward(self, scores: Tensor) -> float:
        """Share of users whose top unlogged item is a true positive. scores: (n_users, n_items)."""
        users = self._check_scores(scores, None)
        return self._reward(self._top_unlogged(scores, users, 1)[:, 0], users)

    def two_stage_reward(self, scores: Tensor) -> float:
        """Share of users for whom the ranker's pick among the top-k candidates is a true positive.

        scores: (n_users, n_items) from the candidate generator.
        """
        users = self._check_scores(scores, None)
        ranked, _ = self._candidates(scores, users)
        return self._reward(ranked[:, 0], users)

    def rewards_from_top(self, top: Tensor) -> dict[str, float]:
        """{"one-stage": …, "two-stage": …} rewards from every user's raw top items
        (`top(scores)`: (n_users, ≥ top_width)); the same values as `one_stage_reward` and
        `two_stage_reward` of those scores."""
        users = self._check_top(top, None, self.top_width)
        return {
            "one-stage": self._reward(self._unlogged(top, users, 1)[:, 0], users),
            "two-stage": self._reward(self._rerank(top, users)[0][:, 0], users),
        }

    # -- ranking metrics --------------------------------------------------------------------

    def one_stage_metrics_per_user(self, scores: Tensor, users: Tensor) -> dict[str, Tensor]:
        """Per-user metrics of the generator's own ranking; values (m,) float64, NaN for users
        with no true positive. scores: (m, n_items) with rows aligned with users: (m,) long."""
        users = self._check_scores(scores, users)
        ranking = self._top_unlogged(scores, users, self._one_stage_width())
        return self._per_user(ranking, users, self.n_available[users])

    def two_stage_metrics_per_user(self, scores: Tensor, users: Tensor) -> dict[str, Tensor]:
        """Per-user metrics of the top-k candidates re-ordered by the ranker; as above."""
        users = self._check_scores(scores, users)
        ranking, n_candidates = self._candidates(scores, users)
        return self._per_user(ranking, users, n_candidates)

    def one_stage_metrics(self, scores: Tensor, users: Tensor) -> dict[str, float]:
        """Mean one-stage metrics over `users` with at least one true positive."""
        return mean_over_users(self.one_stage_metrics_per_user(scores, users))

    def two_stage_metrics(self, scores: Tensor, users: Tensor) -> dict[str, float]:
        """Mean two-stage metrics over `users` with at least one true positive."""
        return mean_over_users(self.two_stage_metrics_per_user(scores, users))

    def metrics_from_top(self, top: Tensor, users: Tensor) -> dict[str, dict[str, float]]:
        """{"one-stage": metrics, "two-stage": metrics} of `users` (m,) from their raw top items
        (`top`: (m, ≥ top_width), rows aligned with users); the same values as
        `one_stage_metrics` and `two_stage_metrics` of those scores."""
        users = self._check_top(top, users, self.top_width)
        one_stage = self._unlogged(top, users, self._one_stage_width())
        two_stage, n_candidates = self._rerank(top, users)
        return {
            "one-stage": mean_over_users(self._per_user(one_stage, users, self.n_available[users])),
            "two-stage": mean_over_users(self._per_user(two_stage, users, n_candidates)),
        }

    def _per_user(self, ranking: Tensor, users: Tensor, lengths: Tensor) -> dict[str, Tensor]:
        hits = self._truth_at(users, ranking)  # (m, L) bool
        return per_user_ranking_metrics(
            hits,
            self.n_relevant[users],
            lengths,
            precision_ks=self.precision_ks,
            recall_ks=self.recall_ks,
            ndcg_ks=self.ndcg_ks,
            mean_ap=self.mean_ap,
        )


# Set bits of each byte value: a bit-packed row's positives without unpacking it.
_POPCOUNT = torch.tensor([bin(value).count("1") for value in range(256)], dtype=torch.int32)
# Rows of bit-packed truth whose popcounts are summed at a time (bounds the int32 temporary).
_POPCOUNT_ROWS = 64


def pack_truth(truth: Tensor) -> Tensor:
    """(m, n_items) bool → (m, ⌈n_items / 8⌉) uint8, item i of a row in bit i % 8 (least
    significant first) of byte i // 8: the layout `CompactEvaluator` reads."""
    m, n_items = truth.shape
    padded = torch.zeros(m, -(-n_items // 8) * 8, dtype=torch.uint8, device=truth.device)
    padded[:, :n_items] = truth
    weights = torch.tensor([1 << b for b in range(8)], dtype=torch.uint8, device=truth.device)
    return (padded.view(m, -1, 8) * weights).sum(2, dtype=torch.uint8)


class CompactEvaluator(Evaluator):
    """The same evaluation for a fixed set of users, without any users × items matrix.

    For catalogues too large for the dense tables of `Evaluator` (a million items): the truth
    of the evaluated users comes bit-packed, the logged positives as lists, and the ranker as
    vectors whose dot products are taken only for the candidates that are re-ranked. Every
    reward and metric is computed by `Evaluator`'s code from these lookups, so on a catalogue
    small enough for both it equals `Evaluator` built from the unpacked truth and the ranker's
    dot products (tested).

    Args:
        users: (m,) long — the evaluated users' global rows; row r of everything below is user
            users[r], and every `users` argument of the methods is such a row (0..m-1).
        truth_bits: (m, ⌈n_items / 8⌉) uint8 — `pack_truth` of their truth.
        n_items: the catalogue size.
        logged_users: (n_logged,) long — users (global rows) of logged positive pairs of any
            users; those of the evaluated users are never ranked.
        logged_items: (n_logged,) long — the items of those pairs.
        ranker_vectors: (m, d) float — the ranker's context vector of each evaluated user.
        item_vectors: (n_items, d) float — the ranker's item vectors; a pair's ranker score is
            the dot product of the two.
        k: the candidate-set size, and the metric settings: as `Evaluator`.
    """

    def __init__(
        self,
        users: Tensor,
        truth_bits: Tensor,
        n_items: int,
        logged_users: Tensor,
        logged_items: Tensor,
        ranker_vectors: Tensor,
        item_vectors: Tensor,
        k: int = 30,
        *,
        precision_ks: Sequence[int] = DEFAULT_PRECISION_KS,
        recall_ks: Sequence[int] = DEFAULT_RECALL_KS,
        ndcg_ks: Sequence[int] = DEFAULT_NDCG_KS,
        mean_ap: bool = False,
    ) -> None:
        m = users.numel()
        if users.dim() != 1 or m == 0 or users.dtype != torch.long:
            raise ConfigError(f"users must be a non-empty 1-D long tensor, got {users.shape}")
        if users.unique().numel() != m:
            raise ConfigError("users must be distinct")
        n_bytes = -(-n_items // 8)
        if truth_bits.dtype != torch.uint8 or truth_bits.shape != (m, n_bytes):
            raise ConfigError(
                f"truth_bits must be uint8 of shape ({m}, {n_bytes}) (pack_truth), got "
                f"{truth_bits.dtype} {tuple(truth_bits.shape)}"
            )
        if ranker_vectors.shape[0] != m or item_vectors.shape[0] != n_items:
            raise ConfigError(
                f"ranker_vectors must have {m} rows and item_vectors {n_items}, got "
                f"{tuple(ranker_vectors.shape)} and {tuple(item_vectors.shape)}"
            )
        if ranker_vectors.shape[1] != item_vectors.shape[1]:
            raise ConfigError("ranker_vectors and item_vectors must have the same width")
        _check_finite("ranker_vectors", ranker_vectors)
        _check_finite("item_vectors", item_vectors)
        _check_logged(logged_users, logged_items, n_items)
        self._set_ranking(k, precision_ks, recall_ks, ndcg_ks, mean_ap)

        self.device = truth_bits.device
        self.users = users
        self.truth_bits = truth_bits.contiguous()
        self.ranker_vectors = ranker_vectors
        self.item_vectors = item_vectors
        self.n_users, self.n_items, self._n_bytes = m, n_items, n_bytes

        # Each evaluated user's distinct logged items, as (m, L) padded with -1.
        if logged_users.numel() and int(logged_users.min()) < 0:
            raise ConfigError("logged_users must be non-negative rows")
        top_user = int(logged_users.max()) if logged_users.numel() else 0
        row_of = torch.full((max(int(users.max()), top_user) + 1,), -1)
        row_of[users] = torch.arange(m)
        known = logged_users < len(row_of)
        rows = torch.full_like(logged_users, -1)
        rows[known] = row_of[logged_users[known]]
        pairs = torch.unique(torch.stack([rows, logged_items])[:, rows >= 0], dim=1)
        n_logged = torch.bincount(pairs[0], minlength=m)  # (m,), duplicates counted once
        width = int(n_logged.max()) if pairs.numel() else 0
        starts = torch.cumsum(n_logged, 0) - n_logged
        slot = torch.arange(pairs.shape[1]) - starts[pairs[0]]  # pairs are sorted by row
        logged = torch.full((m, max(width, 1)), -1, dtype=torch.long)
        logged[pairs[0], slot] = pairs[1]
        self.logged = logged.to(self.device)
        self.max_logged = width
        self.n_available = (n_items - n_logged).to(self.device)
        counts = _POPCOUNT.to(self.device)
        self.n_relevant = torch.cat(
            [
                counts[self.truth_bits[start : start + _POPCOUNT_ROWS].long()].sum(1)
                for start in range(0, m, _POPCOUNT_ROWS)
            ]
        )

    def _truth_at(self, users: Tensor, items: Tensor) -> Tensor:
        flat = users[:, None] * self._n_bytes + (items >> 3)
        return ((self.truth_bits.view(-1)[flat] >> (items & 7).to(torch.uint8)) & 1).bool()

    def _logged_at(self, users: Tensor, items: Tensor) -> Tensor:
        return (items[:, :, None] == self.logged[users][:, None, :]).any(2)

    def _ranker_at(self, users: Tensor, items: Tensor) -> Tensor:
        return (self.ranker_vectors[users][:, None, :] * self.item_vectors[items]).sum(2)
