"""How a run computes, as opposed to what it computes: settings in no cache key and no result.

`ExperimentConfig` holds everything that changes results (and keys the stage cache); a `Runtime`
holds what only changes speed or memory: torch's CPU threads and how many users are scored per
block. The device is not here: results differ between a CPU and a GPU, so the device type is part
of every stage's key.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from twostage.errors import ConfigError


@dataclass(frozen=True)
class Runtime:
    """Threads and chunk sizes: never part of a cache key, never a reason to recompute."""

    threads: int = 0  # torch CPU threads; 0 keeps torch's default (e.g. $OMP_NUM_THREADS)
    chunk_users: int = 256  # users per block when the world scores every user × item pair

    def __post_init__(self) -> None:
        if self.threads < 0:
            raise ConfigError(
                f"runtime.threads must be ≥ 0, got {self.threads}.", "runtime.threads"
            )
        if self.chunk_users < 1:
            raise ConfigError(
                f"runtime.chunk_users must be ≥ 1, got {self.chunk_users}.", "runtime.chunk_users"
            )

    def apply(self) -> None:
        """Set torch's thread count when one is given."""
        if self.threads > 0:
            torch.set_num_threads(self.threads)
