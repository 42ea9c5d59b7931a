"""The pipeline's public entry points: the whole experiment with its report, or the report alone.

`experiment.run_experiment` computes and writes the data of a run; `twostage.report` turns a
run's files into tables and figures. `reproduce` does both, as `twostage reproduce` does.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from twostage import report, worlds
from twostage.files import atomic_write_text
from twostage.pipeline.cache import StageCache
from twostage.pipeline.config import ExperimentConfig, validate, with_world_seed
from twostage.pipeline.experiment import check_out_dir, run_experiment
from twostage.results import load_results
from twostage.runtime import Runtime

WORLDS_FILE = "worlds.json"  # in a multi-world output folder: its world seeds and command


def reproduce(
    config: ExperimentConfig,
    out_dir: str | Path,
    *,
    cache_dir: str | Path | None = None,
    runtime: Runtime | None = None,
    verbose: bool = True,
    command: str | None = None,
) -> Path:
    """Stages, runs, `results.csv`, `run.json`, then `summary.md`/`summary.csv` and `figures/`.

    `command` (the command line that asked for the run, if any) is recorded in `run.json` and
    named by the summary.
    """
    cache = StageCache(cache_dir)
    out_dir = run_experiment(
        config, out_dir, cache=cache, runtime=runtime, verbose=verbose, command=command
    )
    text = summarize(out_dir)
    if verbose:
        tqdm.write(text)
    return out_dir


def world_dir(out_dir: str | Path, world_seed: int) -> Path:
    return Path(out_dir) / f"world-{world_seed}"


def reproduce_worlds(
    config: ExperimentConfig,
    world_seeds: tuple[int, ...],
    out_dir: str | Path,
    *,
    cache_dir: str | Path | None = None,
    runtime: Runtime | None = None,
    verbose: bool = True,
    command: str | None = None,
) -> Path:
    """`reproduce` once per world seed (stages 1–5 reseeded, `with_world_seed`), each into its
    own resumable folder `OUT/world-<seed>/`, then `OUT/worlds.csv` (every run's best-epoch
    value), `OUT/worlds_summary.csv` (grand means, standard errors between worlds, variance
    components: `twostage.worlds`) and `OUT/summary.md`."""
    out_dir = Path(out_dir)
    configs = {w: with_world_seed(config, w) for w in world_seeds}
    for seed, world_config in configs.items():  # every refusal before any work
        validate(world_config)
        check_out_dir(world_dir(out_dir, seed), world_config)
    for seed, world_config in configs.items():
        if verbose:
            tqdm.write(f"== world seed {seed}")
        reproduce(
            world_config,
            world_dir(out_dir, seed),
            cache_dir=cache_dir,
            runtime=runtime,
            verbose=verbose,
            command=command,
        )
    meta = {"world_seeds": list(world_seeds), "command": command, "config": config.to_dict()}
    atomic_write_text(out_dir / WORLDS_FILE, json.dumps(meta, indent=2))
    text = summarize(out_dir)
    if verbose:
        tqdm.write(text)
    return out_dir


def summarize_worlds(out_dir: str | Path) -> str:
    """(Re)write a multi-world folder's tables and `summary.md` from its worlds' results."""
    out_dir = Path(out_dir)
    meta = json.loads((out_dir / WORLDS_FILE).read_text())
    dirs = [world_dir(out_dir, w) for w in meta["world_seeds"]]
    if all((d / "results.csv").is_file() for d in dirs):
        results = {w: load_results(d) for w, d in zip(meta["world_seeds"], dirs, strict=True)}
        values = worlds.world_values(results)
        dataset = next(iter(results.values()))["dataset"].iloc[0]
    else:  # a committed folder: the runs' values without the per-epoch rows
        values = pd.read_csv(out_dir / "worlds.csv")
        dataset = json.loads((dirs[0] / "run.json").read_text())["dataset"]
    table = worlds.variance_components(values)
    atomic_write_text(out_dir / "worlds.csv", values.to_csv(index=False))
    atomic_write_text(out_dir / "worlds_summary.csv", table.to_csv(index=False))
    command = meta.get("command")
    text = "\n".join(
        [
            f"# Off-policy two-stage recommendation over {len(dirs)} worlds — {dataset}",
            "",
            f"Profile `{meta['config']['profile']}` · command "
            + (f"`{command}`" if command else "not recorded")
            + " · each world's own summary in `world-<seed>/summary.md`.",
            "",
            worlds.format_worlds(values, table, ("Precision@10", "NDCG@10", "reward")),
        ]
    )
    atomic_write_text(out_dir / "summary.md", text)
    return text


def summarize(out_dir: str | Path) -> str:
    """(Re)write a run's summary and figures from its files; return the summary's text. A
    multi-world folder (`reproduce_worlds`) gets its worlds' tables instead."""
    if (Path(out_dir) / WORLDS_FILE).is_file():
        return summarize_worlds(out_dir)
    written = report.write_summary(out_dir)
    report.write_figures(out_dir)
    return written["md"].read_text(encoding="utf-8")  # the text just written, not made again
