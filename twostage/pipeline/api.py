"""The pipeline's public entry points: the whole experiment with its report, or the report alone.

`experiment.run_experiment` computes and writes the data of a run; `twostage.report` turns a
run's files into tables and figures. `reproduce` does both, as `twostage reproduce` does.
"""

from __future__ import annotations

from pathlib import Path

from tqdm.auto import tqdm

from twostage import report
from twostage.pipeline.cache import StageCache
from twostage.pipeline.config import ExperimentConfig
from twostage.pipeline.experiment import run_experiment
from twostage.runtime import Runtime


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


def summarize(out_dir: str | Path) -> str:
    """(Re)write a run's summary and figures from its files; return the summary's text."""
    written = report.write_summary(out_dir)
    report.write_figures(out_dir)
    return written["md"].read_text(encoding="utf-8")  # the text just written, not made again
