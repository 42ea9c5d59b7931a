"""The candidate generator's objectives, registered by name: adding one is one `register` call.

An `Objective` says what the rest of the package needs to know about it: its name on the
command line and in `results.csv` (`"2s"`), its name in tables and figures (`"2-IPS"`), the loss
of a batch, the candidate settings it reads (a sweep over one of them runs only the objectives
that read it), whether it needs the ranker's scores, and whether it is one of the paper's three
(run by default). Config, CLI choices, sweep factors and report labels all derive from
`OBJECTIVES`; `book/examples/unclipped_ips.py` adds one in ten lines.

The losses themselves live in `twostage.losses` and `twostage.losses_topk`; they are imported
when a loss is first computed, so that reading the registry (e.g. for `--help`) stays cheap.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from twostage.errors import ConfigError

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Batch:
    """A batch of logged rewarded impressions, as an objective sees it.

    logits: (B, n_items) — the candidate generator's scores, with gradient
    items: (B,) long — the logged items
    propensities: (B,) — the logging policy's propensities of those items, in (0, 1]
    ranker_logits: (B, n_items) or None — the ranker's scores (only for objectives that need them)
    k: items per user in the bandit log
    log_mass: (B, P) or None — with the sampled softmax (`candidates.softmax = "sampled"`),
    logits and ranker_logits are over a pool of P columns and items are pool columns; log_mass
    says how many catalogue items each column stands for (`twostage.losses`). An objective that
    cannot take a pool says so with `sampled=False`.
    """

    logits: torch.Tensor
    items: torch.Tensor
    propensities: torch.Tensor
    ranker_logits: torch.Tensor | None
    k: int
    log_mass: torch.Tensor | None = None


class Settings(Protocol):
    """The candidate settings objectives read (`pipeline.config.CandidateConfig` has them all)."""

    cap: float
    floor: float
    alpha: float
    n_slates: int
    slate_size: int
    temperature: float
    slate_sampler: str


Loss = Callable[[Batch, Settings, "torch.Generator"], "torch.Tensor"]


@dataclass(frozen=True)
class Objective:
    """One objective of the candidate generator."""

    name: str  # on the command line and in results.csv
    display_name: str  # in tables and figures
    loss: Loss  # (batch, settings, generator) → () scalar loss
    settings: tuple[str, ...] = ()  # the CandidateConfig fields the loss reads
    needs_ranker: bool = False  # Batch.ranker_logits must be given
    paper: bool = False  # one of the paper's methods, run by default
    sampled: bool = False  # its loss takes a pool (Batch.log_mass): the sampled softmax


OBJECTIVES: dict[str, Objective] = {}  # in registration order: the order of tables and figures


def register(objective: Objective) -> Objective:
    """Add `objective` to `OBJECTIVES`; a name may be registered once."""
    if objective.name in OBJECTIVES:
        raise ConfigError(f"an objective named {objective.name!r} is registered already")
    OBJECTIVES[objective.name] = objective
    return objective


def get(name: str) -> Objective:
    if name not in OBJECTIVES:
        raise ConfigError(
            f"Unknown method {name!r}: expected one of {', '.join(OBJECTIVES)}.", "methods"
        )
    return OBJECTIVES[name]


def paper_methods() -> tuple[str, ...]:
    """The paper's objectives, in registration order: what `reproduce` runs by default."""
    return tuple(name for name, objective in OBJECTIVES.items() if objective.paper)


def reading(setting: str) -> tuple[str, ...]:
    """The objectives whose loss reads the candidate setting `setting` (e.g. `alpha` → 2-IPS)."""
    return tuple(name for name, objective in OBJECTIVES.items() if setting in objective.settings)


def _cross_entropy(batch: Batch, settings: Settings, generator: torch.Generator) -> torch.Tensor:
    from twostage.losses import cross_entropy_loss

    return cross_entropy_loss(batch.logits, batch.items, batch.log_mass)


def _one_stage_ips(batch: Batch, settings: Settings, generator: torch.Generator) -> torch.Tensor:
    from twostage.losses import ips_loss

    return ips_loss(
        batch.logits,
        batch.items,
        batch.propensities,
        cap=settings.cap,
        floor=settings.floor,
        log_mass=batch.log_mass,
    )


def _two_stage_ips(batch: Batch, settings: Settings, generator: torch.Generator) -> torch.Tensor:
    from twostage.losses import two_stage_ips_loss

    return two_stage_ips_loss(
        batch.logits,
        batch.items,
        batch.propensities,
        batch.ranker_logits,
        alpha=settings.alpha,
        n_slates=settings.n_slates,
        slate_size=settings.slate_size,
        temperature=settings.temperature,
        cap=settings.cap,
        floor=settings.floor,
        generator=generator,
        log_mass=batch.log_mass,
        slate_sampler=settings.slate_sampler,
    )


def _top_k_ips(batch: Batch, settings: Settings, generator: torch.Generator) -> torch.Tensor:
    from twostage.losses_topk import topk_ips_loss

    return topk_ips_loss(
        batch.logits,
        batch.items,
        batch.propensities,
        k=batch.k,
        cap=settings.cap,
        floor=settings.floor,
    )


CLIPPING = ("cap", "floor")
register(Objective("ce", "Cross-entropy", _cross_entropy, paper=True, sampled=True))
register(Objective("ips", "1-IPS", _one_stage_ips, CLIPPING, paper=True, sampled=True))
register(
    Objective(
        "2s",
        "2-IPS",
        _two_stage_ips,
        ("alpha", "n_slates", "slate_size", "temperature", "slate_sampler", *CLIPPING),
        needs_ranker=True,
        paper=True,
        sampled=True,
    )
)
register(Objective("ips-topk", "Top-K IPS", _top_k_ips, CLIPPING))
