"""The one training loop (`fit`) and `load_model`."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from twostage.errors import NumericsError
from twostage.pipeline.training import (
    LazyAdagrad,
    adagrad,
    batches,
    fit,
    id_tables,
    load_model,
    seeded,
)

SCHEDULE = SimpleNamespace(epochs=3, batch_size=4, lr=0.1, weight_decay=1e-4)
X = torch.randn(10, 3, generator=torch.Generator().manual_seed(0))
Y = X @ torch.tensor([1.0, -2.0, 0.5]) + 0.3


def squared_error(model: nn.Module):
    return lambda idx: ((model(X[idx]).squeeze(1) - Y[idx]) ** 2).mean()


class EmbeddingModel(nn.Module):
    """Several parameters of several shapes, an embedding among them (its dense gradient)."""

    def __init__(self):
        super().__init__()
        self.rows = nn.Embedding(10, 4)
        self.linear = nn.Linear(3, 4)
        self.out = nn.Linear(4, 1, bias=False)

    def forward(self, x: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor:
        idx = torch.arange(len(x)) if idx is None else idx
        return self.out(torch.relu(self.linear(x) + self.rows(idx % 10)))


@pytest.mark.parametrize("make", [lambda: nn.Linear(3, 1), EmbeddingModel])
def test_fit_is_the_plain_loop(make):
    """`fit` steps one AdaGrad over all parameters as one flat tensor: the same steps, to the
    bit, as torch's AdaGrad over the separate parameters."""
    torch.manual_seed(0)
    plain = make()
    torch.manual_seed(0)
    fitted_model = make()
    optimizer, generator, losses = adagrad(plain, 0.1, 1e-4), seeded(5), []
    for _ in range(SCHEDULE.epochs):
        total = 0.0
        for idx in batches(10, 4, shuffle=True, generator=generator, drop_last=True):
            loss = squared_error(plain)(idx)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item()
        losses.append(total / 2)
    fitted = fit(fitted_model, squared_error(fitted_model), SCHEDULE, n_rows=10,
                 generator=seeded(5), shuffle=True, drop_last=True, stage="test")  # fmt: skip
    assert fitted.steps == 3 * 2 and fitted.epoch_losses == losses
    for a, b in zip(plain.parameters(), fitted_model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_after_step_ends_the_epoch_and_after_epoch_ends_training():
    model = nn.Linear(3, 1)
    seen_steps, seen_epochs = [], []

    def after_step(step: int) -> bool:
        seen_steps.append(step)
        return step % 2 == 0  # every second step ends its epoch

    def after_epoch(epoch: int) -> bool:
        seen_epochs.append(epoch)
        return epoch == 1

    fitted = fit(model, squared_error(model), SCHEDULE, n_rows=10, generator=seeded(0),
                 shuffle=False, drop_last=False, stage="test", after_step=after_step,
                 after_epoch=after_epoch)  # fmt: skip
    assert seen_steps == [1, 2, 3, 4] and seen_epochs == [0, 1] and fitted.steps == 4


def test_a_non_finite_loss_or_a_numerics_error_names_the_stage_epoch_and_step():
    model = nn.Linear(3, 1)
    order = {"n_rows": 10, "generator": seeded(0), "shuffle": False, "drop_last": False}
    nan = torch.tensor(float("nan"), requires_grad=True)
    with pytest.raises(NumericsError, match="ranker: the loss became nan at epoch 0, step 0"):
        fit(model, lambda idx: nan, SCHEDULE, stage="ranker", **order)

    def bad_row(idx):
        raise NumericsError("row 3 has propensity 0")

    with pytest.raises(NumericsError, match=r"^2-IPS seed 1, epoch 0, step 0: row 3"):
        fit(model, bad_row, SCHEDULE, stage="2-IPS seed 1", **order)


class Tiny(nn.Module):
    def __init__(self, catalog):
        super().__init__()
        self.linear = nn.Linear(catalog, 1)


def test_load_model_rebuilds_the_trained_model_in_evaluation_mode():
    trained = Tiny(3)
    model = load_model(Tiny, 3, trained.state_dict(), torch.device("cpu"))
    assert not model.training
    assert torch.equal(model.linear.weight, trained.linear.weight)


# -- the lazy optimiser (optimizer = "lazy-adagrad") ----------------------------------------------


class Tables(nn.Module):
    """An id table as the models name it, and a dense layer beside it."""

    def __init__(self):
        super().__init__()
        self.item_embedding = nn.Embedding(20, 3, padding_idx=0)
        self.linear = nn.Linear(3, 1)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.linear(self.item_embedding(idx)).squeeze(1)


def test_lazy_adagrad_steps_the_touched_rows_as_adagrad_and_leaves_the_rest() -> None:
    """Three steps that look up rows 2, 5 (twice) and 7: those rows follow torch's AdaGrad on
    their summed gradients, weight decay included; the other rows do not move."""
    torch.manual_seed(0)
    model = Tables()
    before = model.item_embedding.weight.detach().clone()
    lazy = LazyAdagrad(id_tables(model), lr=0.1, weight_decay=0.5)
    rows, touched = torch.tensor([2, 5, 5, 7]), torch.tensor([2, 5, 7])
    reference = nn.Parameter(before[touched].clone())
    optimizer = torch.optim.Adagrad([reference], lr=0.1, weight_decay=0.5)
    for _ in range(3):
        (model(rows) ** 2).sum().backward()
        grad = model.item_embedding.weight.grad
        assert grad.is_sparse
        reference.grad = grad.to_dense()[touched]
        optimizer.step()
        lazy.step()
        assert model.item_embedding.weight.grad is None
        model.linear.zero_grad()
    weight = model.item_embedding.weight.detach()
    torch.testing.assert_close(weight[touched], reference.detach(), rtol=1e-6, atol=1e-7)
    untouched = torch.ones(20, dtype=torch.bool)
    untouched[touched] = False
    assert torch.equal(weight[untouched], before[untouched])


def test_lazy_adagrad_with_a_dense_gradient_is_torchs_adagrad() -> None:
    torch.manual_seed(0)
    model = Tables()
    reference = nn.Parameter(model.item_embedding.weight.detach().clone())
    lazy = LazyAdagrad(id_tables(model), lr=0.1, weight_decay=0.01)
    optimizer = torch.optim.Adagrad([reference], lr=0.1, weight_decay=0.01)
    for _ in range(3):
        weight = model.item_embedding.weight
        (weight[1:] ** 2).sum().backward()  # the whole table, as the full softmax uses it
        reference.grad = 2 * reference.detach() * (torch.arange(20) > 0)[:, None]
        lazy.step()
        optimizer.step()
        torch.testing.assert_close(weight.detach(), reference.detach(), rtol=1e-6, atol=1e-7)


def test_fit_with_the_lazy_optimiser_leaves_rows_no_batch_looked_up() -> None:
    torch.manual_seed(0)
    model = Tables()
    before = model.item_embedding.weight.detach().clone()
    idx = torch.tensor([1, 3, 4, 9, 11, 12])
    target = torch.randn(6, generator=torch.Generator().manual_seed(1))
    schedule = SimpleNamespace(**vars(SCHEDULE), optimizer="lazy-adagrad")
    linear_before = model.linear.weight.detach().clone()
    fit(model, lambda b: ((model(idx[b]) - target[b]) ** 2).mean(), schedule, n_rows=6,
        generator=seeded(0), shuffle=True, drop_last=False, stage="test")  # fmt: skip
    weight = model.item_embedding.weight.detach()
    looked_up = torch.zeros(20, dtype=torch.bool)
    looked_up[idx] = True
    assert torch.equal(weight[~looked_up], before[~looked_up])
    assert not torch.equal(weight[looked_up], before[looked_up])
    assert not torch.equal(model.linear.weight.detach(), linear_before)  # the flat AdaGrad runs
