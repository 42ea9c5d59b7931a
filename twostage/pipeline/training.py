"""Training shared by every stage: one `fit` loop, batches by tensor indexing, AUC, finite checks,
and `load_model` to rebuild a trained model from its state dict."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
from torch import nn

from twostage.data import Catalog
from twostage.errors import NumericsError


def resolve_device(device: str) -> torch.device:
    """`auto` → CUDA when available, else CPU; `cuda` without CUDA is an error."""
    from twostage.errors import ConfigError

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"device {device} was asked for, but this machine has no CUDA device "
            "(use device cpu or auto).",
            "device",
        )
    return torch.device(device)


def batches(
    n: int,
    batch_size: int,
    *,
    shuffle: bool,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
) -> Iterator[torch.Tensor]:
    """Index tensors of each batch over `range(n)`, optionally in a seeded random order."""
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    stop = (n // batch_size) * batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        yield order[start : start + batch_size]


def adagrad(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.Adagrad:
    return torch.optim.Adagrad(model.parameters(), lr=lr, weight_decay=weight_decay)


def flat_parameters(model: nn.Module, exclude: tuple[nn.Parameter, ...] = ()) -> nn.Parameter:
    """Put every parameter of `model` into one flat tensor and its gradient into another.

    Each parameter becomes a view of the returned (n_parameters,) Parameter, and each
    parameter's `.grad` a view of that Parameter's `.grad`, into which backward accumulates.
    AdaGrad is elementwise, so one optimiser over the flat tensor takes the same steps as one
    over the separate parameters, in one pass instead of a dozen small ones per operation (about
    a millisecond a step on the 2-core CPU). Every parameter must receive a gradient each step,
    as in every model here: a parameter left out of a step would get a zero gradient (and
    weight decay) instead of being skipped.
    """
    params = [p for p in model.parameters() if p.requires_grad and not any(p is q for q in exclude)]
    data = torch.cat([p.detach().reshape(-1) for p in params])
    flat = nn.Parameter(data)
    flat.grad = torch.zeros_like(data)
    offset = 0
    for p in params:
        n = p.numel()
        p.data = data[offset : offset + n].view_as(p)
        p.grad = flat.grad[offset : offset + n].view_as(p)
        offset += n
    return flat


def check_finite(loss: torch.Tensor, *, stage: str, epoch: int, step: int) -> None:
    """Stop with a message naming stage, epoch and step instead of training on NaN."""
    if not torch.isfinite(loss).all():
        raise NumericsError(
            f"{stage}: the loss became {loss.item()} at epoch {epoch}, step {step}. "
            "Training stopped rather than continue on non-finite numbers; check the inputs "
            "(propensities, labels) and the learning rate."
        )


def auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """ROC AUC (scikit-learn); NaN when only one class is present."""
    from sklearn.metrics import roc_auc_score

    y = labels.detach().cpu().numpy()
    if y.min() == y.max():
        return float("nan")
    return float(roc_auc_score(y, scores.detach().cpu().float().numpy()))


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


def numpy_rng(seed: int) -> np.random.RandomState:
    """The legacy NumPy generator the paper's code uses, for identical draws."""
    return np.random.RandomState(seed)


def cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of `model`'s state dict (safe to keep while training goes on)."""
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def load_model(
    cls: Callable[..., nn.Module], catalog: Catalog, state: dict, device: torch.device
) -> nn.Module:
    """`cls(catalog)` with the trained `state`, on `device`, in evaluation mode."""
    model = cls(catalog)
    model.load_state_dict(state)
    return model.to(device).eval()


class Schedule(Protocol):
    """What `fit` reads of a stage's settings (every stage config has these fields)."""

    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    optimizer: str  # "adagrad" (the paper's) or "lazy-adagrad" (`LazyAdagrad`)


OPTIMIZERS = ("adagrad", "lazy-adagrad")


def id_tables(model: nn.Module) -> list[nn.Embedding]:
    """The model's id embedding tables — one row per user or per item, the tables that grow with
    the catalogue (`UserRepresentation.user_embedding`, `ItemRepresentation.item_embedding`)."""
    return [
        module
        for name, module in model.named_modules()
        if isinstance(module, nn.Embedding) and name.endswith(("user_embedding", "item_embedding"))
    ]


