"""The one training loop (`fit`) and `load_model`."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from twostage.errors import NumericsError
from twostage.pipeline.training import adagrad, batches, fit, load_model, seeded

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
