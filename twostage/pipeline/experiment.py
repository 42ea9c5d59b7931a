"""The whole experiment: cached stages 1–5, then every (method, seed) run, then the outputs."""

from __future__ import annotations

import dataclasses
import io
import json
import multiprocessing
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

import twostage
from twostage.data import MovieLens, load_movielens
from twostage.errors import ConfigError, NumericsError
from twostage.evaluation import CompactEvaluator, Evaluator
from twostage.models import Ranker
from twostage.pipeline.artifacts import BanditLog, OnDemandWorld, TrainedModel, World
from twostage.pipeline.cache import StageCache, atomic_write_bytes, atomic_write_text, stable_key
from twostage.pipeline.candidates import Context, train_candidate_generator, validation_size
from twostage.pipeline.config import ExperimentConfig, validate
from twostage.pipeline.ondemand import build_ondemand_world, sample_bandit_log_ondemand
from twostage.pipeline.ondemand import logging_policy_pairs as logging_policy_pairs_ondemand
from twostage.pipeline.stages import (
    build_world,
    logging_policy_pairs,
    ranker_scores,
    sample_bandit_log,
    train_logging_policy,
    train_ranker,
    train_simulator,
)
from twostage.pipeline.training import load_model, resolve_device
from twostage.report import config_differences
from twostage.results import RESULT_COLUMNS
from twostage.runtime import Runtime, pin_large_blocks

STAGE_VERSION = 3  # bump when a stage's output changes (2: typed artifacts, 3: state-dict keys)
# Settings added after artifacts were cached, left out of a stage's key while at their default
# (the old behaviour), so that caches and finished runs of older versions stay valid.
KEYED_WHEN_SET = {
    "val_rows": None,
    "ratings_order": "file",
    "mode": "dense",
    "eval_users": 4000,
    "cut_sample": 1_000_000,
    "softmax": "full",
    "head_size": 100,
    "n_negatives": 1000,
    "proposal": "uniform",
    "head_index": "exact",
    "nprobe": 16,
    "optimizer": "adagrad",
    "slate_sampler": "torch",
}


def keyed_settings(settings: Any) -> dict[str, Any]:
    """A stage's settings as its cache key sees them: those of `KEYED_WHEN_SET` left out while
    at their default."""
    return {
        k: v
        for k, v in dataclasses.asdict(settings).items()
        if not (k in KEYED_WHEN_SET and v == KEYED_WHEN_SET[k])
    }


@dataclass
class Prepared:
    """Everything stages 1–5 produced, with their cache keys and timings."""

    data: MovieLens
    device: torch.device
    simulator: TrainedModel
    world: World | OnDemandWorld
    logging_policy: TrainedModel
    log: BanditLog
    ranker: TrainedModel
    context: Context
    keys: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    cached: dict[str, bool] = field(default_factory=dict)


def _say(message: str, verbose: bool) -> None:
    if verbose:
        tqdm.write(message)


