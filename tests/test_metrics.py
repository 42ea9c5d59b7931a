from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from twostage.errors import ConfigError
from twostage.metrics import (
    average_precision,
    mean_over_users,
    ndcg_at_k,
    per_user_ranking_metrics,
    precision_at_k,
    ranking_metrics,
    recall_at_k,
)

# -- references: one user at a time, as the authors' PrecisionRecall, NormalizedDCG, MeanAP ------


def ref_precision_recall(targets: list[int], predictions: list[int], k: int) -> tuple[float, float]:
    predictions = predictions[:k]
    num_hit = len(set(predictions) & set(targets))
    precision = num_hit / len(predictions) if predictions else 0.0
    return precision, num_hit / len(targets)


def ref_ndcg(targets: list[int], predictions: list[int], k: int) -> float:
    k = min(len(targets), k)
    predictions = predictions[:k]
    idcg = np.sum(1 / np.log2(np.arange(2, k + 2)))
    dcg = sum(1 / np.log2(i + 2) for i, p in enumerate(predictions) if p in targets)
    return dcg / idcg


def ref_average_precision(targets: list[int], predictions: list[int], k: float = np.inf) -> float:
    if len(predictions) > k:
        predictions = predictions[: int(k)]
    score, num_hits = 0.0, 0.0
    for i, p in enumerate(predictions):
        if p in targets and p not in predictions[:i]:
            num_hits += 1.0
            score += num_hits / (i + 1.0)
    return score / min(len(targets), k)


def ref_metrics(
    rankings, relevant, lengths=None, p_ks=(1, 5, 10), r_ks=(1, 5, 10), n_ks=(5, 10, 20)
):
    """Mean over users with a relevant item, as the authors' Evaluator averages."""
    rows = []
    for u in range(rankings.shape[0]):
        targets = relevant[u].nonzero().flatten().tolist()
        if not targets:
            continue
        n = rankings.shape[1] if lengths is None else int(lengths[u])
        predictions = rankings[u, :n].tolist()
        row = {}
        for k in p_ks:
            row[f"Precision@{k}"] = ref_precision_recall(targets, predictions, k)[0]
        for k in r_ks:
            row[f"Recall@{k}"] = ref_precision_recall(targets, predictions, k)[1]
        for k in n_ks:
            row[f"NDCG@{k}"] = ref_ndcg(targets, predictions, k)
        row["MAP"] = ref_average_precision(targets, predictions)
        rows.append(row)
    return {name: float(np.mean([r[name] for r in rows])) for name in rows[0]}


def random_world(seed: int, users: int = 40, n_items: int = 60, width: int = 25, p: float = 0.2):
    g = torch.Generator().manual_seed(seed)
    rankings = torch.stack([torch.randperm(n_items, generator=g)[:width] for _ in range(users)])
    relevant = torch.rand(users, n_items, generator=g) < p
    return rankings, relevant


def assert_close_dicts(got: dict[str, float], want: dict[str, float]) -> None:
    assert set(want) <= set(got)
    for name, value in want.items():
        assert got[name] == pytest.approx(value, abs=1e-9), name


# -- agreement with the references ----------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("p", [0.03, 0.2, 0.7])
def test_ranking_metrics_match_per_user_reference_on_random_worlds(seed: int, p: float) -> None:
    rankings, relevant = random_world(seed, p=p)
    relevant[0] = False  # a user with no relevant item is left out
    got = ranking_metrics(rankings, relevant, mean_ap=True)
    assert_close_dicts(got, ref_metrics(rankings, relevant))


def test_keys_follow_the_requested_cut_offs_in_order() -> None:
    rankings, relevant = random_world(0)
    got = ranking_metrics(rankings, relevant, precision_ks=(3,), recall_ks=(2, 7), ndcg_ks=(4,))
    assert list(got) == ["Precision@3", "Recall@2", "Recall@7", "NDCG@4"]
    got = ranking_metrics(rankings, relevant, mean_ap=True)
    assert list(got)[-1] == "MAP"


def test_cut_offs_beyond_the_ranking_length_divide_by_the_length() -> None:
    rankings, relevant = random_world(1, width=4)
    ks = (3, 4, 6, 50)
    got = ranking_metrics(
        rankings, relevant, precision_ks=ks, recall_ks=ks, ndcg_ks=ks, mean_ap=True
    )
    assert_close_dicts(got, ref_metrics(rankings, relevant, p_ks=ks, r_ks=ks, n_ks=ks))
    hits = relevant.gather(1, rankings)
    # With k > L, Precision@k = #hits / L, not / k.
    assert torch.allclose(precision_at_k(hits, 50), hits.sum(1).double() / 4.0, atol=0, rtol=0)


def test_ranking_lengths_shorter_than_the_width_match_truncated_references() -> None:
    rankings, relevant = random_world(2, width=12, p=0.4)
    lengths = torch.randint(0, 13, (rankings.shape[0],), generator=torch.Generator().manual_seed(3))
    lengths[:3] = torch.tensor([0, 1, 12])
    got = ranking_metrics(rankings, relevant, lengths=lengths, mean_ap=True)
    assert_close_dicts(got, ref_metrics(rankings, relevant, lengths=lengths))


