"""What every chapter of the book starts with: the profile, the device, the shared stage cache.

`setup()` picks the profile from its argument, else `$TWOSTAGE_PROFILE`, else `smoke`. `paper`
(the paper's protocol on ML-1M) is the documented choice on a GPU, e.g. in Colab; `smoke` (a
small synthetic world) runs every chapter in seconds on a CPU and is what the book build and the
notebook regression tests use. All chapters share one `StageCache` (default `$TWOSTAGE_CACHE`,
else the user cache directory), so a stage trained in one chapter is loaded in the next.

Numbers that depend on training differ in their last digits between CPUs and thread counts, so
the chapters do not leave them to nbval's exact comparison: they pass them to
`NotebookSetup.record`, which writes `$TWOSTAGE_RECORD_DIR/<chapter>.json` when that variable is
set, and `twostage.notebook_checks` compares them with committed values within tolerances.
`$TWOSTAGE_WORLD_SEED` (unset: the profile's seeds) moves stages 1–5 to another world; it is how
those tolerances are measured.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import TqdmWarning

# tqdm.auto warns when ipywidgets is absent (as on CI); the text bars it falls back to are fine.
warnings.filterwarnings("ignore", category=TqdmWarning)

from twostage.files import atomic_write_text  # noqa: E402
from twostage.pipeline.cache import StageCache  # noqa: E402
from twostage.pipeline.config import (  # noqa: E402
    ExperimentConfig,
    profile_config,
    with_world_seed,
)
from twostage.pipeline.experiment import Prepared, prepare  # noqa: E402
from twostage.pipeline.training import resolve_device  # noqa: E402

DEFAULT_PROFILE = "smoke"
PROFILE_VARIABLE = "TWOSTAGE_PROFILE"
RECORD_VARIABLE = "TWOSTAGE_RECORD_DIR"
WORLD_SEED_VARIABLE = "TWOSTAGE_WORLD_SEED"


@dataclass(frozen=True)
class NotebookSetup:
    """The settings a chapter runs with, and the trained numbers it has recorded so far."""

    profile: str
    config: ExperimentConfig
    device: torch.device
    cache: StageCache
    chapter: str | None = None
    world_seed: int | None = None
    recorded: dict[str, float] = field(default_factory=dict)

    def describe(self) -> str:
        text = f"profile {self.profile} · device {self.device.type} · dataset {self.config.dataset}"
        return text if self.world_seed is None else f"{text} · world seed {self.world_seed}"

    def record(self, **values: float | int | torch.Tensor) -> None:
        """Keep numbers that depend on training for the chapter's regression check.

        Each value must be a finite real number (a one-element tensor is read as one). With
        `$TWOSTAGE_RECORD_DIR` set, all values recorded so far are written to
        `<dir>/<chapter>.json`; otherwise they stay in `self.recorded`.
        """
        for name, value in values.items():
            number = value.item() if isinstance(value, torch.Tensor) else value
            if isinstance(number, bool) or not isinstance(number, numbers.Real):
                raise TypeError(f"record({name}=…): expected a real number, got {value!r}")
            if not math.isfinite(number):
                raise ValueError(f"record({name}=…): expected a finite number, got {number}")
            self.recorded[name] = float(number)
        directory = os.environ.get(RECORD_VARIABLE)
        if directory:
            if not self.chapter:
                raise ValueError(f"${RECORD_VARIABLE} is set: call setup(chapter=…) to record")
            path = Path(directory) / f"{self.chapter}.json"
            atomic_write_text(path, json.dumps(self.recorded, indent=1, sort_keys=True) + "\n")


def choose_profile(profile: str | None = None) -> str:
    """`profile`, else `$TWOSTAGE_PROFILE`, else `smoke`."""
    return profile or os.environ.get(PROFILE_VARIABLE) or DEFAULT_PROFILE


def plot_defaults() -> None:
    """Small, legible figures with the same look in every chapter."""
    import matplotlib as mpl

    mpl.rcParams.update(
        {
            "figure.figsize": (6.4, 3.6),
            "figure.dpi": 100,
            "axes.grid": True,
            "grid.alpha": 0.3,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "legend.frameon": False,
        }
    )
    try:  # In a kernel, show returned Figures inline (the plots module never calls pyplot.show).
        from IPython import get_ipython

        shell = get_ipython()
    except ImportError:
        shell = None
    if shell is not None:
        shell.run_line_magic("matplotlib", "inline")


def choose_world_seed() -> int | None:
    """`$TWOSTAGE_WORLD_SEED` as a seed, or None when it is unset or empty."""
    text = os.environ.get(WORLD_SEED_VARIABLE, "").strip()
    if not text:
        return None
    if not text.isdigit():
        raise ValueError(f"${WORLD_SEED_VARIABLE}={text!r}: expected a seed ≥ 0 or nothing")
    return int(text)


def setup(chapter: str | None = None, *, profile: str | None = None) -> NotebookSetup:
    """Choose the profile and device, seed torch, set plot defaults and print one summary line.

    `chapter` (the notebook's file name without suffix, e.g. `"03_simulator"`) names the file
    that `NotebookSetup.record` writes.
    """
    name = choose_profile(profile)
    config = profile_config(name)
    world_seed = choose_world_seed()
    if world_seed is not None:
        config = with_world_seed(config, world_seed)
    device = resolve_device(config.device)
    torch.manual_seed(0)
    plot_defaults()
    result = NotebookSetup(
        profile=name,
        config=config,
        device=device,
        cache=StageCache(),
        chapter=chapter,
        world_seed=world_seed,
    )
    print(result.describe())
    return result


_PREPARED: dict[tuple, Prepared] = {}


def prepared(nb: NotebookSetup) -> Prepared:
    """Stages 1–5 for `nb` (trained once, then read from the cache; memoised in this process)."""
    key = (nb.config, str(nb.cache.root), nb.device.type)
    if key not in _PREPARED:
        _PREPARED[key] = prepare(nb.config, cache=nb.cache, verbose=False)
    return _PREPARED[key]