def prepare(
    config: ExperimentConfig,
    *,
    cache: StageCache | None = None,
    data: MovieLens | None = None,
    runtime: Runtime | None = None,
    verbose: bool = True,
) -> Prepared:
    """Run (or load from the cache) the simulator, world, logging policy, log and ranker."""
    validate(config)
    runtime = runtime or Runtime()
    runtime.apply()
    if config.world.mode == "on-demand":
        pin_large_blocks()  # catalogue-sized temporaries, block after block (see there)
    device = resolve_device(config.device)
    cache = cache or StageCache()
    data = data or load_movielens(config.dataset)
    keys: dict[str, str] = {}
    timings: dict[str, float] = {}
    cached: dict[str, bool] = {}

    def stage(name: str, settings, parent: str, build):
        keys[name] = stage_key(name, settings, parent, device)
        start = time.perf_counter()
        artifact, was_cached = cache.get_or_build(name, keys[name], build)
        timings[name], cached[name] = time.perf_counter() - start, was_cached
        return artifact

    def simulator_build():
        steps = config.simulator.epochs * -(
            -(data.n_ratings * 3 // 5) // config.simulator.batch_size
        )
        with tqdm(total=steps, desc="simulator", leave=False, disable=not verbose) as bar:
            return train_simulator(data, config.simulator, device, progress=bar)

    simulator = stage("simulator", config.simulator, data.fingerprint, simulator_build)
    info = simulator.info
    _say(
        f"[simulator] {_src(cached, 'simulator')} {timings['simulator']:.1f}s · "
        f"{info['steps']} steps · val AUC {info['val_auc']:.3f} · test AUC {info['test_auc']:.3f}",
        verbose,
    )

    on_demand = config.world.mode == "on-demand"

    def world_build():
        total = min(config.world.eval_users, data.n_users) if on_demand else data.n_users
        with tqdm(total=total, desc="world", unit="user", leave=False, disable=not verbose) as bar:
            if on_demand:
                return build_ondemand_world(
                    data, simulator.state, config.world, device, progress=bar
                )
            return build_world(
                data, simulator.state, config.world, device, runtime.chunk_users, progress=bar
            )

    world = stage("world", config.world, keys["simulator"], world_build)
    flops = world_flops(world, simulator.state)
    if on_demand:
        n_scored = len(world.eval_users) * world.n_items
        scope = f"{world.n_pairs:,} pairs on demand · {n_scored:,} evaluation pairs scored"
    else:
        scope = f"{world.labels.numel():,} pairs"
    rate = ""
    if not cached["world"]:
        rate = f" ({flops / max(timings['world'], 1e-9) / 1e9:.0f} GFLOP/s)"
    _say(
        f"[world] {_src(cached, 'world')} {timings['world']:.1f}s{rate} · {scope} · "
        f"cut {world.cut:.6f} ({world.cut_rule}) · positive share {world.positive_share:.3f}",
        verbose,
    )

    def policy_build():
        if on_demand:
            pairs = logging_policy_pairs_ondemand(
                data.catalog, simulator.state, world, config.logging_policy, device
            )
        else:
            pairs = logging_policy_pairs(world, config.logging_policy)
        return train_logging_policy(data.catalog, pairs, config.logging_policy, device)

    policy = stage("logging_policy", config.logging_policy, keys["world"], policy_build)
    _say(
        f"[logging policy] {_src(cached, 'logging_policy')} {timings['logging_policy']:.1f}s · "
        f"val AUC {policy.info['val_auc']:.3f}",
        verbose,
    )

    def log_build():
        if not on_demand:
            return sample_bandit_log(data.catalog, world, policy.state, config.bandit, device)
        with tqdm(
            total=data.n_users, desc="bandit log", unit="user", leave=False, disable=not verbose
        ) as bar:
            return sample_bandit_log_ondemand(
                data.catalog, simulator.state, world, policy.state, config.bandit, device, bar
            )

    log = stage("bandit_log", config.bandit, keys["logging_policy"], log_build)
    _say(
        f"[bandit log] {_src(cached, 'bandit_log')} {timings['bandit_log']:.1f}s · "
        f"{len(log):,} impressions · {int(log.rewards.sum()):,} positive · "
        f"{log.items.unique().numel():,} distinct items",
        verbose,
    )

    ranker = stage(
        "ranker",
        config.ranker,
        keys["bandit_log"],
        lambda: train_ranker(data.catalog, world, log, config.ranker, device),
    )
    _say(
        f"[ranker] {_src(cached, 'ranker')} {timings['ranker']:.1f}s · "
        f"AUC vs truth {ranker.info['truth_auc']:.3f}",
        verbose,
    )

    start = time.perf_counter()
    context = make_context(data, world, log, ranker, config, device)
    timings["evaluator"] = time.perf_counter() - start
    return Prepared(
        data, device, simulator, world, policy, log, ranker, context, keys, timings, cached
    )


def world_flops(world: World | OnDemandWorld, simulator_state: dict[str, torch.Tensor]) -> int:
    """The floating-point operations of building `world`, 2 FLOPs a multiply-add: each pair's
    multiply-adds after the simulator's first layer (the first layer is a broadcast sum of a
    user part and an item part, computed once per user and per item), over two passes (sampled
    and mean timestamps) of every pair on the dense world, one pass (the mean timestamps) of
    the evaluated users' pairs on the on-demand world."""
    per_pair = sum(simulator_state[k].numel() for k in ("rest.1.weight", "rest.3.weight"))
    if isinstance(world, OnDemandWorld):
        return 2 * len(world.eval_users) * world.n_items * per_pair
    return 2 * 2 * world.labels.numel() * per_pair


def stage_key(name: str, settings: Any, parent: str, device: torch.device) -> str:
    """The cache key of stage `name` with its settings (a dataclass), its parent's key (or the
    data's fingerprint) and the device type."""
    return stable_key(name, (STAGE_VERSION, device.type), parent, keyed_settings(settings))


def _src(cached: dict[str, bool], name: str) -> str:
    return "cached" if cached[name] else "built"


def make_context(
    data: MovieLens,
    world: World | OnDemandWorld,
    log: BanditLog,
    ranker: TrainedModel,
    config: ExperimentConfig,
    device: torch.device,
) -> Context:
    """The logged positives, the ranker's scores and the evaluator shared by all runs.

    On the on-demand world the ranker is kept as user and item vectors (its scores are their
    dot products, taken where needed) and the evaluator is a `CompactEvaluator` of the
    evaluated users, the first `world.n_val` of them for validation."""
    check_propensities(log.propensities, log.users, log.items)
    positive = log.rewards > 0
    users, items = log.users[positive], log.items[positive]
    shared = {
        "catalog": data.catalog,
        "users": users,
        "items": items,
        "propensities": log.propensities[positive],
        "k": log.k,
    }
    if isinstance(world, OnDemandWorld):
        model = load_model(Ranker, data.catalog, ranker.state, torch.device("cpu"))
        with torch.no_grad():
            user_vectors = model.context_vectors(torch.arange(data.n_users), world.mean_timestamps)
            item_vectors = model.items()
        evaluator = CompactEvaluator(
            world.eval_users,
            world.eval_truth,
            world.n_items,
            users,
            items,
            user_vectors[world.eval_users],
            item_vectors,
            k=config.candidates.eval_k,
        )
        return Context(
            **shared,
            ranker_scores=None,
            evaluator=evaluator,
            val_users=torch.arange(world.n_val),
            test_users=torch.arange(world.n_val, len(world.eval_users)),
            ranker_user_vectors=user_vectors,
            ranker_item_vectors=item_vectors,
        )
    if config.ranker.oracle:
        scores = torch.logit(world.probabilities_at_mean.double(), eps=1e-12).float()
    else:
        scores = ranker_scores(data.catalog, ranker.state, world, device)
    evaluator = Evaluator(world.truth, users, items, scores, k=config.candidates.eval_k)
    n_val = validation_size(data.n_users)
    return Context(
        **shared,
        ranker_scores=scores,
        evaluator=evaluator,
        val_users=torch.arange(n_val),
        test_users=torch.arange(n_val, data.n_users),
    )


def check_propensities(
    propensities: torch.Tensor, users: torch.Tensor, items: torch.Tensor
) -> None:
    """Refuse a bandit log whose propensities are not in (0, 1], naming the first bad row."""
    bad = ~((propensities > 0) & (propensities <= 1))  # NaN fails both comparisons
    if bad.any():
        row = int(bad.nonzero()[0, 0])
        raise NumericsError(
            f"bandit log: impression {row} (user row {int(users[row])}, item row "
            f"{int(items[row])}) has propensity {float(propensities[row])}; expected a "
            "probability in (0, 1]. Training stopped before it started."
        )


RUN_CONFIG = "config.json"  # in OUT/runs/: the configuration whose runs the folder holds
# Settings a folder's runs may differ in: each run is keyed by its method and seed, and the
# device type is part of every stage key, so runs of another device are recomputed, never mixed.
FREE_SETTINGS = ("seeds", "methods", "device")
# Runtime settings older runs kept in their config; they never changed a result.
LEGACY_RUNTIME_SETTINGS = ("threads", "world.chunk_users")


def folder_config(out_dir: Path) -> dict | None:
    """The configuration an output folder's runs were made with, if it holds any."""
    for path in (out_dir / "runs" / RUN_CONFIG, out_dir / "run.json"):
        if path.is_file():
            try:
                values = json.loads(path.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
            return values.get("config", values) if path.name == "run.json" else values
    return None


def check_out_dir(out_dir: str | Path, config: ExperimentConfig) -> Path:
    """Refuse, before any work, an output folder that cannot take this run's files: a path that
    is a file (or under one), or a folder holding runs of another configuration."""
    out_dir = Path(out_dir)
    for path in (out_dir, *out_dir.parents):
        if path.exists() and not path.is_dir():
            where = "it" if path == out_dir else str(path)
            raise ConfigError(
                f"output folder {out_dir}: {where} is a file, not a folder; choose another --out."
            )
    stored = folder_config(out_dir)
    if stored is None:
        return out_dir
    differences = [
        f"{name}: {there} vs {here}"
        for name, there, here in config_differences(
            stored,
            config.to_dict(),
            free=FREE_SETTINGS + LEGACY_RUNTIME_SETTINGS,
            defaults=ExperimentConfig().to_dict(),
        )
    ]
    if differences:
        raise ConfigError(
            f"output folder {out_dir} holds runs of another configuration ("
            + "; ".join(differences[:6])
            + ("; …" if len(differences) > 6 else "")
            + ", there vs here): choose another --out, or delete the folder to start afresh."
        )
    return out_dir


def run_key(prepared: Prepared, config: ExperimentConfig, method: str, seed: int) -> str:
    return stable_key(
        "run",
        STAGE_VERSION,
        prepared.keys["ranker"],
        method,
        seed,
        keyed_settings(config.candidates),
    )


def check_jobs(runtime: Runtime, device: torch.device) -> None:
    """Refuse, before any work, `jobs` > 1 where worker processes cannot share the stages, and
    the ray backend without Ray or off the CPU."""
    if runtime.backend == "ray":
        from twostage.pipeline.ray_backend import require_ray

        if device.type != "cpu":
            raise ConfigError(
                f"--backend ray trains on the CPU only for now (device {device.type}).",
                "device",
            )
        require_ray()
        return
    if runtime.jobs == 1:
        return
    if device.type != "cpu":
        raise ConfigError(
            f"--jobs {runtime.jobs}: worker processes train on the CPU only (device "
            f"{device.type}); use --jobs 1 on a GPU.",
            "runtime.jobs",
        )
    if "fork" not in multiprocessing.get_all_start_methods():
        raise ConfigError(
            f"--jobs {runtime.jobs}: worker processes need the 'fork' start method, which this "
            "platform lacks; use --jobs 1.",
            "runtime.jobs",
        )


def train_run(
    context: Context,
    config: ExperimentConfig,
    device: torch.device,
    job: tuple[str, int, str],
    progress=None,
) -> dict:
    """One (method, seed) run, the unit of every backend: `train_candidate_generator`'s result
    with the run's key, method, seed and seconds (the model state still in it)."""
    method, seed, key = job
    start = time.perf_counter()
    result = train_candidate_generator(
        method, seed, context, config.candidates, device, progress=progress
    )
    result.update(key=key, method=method, seed=seed, seconds=round(time.perf_counter() - start, 3))
    return result


def store_run(path: Path, result: dict) -> dict:
    """Write a run at `path` (.json) and its model state beside it (.pt); return the result
    without the state."""
    result = dict(result)
    buffer = io.BytesIO()
    torch.save(result.pop("state"), buffer)
    # The model first: a finished run's .json implies its .pt.
    atomic_write_bytes(path.with_suffix(".pt"), buffer.getvalue())
    atomic_write_text(path, json.dumps(result))
    return result


def _train_and_store(
    context: Context,
    config: ExperimentConfig,
    device: torch.device,
    path: Path,
    job: tuple[str, int, str],
    progress: tqdm | None = None,
) -> dict:
    """Train one run and store it at `path` (.json) and beside it (.pt); return its results."""
    return store_run(path, train_run(context, config, device, job, progress))


# What forked workers inherit from `run_all`: set just before the pool forks, cleared after.
_SHARED: dict[str, Any] = {}


def _worker_init(threads: int) -> None:
    torch.set_num_threads(threads)


def _worker_run(job: tuple[str, int, str]) -> tuple[tuple[str, int], dict]:
    shared = _SHARED
    path = shared["runs_dir"] / f"{job[0]}-seed{job[1]}.json"
    result = _train_and_store(shared["context"], shared["config"], shared["device"], path, job)
    return (job[0], job[1]), result


def run_all(
    prepared: Prepared,
    config: ExperimentConfig,
    out_dir: Path,
    *,
    verbose: bool = True,
    runtime: Runtime | None = None,
) -> pd.DataFrame:
    """Every (method, seed) run, each stored in `out_dir/runs/` as soon as it finishes:
    `<method>-seed<k>.json` (results) and `<method>-seed<k>.pt` (model state at the best epoch).

    A run whose file exists with the same key is not recomputed: an interrupted sweep resumes.
    With `runtime.jobs` > 1 the runs left to do train that many at once in forked worker
    processes, each with `runtime.threads_per_job()` threads; with `runtime.backend == "ray"`
    they train as Ray tasks (`ray_backend`), stored here as each finishes. A kill loses only the
    runs in flight.
    """
    runtime = runtime or Runtime()
    check_jobs(runtime, prepared.device)
    runs_dir = out_dir / "runs"
    check_out_dir(out_dir, config)
    runs_dir.mkdir(parents=True, exist_ok=True)
    if not (runs_dir / RUN_CONFIG).is_file():
        atomic_write_text(runs_dir / RUN_CONFIG, json.dumps(config.to_dict(), indent=2))
    epochs = config.candidates.epochs
    done: dict[tuple[str, int], dict] = {}
    todo: list[tuple[str, int, str]] = []
    for method in config.methods:
        for seed in config.seeds:
            key = run_key(prepared, config, method, seed)
            stored = _read_run(runs_dir / f"{method}-seed{seed}.json")
            if stored is not None and stored.get("key") == key:
                done[method, seed] = stored
            else:
                todo.append((method, seed, key))
    n_runs = len(config.methods) * len(config.seeds)
    with tqdm(total=n_runs * epochs, desc="candidate generators", disable=not verbose) as bar:
        bar.update(len(done) * epochs)
        if runtime.backend == "ray" and todo:
            from twostage.pipeline import ray_backend

            for job, result in ray_backend.run_jobs(prepared.context, config, todo, runtime):
                path = runs_dir / f"{job[0]}-seed{job[1]}.json"
                done[job[:2]] = store_run(path, result)
                bar.set_postfix_str(f"{job[0]} seed {job[1]} done")
                bar.update(epochs)
        elif runtime.jobs == 1 or len(todo) <= 1:
            for job in todo:
                bar.set_postfix_str(f"{job[0]} seed {job[1]}")
                path = runs_dir / f"{job[0]}-seed{job[1]}.json"
                done[job[:2]] = _train_and_store(
                    prepared.context, config, prepared.device, path, job, progress=bar
                )
        else:
            _SHARED.update(
                context=prepared.context, config=config, device=prepared.device, runs_dir=runs_dir
            )
            try:
                workers = multiprocessing.get_context("fork").Pool(
                    min(runtime.jobs, len(todo)),
                    initializer=_worker_init,
                    initargs=(runtime.threads_per_job(),),
                )
                with workers:  # leaving it terminates the workers, also on an error or a kill
                    for (method, seed), result in workers.imap_unordered(_worker_run, todo):
                        done[method, seed] = result
                        bar.set_postfix_str(f"{method} seed {seed} done")
                        bar.update(epochs)
            finally:
                _SHARED.clear()
    frames = []
    for method in config.methods:
        for seed in config.seeds:
            result = done[method, seed]
            frame = pd.DataFrame(result["rows"])
            frame["method"], frame["seed"], frame["best_epoch"] = method, seed, result["best_epoch"]
            frames.append(frame)
    results = pd.concat(frames, ignore_index=True)
    results["dataset"] = prepared.data.name
    return results[RESULT_COLUMNS]


def _read_run(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None  # a damaged run file is recomputed


def run_experiment(
    config: ExperimentConfig,
    out_dir: str | Path,
    *,
    cache: StageCache | None = None,
    runtime: Runtime | None = None,
    verbose: bool = True,
    command: str | None = None,
) -> Path:
    """The whole experiment's data: stages 1–5, every run, and in `out_dir` `results.csv`,
    `run.json` and `world_probabilities.json`. `twostage.pipeline.reproduce` adds the report."""
    out_dir = Path(out_dir)
    runtime = runtime or Runtime()
    validate(config)
    check_out_dir(out_dir, config)
    check_jobs(runtime, resolve_device(config.device))
    started = time.perf_counter()
    prepared = prepare(config, cache=cache, runtime=runtime, verbose=verbose)
    start = time.perf_counter()
    results = run_all(prepared, config, out_dir, verbose=verbose, runtime=runtime)
    prepared.timings["candidate_generators"] = time.perf_counter() - start
    atomic_write_text(out_dir / "results.csv", results.to_csv(index=False))
    atomic_write_text(
        out_dir / "world_probabilities.json", json.dumps(probability_histogram(prepared.world))
    )
    metadata = run_metadata(prepared, config, runtime, started, command)
    atomic_write_text(out_dir / "run.json", json.dumps(metadata, indent=2))
    return out_dir


def probability_histogram(world: World | OnDemandWorld, bins: int = 50) -> dict:
    """The world's probabilities in `bins` equal bins of [0, 1], with its cut and positive
    share; on the on-demand world, of the `world.cut_sample` pairs sampled for the cut."""
    if isinstance(world, OnDemandWorld):
        counts = world.sample_histogram
        if len(counts) != bins:
            raise ValueError(f"the on-demand world keeps {len(counts)} bins, not {bins}")
    else:
        counts = torch.histc(world.probabilities, bins=bins, min=0.0, max=1.0)
    edges = np.linspace(0.0, 1.0, bins + 1)
    return {
        "bin_edges": edges.tolist(),
        "counts": counts.long().tolist(),
        "cut": world.cut,
        "positive_share": world.positive_share,
    }


def run_metadata(
    prepared: Prepared,
    config: ExperimentConfig,
    runtime: Runtime,
    started: float,
    command: str | None = None,
) -> dict:
    """`run.json`: what produced the run (command, data, settings, versions) and what it found."""
    data, world = prepared.data, prepared.world
    world_info = {
        "cut": world.cut,
        "cut_rule": world.cut_rule,
        "positive_share": world.positive_share,
        "flops": world_flops(world, prepared.simulator.state),  # of its build
    }
    if isinstance(world, OnDemandWorld):
        world_info |= {
            "mode": "on-demand",
            "evaluated_users": len(world.eval_users),
            "validation_users": world.n_val,
        }
    return {
        "command": command,
        "dataset": data.name,
        "synthetic": data.synthetic,
        "data": {
            "path": data.path,
            "layout": data.layout,
            "fingerprint": data.fingerprint,
            **data.catalog.cardinalities(),
            "ratings": data.n_ratings,
        },
        "config": config.to_dict(),
        # `threads` is what was asked (0: none), `torch_threads` what the stages used, and
        # `threads_from` which rule chose it (`twostage.runtime`); `jobs` runs trained at once.
        "runtime": {
            **dataclasses.asdict(runtime),
            "torch_threads": torch.get_num_threads(),
            "threads_from": runtime.resolve_threads()[1],
            # The candidate generators' threads: each worker's when runs train in parallel.
            "run_threads": (
                runtime.threads_per_job()
                if runtime.jobs > 1 or runtime.backend == "ray"
                else torch.get_num_threads()
            ),
        },
        "package_version": twostage.__version__,
        "torch_version": torch.__version__,
        "python": platform.python_version(),
        "device": str(prepared.device),
        "world": world_info,
        "simulator": {k: v for k, v in prepared.simulator.info.items() if k != "curve"},
        "logging_policy": {"val_auc": prepared.logging_policy.info["val_auc"]},
        "bandit_log": {
            "impressions": len(prepared.log),
            "positives": int(prepared.log.rewards.sum()),
        },
        "ranker": prepared.ranker.info,
        "stage_keys": prepared.keys,
        "stage_cached": prepared.cached,
        "stage_seconds": {k: round(v, 2) for k, v in prepared.timings.items()},
        "total_seconds": round(time.perf_counter() - started, 2),
    }