def test_hits_past_a_rows_length_are_ignored() -> None:
    hits = torch.ones(1, 5, dtype=torch.bool)
    per_user = per_user_ranking_metrics(hits, torch.tensor([5]), torch.tensor([2]), mean_ap=True)
    assert per_user["Precision@5"].item() == 1.0  # 2 hits of 2 items shown
    assert per_user["Recall@5"].item() == pytest.approx(2 / 5)
    assert per_user["MAP"].item() == pytest.approx(2 / 5)


# -- edge cases -----------------------------------------------------------------------------------


def test_users_without_relevant_items_are_nan_per_user_and_left_out_of_means() -> None:
    rankings, relevant = random_world(4, users=6)
    relevant[[1, 4]] = False
    hits = relevant.gather(1, rankings)
    per_user = per_user_ranking_metrics(hits, relevant.sum(1), mean_ap=True)
    for values in per_user.values():
        assert values.shape == (6,)
        assert values[[1, 4]].isnan().all() and not values[[0, 2, 3, 5]].isnan().any()
    means = mean_over_users(per_user)
    keep = [0, 2, 3, 5]
    assert_close_dicts(means, ranking_metrics(rankings[keep], relevant[keep], mean_ap=True))


def test_no_user_with_a_relevant_item_gives_nan() -> None:
    rankings, relevant = random_world(5, users=3)
    got = ranking_metrics(rankings, torch.zeros_like(relevant))
    assert all(math.isnan(v) for v in got.values())


def test_all_items_relevant_gives_perfect_precision_and_ndcg() -> None:
    rankings, relevant = random_world(6, users=5, n_items=30, width=30)
    got = ranking_metrics(rankings, torch.ones_like(relevant), mean_ap=True)
    for name in ("Precision@1", "Precision@5", "Precision@10", "NDCG@5", "NDCG@10", "NDCG@20"):
        assert got[name] == pytest.approx(1.0)
    assert got["Recall@10"] == pytest.approx(10 / 30)
    assert got["MAP"] == pytest.approx(1.0)


def test_ndcg_cuts_k_to_the_number_of_relevant_items() -> None:
    # One relevant item, ranked first: perfect at every k, because both DCG and IDCG use 1 position.
    hits = torch.tensor([[True, False, False, False, False]])
    assert ndcg_at_k(hits, torch.tensor([1]), 5).item() == pytest.approx(1.0)
    # Two relevant, only one in the ranking, at position 1: DCG uses positions 0..1.
    hits = torch.tensor([[False, True, False]])
    expected = (1 / math.log2(3)) / (1 + 1 / math.log2(3))
    assert ndcg_at_k(hits, torch.tensor([2]), 10).item() == pytest.approx(expected)
    # Hit past the cut k' = min(k, #relevant) = 1 does not count.
    assert ndcg_at_k(hits, torch.tensor([1]), 10).item() == 0.0


def test_ideal_dcg_uses_positions_past_the_end_of_a_short_ranking() -> None:
    hits = torch.tensor([[True, True]])
    ideal3 = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    assert ndcg_at_k(hits, torch.tensor([5]), 3).item() == pytest.approx(
        (1 + 1 / math.log2(3)) / ideal3
    )


def test_average_precision_with_a_cut_divides_by_min_relevant_and_k() -> None:
    hits = torch.tensor([[True, False, True, True]])
    assert average_precision(hits, torch.tensor([10]), k=3).item() == pytest.approx((1 + 2 / 3) / 3)
    targets = [0, 2, 3] + list(range(10, 17))
    predictions = [0, 1, 2, 3]
    assert average_precision(hits, torch.tensor([10])).item() == pytest.approx(
        ref_average_precision(targets, predictions)
    )


def test_recall_is_nan_only_without_relevant_items() -> None:
    hits = torch.tensor([[False, False], [True, False]])
    recall = recall_at_k(hits, torch.tensor([0, 4]), 2)
    assert recall[0].isnan() and recall[1].item() == pytest.approx(0.25)


def test_ties_in_relevance_do_not_matter_only_positions_do() -> None:
    # Two users with the same hit pattern on different items score the same.
    relevant = torch.zeros(2, 6, dtype=torch.bool)
    relevant[0, [2, 5]] = True
    relevant[1, [0, 1]] = True
    rankings = torch.tensor([[2, 0, 5, 1], [0, 2, 1, 3]])
    per_user = per_user_ranking_metrics(relevant.gather(1, rankings), relevant.sum(1), mean_ap=True)
    for values in per_user.values():
        assert values[0].item() == pytest.approx(values[1].item())


@pytest.mark.parametrize("k", [0, -1, 2.5, True])
def test_bad_cut_offs_are_refused(k) -> None:
    hits = torch.zeros(1, 3, dtype=torch.bool)
    with pytest.raises(ConfigError):
        precision_at_k(hits, k)


def test_mismatched_shapes_are_refused() -> None:
    with pytest.raises(ConfigError):
        ranking_metrics(torch.zeros(3, 2, dtype=torch.long), torch.zeros(4, 5, dtype=torch.bool))
    with pytest.raises(ConfigError):
        per_user_ranking_metrics(torch.zeros(3, 2, dtype=torch.bool), torch.zeros(2))
