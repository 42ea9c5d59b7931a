from __future__ import annotations

import dataclasses

import pytest
import torch

from twostage.data import Catalog
from twostage.models import ImpressionSimulator, Nominator, Ranker, column_major


def random_catalog(n_users: int = 7, n_items: int = 11, seed: int = 0) -> Catalog:
    g = torch.Generator().manual_seed(seed)
    user_features = torch.stack(
        [
            torch.arange(1, n_users + 1),
            torch.randint(0, 2, (n_users,), generator=g),
            torch.randint(0, 3, (n_users,), generator=g),
            torch.randint(0, 4, (n_users,), generator=g),
            torch.randint(0, 5, (n_users,), generator=g),
        ],
        dim=1,
    )
    item_features = torch.stack(
        [torch.arange(1, n_items + 1), torch.randint(0, 6, (n_items,), generator=g)], dim=1
    )
    genres = torch.rand(n_items, 18, generator=g)
    genres = genres / genres.sum(1, keepdim=True)
    return Catalog(
        user_features,
        item_features,
        genres,
        user_fields=("gender", "age", "occupation", "zip"),
        user_cardinalities=(2, 3, 4, 5),
        item_fields=("year",),
        item_cardinalities=(6,),
    )


@pytest.fixture
def catalog() -> Catalog:
    return random_catalog()


def test_sizes_come_from_the_catalog(catalog: Catalog):
    model = Nominator(catalog)
    assert model.user_rep.user_embedding.num_embeddings == catalog.n_users + 1
    assert model.item_rep.item_embedding.num_embeddings == catalog.n_items + 1
    assert [e.num_embeddings for e in model.item_rep.feature_embeddings] == [6]
    assert model.item_rep.genre_linear.in_features == catalog.n_genres
    assert [e.num_embeddings for e in model.user_rep.feature_embeddings] == [2, 3, 4, 5]
    assert model.user_rep.dim == 30 and model.item_rep.dim == 20


def test_padding_row_is_zero_and_unused(catalog: Catalog):
    model = Ranker(catalog)
    assert model.item_rep.item_embedding.padding_idx == 0
    assert torch.all(model.item_rep.item_embedding.weight[0] == 0)
    assert torch.all(model.user_rep.user_embedding.weight[0] == 0)
    assert model.item_features[:, 0].min().item() == 1


def test_state_dict_holds_weights_not_the_catalog(catalog: Catalog):
    keys = Nominator(catalog).state_dict().keys()
    assert not any("features" in k or "genres" in k.split(".")[-1] for k in keys)


@pytest.mark.parametrize("model_class", [ImpressionSimulator, Nominator, Ranker])
def test_the_loaders_genre_layout_does_not_move_a_score(model_class):
    # A row-major copy of the genres changed the product's last bits (commit 606abef did so
    # for every run); a model lays them out itself, so either layout gives the same bits.
    by_rows = random_catalog(n_items=3883)
    by_columns = dataclasses.replace(by_rows, item_genres=column_major(by_rows.item_genres))
    assert by_rows.item_genres.is_contiguous() and not by_columns.item_genres.is_contiguous()
    models = []
    for catalog in (by_rows, by_columns):
        torch.manual_seed(0)
        models.append(model_class(catalog))
        assert models[-1].item_genres.stride() == (1, 3883)
        assert models[-1].item_genres.data_ptr() != catalog.item_genres.data_ptr()
    with torch.no_grad():
        assert torch.equal(models[0].items(), models[1].items())


@pytest.mark.parametrize("model_class", [ImpressionSimulator, Nominator, Ranker])
def test_pairwise_and_all_item_scores_agree(model_class, catalog: Catalog):
    torch.manual_seed(0)
    model = model_class(catalog)
    users = torch.tensor([0, 3, 6, 3])
    times = torch.tensor([0.1, 0.5, 0.9, 0.2])
    extra = () if model_class is Nominator else (times,)
    all_scores = model.score_all(users, *extra)
    assert all_scores.shape == (4, catalog.n_items)
    items = torch.arange(catalog.n_items)
    for row, user in enumerate(users):
        pair_extra = () if model_class is Nominator else (times[row].repeat(catalog.n_items),)
        pairwise = model(user.repeat(catalog.n_items), items, *pair_extra)
        torch.testing.assert_close(pairwise, all_scores[row], atol=1e-5, rtol=1e-5)


def test_simulator_accepts_one_timestamp_per_pair(catalog: Catalog):
    model = ImpressionSimulator(catalog)
    users = torch.tensor([1, 2])
    times = torch.rand(2, catalog.n_items)
    scores = model.score_all(users, times)
    items = torch.arange(catalog.n_items)
    torch.testing.assert_close(
        model(users[1].repeat(catalog.n_items), items, times[1]), scores[1], atol=1e-5, rtol=1e-5
    )


