"""Stages 1–5: simulator → semi-synthetic world → logging policy → bandit log → ranker.

Each stage is a plain function of its settings and inputs that returns a typed artifact of
`twostage.pipeline.artifacts` (a `TrainedModel`, the `World`, the `BanditLog`), which the stage
cache stores.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from twostage.data import Catalog, MovieLens
from twostage.models import ImpressionSimulator, Nominator, Ranker
from twostage.pipeline.artifacts import BanditLog, OnDemandWorld, TrainedModel, World
from twostage.pipeline.config import (
    PAPER_CUT,
    BanditConfig,
    LoggingPolicyConfig,
    RankerConfig,
    SimulatorConfig,
    WorldConfig,
)
from twostage.pipeline.ondemand import ranker_truth_auc
from twostage.pipeline.training import auc, batches, cpu_state, fit, load_model, numpy_rng, seeded
from twostage.pipeline.world_rules import (
    check_policy_pairs,
    is_paper_ml1m,
    user_timestamp_moments,
)
from twostage.propensity import logged_inclusion_probabilities
from twostage.sampling import gumbel_top_k

INCLUSION_SEED_OFFSET = 1_000_003  # the inclusion estimate's generator: bandit seed + this


# ---------------------------------------------------------------- 1. impression simulator
def split_ratings(n: int) -> tuple[slice, slice, slice]:
    """Train/validation/test split 3:1:1 in file order, as the paper."""
    return slice(0, n * 3 // 5), slice(n * 3 // 5, n * 4 // 5), slice(n * 4 // 5, n)


def rating_order(users: torch.Tensor, order: str) -> torch.Tensor | None:
    """The permutation that puts the ratings in `order` before the positional split: None for
    "file" (as they are), else a stable sort by user (each user's ratings keep their order)."""
    if order == "file":
        return None
    return torch.sort(users, stable=True).indices


def validation_rows(val: slice, config: SimulatorConfig) -> slice | torch.Tensor:
    """The rows of the validation split `val` that the periodic AUC checks use: all of it when
    `config.val_rows` is None or at least its size, else that many rows drawn once with the
    simulator's seed (sorted, so in file order)."""
    n = val.stop - val.start
    if config.val_rows is None or config.val_rows >= n:
        return val
    picked = torch.randperm(n, generator=seeded(config.seed))[: config.val_rows]
    return picked.sort().values + val.start


def train_simulator(
    data: MovieLens, config: SimulatorConfig, device: torch.device, progress=None
) -> TrainedModel:
    """Train the impression simulator on the first 3/5 of the ratings, in `config.ratings_order`.

    The periodic checks that may stop training use `validation_rows` (`config.val_rows`); the
    `val_auc` and `test_auc` of its info are on the whole validation and test splits. `progress`
    (a tqdm bar) gets one update per step; when training stops early its total is cut to the
    steps done.
    """
    torch.manual_seed(config.seed)
    model = ImpressionSimulator(data.catalog).to(device)
    users, items, times, labels = data.users, data.items, data.timestamps, data.labels
    order = rating_order(users, config.ratings_order)
    if order is not None:
        users, items, times, labels = users[order], items[order], times[order], labels[order]
    users, items, times, labels = (t.to(device) for t in (users, items, times, labels))
    train, val, test = split_ratings(data.n_ratings)
    train_idx = torch.arange(data.n_ratings)[train]
    checked = validation_rows(val, config)
    if isinstance(checked, torch.Tensor):
        checked = checked.to(device)

    def evaluate(rows: slice | torch.Tensor) -> float:
        part_users, part_items, part_times = users[rows], items[rows], times[rows]
        model.eval()
        with torch.no_grad():
            scores = torch.cat(
                [
                    model(part_users[i], part_items[i], part_times[i])
                    for i in batches(len(part_users), 65536, shuffle=False)
                ]
            )
        model.train()
        return auc(scores, labels[rows])

    def batch_loss(batch: torch.Tensor) -> torch.Tensor:
        idx = train_idx[batch].to(device)
        return F.binary_cross_entropy_with_logits(
            model(users[idx], items[idx], times[idx]), labels[idx]
        )

    curve: list[tuple[int, float]] = []
    stopped = False
    # Steps done so far, and before this epoch: the authors' code counts steps within an epoch.
    steps_done = epoch_start = 0

    def after_step(step: int) -> bool:
        """Validate every `validate_every` steps (of the run, or of the epoch for "authors");
        an AUC above `stop_auc` ends the epoch."""
        nonlocal stopped, steps_done
        steps_done = step
        if progress is not None:
            progress.update(1)
        counted = step - epoch_start if config.early_stop == "authors" else step
        if counted % config.validate_every:
            return False
        curve.append((step, evaluate(checked)))
        stopped = curve[-1][1] > config.stop_auc
        return stopped

    def after_epoch(epoch: int) -> bool:
        """`early_stop="run"`: a pass ends training; `"authors"`: it only ended that epoch."""
        nonlocal stopped, epoch_start
        done = stopped and config.early_stop == "run"
        if config.early_stop == "authors":
            stopped = False
        epoch_start = steps_done
        return done

    fitted = fit(
        model,
        batch_loss,
        config,
        n_rows=len(train_idx),
        generator=seeded(config.seed),
        shuffle=True,
        drop_last=False,
        stage="simulator",
        after_step=after_step,
        after_epoch=after_epoch,
    )
    step = fitted.steps
    stopped_early = step < config.epochs * -(-len(train_idx) // config.batch_size)
    if progress is not None and stopped_early:
        passed = [value for _, value in curve if value > config.stop_auc]
        progress.total = step
        if passed:
            progress.set_postfix_str(
                f"stopped early: val AUC {passed[-1]:.3f} > {config.stop_auc:g}", refresh=False
            )
        progress.refresh()
    info = {
        "steps": step,
        "val_auc": evaluate(val),
        "test_auc": evaluate(test),
        "curve": curve,
        "stopped_early": stopped_early,
        "train_size": len(train_idx),
    }
    return TrainedModel(cpu_state(model), info)


# ---------------------------------------------------------------- 2. semi-synthetic world
def choose_cut(
    probabilities: torch.Tensor, data: MovieLens, config: WorldConfig
) -> tuple[float, str]:
    if config.cut is not None:
        return float(config.cut), "given cut"
    share = config.positive_share
    if share is None:
        if is_paper_ml1m(data):
            return PAPER_CUT, "paper cut (ML-1M)"
        share = config.default_share
    flat = probabilities.reshape(-1)
    n_positive = max(1, round(share * flat.numel()))
    cut = torch.topk(flat, n_positive).values[-1].item()
    return float(cut), f"positive share {share:g}"


def build_world(
    data: MovieLens,
    simulator_state: dict,
    config: WorldConfig,
    device: torch.device,
    chunk_users: int = 256,
    progress=None,
) -> World:
    """Sample a timestamp for every pair, score it with the simulator, cut into labels.

    `chunk_users` users are scored at a time (a runtime setting: memory, not results beyond
    float rounding); `progress` (a tqdm bar) gets an update of that many users after each chunk.
    The simulator's first layer is split by input (`ImpressionSimulator.first_layer_parts`), so
    each pass over the pairs is a broadcast sum and one GEMM per cache-sized block of users.
    """
    simulator = load_model(ImpressionSimulator, data.catalog, simulator_state, device)
    mean, std = user_timestamp_moments(data)
    # One call draws the same stream as the paper's per-user calls, in the same order.
    noise = numpy_rng(config.seed).normal(size=(data.n_users, data.n_items))
    noise *= std[:, None]  # in place: the same numbers without two more 190 MB temporaries
    noise += mean[:, None]
    timestamps = torch.from_numpy(noise.astype(np.float32))
    mean_timestamps = timestamps.mean(dim=1)
    probabilities = torch.empty(data.n_users, data.n_items)
    at_mean = torch.empty(data.n_users, data.n_items)
    with torch.no_grad():
        # The first layer's parts once for all users, not once a chunk.
        user_part, item_part, time_weight = simulator.first_layer_parts(
            torch.arange(data.n_users, device=device)
        )
    for start in range(0, data.n_users, chunk_users):
        rows = slice(start, min(start + chunk_users, data.n_users))
        for times, target in ((timestamps, probabilities), (mean_timestamps, at_mean)):
            if device.type == "cpu":  # straight into the world's tensor
                simulator.probabilities_from_parts(
                    user_part[rows], item_part, time_weight, times[rows], out=target[rows]
                )
            else:
                target[rows] = simulator.probabilities_from_parts(
                    user_part[rows], item_part, time_weight, times[rows].to(device)
                ).cpu()
        if progress is not None:
            progress.update(rows.stop - rows.start)
    cut, rule = choose_cut(probabilities, data, config)
    return World(
        timestamps=timestamps,
        probabilities=probabilities,
        labels=probabilities >= cut,
        mean_timestamps=mean_timestamps,
        probabilities_at_mean=at_mean,
        truth=at_mean > cut,  # the paper's evaluator uses ">" at the mean timestamp
        cut=cut,
        cut_rule=rule,
    )


# ---------------------------------------------------------------- 3. logging policy
def logging_policy_pairs(world: World, config: LoggingPolicyConfig) -> tuple[torch.Tensor, ...]:
    """`n_train + n_val` distinct random pairs of the dense world (users, items (n,) long) and
    their labels (n,) float: a seeded permutation of all pairs, as the paper's code."""
    n_items = world.labels.shape[1]
    n_pairs = world.labels.numel()
    check_policy_pairs(config.n_train + config.n_val, n_pairs)
    order = torch.from_numpy(
        numpy_rng(config.seed).permutation(n_pairs)[: config.n_train + config.n_val]
    )
    return order // n_items, order % n_items, world.labels.reshape(-1)[order].float()


def train_logging_policy(
    catalog: Catalog,
    pairs: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    config: LoggingPolicyConfig,
    device: torch.device,
) -> TrainedModel:
    """BCE on the first `n_train` of `pairs` (users, items, labels: (n,)); AUC on the other
    `n_val` after every epoch. The pairs come from `logging_policy_pairs` of either world."""
    users, items, labels = (t.to(device) for t in pairs)
    val = slice(config.n_train, None)
    torch.manual_seed(config.seed)
    model = Nominator(catalog).to(device)
    curve: list[float] = []

    def batch_loss(batch: torch.Tensor) -> torch.Tensor:
        idx = batch.to(device)
        return F.binary_cross_entropy_with_logits(model(users[idx], items[idx]), labels[idx])

    def after_epoch(epoch: int) -> bool:
        with torch.no_grad():
            model.eval()
            curve.append(auc(model(users[val], items[val]), labels[val]))
            model.train()
        return False

    fit(
        model,
        batch_loss,
        config,
        n_rows=config.n_train,
        generator=seeded(config.seed),
        shuffle=True,
        drop_last=False,
        stage="logging policy",
        after_epoch=after_epoch,
    )
    return TrainedModel(cpu_state(model), {"val_auc": curve[-1], "curve": curve})


# ---------------------------------------------------------------- 4. bandit log
def inclusion_estimate(
    probs: torch.Tensor, items: torch.Tensor, config: BanditConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """The bandit log's estimate of P(item among the K shown) and its standard error, both
    (n_users, K), for the logged `items` (n_users, K) under the logging policy's `probs`
    (n_users, n_items). Its generator is its own (bandit seed + `INCLUSION_SEED_OFFSET`), so the
    log's draws are the same with either propensity, and `twostage evaluate` gets the estimate
    the stage would have made."""
    return logged_inclusion_probabilities(
        probs,
        items,
        config.k,
        n_samples=config.inclusion_samples,
        generator=seeded(config.seed + INCLUSION_SEED_OFFSET),
    )


def sample_bandit_log(
    catalog: Catalog, world: World, policy_state: dict, config: BanditConfig, device: torch.device
) -> BanditLog:
    """K distinct items per user, drawn in sequence without replacement from the policy's softmax.

    Gumbel-top-k draws all users at once; it has exactly the distribution of K successive draws
    without replacement. The logged propensity is the single-draw softmax probability, as the
    paper's code (not the probability that the item is among the K), unless
    `config.propensity == "inclusion"` (see `twostage.propensity`).
    """
    policy = load_model(Nominator, catalog, policy_state, device)
    n_users = catalog.n_users
    with torch.no_grad():
        logits = policy.score_all(torch.arange(n_users, device=device)).cpu().double()
    log_probs = torch.log_softmax(logits, dim=1)
    items = gumbel_top_k(log_probs, config.k, seeded(config.seed))  # (n_users, K), draw order
    users = torch.arange(n_users)[:, None].expand_as(items)
    probs = log_probs.exp()
    single = probs.gather(1, items).reshape(-1).float()
    inclusion = stderr = None
    if config.propensity == "inclusion":
        inclusion, stderr = inclusion_estimate(probs, items, config)
        inclusion, stderr = inclusion.reshape(-1).float(), stderr.reshape(-1).float()
    return BanditLog(
        users=users.reshape(-1).clone(),
        items=items.reshape(-1).clone(),
        propensities=single if inclusion is None else inclusion,
        single_propensities=single,
        rewards=world.labels[users, items].reshape(-1).float(),
        timestamps=world.timestamps[users, items].reshape(-1).clone(),
        k=config.k,
        inclusion_propensities=inclusion,
        inclusion_stderr=stderr,
    )


# ---------------------------------------------------------------- 5. ranker
def train_ranker(
    catalog: Catalog,
    world: World | OnDemandWorld,
    log: BanditLog,
    config: RankerConfig,
    device: torch.device,
) -> TrainedModel:
    """BCE on every logged impression with its timestamp; batches in log order by default,
    the last partial batch dropped — as the paper's code."""
    torch.manual_seed(config.seed)
    model = Ranker(catalog).to(device)
    users, items = log.users.to(device), log.items.to(device)
    times, rewards = log.timestamps.to(device), log.rewards.to(device)

    def batch_loss(batch: torch.Tensor) -> torch.Tensor:
        idx = batch.to(device)
        return F.binary_cross_entropy_with_logits(
            model(users[idx], items[idx], times[idx]), rewards[idx]
        )

    fitted = fit(
        model,
        batch_loss,
        config,
        n_rows=len(users),
        generator=seeded(config.seed),
        shuffle=config.shuffle,
        drop_last=True,
        stage="ranker",
    )
    losses = fitted.epoch_losses
    model.eval()
    with torch.no_grad():
        # Quality against the truth: AUC over up to 200k random pairs at the users' mean times.
        if isinstance(world, OnDemandWorld):
            truth_auc = ranker_truth_auc(model, world, device)
        else:
            pairs = torch.randperm(world.truth.numel(), generator=seeded(1))[:200_000]
            u, i = pairs // world.truth.shape[1], pairs % world.truth.shape[1]
            scores = model(u.to(device), i.to(device), world.mean_timestamps[u].to(device))
            truth_auc = auc(scores, world.truth[u, i].float())
        log_auc = auc(model(users, items, times), rewards)
    info = {"train_loss": losses, "truth_auc": truth_auc, "log_auc": log_auc}
    return TrainedModel(cpu_state(model), info)


def ranker_scores(
    catalog: Catalog, ranker_state: dict, world: World, device: torch.device, chunk: int = 1024
) -> torch.Tensor:
    """(n_users, n_items) ranker scores at each user's mean timestamp."""
    ranker = load_model(Ranker, catalog, ranker_state, device)
    out = torch.empty(catalog.n_users, catalog.n_items)
    with torch.no_grad():
        for idx in batches(catalog.n_users, chunk, shuffle=False):
            out[idx] = ranker.score_all(idx.to(device), world.mean_timestamps[idx].to(device)).cpu()
    return out
