from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from twostage.errors import ConfigError, NumericsError
from twostage.evaluation import CompactEvaluator, Evaluator, pack_truth, top_of_products

N_USERS, N_ITEMS, K = 50, 80, 10
ALL_LOGGED = (3, 17)  # users whose every item is a logged positive
NO_TRUTH = (5, 30)  # users with no true positive


@dataclass
class World:
    truth: torch.Tensor
    logged_users: torch.Tensor
    logged_items: torch.Tensor
    ranker_scores: torch.Tensor
    scores: torch.Tensor

    def evaluator(self, k: int = K, **kwargs) -> Evaluator:
        return Evaluator(
            self.truth, self.logged_users, self.logged_items, self.ranker_scores, k, **kwargs
        )

    def logged(self, user: int) -> set[int]:
        return set(self.logged_items[self.logged_users == user].tolist())


def make_world(
    seed: int,
    p_true: float = 0.3,
    per_user: int = 6,
    all_logged: tuple[int, ...] = ALL_LOGGED,
    varied: bool = False,
) -> World:
    """A random world; `varied` draws each user's number of logged items from 0..per_user."""
    g = torch.Generator().manual_seed(seed)
    truth = torch.rand(N_USERS, N_ITEMS, generator=g) < p_true
    truth[list(NO_TRUTH)] = False
    users, items = [], []
    for u in range(N_USERS):
        n = int(torch.randint(0, per_user + 1, (), generator=g)) if varied else per_user
        chosen = torch.arange(N_ITEMS) if u in all_logged else torch.randperm(N_ITEMS, generator=g)
        chosen = chosen if u in all_logged else chosen[:n]
        users.append(torch.full_like(chosen, u))
        items.append(chosen)
    # Logged pairs in shuffled order, some repeated (a pair may be logged twice).
    users_t, items_t = torch.cat(users), torch.cat(items)
    order = torch.randperm(users_t.numel(), generator=g)
    users_t, items_t = users_t[order], items_t[order]
    users_t, items_t = torch.cat([users_t, users_t[:7]]), torch.cat([items_t, items_t[:7]])
    return World(
        truth=truth,
        logged_users=users_t,
        logged_items=items_t,
        ranker_scores=torch.randn(N_USERS, N_ITEMS, generator=g),
        scores=torch.randn(N_USERS, N_ITEMS, generator=g),
    )


# -- references: one user at a time, after the authors' Evaluator -------------------------------


def ref_unlogged_order(world: World, scores: np.ndarray, user: int) -> list[int]:
    """Items by descending score, logged positives left out explicitly."""
    logged = world.logged(user)
    return [int(j) for j in np.argsort(-scores) if int(j) not in logged]


def ref_candidates(world: World, scores: np.ndarray, user: int, k: int) -> list[int]:
    top = ref_unlogged_order(world, scores, user)[:k]
    ranker = world.ranker_scores[user, top].numpy()
    return [top[i] for i in np.argsort(-ranker)]


def ref_one_stage_reward(world: World) -> float:
    shown = []
    for u in range(N_USERS):
        order = ref_unlogged_order(world, world.scores[u].numpy(), u)
        shown.append(bool(order) and bool(world.truth[u, order[0]]))
    return float(np.mean(shown))


def ref_two_stage_reward(world: World, k: int) -> float:
    shown = []
    for u in range(N_USERS):
        candidates = ref_candidates(world, world.scores[u].numpy(), u, k)
        shown.append(bool(candidates) and bool(world.truth[u, candidates[0]]))
    return float(np.mean(shown))


def ref_user_metrics(targets: list[int], predictions: list[int]) -> dict[str, float]:
    out = {}
    for k in (1, 5, 10):
        shown = predictions[:k]
        out[f"Precision@{k}"] = len(set(shown) & set(targets)) / len(shown) if shown else 0.0
    for k in (1, 5, 10):
        out[f"Recall@{k}"] = len(set(predictions[:k]) & set(targets)) / len(targets)
    for k in (5, 10, 20):
        cut = min(len(targets), k)
        idcg = np.sum(1 / np.log2(np.arange(2, cut + 2)))
        dcg = sum(1 / np.log2(i + 2) for i, p in enumerate(predictions[:cut]) if p in targets)
        out[f"NDCG@{k}"] = dcg / idcg
    return out


