"""What the dense and the on-demand worlds share: the users' timestamp moments, whether the
paper's cut applies, and the room for the logging policy's pairs."""

from __future__ import annotations

import numpy as np

from twostage.data import MovieLens
from twostage.errors import ConfigError


def is_paper_ml1m(data: MovieLens) -> bool:
    """True for the real ML-1M (the only data the paper's cut was chosen for)."""
    return (
        not data.synthetic
        and data.layout == "ml-1m"
        and (data.n_users, data.n_items) == (6040, 3883)
    )


def user_timestamp_moments(data: MovieLens) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (population) standard deviation of each user's normalised rating timestamps."""
    n = data.n_users
    users = data.users.numpy()
    stamps = data.timestamps.numpy().astype(np.float64)
    counts = np.bincount(users, minlength=n).astype(np.float64)
    sums = np.bincount(users, weights=stamps, minlength=n)
    squares = np.bincount(users, weights=stamps**2, minlength=n)
    safe = np.maximum(counts, 1)
    mean = sums / safe
    std = np.sqrt(np.maximum(squares / safe - mean**2, 0.0))
    # A user without ratings (possible in user-supplied data) gets the file's overall moments.
    mean[counts == 0], std[counts == 0] = stamps.mean(), stamps.std()
    return mean, std


def check_policy_pairs(n: int, n_pairs: int) -> None:
    """Refuse a logging policy that needs more distinct pairs (n_train + n_val = n) than the
    world's n_pairs."""
    if n > n_pairs:
        raise ConfigError(
            f"The logging policy needs n_train + n_val = {n} distinct pairs, but the world has "
            f"only {n_pairs:,}; use a larger dataset or smaller sizes."
        )
