"""The paper's five modules: item and user representations, impression simulator, nominator, ranker.

Every scoring model refers to users and items by their catalog row (0-based) and keeps the
catalog's feature tables as non-persistent buffers, so `model.to(device)` moves them and
`state_dict()` holds only learned weights. Each offers pairwise scores for a batch of
(user, item) pairs and all-item scores for a batch of users, computed from the item
representations once and a matrix product — never a per-user copy of the item table.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from twostage.data.movielens import Catalog

# Pairs per torch thread in a block of `ImpressionSimulator.probabilities_from_parts` on the
# CPU (whole users, at least one): a thread's share of the activations, ≈ 600 bytes a pair, then
# stays in its core's cache. On the 2-core machine with one thread, one ML-1M user a block (3,883
# pairs) was fastest, 4 to 32 users ran at 60-75% of its rate. With two threads on a busy
# machine every operation waits for a descheduled thread: there 2-user blocks ran at 2 GFLOP/s,
# 32-user blocks at 14 (the old 256-user path at 5); a quiet machine has not been measured yet.
PAIRS_PER_BLOCK = 4096


class ItemRepresentation(nn.Module):
    """Item id embedding (10) ⊕ one embedding per side feature (5 each; ML: year) ⊕ a linear map
    of the genre vector (5)."""

    def __init__(
        self, catalog: Catalog, item_dim: int = 10, feature_dim: int = 5, genre_dim: int = 5
    ):
        super().__init__()
        self.item_embedding = nn.Embedding(catalog.n_items + 1, item_dim, padding_idx=0)
        self.feature_embeddings = nn.ModuleList(
            nn.Embedding(n, feature_dim) for n in catalog.item_cardinalities
        )
        self.genre_linear = nn.Linear(catalog.n_genres, genre_dim) if catalog.n_genres else None
        genre_part = genre_dim if catalog.n_genres else 0
        self.dim = item_dim + feature_dim * len(catalog.item_cardinalities) + genre_part

    def forward(
        self, categorical: torch.Tensor, genres: torch.Tensor, *, whole_catalog: bool = False
    ) -> torch.Tensor:
        """categorical: (b, 1 + n_fields) long [dense id, side features]; genres: (b, n_genres)
        → (b, dim).

        `whole_catalog`: the rows are every item in id order (dense ids 1..b), so the id
        embeddings are the table's rows 1..b, taken as a slice: the same values and gradient as
        the lookup, with a cheaper backward than an embedding of every item's index.
        """
        if whole_catalog:
            parts = [self.item_embedding.weight[1 : categorical.shape[0] + 1]]
        else:
            parts = [self.item_embedding(categorical[:, 0])]
        parts += [emb(categorical[:, i + 1]) for i, emb in enumerate(self.feature_embeddings)]
        if self.genre_linear is not None:
            parts.append(self.genre_linear(genres))
        return torch.cat(parts, dim=1)


class UserRepresentation(nn.Module):
    """User id embedding (10) ⊕ one embedding per side feature (5 each; ML: gender, age,
    occupation, zip)."""

    def __init__(self, catalog: Catalog, user_dim: int = 10, feature_dim: int = 5):
        super().__init__()
        self.user_embedding = nn.Embedding(catalog.n_users + 1, user_dim, padding_idx=0)
        self.feature_embeddings = nn.ModuleList(
            nn.Embedding(n, feature_dim) for n in catalog.user_cardinalities
        )
        self.dim = user_dim + feature_dim * len(catalog.user_cardinalities)

    def forward(self, categorical: torch.Tensor) -> torch.Tensor:
        """categorical: (b, 1 + n_fields) long [dense id, side features] → (b, dim)."""
        parts = [self.user_embedding(categorical[:, 0])]
        parts += [emb(categorical[:, i + 1]) for i, emb in enumerate(self.feature_embeddings)]
        return torch.cat(parts, dim=1)


def column_major(matrix: torch.Tensor) -> torch.Tensor:
    """A copy of a (rows, columns) tensor stored column by column (strides (1, rows))."""
    return matrix.t().clone(memory_format=torch.contiguous_format).t()


class _CatalogModel(nn.Module):
    """Holds the catalog's feature tables and the two representation layers."""

    def __init__(self, catalog: Catalog):
        super().__init__()
        self.user_rep = UserRepresentation(catalog)
        self.item_rep = ItemRepresentation(catalog)
        self.register_buffer("user_features", catalog.user_features.clone(), persistent=False)
        self.register_buffer("item_features", catalog.item_features.clone(), persistent=False)
        # The genre layer's product rounds by the layout of its input, so the layout is fixed
        # here, not left to the loader: column-major, as pandas had laid it out when the
        # committed results were made (a row-major copy moves every run in its last digits).
        self.register_buffer("item_genres", column_major(catalog.item_genres), persistent=False)
        ids = catalog.item_features[:, 0]
        self._ids_in_order = torch.equal(ids, torch.arange(1, len(ids) + 1, dtype=ids.dtype))

    @property
    def n_items(self) -> int:
        return int(self.item_features.shape[0])

    def users(self, users: torch.Tensor) -> torch.Tensor:
        """users: (b,) long rows → (b, user_dim)."""
        return self.user_rep(self.user_features[users])

    def items(self, items: torch.Tensor | None = None) -> torch.Tensor:
        """items: (b,) long rows, or None for the whole catalogue → (b or n_items, item_dim)."""
        if items is None:
            return self.item_rep(
                self.item_features, self.item_genres, whole_catalog=self._ids_in_order
            )
        return self.item_rep(self.item_features[items], self.item_genres[items])