def ref_ranking_eval(world: World, scores: torch.Tensor, users: list[int], ranking) -> dict:
    rows = []
    for i, u in enumerate(users):
        targets = world.truth[u].nonzero().flatten().tolist()  # logged positives included
        if not targets:
            continue
        rows.append(ref_user_metrics(targets, ranking(scores[i].numpy(), u)))
    return {name: float(np.mean([r[name] for r in rows])) for name in rows[0]}


def ref_one_stage_metrics(world: World, scores: torch.Tensor, users: list[int]) -> dict:
    return ref_ranking_eval(world, scores, users, lambda s, u: ref_unlogged_order(world, s, u))


def ref_two_stage_metrics(world: World, scores: torch.Tensor, users: list[int], k: int) -> dict:
    return ref_ranking_eval(world, scores, users, lambda s, u: ref_candidates(world, s, u, k))


def assert_close_dicts(got: dict[str, float], want: dict[str, float]) -> None:
    assert list(got) == list(want)
    for name, value in want.items():
        assert got[name] == pytest.approx(value, abs=1e-9), name


# -- agreement with the references --------------------------------------------------------------


@pytest.mark.parametrize("seed", range(3))
def test_one_stage_reward_matches_reference(seed: int) -> None:
    world = make_world(seed)
    assert world.evaluator().one_stage_reward(world.scores) == pytest.approx(
        ref_one_stage_reward(world)
    )


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("k", [1, K, 40])
def test_two_stage_reward_matches_reference(seed: int, k: int) -> None:
    world = make_world(seed)
    assert world.evaluator(k).two_stage_reward(world.scores) == pytest.approx(
        ref_two_stage_reward(world, k)
    )


@pytest.mark.parametrize("seed", range(3))
def test_one_stage_metrics_match_reference_on_a_user_subset(seed: int) -> None:
    world = make_world(seed)
    users = torch.randperm(N_USERS, generator=torch.Generator().manual_seed(seed))[:30]
    users = torch.cat([users, torch.tensor(ALL_LOGGED + NO_TRUTH)])
    scores = torch.randn(users.numel(), N_ITEMS, generator=torch.Generator().manual_seed(99))
    got = world.evaluator().one_stage_metrics(scores, users)
    assert_close_dicts(got, ref_one_stage_metrics(world, scores, users.tolist()))


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("k", [3, K, 30])
def test_two_stage_metrics_match_reference_on_a_user_subset(seed: int, k: int) -> None:
    world = make_world(seed)
    users = torch.tensor([u for u in range(N_USERS) if u % 3 != 1])
    scores = world.scores[users]
    got = world.evaluator(k).two_stage_metrics(scores, users)
    assert_close_dicts(got, ref_two_stage_metrics(world, scores, users.tolist(), k))


def test_one_stage_metrics_with_few_unlogged_items_match_reference() -> None:
    # Only 4 unlogged items per user: rankings are shorter than the cut-offs.
    world = make_world(4, per_user=N_ITEMS - 4)
    users = torch.arange(N_USERS)
    got = world.evaluator().one_stage_metrics(world.scores, users)
    assert_close_dicts(got, ref_one_stage_metrics(world, world.scores, users.tolist()))
    got = world.evaluator().two_stage_metrics(world.scores, users)
    assert_close_dicts(got, ref_two_stage_metrics(world, world.scores, users.tolist(), K))


@pytest.mark.parametrize("seed", range(3))
def test_varied_numbers_of_logged_items_match_reference(seed: int) -> None:
    # Without all-logged users only the raw top (width + most logged per user) items are ranked.
    world = make_world(seed, per_user=9, all_logged=(), varied=True)
    evaluator = world.evaluator()
    assert evaluator.max_logged < N_ITEMS - 20
    users = torch.arange(N_USERS)
    assert evaluator.one_stage_reward(world.scores) == pytest.approx(ref_one_stage_reward(world))
    assert evaluator.two_stage_reward(world.scores) == pytest.approx(ref_two_stage_reward(world, K))
    got = evaluator.one_stage_metrics(world.scores, users)
    assert_close_dicts(got, ref_one_stage_metrics(world, world.scores, users.tolist()))
    got = evaluator.two_stage_metrics(world.scores, users)
    assert_close_dicts(got, ref_two_stage_metrics(world, world.scores, users.tolist(), K))


# -- behaviour ---------------------------------------------------------------------------


