"""Settings of every stage, as frozen dataclasses whose defaults are the paper's protocol.

A profile is a set of overrides of these defaults (`PROFILES`), never a second code path.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field, replace
from typing import Any

from twostage.errors import ConfigError
from twostage.objectives import OBJECTIVES, paper_methods, reading

PAPER_CUT = 0.764506  # the paper's probability cut on ML-1M
PROPENSITIES = ("single", "inclusion")
EARLY_STOPS = ("run", "authors")  # the paper's text, the authors' code
RATINGS_ORDERS = ("file", "user")
WORLD_MODES = ("dense", "on-demand")
OPTIMIZERS = ("adagrad", "lazy-adagrad")
SOFTMAXES = ("full", "sampled")
PROPOSALS = ("uniform", "popularity")
HEAD_INDEXES = ("exact", "faiss")
SLATE_SAMPLERS = ("torch", "fused")  # `twostage.losses.SLATE_SAMPLERS`, without importing torch


@dataclass(frozen=True)
class SimulatorConfig:
    """Impression simulator: ratings split 3:1:1 by position (`ratings_order`), BCE, AdaGrad."""

    epochs: int = 4
    batch_size: int = 128
    lr: float = 0.05
    weight_decay: float = 1e-4
    # "adagrad": torch's AdaGrad over every parameter at every step (the paper's).
    # "lazy-adagrad": the id embedding tables updated only in the rows a step touched
    # (`twostage.pipeline.training.LazyAdagrad`), for large catalogues.
    optimizer: str = "adagrad"
    validate_every: int = 500  # steps between validation checks (see early_stop)
    stop_auc: float = 0.735
    # Rows of the validation split the periodic AUC checks use: None → all of it (the paper's
    # protocol); a number → that fixed, seeded random subset, so checks stay cheap on any data.
    val_rows: int | None = None
    # The two rules differ; the default follows the authors' code, which produced the paper's
    # tables (chapter 03 shows both).
    # "run": the paper's text — a check every `validate_every` steps counted across epochs; an
    #   AUC above stop_auc ends training.
    # "authors": the authors' code — steps counted within each epoch, a check every
    #   `validate_every` steps of the epoch; an AUC above stop_auc ends only that epoch.
    early_stop: str = "authors"
    # The 3:1:1 split is positional. "file": the ratings in file order (ML-100K's u.data is in
    # no particular order); "user": stably grouped by user, as ML-1M's ratings.dat ships.
    ratings_order: str = "file"
    seed: int = 0


@dataclass(frozen=True)
class WorldConfig:
    """Semi-synthetic world: sampled impression timestamps, simulator probabilities, a cut."""

    cut: float | None = None  # a probability; None → default rule below
    positive_share: float | None = None  # target share of positive pairs; used when cut is None
    # On data other than ML-1M when neither is given: the package's choice, not the paper's (which
    # gives only the cut); the paper's cut gives 11–14% on ML-100K (results/README.md).
    default_share: float = 0.08
    seed: int = 0
    # "dense": every pair's timestamp, probability and label held in memory (the paper's
    # protocol). "on-demand": for catalogues too large for that (a million items), each pair's
    # timestamp is a counter-based function of (user, item, seed), its label is computed when
    # needed, the cut comes from `cut_sample` random pairs, and only `eval_users` users (the
    # first ones: half validation, half test) are evaluated, from cached bit-packed truths
    # (`twostage.pipeline.ondemand`).
    mode: str = "dense"
    eval_users: int = 4000
    cut_sample: int = 1_000_000


@dataclass(frozen=True)
class LoggingPolicyConfig:
    """Two-tower logging policy trained with BCE on random pairs of the world."""

    n_train: int = 10_000
    n_val: int = 10_000
    epochs: int = 40
    batch_size: int = 128
    lr: float = 0.05
    weight_decay: float = 1e-4
    # "adagrad": torch's AdaGrad over every parameter at every step (the paper's).
    # "lazy-adagrad": the id embedding tables updated only in the rows a step touched
    # (`twostage.pipeline.training.LazyAdagrad`), for large catalogues.
    optimizer: str = "adagrad"
    seed: int = 0


@dataclass(frozen=True)
class BanditConfig:
    """Bandit log: K distinct items per user drawn from the logging policy's softmax."""

    k: int = 5
    seed: int = 0
    # "single": the first draw's softmax probability, as the paper's log. Beyond the paper,
    # "inclusion": P(item among the K shown), by Monte Carlo with `inclusion_samples` sets per user.
    propensity: str = "single"
    inclusion_samples: int = 2000


