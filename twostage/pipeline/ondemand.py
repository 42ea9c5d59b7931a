"""Stages 2–5 on a world too large to hold (`world.mode = "on-demand"`): a million items.

The dense world (`twostage.pipeline.stages`) holds every pair's timestamp, probability and label:
10^11 pairs at 100,000 users × 1,000,000 items. Here nothing of size users × items is ever held:

- a pair's impression time is a counter-based function of (user, item, world seed), drawn when
  the pair is needed, with the user's timestamp moments (`twostage.counter_random`);
- its label is the simulator's probability at that time ≥ the cut, computed for the pairs
  needed: the logging policy's training pairs and the logged impressions;
- the cut for a positive share is the quantile of `cut_sample` random pairs, not of all pairs;
- only the first `eval_users` users are evaluated (half validation, half test), from their
  truths at the mean time, computed once in blocks, bit-packed and cached with the world;
- the bandit log draws each user's K items by inverse CDF over the user's softmax, one block of
  users at a time, redrawing repeats (exactly sequential draws without replacement), with
  counter-based uniforms, so a user's items do not depend on the block size.

On a small catalogue the same code runs, which is how its parts are checked against the dense
world's (`tests/test_ondemand.py`).
"""

from __future__ import annotations

import numpy as np
import torch

from twostage.counter_random import pair_normals, uniforms
from twostage.data import Catalog, MovieLens
from twostage.evaluation import pack_truth
from twostage.models import PAIRS_PER_BLOCK, ImpressionSimulator, Nominator, Ranker
from twostage.pipeline.artifacts import BanditLog, OnDemandWorld
from twostage.pipeline.config import PAPER_CUT, BanditConfig, LoggingPolicyConfig, WorldConfig
from twostage.pipeline.training import auc, load_model, seeded
from twostage.pipeline.world_rules import (
    check_policy_pairs,
    is_paper_ml1m,
    user_timestamp_moments,
)

PAIR_BATCH = 65_536  # pairs per forward pass when labelling a list of pairs
# User × item scores held at once (8 MB of float32). The bandit log took 4.6 ns a pair at 2M
# pairs a block, 5.8 at 8M (out of cache) and 12 at 0.2M (Python's share), on one thread.
SCORE_BLOCK_PAIRS = 1 << 21
# The bandit log's blocks have at least this many users: each block reads the whole item table
# once (80 MB at a million items), which cost more than two users' scores (8.8 ms a user in
# blocks of 2 users at 1M items, 3.4 in blocks of 32, on 2 threads).
LOG_BLOCK_USERS = 32
TRUTH_BLOCK_PAIRS = 1 << 22  # pairs of probabilities held at once while packing the truths
TIME_STREAM, CUT_STREAM, BANDIT_STREAM = 0, 2, 4  # counter_random streams (each uses ≤ 2)
HISTOGRAM_BINS = 50
DRAW_CHUNK = 1024  # items per chunk of the bandit log's two-level inverse CDF
MAX_REDRAWS = 64  # repeat redraws before the exact masked draw takes over (a peaked softmax)


# ---------------------------------------------------------------- pairs, on demand
def timestamps_from_moments(
    time_mean: torch.Tensor,
    time_std: torch.Tensor,
    users: torch.Tensor,
    items: torch.Tensor,
    n_items: int,
    seed: int,
) -> torch.Tensor:
    """users, items: (n,) long → (n,) float32 impression times, time_mean[u] + time_std[u] · z
    with z the pair's counter-based normal: the same for a pair whenever asked."""
    z = pair_normals(users, items, n_items, seed, TIME_STREAM)
    return (time_mean[users] + time_std[users] * z).float()


