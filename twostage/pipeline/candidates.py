"""Stage 6: candidate generators trained on the logged positives with a registered objective
(CE, 1-IPS, 2-IPS, … — `twostage.objectives`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from twostage import objectives
from twostage.data import Catalog
from twostage.evaluation import Evaluator, top_of_products
from twostage.models import Nominator
from twostage.pipeline.config import CandidateConfig
from twostage.pipeline.pools import PoolSampler
from twostage.pipeline.training import cpu_state, fit, seeded


@dataclass
class Context:
    """What every candidate-generator run shares: the log's positives, the ranker, the evaluator.

    users, items, propensities: (n_positive,) — logged impressions with reward 1, in log order
    ranker_scores: (n_users, n_items) — the ranker at each user's mean timestamp (2-IPS's q);
    None on the on-demand world, whose ranker scores are the dot products of
    ranker_user_vectors: (n_users, d) and ranker_item_vectors: (n_items, d), taken for the users
    a batch needs (`ranker_rows`)
    evaluator: an `Evaluator` of all users (dense world) or a `CompactEvaluator` of the evaluated
    users (on-demand world)
    val_users, test_users: (m,) long — the evaluator's rows of the validation and test users: the
    first round(2000·n_users/6040) users and the rest (dense world), or the first and second
    half of the evaluated users (on-demand)
    """

    catalog: Catalog
    users: torch.Tensor
    items: torch.Tensor
    propensities: torch.Tensor
    ranker_scores: torch.Tensor | None
    evaluator: Evaluator
    val_users: torch.Tensor
    test_users: torch.Tensor
    k: int = 5  # items per user in the bandit log (the Top-K IPS correction's K)
    ranker_user_vectors: torch.Tensor | None = None
    ranker_item_vectors: torch.Tensor | None = None

    def ranker_rows(self, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
        """A function of users: (b,) long on `device` → the ranker's scores of every item
        (b, n_items), with the tables moved to `device` once."""
        if self.ranker_scores is not None:
            scores = self.ranker_scores.to(device)
            return lambda users: scores[users]
        user_vectors = self.ranker_user_vectors.to(device)
        item_vectors = self.ranker_item_vectors.to(device)
        return lambda users: user_vectors[users] @ item_vectors.T

    def ranker_pool(
        self, device: torch.device
    ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """A function of users: (b,) long and items: (b, P) long on `device` → the ranker's
        scores of those pairs (b, P), with the tables moved to `device` once."""
        if self.ranker_scores is not None:
            scores = self.ranker_scores.to(device)
            return lambda users, items: scores[users[:, None], items]
        user_vectors = self.ranker_user_vectors.to(device)
        item_vectors = self.ranker_item_vectors.to(device)
        return lambda users, items: (user_vectors[users][:, None, :] * item_vectors[items]).sum(2)


def validation_size(n_users: int) -> int:
    """The paper's 2,000 of 6,040 validation users, scaled to other sizes."""
    return min(n_users - 1, max(1, round(2000 * n_users / 6040)))


SPLITS = ("all", "val", "test")  # rewards on all users; ranking metrics on val and test users


# Users scored at once when evaluating: a block's (users, n_items) scores stay in cache while
# `topk` reads them (64-user blocks took 104 ms for all 6,040 ML-1M users on one thread of the
# 2-core CPU, against 185 ms for the whole score matrix then one `topk`).
EVAL_BLOCK_USERS = 64
# Items scored at once for a block of users on larger catalogues, so that the block's scores
# (4 MB) stay in cache and one buffer is reused: a block's whole rows at 1M items are 256 MB,
# written to fresh pages each time. At 1M items this took the 4,000 evaluated users' top items
# from 18.4 s to 11.1 s on two threads and from 29.5 s to 14.5 s on one (benchmarks/README.md).
# Catalogues up to this size (ML-1M's 3,883 items) are scored as whole rows, as before.
EVAL_BLOCK_ITEMS = 16_384


