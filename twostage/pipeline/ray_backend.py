"""The (method, seed) runs of an experiment as Ray tasks: on a Ray instance started for the run,
or on an existing cluster (`Runtime.address`).

The unit of a task is the local backend's unit, one candidate-generator run of one world,
method, seed and setting (`experiment.train_run`). The driver builds or loads stages 1–5 as
always and puts their shared `Context` (log, ranker scores, evaluator) into Ray's object store
once; the nodes need no shared file system and no stage cache. Each task pins
`Runtime.threads_per_job()` torch threads and asks Ray for that many CPUs, so a run's numbers
are those of that thread count, whatever node or neighbours it gets. The driver writes each
run's files as its task finishes, so a killed driver loses only the runs in flight and a rerun
resumes like the local backend.

Ray is an optional extra (`pip install -e ".[ray]"`); without it `--backend ray` stops before
any work with a message that says so.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from twostage.errors import ConfigError
from twostage.pipeline.candidates import Context
from twostage.pipeline.config import ExperimentConfig
from twostage.runtime import Runtime, pin_large_blocks

INSTALL = 'pip install -e ".[ray]" (or pip install "ray>=2.9")'


def require_ray() -> Any:
    """The `ray` module, or a ConfigError naming the extra to install."""
    try:
        import ray
    except ImportError:
        raise ConfigError(
            f"--backend ray needs Ray, which is not installed here: {INSTALL}.",
            "runtime.backend",
        ) from None
    return ray


def connect(runtime: Runtime) -> Any:
    """Join the cluster at `runtime.address`, or start a local Ray instance with the run's
    threads as its CPUs; an instance this process already joined is used as it is."""
    ray = require_ray()
    if not ray.is_initialized():
        options: dict[str, Any] = {"log_to_driver": False, "configure_logging": False}
        if runtime.address is None:
            options.update(num_cpus=runtime.resolve_threads()[0], include_dashboard=False)
        else:
            options["address"] = runtime.address
        try:
            ray.init(**options)
        except (ConnectionError, RuntimeError, ValueError) as err:
            where = runtime.address or "a new local instance"
            raise ConfigError(
                f"could not start or join Ray at {where}: {err}", "runtime.address"
            ) from err
    return ray


def _task(context: Context, config: ExperimentConfig, job: tuple[str, int, str], threads: int):
    """One run in a Ray worker, with `threads` torch threads (the local backend's unit)."""
    from twostage.pipeline.experiment import train_run

    torch.set_num_threads(threads)
    if config.world.mode == "on-demand":  # a worker is its own process: pin it as `prepare` does
        pin_large_blocks()
    return train_run(context, config, torch.device("cpu"), job)


def run_jobs(
    context: Context,
    config: ExperimentConfig,
    jobs: list[tuple[str, int, str]],
    runtime: Runtime,
) -> Iterator[tuple[tuple[str, int, str], dict]]:
    """Train `jobs` as Ray tasks on the CPU and yield (job, result) as each finishes (any
    order); the result is `experiment.train_run`'s, with the model state. The caller refuses
    other devices first (`experiment.check_jobs`, as `run_all` does)."""
    ray = connect(runtime)
    threads = runtime.threads_per_job()
    remote = ray.remote(num_cpus=threads, max_retries=0)(_task)
    shared = ray.put(context)
    pending = {remote.remote(shared, config, job, threads): job for job in jobs}
    try:
        while pending:
            finished, _ = ray.wait(list(pending), num_returns=1)
            for ref in finished:
                yield pending.pop(ref), ray.get(ref)
    finally:
        for ref in pending:  # the driver stops (an error, a kill): drop the runs in flight
            ray.cancel(ref, force=True)
