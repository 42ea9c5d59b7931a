"""What every chapter of the book starts with: the profile, the device, the shared stage cache.

`setup()` picks the profile from its argument, else `$TWOSTAGE_PROFILE`, else `smoke`. `paper`
(the paper's protocol on ML-1M) is the documented choice on a GPU, e.g. in Colab; `smoke` (a
small synthetic world) runs every chapter in seconds on a CPU and is what the book build and the
notebook regression tests use. All chapters share one `StageCache` (default `$TWOSTAGE_CACHE`,
else the user cache directory), so a stage trained in one chapter is loaded in the next.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import torch
from tqdm import TqdmWarning

# tqdm.auto warns when ipywidgets is absent (as on CI); the text bars it falls back to are fine.
warnings.filterwarnings("ignore", category=TqdmWarning)

from twostage.pipeline.cache import StageCache  # noqa: E402
from twostage.pipeline.config import ExperimentConfig, profile_config  # noqa: E402
from twostage.pipeline.experiment import Prepared, prepare  # noqa: E402
from twostage.pipeline.training import resolve_device  # noqa: E402

DEFAULT_PROFILE = "smoke"
PROFILE_VARIABLE = "TWOSTAGE_PROFILE"


@dataclass(frozen=True)
class NotebookSetup:
    """The settings a chapter runs with."""

    profile: str
    config: ExperimentConfig
    device: torch.device
    cache: StageCache

    def describe(self) -> str:
        return f"profile {self.profile} · device {self.device.type} · dataset {self.config.dataset}"


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


def setup(profile: str | None = None) -> NotebookSetup:
    """Choose the profile and device, seed torch, set plot defaults and print one summary line."""
    name = choose_profile(profile)
    config = profile_config(name)
    device = resolve_device(config.device)
    torch.manual_seed(0)
    plot_defaults()
    result = NotebookSetup(profile=name, config=config, device=device, cache=StageCache())
    print(result.describe())
    return result


_PREPARED: dict[tuple, Prepared] = {}


def prepared(nb: NotebookSetup) -> Prepared:
    """Stages 1–5 for `nb` (trained once, then read from the cache; memoised in this process)."""
    key = (nb.config, str(nb.cache.root), nb.device.type)
    if key not in _PREPARED:
        _PREPARED[key] = prepare(nb.config, cache=nb.cache, verbose=False)
    return _PREPARED[key]