def top_items(model: Nominator, evaluator: Evaluator, device: torch.device) -> torch.Tensor:
    """Each evaluated user's raw top `evaluator.top_width` items under `model`: (m, width) long
    on the CPU, one row per evaluator row, scored a block of users at a time on `device`; the
    whole score matrix is never held. On catalogues of more than `EVAL_BLOCK_ITEMS` items a
    block's items are scored a chunk at a time (`twostage.evaluation.top_of_products`): the same
    items, in the same order except among exactly equal scores."""
    model.eval()
    with torch.no_grad():
        items = model.items()  # (n_items, dim), once for all blocks
        users = evaluator.users.to(device)  # the global rows of the evaluator's rows
        chunked = items.shape[0] > EVAL_BLOCK_ITEMS
        if chunked:
            buffer = items.new_empty(EVAL_BLOCK_USERS * EVAL_BLOCK_ITEMS)
        blocks = []
        for start in range(0, len(users), EVAL_BLOCK_USERS):
            rows = torch.arange(start, min(start + EVAL_BLOCK_USERS, len(users)), device=device)
            vectors = model.user_vectors(users[rows])
            if chunked:
                top = top_of_products(vectors, items, evaluator.top_width, EVAL_BLOCK_ITEMS, buffer)
            else:
                top = evaluator.top(vectors @ items.T, rows)
            blocks.append(top.cpu())
    model.train()
    return torch.cat(blocks)


def evaluate_epoch(
    model: Nominator,
    context: Context,
    device: torch.device,
    splits: tuple[str, ...] = SPLITS,
) -> list[dict]:
    """Rows {split, evaluation, metric, value} of the model as it is now, for `splits`:
    "all" — one- and two-stage rewards on all users; "val", "test" — one- and two-stage ranking
    metrics on the validation or test users.

    Every user's top items come from the same call whatever `splits` holds, so a split's rows do
    not depend on which other splits are asked for. The values equal the evaluator's
    `*_reward(scores)` and `*_metrics(scores, users)` of the whole score matrix (tested).
    """
    ev = context.evaluator
    top = top_items(model, ev, device)
    rows = []
    if "all" in splits:
        rows += [
            {"split": "all", "evaluation": evaluation, "metric": "reward", "value": value}
            for evaluation, value in ev.rewards_from_top(top).items()
        ]
    for split, users in (("val", context.val_users), ("test", context.test_users)):
        if split not in splits:
            continue
        for evaluation, metrics in ev.metrics_from_top(top[users], users).items():
            rows += [
                {"split": split, "evaluation": evaluation, "metric": name, "value": value}
                for name, value in metrics.items()
            ]
    return rows