def test_logged_positives_are_never_shown_but_count_as_relevant() -> None:
    truth = torch.tensor([[True, True, False, False]])
    evaluator = Evaluator(truth, torch.tensor([0]), torch.tensor([0]), torch.zeros(1, 4), k=2)
    # The generator likes the logged item 0 best; the evaluation must skip it.
    scores = torch.tensor([[9.0, 1.0, 0.5, 0.0]])
    assert evaluator.one_stage_reward(scores) == 1.0  # item 1 is shown
    got = evaluator.one_stage_metrics(scores, torch.tensor([0]))
    assert got["Precision@1"] == 1.0
    assert got["Recall@1"] == 0.5  # the logged positive stays in the denominator
    assert got["NDCG@5"] == pytest.approx(1 / (1 + 1 / np.log2(3)))


def test_users_whose_every_item_is_logged_are_shown_nothing() -> None:
    world = make_world(0)
    world.truth[list(ALL_LOGGED)] = True
    only = torch.tensor(ALL_LOGGED)
    evaluator = world.evaluator()
    one = evaluator.one_stage_metrics_per_user(world.scores[only], only)
    two = evaluator.two_stage_metrics_per_user(world.scores[only], only)
    for per_user in (one, two):
        for values in per_user.values():
            assert torch.equal(values, torch.zeros(len(ALL_LOGGED), dtype=torch.float64))
    # They count in the reward's denominator with reward 0.
    world.truth[:] = True
    evaluator = world.evaluator()
    expected = 1 - len(ALL_LOGGED) / N_USERS
    assert evaluator.one_stage_reward(world.scores) == pytest.approx(expected)
    assert evaluator.two_stage_reward(world.scores) == pytest.approx(expected)


def test_users_without_true_positives_are_left_out_of_metrics() -> None:
    world = make_world(1)
    users = torch.arange(N_USERS)
    evaluator = world.evaluator()
    per_user = evaluator.one_stage_metrics_per_user(world.scores, users)
    for values in per_user.values():
        assert values[list(NO_TRUTH)].isnan().all()
        assert values.isnan().sum() == len(NO_TRUTH)
    keep = torch.tensor([u for u in range(N_USERS) if u not in NO_TRUTH])
    assert_close_dicts(
        evaluator.one_stage_metrics(world.scores, users),
        evaluator.one_stage_metrics(world.scores[keep], keep),
    )


def test_an_oracle_ranker_finds_a_true_positive_whenever_one_is_a_candidate() -> None:
    world = make_world(2, p_true=0.05)
    world.ranker_scores = world.truth.float() + 0.01 * world.ranker_scores
    evaluator = world.evaluator()
    candidates = [ref_unlogged_order(world, world.scores[u].numpy(), u)[:K] for u in range(N_USERS)]
    expected = np.mean(
        [bool(world.truth[u, c].any()) if c else False for u, c in enumerate(candidates)]
    )
    assert evaluator.two_stage_reward(world.scores) == pytest.approx(expected)
    assert evaluator.two_stage_reward(world.scores) >= evaluator.one_stage_reward(world.scores)


def test_the_evaluator_never_modifies_its_inputs() -> None:
    world = make_world(3)
    originals = {name: value.clone() for name, value in vars(world).items()}
    users = torch.arange(0, N_USERS, 2)
    scores = world.scores[users].clone()
    scores_before = scores.clone()
    evaluator = world.evaluator(mean_ap=True)
    evaluator.one_stage_reward(world.scores)
    evaluator.two_stage_reward(world.scores)
    evaluator.one_stage_metrics(scores, users)
    evaluator.two_stage_metrics(scores, users)
    for name, value in vars(world).items():
        assert torch.equal(value, originals[name]), name
    assert torch.equal(scores, scores_before)


def test_metric_cut_offs_and_mean_ap_are_configurable() -> None:
    world = make_world(0)
    evaluator = world.evaluator(precision_ks=(2,), recall_ks=(), ndcg_ks=(3,), mean_ap=True)
    got = evaluator.one_stage_metrics(world.scores, torch.arange(N_USERS))
    assert list(got) == ["Precision@2", "NDCG@3", "MAP"]
    assert all(0.0 <= v <= 1.0 for v in got.values())


