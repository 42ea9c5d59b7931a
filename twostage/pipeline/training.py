"""Small training helpers shared by the stages: batches by tensor indexing, AUC, finite checks."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

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