def pair_timestamps(world: OnDemandWorld, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """users, items: (n,) long → (n,) float32 impression times of the world's pairs."""
    return timestamps_from_moments(
        world.time_mean, world.time_std, users, items, world.n_items, world.seed
    )


@torch.no_grad()
def pair_probabilities(
    simulator: ImpressionSimulator,
    users: torch.Tensor,
    items: torch.Tensor,
    times: torch.Tensor,
    device: torch.device,
) -> torch.Tensor:
    """The simulator's probability of a positive label of each pair at its time: (n,) float32."""
    out = torch.empty(len(users))
    for start in range(0, len(users), PAIR_BATCH):
        part = slice(start, start + PAIR_BATCH)
        logits = simulator(users[part].to(device), items[part].to(device), times[part].to(device))
        out[part] = torch.sigmoid(logits).cpu()
    return out


def pair_labels(
    simulator: ImpressionSimulator,
    world: OnDemandWorld,
    users: torch.Tensor,
    items: torch.Tensor,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels (n,) bool (probability at the pair's time ≥ cut, as the dense world's `labels`)
    and the times (n,) float32 of the pairs users, items: (n,) long."""
    times = pair_timestamps(world, users, items)
    return pair_probabilities(simulator, users, items, times, device) >= world.cut, times


@torch.no_grad()
def item_chunked_probabilities(
    simulator: ImpressionSimulator,
    user_part: torch.Tensor,
    item_part: torch.Tensor,
    time_weight: torch.Tensor,
    times: torch.Tensor,
    item_chunk: int | None = None,
) -> torch.Tensor:
    """The simulator's probabilities (b, n_items) float32 from its first layer's parts
    (`first_layer_parts`: user_part (b, h), item_part (n_items, h), time_weight (h,)) at times:
    (b,) float, one per user — `ImpressionSimulator.probabilities_from_parts` by item chunks.

    Items go through the simulator `item_chunk` at a time (default about `PAIRS_PER_BLOCK`
    pairs a torch thread per user), so that one user's activations over a million items (600 MB)
    are never held at once. A caller scoring many users takes the parts once: the item part is
    a GEMM over the whole catalogue.
    """
    n_items = item_part.shape[0]
    chunk = item_chunk or max(1, PAIRS_PER_BLOCK * torch.get_num_threads())
    times = times.to(item_part.device)
    if chunk >= n_items:
        return simulator.probabilities_from_parts(user_part, item_part, time_weight, times).cpu()
    out = torch.empty(len(user_part), n_items)
    for start in range(0, n_items, chunk):
        stop = min(start + chunk, n_items)
        out[:, start:stop] = simulator.probabilities_from_parts(
            user_part, item_part[start:stop], time_weight, times, block_users=1
        ).cpu()
    return out


# ---------------------------------------------------------------- 2. the world
def user_blocks(n_items: int, pairs: int = SCORE_BLOCK_PAIRS) -> int:
    """Users per block so that a block's users × items scores stay near `pairs`."""
    return max(1, pairs // max(n_items, 1))


def sampled_cut(
    simulator: ImpressionSimulator,
    time_mean: torch.Tensor,
    time_std: torch.Tensor,
    data: MovieLens,
    config: WorldConfig,
    device: torch.device,
) -> tuple[float, str, float, torch.Tensor]:
    """(cut, rule, positive share among the sampled pairs, their probabilities' histogram
    (`HISTOGRAM_BINS`,)), from `config.cut_sample` random pairs (with replacement,
    counter-based) at their impression times; time_mean, time_std: (n_users,) the users'
    timestamp moments."""
    n_users, n_items = data.n_users, data.n_items
    counters = np.arange(config.cut_sample, dtype=np.uint64)
    users = torch.from_numpy(
        (uniforms(counters, config.seed, CUT_STREAM) * n_users).astype(np.int64)
    )
    items = torch.from_numpy(
        (uniforms(counters, config.seed, CUT_STREAM + 1) * n_items).astype(np.int64)
    )
    times = timestamps_from_moments(time_mean, time_std, users, items, n_items, config.seed)
    probs = pair_probabilities(simulator, users, items, times, device)
    if config.cut is not None:
        cut, rule = float(config.cut), "given cut"
    else:
        share = config.positive_share
        if share is None and is_paper_ml1m(data):
            cut, rule = PAPER_CUT, "paper cut (ML-1M)"
        else:
            share = config.default_share if share is None else share
            n_positive = max(1, round(share * len(probs)))
            cut = float(torch.topk(probs, n_positive).values[-1])
            rule = f"positive share {share:g} of {config.cut_sample:,} sampled pairs"
    histogram = torch.histc(probs, bins=HISTOGRAM_BINS, min=0.0, max=1.0).long()
    return cut, rule, float((probs >= cut).double().mean()), histogram


def truth_bits(
    simulator: ImpressionSimulator,
    users: torch.Tensor,
    times: torch.Tensor,
    cut: float,
    device: torch.device,
    progress=None,
) -> torch.Tensor:
    """The bit-packed truth (probability at `times` > cut, as the dense world's `truth`) of
    users: (m,) long at times: (m,) → (m, ⌈n_items / 8⌉) uint8, a few users at a time."""
    n_items = simulator.n_items
    out = torch.empty(len(users), -(-n_items // 8), dtype=torch.uint8)
    # The parts once for all users: the item part alone is a GEMM over the whole catalogue.
    user_part, item_part, time_weight = simulator.first_layer_parts(users.to(device))
    step = user_blocks(n_items, TRUTH_BLOCK_PAIRS)
    for start in range(0, len(users), step):
        part = slice(start, start + step)
        probabilities = item_chunked_probabilities(
            simulator, user_part[part], item_part, time_weight, times[part]
        )
        out[part] = pack_truth(probabilities > cut)
        if progress is not None:
            progress.update(len(users[part]))
    return out


def build_ondemand_world(
    data: MovieLens,
    simulator_state: dict,
    config: WorldConfig,
    device: torch.device,
    progress=None,
) -> OnDemandWorld:
    """The on-demand world: timestamp moments, the cut from sampled pairs, the evaluated users'
    bit-packed truths (the costly part: `eval_users` × n_items pairs; `progress` gets an update
    per block of users)."""
    simulator = load_model(ImpressionSimulator, data.catalog, simulator_state, device)
    mean, std = user_timestamp_moments(data)
    time_mean, time_std = torch.from_numpy(mean), torch.from_numpy(std)
    mean_timestamps = time_mean.float()
    cut, rule, share, histogram = sampled_cut(simulator, time_mean, time_std, data, config, device)
    n_eval = min(config.eval_users, data.n_users)
    users = torch.arange(n_eval)
    truth = truth_bits(simulator, users, mean_timestamps[users], cut, device, progress)
    return OnDemandWorld(
        n_users=data.n_users,
        n_items=data.n_items,
        seed=config.seed,
        time_mean=time_mean,
        time_std=time_std,
        mean_timestamps=mean_timestamps,
        cut=cut,
        cut_rule=rule,
        positive_share=share,
        eval_users=users,
        n_val=n_eval // 2,
        eval_truth=truth,
        sample_histogram=histogram,
    )


# ---------------------------------------------------------------- 3. logging policy's pairs
def logging_policy_pairs(
    catalog: Catalog,
    simulator_state: dict,
    world: OnDemandWorld,
    config: LoggingPolicyConfig,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`n_train + n_val` distinct random pairs (users, items (n,) long) and their labels (n,)
    float; the dense world draws them with a permutation of all pairs, impossible here."""
    n = config.n_train + config.n_val
    check_policy_pairs(n, world.n_pairs)
    flat = torch.from_numpy(np.random.default_rng(config.seed).choice(world.n_pairs, n, False))
    users, items = flat // world.n_items, flat % world.n_items
    simulator = load_model(ImpressionSimulator, catalog, simulator_state, device)
    labels, _ = pair_labels(simulator, world, users, items, device)
    return users, items, labels.float()


# ---------------------------------------------------------------- 4. bandit log
def _chunk_cdf(weights: torch.Tensor) -> torch.Tensor:
    """(b, C) float64 running sums of each row's weights over chunks of `DRAW_CHUNK` items
    (C = ⌈n_items / DRAW_CHUNK⌉): the first level of the draw's two-level inverse CDF."""
    b, n = weights.shape
    whole = n - n % DRAW_CHUNK
    # Each chunk summed in the weights' own precision (a float32 sum is 30 times faster than
    # one in float64 on the CPU, and as exact as the weights), the chunks' running sum in float64.
    sums = weights[:, :whole].reshape(b, -1, DRAW_CHUNK).sum(2)
    if whole < n:
        sums = torch.cat([sums, weights[:, whole:].sum(1)[:, None]], 1)
    return sums.double().cumsum(1)


def _draw(
    weights: torch.Tensor, chunk_cdf: torch.Tensor, rows: torch.Tensor, u: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One inverse-CDF draw for each of `rows` (m,) of weights: (b, n_items) with its
    `_chunk_cdf`, at uniforms u: (m,) float64 → items (m,) long and ok (m,) bool.

    The uniform first picks a chunk from the chunk sums, then an item from that chunk's own
    running sum: two small searches instead of a running sum over the whole catalogue. ok is
    False where rounding between the two sums pointed at an item of weight zero; the caller
    draws those rows again.
    """
    n = weights.shape[1]
    cdf = chunk_cdf[rows]  # (m, C): small
    x = u * cdf[:, -1]  # < the row's total
    chunk = torch.searchsorted(cdf, x[:, None], right=True).squeeze(1).clamp_(max=cdf.shape[1] - 1)
    before = torch.where(chunk > 0, cdf.gather(1, (chunk - 1).clamp(min=0)[:, None])[:, 0], 0.0)
    columns = chunk[:, None] * DRAW_CHUNK + torch.arange(DRAW_CHUNK)  # (m, DRAW_CHUNK)
    inside = columns < n
    segment = weights[rows[:, None], columns.clamp(max=n - 1)].double() * inside
    within = torch.searchsorted(segment.cumsum(1), (x - before)[:, None], right=True)
    items = (chunk * DRAW_CHUNK + within.squeeze(1).clamp_(max=DRAW_CHUNK - 1)).clamp_(max=n - 1)
    return items, weights[rows, items] > 0


def draw_without_replacement(
    weights: torch.Tensor,
    users: torch.Tensor,
    k: int,
    seed: int,
    chunk_cdf: torch.Tensor | None = None,
) -> torch.Tensor:
    """k distinct items per row, drawn in sequence without replacement with probabilities
    proportional to the row's weights, in draw order: (b, k) long.

    weights: (b, n_items) float, non-negative, unnormalised (a softmax's exp(logit − max));
    users: (b,) long, each row's user, which keys its counter-based uniforms. Draw j is from the
    weights; a draw repeating an earlier item of the row is redrawn (so it is from the weights
    restricted to the items not yet drawn: exactly sequential sampling without replacement);
    after `MAX_REDRAWS` repeats a row draws from its remaining items directly. chunk_cdf: the
    weights' `_chunk_cdf`, when the caller has it already.
    """
    if chunk_cdf is None:
        chunk_cdf = _chunk_cdf(weights)
    b = len(users)
    items = torch.empty(b, k, dtype=torch.long)
    base = users.numpy().astype(np.uint64) * np.uint64(k)
    for j in range(k):
        pending = torch.arange(b)
        for attempt in range(MAX_REDRAWS + 1):
            counters = (base[pending.numpy()] + np.uint64(j)) * np.uint64(MAX_REDRAWS + 2)
            counters += np.uint64(attempt)
            u = torch.from_numpy(uniforms(counters, seed, BANDIT_STREAM))
            if attempt < MAX_REDRAWS:
                drawn, ok = _draw(weights, chunk_cdf, pending, u)
            else:  # the few rows left: mask the drawn items and draw from the rest
                rest = weights[pending].scatter(1, items[pending, :j], 0.0)
                drawn, ok = _draw(rest, _chunk_cdf(rest), torch.arange(len(pending)), u)
            again = ~ok | (drawn[:, None] == items[pending, :j]).any(1)
            items[pending[~again], j] = drawn[~again]
            pending = pending[again]
            if not len(pending):
                break
        if len(pending):  # only a row whose remaining items all weigh zero ends up here
            raise ValueError(f"row {int(pending[0])} has fewer than {k} items of positive weight")
    return items


def sample_bandit_log_ondemand(
    catalog: Catalog,
    simulator_state: dict,
    world: OnDemandWorld,
    policy_state: dict,
    config: BanditConfig,
    device: torch.device,
    progress=None,
) -> BanditLog:
    """K distinct items per user from the logging policy's softmax over all items, a block of
    users at a time; the propensity is the single-draw softmax probability (the paper's)."""
    policy = load_model(Nominator, catalog, policy_state, device)
    simulator = load_model(ImpressionSimulator, catalog, simulator_state, device)
    step = max(LOG_BLOCK_USERS, user_blocks(world.n_items))
    items, propensities = [], []
    scores = torch.empty(step, world.n_items)  # one buffer for every block (`pin_large_blocks`)
    with torch.no_grad():
        item_vectors = policy.items()
        for start in range(0, world.n_users, step):
            users = torch.arange(start, min(start + step, world.n_users))
            logits = scores[: len(users)]
            if device.type == "cpu":
                torch.matmul(policy.user_vectors(users), item_vectors.T, out=logits)
            else:
                logits.copy_(policy.user_vectors(users.to(device)) @ item_vectors.T)
            # The softmax's weights without its log: exp(logit − max), normalised by the total.
            weights = logits.sub_(logits.max(1, keepdim=True).values).exp_()
            chunk_cdf = _chunk_cdf(weights)  # one pass for the draws and the totals
            drawn = draw_without_replacement(weights, users, config.k, config.seed, chunk_cdf)
            items.append(drawn)
            total = chunk_cdf[:, -1:]
            propensities.append((weights.gather(1, drawn) / total).float())
            if progress is not None:
                progress.update(len(users))
    items_t = torch.cat(items).reshape(-1)
    users_t = torch.arange(world.n_users).repeat_interleave(config.k)
    single = torch.cat(propensities).reshape(-1)
    labels, times = pair_labels(simulator, world, users_t, items_t, device)
    return BanditLog(
        users=users_t,
        items=items_t,
        propensities=single,
        single_propensities=single,
        rewards=labels.float(),
        timestamps=times,
        k=config.k,
    )


# ---------------------------------------------------------------- 5. the ranker's check
def ranker_truth_auc(
    model: Ranker, world: OnDemandWorld, device: torch.device, n_pairs: int = 200_000
) -> float:
    """The ranker's AUC against the truth on up to `n_pairs` random pairs of the evaluated users
    at their mean times (the dense world draws them from all users)."""
    g = seeded(1)
    m = len(world.eval_users)
    rows = torch.randint(m, (n_pairs,), generator=g)
    items = torch.randint(world.n_items, (n_pairs,), generator=g)
    byte = world.eval_truth[rows, items >> 3]
    truth = ((byte >> (items & 7).to(torch.uint8)) & 1).float()
    users = world.eval_users[rows]
    with torch.no_grad():
        scores = model(users.to(device), items.to(device), world.mean_timestamps[users].to(device))
    return auc(scores, truth)
