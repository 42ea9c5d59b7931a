"""What the stages hand to each other, as typed, immutable artifacts (the stage cache stores them).

- `TrainedModel`: a trained network's state dict and what its training measured (simulator,
  logging policy, ranker);
- `World`: every user × item pair's timestamp, probability and label;
- `BanditLog`: the logging policy's K impressions per user with propensities and rewards.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TrainedModel:
    """A trained network: `state` (its state dict, on the CPU) and `info` (curves, AUCs, steps)."""

    state: dict[str, torch.Tensor]
    info: dict


@dataclass(frozen=True)
class World:
    """The semi-synthetic world: every user × item pair with a timestamp, probability and label.

    Attributes:
        timestamps: (n_users, n_items) float — each pair's sampled impression time.
        probabilities: (n_users, n_items) float — the simulator's probability of a positive
            label at that time.
        labels: (n_users, n_items) bool — probabilities ≥ cut (the labels the log is drawn from).
        mean_timestamps: (n_users,) — each user's mean sampled time (the evaluator's context).
        probabilities_at_mean: (n_users, n_items) float — the probability at that mean time.
        truth: (n_users, n_items) bool — probabilities_at_mean > cut (the evaluation's truth).
        cut: the probability cut.
        cut_rule: how the cut was chosen (given, the paper's, or a positive share).
    """

    timestamps: torch.Tensor
    probabilities: torch.Tensor
    labels: torch.Tensor
    mean_timestamps: torch.Tensor
    probabilities_at_mean: torch.Tensor
    truth: torch.Tensor
    cut: float
    cut_rule: str

    @property
    def positive_share(self) -> float:
        return float(self.labels.float().mean())


@dataclass(frozen=True)
class BanditLog:
    """K distinct items per user, shown by the logging policy, in user order and draw order.

    Attributes:
        users: (n_users·K,) long — the impression's user.
        items: (n_users·K,) long — the impression's item.
        propensities: (n_users·K,) — what the objectives weight by: `single_propensities`, or
            the inclusion probabilities when the log was made with `propensity="inclusion"`.
        single_propensities: (n_users·K,) — the softmax probability of one draw (the paper's).
        rewards: (n_users·K,) float — the world's label of the pair.
        timestamps: (n_users·K,) — the pair's sampled impression time.
        k: items per user.
        inclusion_propensities: (n_users·K,) or None — P(item among the K) by Monte Carlo, when
            the log was made with `propensity="inclusion"`.
        inclusion_stderr: (n_users·K,) or None — that estimate's standard error.
    """

    users: torch.Tensor
    items: torch.Tensor
    propensities: torch.Tensor
    single_propensities: torch.Tensor
    rewards: torch.Tensor
    timestamps: torch.Tensor
    k: int
    inclusion_propensities: torch.Tensor | None = None
    inclusion_stderr: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.users)

    def per_user(self, values: torch.Tensor) -> torch.Tensor:
        """(n_users·K,) values as (n_users, K), one row per user in draw order."""
        return values.view(-1, self.k)


@dataclass(frozen=True)
class OnDemandWorld:
    """A semi-synthetic world too large to hold: what is needed to label any pair on demand.

    A pair's impression time is `time_mean[u] + time_std[u] · z(u, i)` with z a counter-based
    normal of (user, item, `seed`) (`twostage.counter_random.pair_normals`); its label is the
    simulator's probability at that time ≥ `cut` (`twostage.pipeline.ondemand`). Only the
    evaluated users' truths are stored, bit-packed.

    Attributes:
        n_users: the number of users.
        n_items: the number of items.
        seed: the seed of every pair's timestamp.
        time_mean: (n_users,) float64 — the mean of each user's timestamp distribution (of
            their ratings' normalised times).
        time_std: (n_users,) float64 — its standard deviation.
        mean_timestamps: (n_users,) float32 — `time_mean`, the evaluator's context (the dense
            world uses the mean of the user's sampled times, which tends to it).
        cut: the probability cut.
        cut_rule: how it was chosen.
        positive_share: the share of positive labels among the `cut_sample` pairs that chose
            the cut (an estimate of the world's).
        eval_users: (m,) long — the evaluated users (global rows): the first m, validation first.
        n_val: how many of them are validation users; the rest are test users.
        eval_truth: (m, ⌈n_items / 8⌉) uint8 — their truth, probability at the mean time > cut,
            bit-packed (`twostage.evaluation.pack_truth`).
        sample_histogram: (50,) long — the sampled pairs' probabilities in 50 equal bins of
            [0, 1] (the dense world's histogram is of all pairs).
    """

    n_users: int
    n_items: int
    seed: int
    time_mean: torch.Tensor
    time_std: torch.Tensor
    mean_timestamps: torch.Tensor
    cut: float
    cut_rule: str
    positive_share: float
    eval_users: torch.Tensor
    n_val: int
    eval_truth: torch.Tensor
    sample_histogram: torch.Tensor

    @property
    def n_pairs(self) -> int:
        return self.n_users * self.n_items
