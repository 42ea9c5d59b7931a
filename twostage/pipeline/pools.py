"""Candidate pools: the items a sampled-softmax step scores instead of the whole catalogue.

With `candidates.softmax = "sampled"` a training step scores, for each row of the batch, a pool
of P = 1 + head_size + n_negatives columns instead of every item:

- column 0: the logged item, scored exactly (log-mass 0);
- the head: the `head_size` items the generator scores highest for the row's user, found in an
  index of the item vectors built at the start of each epoch (`head_index`: "exact", a full
  scoring and `topk`, or "faiss", an inverted-file index that visits `nprobe` of its lists).
  Only the head's membership comes from the epoch-old vectors; its logits are the current
  model's, scored exactly (log-mass 0). A stale head misses items that rose into the top during
  the epoch: they are then represented by the tail, unbiased but noisier;
- the tail: `n_negatives` items drawn once per step for the whole batch from the proposal Q
  (uniform, or the logged positives' counts plus one), each standing for 1 / (S · Q(j))
  catalogue items (log-mass −log(S · Q(j)), the log-Q correction). A tail item that is the
  row's logged item or in its head is left out (log-mass −inf): the head and the logged item
  are already counted exactly, and a draw that lands on them estimates zero mass of the rest.

Then Ẑ = Σ_j exp(logit_j + log_mass_j) is an unbiased estimate of the softmax's normaliser
Σ_items exp(logit) and `twostage.losses` computes every loss from it. With head_size ≥ n_items
every item is in the head and the losses are the full softmax's (tested).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from twostage.errors import ConfigError
from twostage.models import Nominator
from twostage.pipeline.config import CandidateConfig
from twostage.sampling import sample_categorical

SCORE_BLOCK_ROWS = 256  # users scored at once by the exact head index


@dataclass(frozen=True)
class Pool:
    """The columns a batch's rows are scored on.

    head: (B, M) long — each row's head items (M = min(head_size, n_items)).
    tail: (S,) long — the tail items, shared by every row.
    log_mass: (B, 1 + M + S) float — per column: 0 for the logged item and the head,
    −log(S · Q(j)) for a tail item, −inf for a column left out.
    """

    head: torch.Tensor
    tail: torch.Tensor
    log_mass: torch.Tensor

    def items(self, logged: torch.Tensor) -> torch.Tensor:
        """(B, 1 + M + S) long — the catalogue item of every column, logged: (B,) first."""
        rows = len(logged)
        return torch.cat([logged[:, None], self.head, self.tail.expand(rows, -1)], dim=1)


def require_faiss():
    """The faiss module, or a ConfigError naming what to install."""
    try:
        import faiss
    except ImportError:
        raise ConfigError(
            'candidates.head_index faiss needs faiss-cpu: pip install -e ".[scale]" '
            "(or pip install faiss-cpu), or use head_index exact.",
            "candidates.head_index",
        ) from None
    return faiss


class PoolSampler:
    """Draws the pools of one training run (one per step) and keeps the head index.

    n_items: the catalogue size; config: the run's candidate settings; generator: the run's
    random source (the tail's draws); popularity: (n_items,) float counts for the
    "popularity" proposal.
    """

    def __init__(
        self,
        n_items: int,
        config: CandidateConfig,
        generator: torch.Generator,
        device: torch.device,
        popularity: torch.Tensor | None = None,
    ) -> None:
        self.n_items = n_items
        self.head_size = min(config.head_size, n_items)
        self.n_tail = config.n_negatives
        self.config = config
        self.generator = generator
        self.device = device
        if config.proposal == "uniform":
            self.proposal = None
            self.tail_log_mass = torch.full((n_items,), math.log(n_items / self.n_tail))
        else:
            if popularity is None or popularity.shape != (n_items,):
                raise ConfigError("the popularity proposal needs (n_items,) counts")
            q = (popularity.double() + 1.0) / (popularity.double() + 1.0).sum()
            self.proposal = q.float()[None, :]
            self.tail_log_mass = (-(self.n_tail * q).log()).float()
        self.tail_log_mass = self.tail_log_mass.to(device)
        self._vectors: torch.Tensor | None = None
        self._index = None
        if config.head_index == "faiss" and self.head_size:
            require_faiss()

    def refresh(self, model: Nominator) -> None:
        """Rebuild the head index from the model's current item vectors (once an epoch)."""
        if not self.head_size:
            return
        with torch.no_grad():
            self._vectors = model.items().detach().float().contiguous()
        if self.config.head_index == "faiss":
            self._index = _faiss_index(self._vectors.cpu().numpy(), self.config.nprobe)

    def head(self, user_vectors: torch.Tensor) -> torch.Tensor:
        """(B, M) long — the M items of highest (epoch-old) score for each user vector (B, d)."""
        rows = user_vectors.shape[0]
        if not self.head_size:
            return torch.empty(rows, 0, dtype=torch.long, device=user_vectors.device)
        if self._vectors is None:
            raise RuntimeError("PoolSampler.refresh must run before the first step")
        queries = user_vectors.detach().float()
        if self._index is not None:
            _, ids = self._index.search(queries.cpu().numpy(), self.head_size)
            return torch.from_numpy(ids).long().to(user_vectors.device)
        blocks = [
            (queries[start : start + SCORE_BLOCK_ROWS] @ self._vectors.T)
            .topk(self.head_size, dim=1)
            .indices
            for start in range(0, rows, SCORE_BLOCK_ROWS)
        ]
        return torch.cat(blocks)

    def pool(self, user_vectors: torch.Tensor, logged: torch.Tensor) -> Pool:
        """The pool of a batch: user_vectors (B, d) of the rows' users, logged (B,) items."""
        head = self.head(user_vectors)
        if self.proposal is None:
            tail = torch.randint(self.n_items, (self.n_tail,), generator=self.generator)
        else:
            tail = sample_categorical(self.proposal, self.n_tail, generator=self.generator)[0]
        tail = tail.to(logged.device)
        rows = len(logged)
        log_mass = torch.zeros(rows, 1 + head.shape[1] + self.n_tail, device=logged.device)
        tail_mass = log_mass[:, 1 + head.shape[1] :]
        tail_mass.copy_(self.tail_log_mass[tail].expand(rows, -1))
        # A head item that is the logged item is scored in column 0 already.
        log_mass[:, 1 : 1 + head.shape[1]].masked_fill_(head == logged[:, None], -math.inf)
        # Tail items in the row's head or equal to its logged item: counted exactly elsewhere.
        counted = torch.cat([logged[:, None], head], dim=1)  # (B, 1 + M)
        hit = (tail[None, :, None] == counted[:, None, :]).any(2)  # (B, S)
        tail_mass.masked_fill_(hit, -math.inf)
        return Pool(head=head, tail=tail, log_mass=log_mass)


def _faiss_index(vectors: np.ndarray, nprobe: int):
    """An inner-product inverted-file index of vectors (n, d) float32: about √n lists, trained
    on up to 64 points a list, `nprobe` of them visited per query; exact (flat) below 10,000
    items, where scanning everything is as fast.

    The index is rebuilt every epoch, so its build counts more than its queries: at a million
    items (d = 25, 2 threads) 1,000 lists took 2.2 s to build and 0.12 ms a query, 4,000 lists
    25 s and 0.06 ms; an epoch queries one row per training positive."""
    faiss = require_faiss()
    faiss.omp_set_num_threads(torch.get_num_threads())
    n, d = vectors.shape
    if n < 10_000:
        index = faiss.IndexFlatIP(d)
        index.add(vectors)
        return index
    n_lists = int(math.sqrt(n))
    quantizer = faiss.IndexFlatIP(d)
    index = faiss.IndexIVFFlat(quantizer, d, n_lists, faiss.METRIC_INNER_PRODUCT)
    # A fixed training sample, so the same vectors give the same index.
    picked = np.random.default_rng(0).choice(n, min(n, 64 * n_lists), replace=False)
    index.cp.seed = 0
    index.train(vectors[np.sort(picked)])
    index.add(vectors)
    index.nprobe = nprobe
    return index