def test_chunked_ranking_agrees_with_a_single_block(monkeypatch: pytest.MonkeyPatch) -> None:
    world = make_world(5)
    users = torch.arange(N_USERS)
    whole = world.evaluator().two_stage_metrics(world.scores, users)
    monkeypatch.setattr("twostage.evaluation.CHUNK_USERS", 7)
    evaluator = world.evaluator()
    assert_close_dicts(evaluator.two_stage_metrics(world.scores, users), whole)
    assert evaluator.one_stage_reward(world.scores) == pytest.approx(ref_one_stage_reward(world))


# -- refusals ----------------------------------------------------------------------------


def test_non_finite_scores_are_refused() -> None:
    world = make_world(0)
    evaluator = world.evaluator()
    bad = world.scores.clone()
    bad[4, 7] = float("nan")
    with pytest.raises(NumericsError):
        evaluator.one_stage_reward(bad)
    # Finite scores whose sum overflows to inf are accepted, and rank as the originals do.
    positive = world.scores.abs() + 1.0
    huge = positive * 1e37
    assert torch.isinf(huge.sum()) and torch.isfinite(huge).all()
    assert evaluator.one_stage_reward(huge) == evaluator.one_stage_reward(positive)
    world.ranker_scores[0, 0] = float("inf")
    with pytest.raises(NumericsError):
        world.evaluator()


def test_bad_shapes_and_settings_are_refused() -> None:
    world = make_world(0)
    evaluator = world.evaluator()
    with pytest.raises(ConfigError):
        evaluator.one_stage_reward(world.scores[:10])
    with pytest.raises(ConfigError):
        evaluator.one_stage_metrics(world.scores[:3], torch.tensor([0, 1]))
    with pytest.raises(ConfigError):
        evaluator.two_stage_metrics(world.scores[:1], torch.tensor([N_USERS]))
    with pytest.raises(ConfigError):
        world.evaluator(k=0)
    with pytest.raises(ConfigError):
        Evaluator(world.truth, torch.tensor([0]), torch.tensor([N_ITEMS]), world.ranker_scores)
    with pytest.raises(ConfigError):
        Evaluator(world.truth.float(), world.logged_users, world.logged_items, world.ranker_scores)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("mean_ap", [False, True])
def test_rewards_and_metrics_from_top_items_equal_those_from_scores(
    seed: int, mean_ap: bool
) -> None:
    """The pipeline keeps only each user's `top` items; every value equals the score path's."""
    world = make_world(seed, varied=True)
    evaluator = world.evaluator(mean_ap=mean_ap)
    top = evaluator.top(world.scores)
    assert top.shape == (N_USERS, evaluator.top_width)
    rewards = evaluator.rewards_from_top(top)
    assert rewards == {
        "one-stage": evaluator.one_stage_reward(world.scores),
        "two-stage": evaluator.two_stage_reward(world.scores),
    }
    users = torch.randperm(N_USERS, generator=torch.Generator().manual_seed(seed))[:20]
    metrics = evaluator.metrics_from_top(top[users], users)
    assert metrics == {
        "one-stage": evaluator.one_stage_metrics(world.scores[users], users),
        "two-stage": evaluator.two_stage_metrics(world.scores[users], users),
    }
    with pytest.raises(ConfigError):  # too narrow a top list is refused, not misread
        evaluator.metrics_from_top(top[users, : evaluator.top_width - 1], users)


# -- the compact evaluator: a fixed set of users, bit-packed truth, ranker vectors ------------


def test_pack_truth_puts_item_i_in_bit_i_mod_8_of_byte_i_div_8() -> None:
    truth = torch.rand(7, 21, generator=torch.Generator().manual_seed(0)) < 0.4
    packed = pack_truth(truth)
    assert packed.dtype == torch.uint8 and packed.shape == (7, 3)
    bits = (packed[:, :, None] >> torch.arange(8, dtype=torch.uint8)) & 1
    assert torch.equal(bits.reshape(7, 24)[:, :21].bool(), truth)
    assert not bits.reshape(7, 24)[:, 21:].any()  # the padding stays clear


