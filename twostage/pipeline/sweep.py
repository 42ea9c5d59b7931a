"""Ablations: one factor at a time around the paper's settings, reusing cached stages and runs.

`twostage sweep --grid alpha=0,1e-3,1e-1 --grid weight_decay=0,1e-4 …` runs, for every value of
every factor, the methods that factor affects over the chosen seeds. Each cell is an ordinary
`reproduce`-style output folder (`OUT/cells/<factor>=<value>/`), so it resumes like one; the
stages 1–5 it needs come from the shared stage cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from twostage import objectives, plots
from twostage.errors import ConfigError
from twostage.pipeline.cache import StageCache, atomic_write_text
from twostage.pipeline.config import (
    ExperimentConfig,
    validate,
    with_overrides,
    with_world_seed,
)
from twostage.pipeline.training import resolve_device
from twostage.results import summary_table
from twostage.runtime import Runtime


@dataclass(frozen=True)
class Factor:
    """A sweepable setting: where it lives in the config and its type."""

    stage: str
    field: str
    kind: type

    @property
    def methods(self) -> tuple[str, ...]:
        """The objectives this factor affects (those whose loss reads it, else the paper's)."""
        readers = objectives.reading(self.field) if self.stage == "candidates" else ()
        return readers or objectives.paper_methods()


FACTORS: dict[str, Factor] = {
    "alpha": Factor("candidates", "alpha", float),
    "slate_size": Factor("candidates", "slate_size", int),
    "n_slates": Factor("candidates", "n_slates", int),
    "temperature": Factor("candidates", "temperature", float),
    "cap": Factor("candidates", "cap", float),
    "eval_k": Factor("candidates", "eval_k", int),
    "epochs": Factor("candidates", "epochs", int),
    "weight_decay": Factor("candidates", "weight_decay", float),
    "ranker_epochs": Factor("ranker", "epochs", int),
    "oracle_ranker": Factor("ranker", "oracle", bool),
    "positive_share": Factor("world", "positive_share", float),
    # Another semi-synthetic world: the seeds of all of stages 1–5 (`with_world_seed`).
    "world_seed": Factor("simulator", "seed", int),
}


def parse_grid(items: list[str]) -> dict[str, list]:
    """`["alpha=0,1e-3", "epochs=20,60"]` → {"alpha": [0.0, 0.001], "epochs": [20, 60]}."""
    grid: dict[str, list] = {}
    for item in items:
        name, _, values = item.partition("=")
        if name not in FACTORS or not values:
            raise ConfigError(
                f"--grid {item!r}: expected NAME=V1,V2,… with NAME one of {', '.join(FACTORS)}."
            )
        kind = FACTORS[name].kind
        try:
            parsed = [_parse(kind, v) for v in values.split(",")]
        except ValueError:
            raise ConfigError(f"--grid {item!r}: values must be {kind.__name__}s.") from None
        grid[name] = parsed
    if not grid:
        raise ConfigError("sweep needs at least one --grid NAME=V1,V2,…")
    return grid


def _parse(kind: type, text: str):
    if kind is bool:
        if text.lower() not in ("true", "false", "1", "0"):
            raise ValueError(text)
        return text.lower() in ("true", "1")
    return kind(text)


def cell_config(base: ExperimentConfig, name: str, value) -> ExperimentConfig:
    factor = FACTORS[name]
    if name == "world_seed":
        return with_world_seed(with_overrides(base, {"methods": factor.methods}), value)
    return with_overrides(base, {"methods": factor.methods, factor.stage: {factor.field: value}})


def checked_cell_config(base: ExperimentConfig, name: str, value) -> ExperimentConfig:
    """`cell_config`, validated; a refusal names the grid cell."""
    config = cell_config(base, name, value)
    try:
        validate(config)
    except ConfigError as err:
        raise ConfigError(f"--grid {name}={value}: {err}") from None
    return config


def sweep(
    base: ExperimentConfig,
    grid: dict[str, list],
    out_dir: str | Path,
    *,
    cache_dir: str | Path | None = None,
    runtime: Runtime | None = None,
    verbose: bool = True,
) -> pd.DataFrame:
    """Run every cell of `grid` and write `OUT/sweep.csv` and one figure per factor."""
    from twostage.pipeline.experiment import check_jobs, prepare, run_all

    out_dir = Path(out_dir)
    cells = [(name, value) for name, values in grid.items() for value in values]
    configs = [checked_cell_config(base, name, value) for name, value in cells]  # before any work
    check_jobs(runtime or Runtime(), resolve_device(base.device))
    cache = StageCache(cache_dir)
    frames = []
    for (name, value), config in tqdm(
        list(zip(cells, configs, strict=True)), desc="sweep cells", disable=not verbose
    ):
        prepared = prepare(config, cache=cache, runtime=runtime, verbose=False)
        cell_dir = out_dir / "cells" / f"{name}={value}"
        results = run_all(prepared, config, cell_dir, verbose=False, runtime=runtime)
        table = summary_table(results)
        table.insert(0, "value", str(value))
        table.insert(0, "factor", name)
        frames.append(table)
    summary = pd.concat(frames, ignore_index=True)
    atomic_write_text(out_dir / "sweep.csv", summary.to_csv(index=False))
    for name in grid:
        figure = plots.factor_figure(summary[summary.factor == name], name)
        plots.save_png(figure, out_dir / "figures" / f"{name}.png", dpi=120, tight=False)
    return summary
