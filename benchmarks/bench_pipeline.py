"""Time every stage of the paper profile on the ML-1M-shaped synthetic world.

    python benchmarks/bench_pipeline.py --out benchmarks/results/pipeline.json [--threads 1]

Stages 1–5 are built from scratch (no cache); then one 20-epoch run of each method, with the
per-epoch evaluation, as in `twostage reproduce`. Peak memory is the process's maximum RSS.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time
from pathlib import Path

import torch

from twostage.data import load_movielens
from twostage.pipeline.cache import StageCache
from twostage.pipeline.candidates import train_candidate_generator
from twostage.pipeline.config import profile_config, with_overrides
from twostage.pipeline.experiment import prepare


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="benchmarks/results/pipeline.json")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--methods", default="ce,ips,2s")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--dataset", default="synthetic")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    config = with_overrides(
        profile_config("paper"),
        {"dataset": args.dataset, "device": "cpu", "candidates": {"epochs": args.epochs}},
    )
    start = time.perf_counter()
    data = load_movielens(config.dataset)
    load_seconds = time.perf_counter() - start
    prepared = prepare(config, cache=StageCache(enabled=False), data=data, verbose=True)
    runs = {}
    for method in args.methods.split(","):
        start = time.perf_counter()
        train_candidate_generator(method, 0, prepared.context, config.candidates, prepared.device)
        runs[method] = round(time.perf_counter() - start, 2)
        print(f"{method}: {runs[method]:.1f}s for {args.epochs} epochs")
    steps = len(prepared.context.users) // config.candidates.batch_size * args.epochs
    result = {
        "dataset": data.name,
        "shape": [data.n_users, data.n_items, data.n_ratings],
        "machine": f"{platform.machine()} CPU, {torch.get_num_threads()} torch threads",
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "load_seconds": round(load_seconds, 2),
        "stage_seconds": {k: round(v, 2) for k, v in prepared.timings.items()},
        "run_seconds_per_method": runs,
        "candidate_steps_per_run": steps,
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
    }
    print(json.dumps(result, indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