def compact_and_dense(seed: int, mean_ap: bool = False) -> tuple[CompactEvaluator, Evaluator]:
    """The same evaluated users judged by both evaluators: 30 of the world's 50 users in a
    shuffled order, a ranker given by vectors (the dense one gets their dot products)."""
    world = make_world(seed, varied=True)
    g = torch.Generator().manual_seed(100 + seed)
    users = torch.randperm(N_USERS, generator=g)[:30]
    context, items = torch.randn(N_USERS, 4, generator=g), torch.randn(N_ITEMS, 4, generator=g)
    ranker = (context[users][:, None, :] * items[None, :, :]).sum(2)
    compact = CompactEvaluator(
        users, pack_truth(world.truth[users]), N_ITEMS, world.logged_users, world.logged_items,
        context[users], items, K, mean_ap=mean_ap,
    )  # fmt: skip
    row_of = torch.full((N_USERS,), -1)
    row_of[users] = torch.arange(len(users))
    kept = row_of[world.logged_users] >= 0
    dense = Evaluator(
        world.truth[users], row_of[world.logged_users[kept]], world.logged_items[kept], ranker, K,
        mean_ap=mean_ap,
    )  # fmt: skip
    return compact, dense


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("mean_ap", [False, True])
def test_the_compact_evaluator_equals_the_dense_one(seed: int, mean_ap: bool) -> None:
    compact, dense = compact_and_dense(seed, mean_ap)
    assert torch.equal(compact.n_relevant, dense.n_relevant)
    assert torch.equal(compact.n_available, dense.n_available)
    assert compact.max_logged == dense.max_logged and compact.top_width == dense.top_width
    scores = torch.randn(30, N_ITEMS, generator=torch.Generator().manual_seed(seed))
    top = compact.top(scores)
    assert torch.equal(top, dense.top(scores))
    assert compact.rewards_from_top(top) == dense.rewards_from_top(top)
    rows = torch.arange(5, 25)
    assert compact.metrics_from_top(top[rows], rows) == dense.metrics_from_top(top[rows], rows)
    per_user = compact.two_stage_metrics_per_user(scores[rows], rows)
    for name, values in dense.two_stage_metrics_per_user(scores[rows], rows).items():
        assert torch.allclose(per_user[name], values, rtol=0, atol=0, equal_nan=True), name
    assert compact.one_stage_reward(scores) == dense.one_stage_reward(scores)
    assert compact.two_stage_reward(scores) == dense.two_stage_reward(scores)


def test_the_compact_evaluator_refuses_mismatched_inputs() -> None:
    users = torch.arange(4)
    bits = torch.zeros(4, 3, dtype=torch.uint8)
    logged = torch.tensor([0, 1]), torch.tensor([2, 3])
    vectors, items = torch.zeros(4, 2), torch.zeros(20, 2)
    CompactEvaluator(users, bits, 20, *logged, vectors, items)  # accepted
    bad = [
        (users, torch.zeros(4, 2, dtype=torch.uint8), 20, *logged, vectors, items),  # too narrow
        (users, bits.bool(), 20, *logged, vectors, items),  # not packed
        (torch.tensor([0, 0, 1, 2]), bits, 20, *logged, vectors, items),  # repeated users
        (users, bits, 20, torch.tensor([0]), torch.tensor([20]), vectors, items),  # item ≥ n
        (users, bits, 20, *logged, vectors[:3], items),
        (users, bits, 20, *logged, vectors, torch.zeros(20, 3)),
        (users, bits, 20, *logged, torch.full((4, 2), torch.nan), items),
    ]
    for args in bad:
        with pytest.raises((ConfigError, NumericsError)):
            CompactEvaluator(*args)


@pytest.mark.parametrize("chunk", [1, 7, 34, 100, 1000])
@pytest.mark.parametrize("width", [1, 34, 200])
def test_top_of_products_equals_topk_of_whole_rows(chunk: int, width: int) -> None:
    """Scored a chunk of items at a time, each chunk's best kept and merged: the items, in their
    order, of `topk` over whole rows (the scores are distinct here, so the order is defined)."""
    gen = torch.Generator().manual_seed(chunk * 1000 + width)
    vectors, items = torch.randn(9, 6, generator=gen), torch.randn(150, 6, generator=gen)
    scores = vectors @ items.T
    assert len(scores.flatten().unique()) == scores.numel()
    expected = scores.topk(min(width, 150), dim=1).indices
    assert torch.equal(top_of_products(vectors, items, width, chunk), expected)
    buffer = torch.empty(9 * chunk)  # a caller's reused buffer gives the same
    assert torch.equal(top_of_products(vectors, items, width, chunk, buffer), expected)


def test_top_of_products_refuses_non_finite_scores() -> None:
    vectors, items = torch.randn(3, 4), torch.randn(50, 4)
    items[37, 2] = float("nan")
    with pytest.raises(NumericsError, match="scores must be finite"):
        top_of_products(vectors, items, 5, 16)