class LazyAdagrad:
    """AdaGrad with weight decay on the rows of embedding tables that a step touched.

    The paper's AdaGrad (torch's, with weight decay) updates every row of every table at every
    step: a row no batch looked up still decays, and its accumulator still grows. On a million
    items that pass over ~11 million parameters is 40-60 ms a step on the 2-core CPU, most of
    each step. The lazy form — what production recommenders do with sparse embeddings — applies
    the same update, grad + weight_decay · row, only to the rows in the step's sparse gradient,
    and leaves the other rows as they are. It is a different optimiser, a named option
    (`optimizer = "lazy-adagrad"`), never the default. A dense gradient (a table used whole, as
    by the full softmax over every item) updates every row, exactly as torch's AdaGrad.

    tables: the embedding tables (their `sparse` flag is set, so lookups give row-sparse
    gradients); lr, weight_decay, eps: as `torch.optim.Adagrad`.
    """

    def __init__(
        self, tables: list[nn.Embedding], lr: float, weight_decay: float, eps: float = 1e-10
    ) -> None:
        for table in tables:
            table.sparse = True
        self.params = [table.weight for table in tables]
        self.sums = [torch.zeros_like(p) for p in self.params]
        self.lr, self.weight_decay, self.eps = lr, weight_decay, eps

    @torch.no_grad()
    def step(self) -> None:
        """Update the rows each table's gradient touched, then clear the gradients."""
        for param, state in zip(self.params, self.sums, strict=True):
            grad = param.grad
            if grad is None:
                continue
            if grad.is_sparse:
                grad = grad.coalesce()
                rows, values = grad.indices()[0], grad.values()
                values = values.add(param[rows], alpha=self.weight_decay)
                sums = state[rows].addcmul_(values, values, value=1)
                state[rows] = sums
                param[rows] = param[rows].addcdiv_(
                    values, sums.sqrt().add_(self.eps), value=-self.lr
                )
            else:  # every row touched: torch's dense step
                grad = grad.add(param, alpha=self.weight_decay)
                state.addcmul_(grad, grad, value=1)
                param.addcdiv_(grad, state.sqrt().add_(self.eps), value=-self.lr)
            param.grad = None


@dataclass
class Fitted:
    """What `fit` did: optimiser steps taken, and the mean training loss of each epoch."""

    steps: int = 0
    epoch_losses: list[float] = field(default_factory=list)


def fit(
    model: nn.Module,
    batch_loss: Callable[[torch.Tensor], torch.Tensor],
    schedule: Schedule,
    *,
    n_rows: int,
    generator: torch.Generator,
    shuffle: bool,
    drop_last: bool,
    stage: str,
    after_step: Callable[[int], bool] | None = None,
    after_epoch: Callable[[int], bool] | None = None,
) -> Fitted:
    """The training loop of every stage: AdaGrad on `batch_loss` over batches of `range(n_rows)`,
    with the epochs, batch size, learning rate and weight decay of `schedule`.

    `batch_loss(idx)` gets a batch of row indices (CPU, long, shape (batch,)) and returns the
    scalar loss of those rows. `after_step(steps)` runs after each step with the number of steps
    so far and ends the epoch by returning True; `after_epoch(epoch)` runs after each epoch and
    ends training by returning True. A non-finite loss, or a `NumericsError` raised by
    `batch_loss`, stops training with the stage, epoch and step in the message.
    """
    lazy = None
    if getattr(schedule, "optimizer", "adagrad") == "lazy-adagrad":
        tables = id_tables(model)
        lazy = LazyAdagrad(tables, schedule.lr, schedule.weight_decay)
        flat = flat_parameters(model, exclude=tuple(table.weight for table in tables))
    else:
        flat = flat_parameters(model)
    optimizer = torch.optim.Adagrad([flat], lr=schedule.lr, weight_decay=schedule.weight_decay)
    fitted = Fitted()
    for epoch in range(schedule.epochs):
        total, steps_in_epoch = 0.0, 0
        order = batches(
            n_rows, schedule.batch_size, shuffle=shuffle, generator=generator, drop_last=drop_last
        )
        for step, idx in enumerate(order):
            try:
                loss = batch_loss(idx)
            except NumericsError as err:  # name where it happened, not only the batch row
                raise NumericsError(f"{stage}, epoch {epoch}, step {step}: {err}") from err
            check_finite(loss, stage=stage, epoch=epoch, step=step)
            flat.grad.zero_()
            loss.backward()
            optimizer.step()
            if lazy is not None:
                lazy.step()
            total += loss.item()
            steps_in_epoch += 1
            fitted.steps += 1
            if after_step is not None and after_step(fitted.steps):
                break
        fitted.epoch_losses.append(total / max(1, steps_in_epoch))
        if after_epoch is not None and after_epoch(epoch):
            break
    return fitted