class ImpressionSimulator(_CatalogModel):
    """MLP 100-50-1 on [user rep, item rep, timestamp] predicting the logit of a positive label."""

    def __init__(self, catalog: Catalog, hidden: tuple[int, int] = (100, 50)):
        super().__init__(catalog)
        input_dim = self.user_rep.dim + self.item_rep.dim + 1
        self.first = nn.Linear(input_dim, hidden[0])
        self.rest = nn.Sequential(
            nn.ReLU(), nn.Linear(hidden[0], hidden[1]), nn.ReLU(), nn.Linear(hidden[1], 1)
        )

    def forward(
        self, users: torch.Tensor, items: torch.Tensor, timestamps: torch.Tensor
    ) -> torch.Tensor:
        """users, items: (b,) long; timestamps: (b,) float → logits (b,)."""
        inputs = torch.cat([self.users(users), self.items(items), timestamps[:, None]], dim=1)
        return self.rest(self.first(inputs)).squeeze(-1)

    def first_layer_parts(
        self, users: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """users: (b,) long → the first layer split by input: user part (b, h) with the bias,
        item part (n_items, h) and timestamp weight (h,), so that for user u, item i, time t
        the pre-activation is W·[u; i; t] + c = (W_u·u + c) + W_i·i + w_t·t."""
        user_dim, item_dim = self.user_rep.dim, self.item_rep.dim
        weight = self.first.weight
        user_part = self.users(users) @ weight[:, :user_dim].T + self.first.bias
        item_part = self.items() @ weight[:, user_dim : user_dim + item_dim].T
        return user_part, item_part, weight[:, -1]

    def score_all(self, users: torch.Tensor, timestamps: torch.Tensor) -> torch.Tensor:
        """users: (b,) long; timestamps: (b, n_items) or (b,) float → logits (b, n_items).

        The item part of the first layer is computed once (`first_layer_parts`). Differentiable;
        `probabilities_all` gives the same numbers faster when no gradient is needed.
        """
        user_part, item_part, time_weight = self.first_layer_parts(users)
        if timestamps.dim() == 1:
            timestamps = timestamps[:, None].expand(-1, self.n_items)
        hidden = user_part[:, None, :] + item_part[None, :, :] + timestamps[..., None] * time_weight
        return self.rest(hidden).squeeze(-1)

    @torch.no_grad()
    def probabilities_all(
        self, users: torch.Tensor, timestamps: torch.Tensor, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """users: (b,) long; timestamps: (b, n_items) or (b,) float → σ(logits) (b, n_items),
        equal to `torch.sigmoid(score_all(...))` up to float rounding, without autograd
        (`probabilities_from_parts` of `first_layer_parts(users)`)."""
        return self.probabilities_from_parts(*self.first_layer_parts(users), timestamps, out)

    @torch.no_grad()
    def probabilities_from_parts(
        self,
        user_part: torch.Tensor,
        item_part: torch.Tensor,
        time_weight: torch.Tensor,
        timestamps: torch.Tensor,
        out: torch.Tensor | None = None,
        block_users: int | None = None,
    ) -> torch.Tensor:
        """user_part: (b, h), item_part: (n_items, h), time_weight: (h,) from
        `first_layer_parts`; timestamps: (b, n_items) or (b,) float → σ(logits) (b, n_items),
        written into `out` (a contiguous (b, n_items) tensor) when given.

        On the CPU the pairs go through the MLP `block_users` users at a time (default: about
        `PAIRS_PER_BLOCK` pairs a torch thread), so that a block's (block · n_items, 100) and
        (block · n_items, 50) activations stay in cache from the broadcast sum through the GEMM
        and the ReLUs, done in place in buffers reused from block to block; on other devices
        all `b` users form one block. The blocks change only the rounding (how BLAS's
        matrix-vector product rounds a row depends on the rows it is given with).
        """
        n_users, n_items = user_part.shape[0], item_part.shape[0]
        like = {"dtype": item_part.dtype, "device": item_part.device}
        if out is None:
            out = torch.empty(n_users, n_items, **like)
        elif out.shape != (n_users, n_items) or not out.is_contiguous():
            raise ValueError(f"out must be a contiguous ({n_users}, {n_items}) tensor")
        pair_times = timestamps if timestamps.dim() == 2 else None
        if pair_times is None:
            # One time per user: its term joins the user part, saving a pass over the block.
            user_part = user_part + timestamps[:, None] * time_weight
        second, third = self.rest[1], self.rest[3]
        if block_users is None:
            on_cpu = item_part.device.type == "cpu"
            pairs = PAIRS_PER_BLOCK * torch.get_num_threads()
            block_users = max(1, pairs // n_items) if on_cpu else n_users
        block_users = max(1, min(block_users, n_users))
        hidden = torch.empty(block_users, n_items, item_part.shape[1], **like)
        hidden2 = torch.empty(block_users * n_items, second.out_features, **like)
        for start in range(0, n_users, block_users):
            stop = min(start + block_users, n_users)
            first = hidden[: stop - start]
            torch.add(user_part[start:stop, None, :], item_part, out=first)
            if pair_times is not None:
                first.addcmul_(pair_times[start:stop, :, None], time_weight)
            first.relu_()
            rows = hidden2[: (stop - start) * n_items]
            torch.addmm(second.bias, first.view(len(rows), -1), second.weight.T, out=rows)
            rows.relu_()
            torch.mv(rows, third.weight[0], out=out[start:stop].view(-1))
        return out.add_(third.bias).sigmoid_()


class Nominator(_CatalogModel):
    """Two-tower candidate generator: Linear(ReLU(user rep)) · item rep."""

    def __init__(self, catalog: Catalog):
        super().__init__(catalog)
        self.user_linear = nn.Linear(self.user_rep.dim, self.item_rep.dim)

    def user_vectors(self, users: torch.Tensor) -> torch.Tensor:
        """users: (b,) long → (b, item_dim), the user tower's output."""
        return self.user_linear(F.relu(self.users(users)))

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """users, items: (b,) long → logits (b,)."""
        return (self.user_vectors(users) * self.items(items)).sum(-1)

    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        """users: (b,) long → logits (b, n_items)."""
        return self.user_vectors(users) @ self.items().T


class Ranker(_CatalogModel):
    """Linear([user rep, timestamp]) · item rep."""

    def __init__(self, catalog: Catalog):
        super().__init__(catalog)
        self.context_linear = nn.Linear(self.user_rep.dim + 1, self.item_rep.dim)

    def context_vectors(self, users: torch.Tensor, timestamps: torch.Tensor) -> torch.Tensor:
        """users: (b,) long; timestamps: (b,) → (b, item_dim)."""
        return self.context_linear(torch.cat([self.users(users), timestamps[:, None]], dim=1))

    def forward(
        self, users: torch.Tensor, items: torch.Tensor, timestamps: torch.Tensor
    ) -> torch.Tensor:
        """users, items: (b,) long; timestamps: (b,) → logits (b,)."""
        return (self.context_vectors(users, timestamps) * self.items(items)).sum(-1)

    def score_all(self, users: torch.Tensor, timestamps: torch.Tensor) -> torch.Tensor:
        """users: (b,) long; timestamps: (b,) one per user → logits (b, n_items)."""
        return self.context_vectors(users, timestamps) @ self.items().T