def train_candidate_generator(
    method: str,
    seed: int,
    context: Context,
    config: CandidateConfig,
    device: torch.device,
    progress=None,
    *,
    test_every_epoch: bool = False,
    initial_state: dict[str, torch.Tensor] | None = None,
) -> dict:
    """Train one candidate generator.

    Returns {"rows": results, "best_epoch": int, "state": the model's state dict (on the CPU) at
    the best epoch}. The rewards ("all") and validation rows are there for every epoch; the test
    rows only for the best epoch, evaluated once after training from its kept state (they come
    last), unless `test_every_epoch`, which evaluates test users after every epoch as well. Both
    give the same best epoch and the same values: the test rows of the best epoch are computed
    from the same parameters by the same calls. `test_every_epoch` changes only the time taken
    and the rows kept, so it is in no cache key.

    `initial_state` (a Nominator state dict) replaces the seed's initial weights; the seed still
    drives everything else (2-IPS's slates). The fidelity harness uses it to start from the
    authors' initial weights for the same seed.

    Batches follow the log order without shuffling and drop the last partial batch (the
    paper's code) unless `config.shuffle`. The best epoch is the one with the highest
    validation two-stage `config.select_metric` (first one on ties).
    """
    torch.manual_seed(seed)
    model = Nominator(context.catalog)
    if initial_state is not None:
        model.load_state_dict(initial_state)
    model = model.to(device)
    generator = seeded(seed)
    device_generator = (
        generator if device.type == "cpu" else torch.Generator(device).manual_seed(seed)
    )
    users, items = context.users.to(device), context.items.to(device)
    propensities = context.propensities.to(device)
    objective = objectives.get(method)
    sampled = config.softmax == "sampled"
    ranker_rows = context.ranker_rows(device) if objective.needs_ranker and not sampled else None
    sampler = None
    if sampled:
        popularity = torch.bincount(context.items, minlength=context.catalog.n_items)
        sampler = PoolSampler(context.catalog.n_items, config, generator, device, popularity)
        sampler.refresh(model)
        ranker_pool = context.ranker_pool(device) if objective.needs_ranker else None

    def pooled_loss(idx: torch.Tensor) -> torch.Tensor:
        """The loss over each row's pool (`twostage.pipeline.pools`), not every item."""
        batch_users, logged = users[idx], items[idx]
        user_vectors = model.user_vectors(batch_users)  # (B, d)
        pool = sampler.pool(user_vectors, logged)
        columns = pool.items(logged)  # (B, P)
        exact = 1 + pool.head.shape[1]  # the logged item and the head: one set per row
        row_items = model.items(columns[:, :exact].reshape(-1)).view(len(idx), exact, -1)
        logits = torch.cat(
            [
                (user_vectors[:, None, :] * row_items).sum(2),
                user_vectors @ model.items(pool.tail).T,
            ],
            dim=1,
        )
        logged_batch = objectives.Batch(
            logits=logits,
            items=torch.zeros_like(logged),  # column 0
            propensities=propensities[idx],
            ranker_logits=None if ranker_pool is None else ranker_pool(batch_users, columns),
            k=context.k,
            log_mass=pool.log_mass,
        )
        return objective.loss(logged_batch, config, device_generator)

    def batch_loss(batch: torch.Tensor) -> torch.Tensor:
        idx = batch.to(device)
        if sampler is not None:
            return pooled_loss(idx)
        batch_users = users[idx]
        logged = objectives.Batch(
            logits=model.score_all(batch_users),
            items=items[idx],
            propensities=propensities[idx],
            ranker_logits=None if ranker_rows is None else ranker_rows(batch_users),
            k=context.k,
        )
        return objective.loss(logged, config, device_generator)

    per_epoch = SPLITS if test_every_epoch else ("all", "val")
    rows: list[dict] = []
    best_epoch, best_value = 0, float("-inf")
    best_state: dict[str, torch.Tensor] = {}

    def after_epoch(epoch: int) -> bool:  # evaluate; keep the state of the best epoch so far
        nonlocal best_epoch, best_value, best_state
        epoch_rows = evaluate_epoch(model, context, device, per_epoch)
        for row in epoch_rows:
            row["epoch"] = epoch
        rows.extend(epoch_rows)
        selected = next(
            r["value"]
            for r in epoch_rows
            if r["split"] == "val"
            and r["evaluation"] == "two-stage"
            and r["metric"] == config.select_metric
        )
        improved = selected > best_value  # False for NaN
        if improved:
            best_epoch, best_value = epoch, selected
        if improved or epoch == 0:  # a state for best_epoch 0 even if no epoch improves (NaN)
            best_state = cpu_state(model)
        if progress is not None:
            progress.update(1)
        if sampler is not None:  # the next epoch's head index, from this epoch's end
            sampler.refresh(model)
        return False

    fit(
        model,
        batch_loss,
        config,
        n_rows=len(users),
        generator=generator,
        shuffle=config.shuffle,
        drop_last=True,
        stage=f"candidate generator {method} seed {seed}",
        after_epoch=after_epoch,
    )
    if not test_every_epoch:  # the test users, once: at the best epoch, from its kept state
        model.load_state_dict(best_state)
        rows += [
            {**row, "epoch": best_epoch}
            for row in evaluate_epoch(model, context, device, ("test",))
        ]
    return {"rows": rows, "best_epoch": best_epoch, "state": best_state}
