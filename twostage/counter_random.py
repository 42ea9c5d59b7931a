"""Random numbers as a function of a counter: the same (seed, stream, counter) always gives the
same number, whatever else is drawn, in whatever order or block size.

A world too large to hold (10^11 user × item pairs) draws each pair's impression time when a pair
is needed; a stateful generator would make a pair's time depend on which pairs came before it.
Here a pair's numbers are a hash of (seed, stream, user · n_items + item): SplitMix64's
finaliser, which passes BigCrush as a counter-based generator (Steele, Lea & Flood 2014).
"""

from __future__ import annotations

import numpy as np
import torch

GOLDEN = np.uint64(0x9E3779B97F4A7C15)
MIX1, MIX2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
TO_UNIT = 2.0**-53  # 53 random bits → a double in [0, 1)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's output function of uint64 counters: (n,) uint64 → (n,) uint64."""
    with np.errstate(over="ignore"):  # uint64 arithmetic wraps modulo 2^64, as intended
        z = x + GOLDEN
        z = (z ^ (z >> np.uint64(30))) * MIX1
        z = (z ^ (z >> np.uint64(27))) * MIX2
        return z ^ (z >> np.uint64(31))


def _key(seed: int, stream: int) -> np.uint64:
    """A 64-bit key for (seed, stream): the hash of the pair, so nearby seeds are unrelated."""
    if seed < 0 or stream < 0:
        raise ValueError(f"seed and stream must be non-negative, got {seed} and {stream}")
    return splitmix64(np.array([(seed << 8) + stream], dtype=np.uint64))[0]


def uniforms(counters: np.ndarray, seed: int, stream: int) -> np.ndarray:
    """(n,) non-negative integer counters → (n,) float64 in [0, 1), independent across
    counters, seeds and streams (0 ≤ stream < 256)."""
    if not 0 <= stream < 256:
        raise ValueError(f"stream must lie in [0, 256), got {stream}")
    bits = splitmix64(np.asarray(counters, dtype=np.uint64) ^ _key(seed, stream))
    return (bits >> np.uint64(11)).astype(np.float64) * TO_UNIT


def pair_normals(
    users: torch.Tensor, items: torch.Tensor, n_items: int, seed: int, stream: int = 0
) -> torch.Tensor:
    """Standard normals of (user, item) pairs: users, items (n,) long → (n,) float64.

    Box–Muller from two uniforms of the pair's counter user · n_items + item (streams `stream`
    and `stream + 1`); the same pair always gets the same number.
    """
    counters = users.cpu().numpy().astype(np.uint64) * np.uint64(n_items)
    counters += items.cpu().numpy().astype(np.uint64)
    u1 = uniforms(counters, seed, stream)
    u2 = uniforms(counters, seed, stream + 1)
    radius = np.sqrt(-2.0 * np.log1p(-u1))  # 1 − u1 ∈ (0, 1]: never log(0)
    return torch.from_numpy(radius * np.cos(2.0 * np.pi * u2))