@dataclass(frozen=True)
class RankerConfig:
    """Ranker trained with BCE on every logged impression (batches in log order, as the paper)."""

    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.05
    weight_decay: float = 1e-4
    # "adagrad": torch's AdaGrad over every parameter at every step (the paper's).
    # "lazy-adagrad": the id embedding tables updated only in the rows a step touched
    # (`twostage.pipeline.training.LazyAdagrad`), for large catalogues.
    optimizer: str = "adagrad"
    shuffle: bool = False
    seed: int = 0
    # Beyond the paper: re-rank with the simulator's own truth (logit of its probability at the
    # user's mean timestamp) instead of the trained ranker — an upper bound for the second stage.
    oracle: bool = False


@dataclass(frozen=True)
class CandidateConfig:
    """Candidate generators trained on the logged positives, evaluated after every epoch."""

    epochs: int = 20
    batch_size: int = 128
    lr: float = 0.05
    weight_decay: float = 1e-4
    # "adagrad": torch's AdaGrad over every parameter at every step (the paper's).
    # "lazy-adagrad": the id embedding tables updated only in the rows a step touched
    # (`twostage.pipeline.training.LazyAdagrad`), for large catalogues.
    optimizer: str = "adagrad"
    cap: float = 10.0
    floor: float = 0.01
    alpha: float = 1e-3
    n_slates: int = 100
    slate_size: int = 30
    temperature: float = math.e
    # How 2-IPS draws its candidate sets. "torch" (the default): from torch's generator, then
    # batched bookkeeping. "fused": the same distribution from a counter hash, the sets' q
    # accumulated in the same compiled pass (`twostage.fused_slates`; CPU and numba; another
    # random stream, so other numbers than the default's, as another seed would give).
    slate_sampler: str = "torch"
    eval_k: int = 30
    select_metric: str = "Precision@10"
    shuffle: bool = False
    # "full": the softmax over every item (the paper's). "sampled", for large catalogues: each
    # step scores a pool (`twostage.pipeline.pools`) — the logged item, the `head_size` items the
    # generator scores highest (found with `head_index`, rebuilt every epoch) and `n_negatives`
    # tail items drawn from `proposal`, weighted by the log-Q correction.
    softmax: str = "full"
    head_size: int = 100
    n_negatives: int = 1000
    proposal: str = "uniform"  # or "popularity": the logged positives' counts, plus one
    head_index: str = "exact"  # or "faiss": an inverted-file index (faiss-cpu), `nprobe` lists
    nprobe: int = 16