@pytest.mark.parametrize("per_pair", [True, False], ids=["pair times", "user times"])
def test_blocked_probabilities_are_the_plain_forwards(per_pair: bool):
    catalog = random_catalog(n_users=9, n_items=13)
    torch.manual_seed(0)
    model = ImpressionSimulator(catalog)
    with torch.no_grad():
        model.rest[3].weight.mul_(30)  # a wide spread of probabilities, as a trained simulator
    g = torch.Generator().manual_seed(1)
    users = torch.tensor([4, 0, 8, 8, 2, 5, 1])
    times = torch.rand(7, 13, generator=g) if per_pair else torch.rand(7, generator=g)
    pair_times = times if per_pair else times[:, None].expand(-1, 13)
    with torch.no_grad():
        plain = torch.sigmoid(
            model(users.repeat_interleave(13), torch.arange(13).repeat(7), pair_times.reshape(-1))
        ).view(7, 13)
    assert plain.std() > 0.02
    parts = model.first_layer_parts(users)
    # blocks of one user, of some users with a ragged last block, of all users
    blocked = [
        model.probabilities_from_parts(*parts, times, block_users=size) for size in (1, 3, 7)
    ]
    for result in blocked:
        torch.testing.assert_close(result, plain, atol=1e-6, rtol=0)
    out = torch.full((7, 13), float("nan"))
    assert model.probabilities_all(users, times, out=out) is out
    torch.testing.assert_close(out, plain, atol=1e-6, rtol=0)


def test_blocked_probabilities_refuse_an_out_they_cannot_fill(catalog: Catalog):
    model = ImpressionSimulator(catalog)
    users, times = torch.arange(3), torch.rand(3)
    with pytest.raises(ValueError, match="contiguous"):
        model.probabilities_all(users, times, out=torch.empty(catalog.n_items, 3).T)
    with pytest.raises(ValueError, match="contiguous"):
        model.probabilities_all(users, times, out=torch.empty(2, catalog.n_items))


@pytest.mark.parametrize("model_class", [ImpressionSimulator, Nominator, Ranker])
def test_gradients_reach_every_representation(model_class, catalog: Catalog):
    model = model_class(catalog)
    users = torch.arange(catalog.n_users)
    items = torch.arange(catalog.n_users) % catalog.n_items
    extra = () if model_class is Nominator else (torch.rand(catalog.n_users),)
    model(users, items, *extra).sum().backward()
    assert model.user_rep.user_embedding.weight.grad[1:].abs().sum() > 0
    assert model.item_rep.item_embedding.weight.grad.abs().sum() > 0
    assert model.item_rep.genre_linear.weight.grad.abs().sum() > 0
    assert model.user_rep.user_embedding.weight.grad[0].abs().sum() == 0  # padding row


def test_models_move_with_their_catalog(catalog: Catalog):
    model = Nominator(catalog).to(torch.float64)
    assert model.item_genres.dtype == torch.float64
    assert model.score_all(torch.tensor([0])).dtype == torch.float64


def test_a_catalog_with_other_side_features_builds_one_embedding_each():
    """Two user features (not ML's four), three item features and no genres: no code changes."""
    g = torch.Generator().manual_seed(1)
    users = torch.stack([torch.arange(1, 6), torch.randint(0, 3, (5,), generator=g),
                         torch.randint(0, 7, (5,), generator=g)], dim=1)  # fmt: skip
    items = torch.stack([torch.arange(1, 9)] + [torch.randint(0, 4, (8,), generator=g)] * 3, 1)
    catalog = Catalog(users, items, torch.zeros(8, 0), ("region", "device"), (3, 7),
                      ("brand", "shop", "colour"), (4, 4, 4))  # fmt: skip
    model = Ranker(catalog)
    assert [e.num_embeddings for e in model.user_rep.feature_embeddings] == [3, 7]
    assert len(model.item_rep.feature_embeddings) == 3 and model.item_rep.genre_linear is None
    assert model.user_rep.dim == 20 and model.item_rep.dim == 25
    scores = model.score_all(torch.arange(5), torch.rand(5, generator=g))
    assert scores.shape == (5, 8) and torch.isfinite(scores).all()
    sizes = {"users": 5, "items": 8, "regions": 3, "devices": 7, "brands": 4, "shops": 4}
    assert catalog.cardinalities() == {**sizes, "colours": 4, "genres": 0}


def test_a_catalog_refuses_features_that_do_not_match_their_fields():
    with pytest.raises(ValueError, match="user features"):
        Catalog(torch.zeros(3, 3, dtype=torch.long), torch.zeros(2, 2, dtype=torch.long),
                torch.zeros(2, 1), ("a",), (2,), ("b",), (2,))  # fmt: skip
