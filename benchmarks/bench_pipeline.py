"""Time the real table: stages 1–5, then every (method, seed) run, as `twostage reproduce` does.

    python benchmarks/bench_pipeline.py                      # the 60-run table (20 seeds × 3)
    python benchmarks/bench_pipeline.py --seeds 2            # a shorter check: 6 runs
    python benchmarks/bench_pipeline.py --cached DIR         # stages from a stage cache in DIR
    python benchmarks/bench_pipeline.py --device cuda --out benchmarks/results/gpu-pipeline.json
    python benchmarks/bench_pipeline.py --dataset synthetic:users=100000,items=1000000 \
        --world on-demand --softmax sampled --head-index faiss --seeds 1 \
        --out benchmarks/results/scale-1m.json            # a million items (#15)

The whole experiment goes through `twostage.pipeline.reproduce` (stages, runs, results, summary
and figures) into a fresh run folder (`--run-dir`, default a temporary one), with a fresh stage
cache unless `--cached` names one; nothing is multiplied up from one run. The JSON holds the
seconds of each stage, each run and the whole table, the world stage's GFLOP/s, peak memory, the
load average and a speed probe before and after, the CPU model, torch's threads and version, the
date, and every figure beside the authors' code's figure on the 2-core CPU machine kind, as a
ratio. Benchmark only on a quiet
machine (benchmarks/README.md, "The real table").
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from twostage.cli import stage_overrides
from twostage.data import load_movielens
from twostage.errors import TwoStageError
from twostage.pipeline import reproduce
from twostage.pipeline.config import profile_config, validate, with_overrides
from twostage.pipeline.training import resolve_device
from twostage.runtime import Runtime, cpu_model

# The authors' original code (the paper's notebooks), timed in earlier sessions of this project
# on the machine kind of our committed figures: the 2-core CPU machine, torch on the CPU. The
# figures are those of the project's performance issue (#14): simulator 743 s; world 186 s;
# logging policy + bandit log + ranker + evaluator set-up 136 s (benchmarks/README.md's older
# table itemises 55 + 39 + 40 s for the first three); one 2-IPS run ≈ 1,620 s
# (20 epochs × (58 s training + 23 s evaluation)); the 60-run table (3 methods × 20 seeds) ≈ 16 h.
# Nobody timed a CE or 1-IPS run of the original code, so those have no ratio.
AUTHORS_MACHINE = "the 2-core CPU machine kind of this project's sessions, torch on the CPU"
AUTHORS_SECONDS = {
    "simulator": 743.0,
    "world": 186.0,
    "logging_policy+bandit_log+ranker+evaluator": 136.0,
    "run:ce": None,
    "run:ips": None,
    "run:2s": 1620.0,
    "table": 16 * 3600.0,
}
STAGES = ("simulator", "world", "logging_policy", "bandit_log", "ranker", "evaluator")
PAPER_METHODS = ("ce", "ips", "2s")
PAPER_SEEDS = 20
QUIET_LOAD = 0.5  # a 1-minute load average above this before the start: the machine was busy


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # not available on this platform
        return None


def speed_probe(repeats: int = 5) -> float:
    """Milliseconds of a fixed piece of work at torch's current thread count, median of
    `repeats`: 200 times a CE step's core (the 128 × 20 × 3,883 product and a log-softmax of its
    output). The same work took up to three times longer from one minute to the next on a shared
    virtual machine; the probe, taken before and after, says which phase a figure was measured in.
    """
    generator = torch.Generator().manual_seed(0)
    users = torch.randn(128, 20, generator=generator)
    items = torch.randn(3883, 20, generator=generator)
    times = []
    for _ in range(repeats + 1):  # the first, untimed, warms up
        started = time.perf_counter()
        for _ in range(200):
            torch.log_softmax(users @ items.T, dim=1)
        times.append(time.perf_counter() - started)
    return round(1e3 * statistics.median(times[1:]), 1)


def figure(name: str, seconds: float | None, comparable: bool, note: str | None = None) -> dict:
    """One timing beside the authors' one: `ratio_to_authors` = ours / theirs (0.1: ten times
    faster), `speedup` = theirs / ours; both null when the authors' figure is missing or is for
    other settings (`comparable`)."""
    authors = AUTHORS_SECONDS.get(name)
    ratio = comparable and bool(authors) and bool(seconds)
    entry = {
        "figure": name,
        "seconds": None if seconds is None else round(seconds, 2),
        "authors_seconds": authors,
        "ratio_to_authors": round(seconds / authors, 4) if ratio else None,
        "speedup": round(authors / seconds, 2) if ratio else None,
    }
    if note:
        entry["note"] = note
    return entry


def add_shared_arguments(parser: argparse.ArgumentParser, out: str) -> None:
    """The flags this script shares with `profile_step.py`: the JSON, the data, the profile,
    the methods, the threads and the slate sampler."""
    parser.add_argument("--out", default=out, help="the JSON")
    parser.add_argument("--dataset", default="synthetic", help="as `twostage reproduce --dataset`")
    parser.add_argument("--profile", choices=["paper", "smoke"], default="paper")
    parser.add_argument("--methods", default=",".join(PAPER_METHODS))
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch CPU threads; always wins (default: $OMP_NUM_THREADS, else every core)",
    )
    parser.add_argument(
        "--slate-sampler",
        choices=["torch", "fused"],
        help="2-IPS's candidate sets, as `twostage reproduce --slate-sampler` (default: torch)",
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_shared_arguments(parser, "benchmarks/results/pipeline.json")
    parser.add_argument(
        "--seeds", type=int, default=PAPER_SEEDS, help="seeds 0..N-1 per method (20: the table)"
    )
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="runs trained at once in worker processes, threads split between them (as "
        "`twostage reproduce --jobs`)",
    )
    parser.add_argument(
        "--cached",
        metavar="DIR",
        help="reuse the stage cache in DIR and time the cached path (default: a fresh cache)",
    )
    parser.add_argument(
        "--run-dir",
        help="the run folder, kept afterwards; it must not hold runs already (default: a "
        "temporary folder, removed afterwards)",
    )
    parser.add_argument(
        "--epochs",
        type=int,
        help="candidate-generator epochs (a shorter check; default: the profile's)",
    )
    scale = parser.add_argument_group("large catalogues (as the `twostage reproduce` flags)")
    scale.add_argument("--world", choices=["dense", "on-demand"])
    scale.add_argument("--eval-users", type=int)
    scale.add_argument("--softmax", choices=["full", "sampled"])
    scale.add_argument("--head-index", choices=["exact", "faiss"])
    scale.add_argument("--head-size", type=int)
    scale.add_argument("--negatives", type=int)
    scale.add_argument("--optimizer", choices=["adagrad", "lazy-adagrad"])
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.seeds < 1:
        raise TwoStageError("--seeds must be at least 1.")
    overrides = {
        "dataset": args.dataset,
        "device": args.device,
        "seeds": tuple(range(args.seeds)),
        "methods": tuple(args.methods.split(",")),
    }
    # The stage flags, as `twostage reproduce` reads them (--epochs, and the scale flags).
    overrides.update(stage_overrides(args))
    config = with_overrides(profile_config(args.profile), overrides)
    validate(config)
    device = resolve_device(config.device)  # refuses cuda without a CUDA device, before any work
    runtime = Runtime(threads=args.threads, jobs=args.jobs)

    scratch = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    run_dir = Path(args.run_dir) if args.run_dir else scratch / "run"
    if (run_dir / "runs").exists() and any((run_dir / "runs").iterdir()):
        shutil.rmtree(scratch)
        raise TwoStageError(
            f"{run_dir} already holds runs, which would be reused instead of timed; choose "
            "another --run-dir or delete it."
        )
    cache_dir = Path(args.cached) if args.cached else scratch / "stages"
    command = shlex.join([Path(sys.executable).name, *sys.argv])

    load_before = load_average()
    runtime.apply()  # the probe runs at the run's thread count
    probe_before = speed_probe()
    if load_before and load_before[0] > QUIET_LOAD:
        print(
            f"warning: load average {load_before} before the start: the machine is busy, and "
            "every figure will be too slow (benchmarks/README.md, 'The real table')",
            file=sys.stderr,
        )
    # The data first, timed on its own: a synthetic spec is generated and written here once.
    data_started = time.perf_counter()
    load_movielens(config.dataset)
    data_seconds = time.perf_counter() - data_started
    started = time.perf_counter()
    try:
        reproduce(config, run_dir, cache_dir=cache_dir, runtime=runtime, command=command)
        total = time.perf_counter() - started
        load_after = load_average()
        probe_after = speed_probe()
        meta = json.loads((run_dir / "run.json").read_text())
        run_seconds: dict[str, list[float]] = {m: [] for m in config.methods}
        for method in config.methods:
            for seed in config.seeds:
                run = json.loads((run_dir / "runs" / f"{method}-seed{seed}.json").read_text())
                run_seconds[method].append(run["seconds"])
    finally:
        if args.run_dir is None:
            shutil.rmtree(run_dir, ignore_errors=True)
        shutil.rmtree(scratch, ignore_errors=True)

    stage_seconds = meta["stage_seconds"]
    medians = {m: statistics.median(s) for m, s in run_seconds.items()}
    # The authors' figures are for the paper's settings at ML-1M shape on the CPU; ours are
    # comparable when the settings are the paper's, and the table when it is the whole table.
    # (--epochs and the large-catalogue flags are stage overrides: any of them departs)
    paper_settings = args.profile == "paper" and not stage_overrides(args)
    ml1m_shape = (meta["data"]["users"], meta["data"]["items"]) == (6040, 3883)
    comparable = paper_settings and ml1m_shape
    whole_table = comparable and args.seeds == PAPER_SEEDS and config.methods == PAPER_METHODS
    cached_note = "from the stage cache" if all(meta["stage_cached"].values()) else None
    rest = sum(stage_seconds[s] for s in STAGES[2:])
    figures = [
        figure("simulator", stage_seconds["simulator"], comparable, cached_note),
        figure("world", stage_seconds["world"], comparable, cached_note),
        figure("logging_policy+bandit_log+ranker+evaluator", rest, comparable, cached_note),
        *(
            figure(f"run:{m}", medians[m], comparable, f"median of {len(run_seconds[m])} run(s)")
            for m in config.methods
        ),
        figure(
            "table",
            total,
            whole_table,
            f"{len(config.methods)} methods × {args.seeds} seeds, stages and report included"
            + ("" if whole_table else "; the authors' figure is for the 60-run table only"),
        ),
    ]
    cuda = device.type == "cuda"
    result = {
        "command": command,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "dataset": meta["dataset"],
        "shape": [meta["data"]["users"], meta["data"]["items"], meta["data"]["ratings"]],
        "profile": args.profile,
        "seeds": args.seeds,
        "methods": list(config.methods),
        "candidate_epochs": config.candidates.epochs,
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if cuda else None,
        "cpu_model": cpu_model(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": meta["runtime"]["torch_threads"],
        "threads_from": meta["runtime"]["threads_from"],
        "load_average_before": load_before,  # 1, 5 and 15 minutes
        "load_average_after": load_after,  # includes this benchmark's own load
        "quiet_before": bool(load_before and load_before[0] <= QUIET_LOAD),
        "speed_probe_ms_before": probe_before,  # speed_probe(): lower is a faster phase
        "speed_probe_ms_after": probe_after,
        # --cached names a folder; the stages are built there unless it holds them already.
        "stage_cache": (
            ("reused: " if any(meta["stage_cached"].values()) else "built in: ") + str(cache_dir)
        )
        if args.cached
        else "fresh",
        "stage_cached": meta["stage_cached"],
        "data_seconds": round(data_seconds, 2),  # generating (if not cached) and reading it
        "world": meta["config"]["world"]["mode"],
        "softmax": meta["config"]["candidates"]["softmax"],
        "optimizer": meta["config"]["candidates"]["optimizer"],
        "slate_sampler": meta["config"]["candidates"]["slate_sampler"],
        "world_info": meta["world"],
        # The world stage's rate, 2 FLOPs a multiply-add (`world_flops`); none when cached.
        "world_gflop_per_s": None
        if meta["stage_cached"]["world"]
        else round(meta["world"]["flops"] / 1e9 / max(stage_seconds["world"], 1e-9), 1),
        "stage_seconds": {s: stage_seconds[s] for s in STAGES},
        "run_seconds": run_seconds,
        "run_seconds_median": {m: round(v, 2) for m, v in medians.items()},
        "runs_seconds_total": stage_seconds.get("candidate_generators"),
        "table_seconds": round(total, 2),
        "jobs": args.jobs,
        "run_threads": meta["runtime"].get("run_threads"),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        # With --jobs > 1: the largest worker's peak; pages shared with the parent since the
        # fork count in both, so parent + jobs × this bounds the total from above.
        "peak_rss_worker_gb": round(
            resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20, 2
        )
        if args.jobs > 1
        else None,
        "peak_gpu_memory_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
        "authors_machine": AUTHORS_MACHINE,
        "comparable_to_authors": comparable,  # the paper profile at ML-1M shape, as theirs
        "authors_note": (
            "ours on CUDA beside the authors' code on the CPU" if cuda else "both on the CPU"
        )
        if comparable
        else "other settings than the authors' (profile, shape or epochs): no ratios",
        "figures": figures,
        "run_dir": str(run_dir) if args.run_dir else None,
    }
    text = json.dumps(result, indent=2, ensure_ascii=False) + "\n"
    print(text, end="")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except TwoStageError as error:  # a refused setting (e.g. --device cuda without CUDA)
        print(f"bench_pipeline.py: error: {error}", file=sys.stderr)
        sys.exit(2)