@dataclass(frozen=True)
class ExperimentConfig:
    """Everything one `twostage reproduce` run needs."""

    dataset: str = "ml-1m"
    profile: str = "paper"
    methods: tuple[str, ...] = paper_methods()  # the registered objectives with paper=True
    seeds: tuple[int, ...] = tuple(range(20))
    device: str = "auto"  # its type is part of every stage's cache key: results differ by device
    simulator: SimulatorConfig = field(default_factory=SimulatorConfig)
    world: WorldConfig = field(default_factory=WorldConfig)
    logging_policy: LoggingPolicyConfig = field(default_factory=LoggingPolicyConfig)
    bandit: BanditConfig = field(default_factory=BanditConfig)
    ranker: RankerConfig = field(default_factory=RankerConfig)
    candidates: CandidateConfig = field(default_factory=CandidateConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


PROFILES: dict[str, dict[str, Any]] = {
    "paper": {},
    "smoke": {
        "dataset": "synthetic-small",
        "seeds": (0, 1, 2),
        # 20,000 validation rows: all of them on synthetic-small (2,400) and ML-100K (20,000).
        "simulator": {"epochs": 3, "validate_every": 50, "val_rows": 20_000},
        "logging_policy": {"n_train": 3000, "n_val": 2000, "epochs": 8},
        "ranker": {"epochs": 4},
        "candidates": {"epochs": 6, "n_slates": 20, "slate_size": 10},
    },
}


def with_overrides(config: ExperimentConfig, overrides: dict[str, Any]) -> ExperimentConfig:
    """A copy of `config` with top-level fields or `{stage: {field: value}}` replaced."""
    changes: dict[str, Any] = {}
    for key, value in overrides.items():
        current = getattr(config, key, None)
        if key not in {f.name for f in dataclasses.fields(config)}:
            raise ConfigError(f"Unknown setting {key!r}.")
        if dataclasses.is_dataclass(current) and isinstance(value, dict):
            names = {f.name for f in dataclasses.fields(current)}
            unknown = set(value) - names
            if unknown:
                raise ConfigError(f"Unknown setting(s) {sorted(unknown)} for stage {key!r}.")
            changes[key] = replace(current, **value)
        else:
            changes[key] = value
    return replace(config, **changes)


WORLD_STAGES = ("simulator", "world", "logging_policy", "bandit", "ranker")


def with_world_seed(config: ExperimentConfig, seed: int) -> ExperimentConfig:
    """A copy of `config` whose stages 1–5 (simulator, world, logging policy, bandit log, ranker)
    all use `seed`: another semi-synthetic world, with the candidate-generator seeds unchanged."""
    if seed < 0:
        raise ConfigError(f"world seed must be ≥ 0, got {seed}.", "world_seed")
    return with_overrides(config, {stage: {"seed": seed} for stage in WORLD_STAGES})


def config_from_dict(values: dict[str, Any]) -> ExperimentConfig:
    """The ExperimentConfig of `ExperimentConfig.to_dict()` output (e.g. `run.json`'s "config").

    Settings missing from `values` (an older run) keep their defaults; unknown ones are refused.
    Runtime settings that older runs kept in their config (`threads`, `world.chunk_users`) are
    dropped: they never changed a result.
    """
    values = dict(values)
    values.pop("threads", None)
    if isinstance(values.get("world"), dict):
        values["world"] = {k: v for k, v in values["world"].items() if k != "chunk_users"}
    for name in ("methods", "seeds"):
        if name in values:
            values[name] = tuple(values[name])
    return with_overrides(ExperimentConfig(), values)


def profile_config(profile: str) -> ExperimentConfig:
    """The defaults with the overrides of `profile` (`paper` or `smoke`)."""
    if profile not in PROFILES:
        raise ConfigError(f"Unknown profile {profile!r}: expected one of {', '.join(PROFILES)}.")
    return with_overrides(ExperimentConfig(profile=profile), PROFILES[profile])


def parse_seeds(text: str) -> tuple[int, ...]:
    """`"20"` → 0..19; `"0-4"` → 0..4; `"1,3,7"` → those seeds."""
    text = text.strip()
    if re.fullmatch(r"\d+", text):
        count = int(text)
        if count < 1:
            raise ConfigError(
                "seeds: a count must be at least 1 (for seed 0 alone, give the range 0-0).",
                "seeds",
            )
        return tuple(range(count))
    match = re.fullmatch(r"(\d+)-(\d+)", text)
    if match:
        start, stop = int(match.group(1)), int(match.group(2))
        if stop < start:
            raise ConfigError(
                f"seeds {text}: the range is empty (expected START-END with START ≤ END).", "seeds"
            )
        return tuple(range(start, stop + 1))
    if re.fullmatch(r"\d+(,\d+)+", text):
        return tuple(dict.fromkeys(int(s) for s in text.split(",")))
    raise ConfigError(
        f"seeds {text!r}: expected a count (20), a range (0-4) or a list (1,3,7).", "seeds"
    )


def parse_methods(text: str | tuple[str, ...]) -> tuple[str, ...]:
    methods = tuple(m.strip() for m in text.split(",")) if isinstance(text, str) else tuple(text)
    unknown = [m for m in methods if m not in OBJECTIVES]
    if unknown or not methods:
        raise ConfigError(
            f"Unknown method(s) {unknown}: expected a comma-separated list of "
            f"{', '.join(OBJECTIVES)}.",
            "methods",
        )
    return methods


def _check_finite(config: ExperimentConfig) -> None:
    """Refuse NaN and ±inf in any numeric setting: comparisons with NaN pass every range check."""
    for stage in dataclasses.fields(config):
        settings = getattr(config, stage.name)
        if not dataclasses.is_dataclass(settings):
            continue
        for item in dataclasses.fields(settings):
            value = getattr(settings, item.name)
            if isinstance(value, float) and not math.isfinite(value):
                name = f"{stage.name}.{item.name}"
                raise ConfigError(f"{name} must be a finite number, got {value}.", name)


def _check_fused_sampler(config: ExperimentConfig) -> None:
    """The fused slate sampler runs on the CPU with numba: refuse it elsewhere, before any work."""
    from twostage import fused_slates
    from twostage.pipeline.training import resolve_device

    where = "candidates.slate_sampler"
    device = resolve_device(config.device)
    if device.type != "cpu":
        raise ConfigError(
            f"{where} 'fused' runs on the CPU only, and this run's device is "
            f"{device}: use device cpu or slate_sampler torch.",
            where,
        )
    if not fused_slates.available(device):
        raise ConfigError(
            f"{where} 'fused' needs numba (pip install numba) and TWOSTAGE_NUMBA not set to 0; "
            "or use slate_sampler torch.",
            where,
        )


def validate(config: ExperimentConfig) -> None:
    """Refuse settings that cannot work, before any work starts."""
    _check_finite(config)
    c = config.candidates
    if c.alpha < 0:
        raise ConfigError(f"candidates.alpha must be ≥ 0, got {c.alpha}.", "candidates.alpha")
    if not 0 < c.floor <= c.cap:
        raise ConfigError(
            "importance-weight clipping needs 0 < candidates.floor ≤ candidates.cap, "
            f"got [{c.floor}, {c.cap}].",
            "candidates.cap",
        )
    if c.temperature <= 0:
        raise ConfigError(
            f"candidates.temperature must be > 0, got {c.temperature}.", "candidates.temperature"
        )
    for name, allowed in (
        ("softmax", SOFTMAXES),
        ("proposal", PROPOSALS),
        ("head_index", HEAD_INDEXES),
        ("slate_sampler", SLATE_SAMPLERS),
    ):
        if getattr(c, name) not in allowed:
            raise ConfigError(
                f"candidates.{name} {getattr(c, name)!r}: expected one of {', '.join(allowed)}.",
                f"candidates.{name}",
            )
    for name in ("head_size", "n_negatives", "nprobe"):
        if getattr(c, name) < (0 if name == "head_size" else 1):
            raise ConfigError(
                f"candidates.{name} must be ≥ {0 if name == 'head_size' else 1}, "
                f"got {getattr(c, name)}.",
                f"candidates.{name}",
            )
    if c.slate_sampler == "fused" and set(config.methods) & set(reading("slate_sampler")):
        _check_fused_sampler(config)
    if c.softmax == "sampled":
        from twostage import objectives

        full_only = [m for m in config.methods if not objectives.get(m).sampled]
        if full_only:
            raise ConfigError(
                f"method(s) {', '.join(full_only)} need the full softmax; drop them or use "
                "candidates.softmax full.",
                "candidates.softmax",
            )
    for name in ("n_slates", "slate_size", "eval_k", "epochs", "batch_size"):
        if getattr(c, name) < 1:
            raise ConfigError(
                f"candidates.{name} must be ≥ 1, got {getattr(c, name)}.", f"candidates.{name}"
            )
    for stage in ("simulator", "logging_policy", "ranker", "candidates"):
        value = getattr(config, stage).optimizer
        if value not in OPTIMIZERS:
            raise ConfigError(
                f"{stage}.optimizer {value!r}: expected one of {', '.join(OPTIMIZERS)}.",
                f"{stage}.optimizer",
            )
    s = config.simulator
    if s.early_stop not in EARLY_STOPS:
        hint = " ('epoch' was renamed 'authors')" if s.early_stop == "epoch" else ""
        raise ConfigError(
            f"simulator.early_stop {s.early_stop!r}: expected one of {', '.join(EARLY_STOPS)}"
            f"{hint}.",
            "simulator.early_stop",
        )
    if s.ratings_order not in RATINGS_ORDERS:
        raise ConfigError(
            f"simulator.ratings_order {s.ratings_order!r}: expected one of "
            f"{', '.join(RATINGS_ORDERS)}.",
            "simulator.ratings_order",
        )
    if s.val_rows is not None and s.val_rows < 1:
        raise ConfigError(
            f"simulator.val_rows must be ≥ 1 (or None: all), got {s.val_rows}.",
            "simulator.val_rows",
        )
    w = config.world
    if w.cut is not None and not 0 < w.cut < 1:
        raise ConfigError(f"world.cut must be a probability in (0, 1), got {w.cut}.", "world.cut")
    if w.positive_share is not None and not 0 < w.positive_share < 1:
        raise ConfigError(
            f"world.positive_share must be in (0, 1), got {w.positive_share}.",
            "world.positive_share",
        )
    if w.cut is not None and w.positive_share is not None:
        raise ConfigError("Give either world.cut or world.positive_share, not both.")
    if w.mode not in WORLD_MODES:
        raise ConfigError(
            f"world.mode {w.mode!r}: expected one of {', '.join(WORLD_MODES)}.", "world.mode"
        )
    for name in ("eval_users", "cut_sample"):
        if getattr(w, name) < 2:
            raise ConfigError(f"world.{name} must be ≥ 2, got {getattr(w, name)}.", f"world.{name}")
    if w.mode == "on-demand":
        if config.ranker.oracle:
            raise ConfigError(
                "ranker.oracle needs the dense world (world.mode dense): the on-demand world "
                "holds no probability matrix to re-rank with.",
                "ranker.oracle",
            )
        if config.bandit.propensity != "single":
            raise ConfigError(
                "bandit.propensity inclusion needs the dense world (world.mode dense).",
                "bandit.propensity",
            )
    b = config.bandit
    if b.propensity not in PROPENSITIES:
        raise ConfigError(
            f"bandit.propensity {b.propensity!r}: expected one of {', '.join(PROPENSITIES)}.",
            "bandit.propensity",
        )
    if b.inclusion_samples < 1:
        raise ConfigError(
            f"bandit.inclusion_samples must be ≥ 1, got {b.inclusion_samples}.",
            "bandit.inclusion_samples",
        )
    parse_methods(config.methods)
    if not config.seeds:
        raise ConfigError("No seeds to run.", "seeds")
    if config.device not in ("auto", "cpu", "cuda") and not config.device.startswith("cuda:"):
        raise ConfigError(f"device {config.device!r}: expected auto, cpu or cuda.", "device")
