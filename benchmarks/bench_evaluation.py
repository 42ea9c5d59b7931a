"""Time the evaluator at MovieLens-1M size (6,040 users × 3,883 items) on random inputs.

Run: ``python benchmarks/bench_evaluation.py``. Prints the best of three runs of each call.

``python benchmarks/bench_evaluation.py --large [--out FILE]`` times instead what each epoch's
evaluation does first at 100k users × 1M items: the 4,000 evaluated users' top 34 items of
random 20-dimensional vectors, scored 64 users at a time either as whole rows then `topk` (the
code before item chunks) or a chunk of `EVAL_BLOCK_ITEMS` items at a time
(`twostage.evaluation.top_of_products`, what `top_items` does above that size), the two
alternated `--repeats` times, with the load average and the speed probe before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from twostage.evaluation import Evaluator, top_of_products
from twostage.pipeline.candidates import EVAL_BLOCK_ITEMS, EVAL_BLOCK_USERS
from twostage.runtime import pin_large_blocks

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pipeline import speed_probe  # noqa: E402

N_USERS, N_ITEMS, LOGGED_PER_USER = 6040, 3883, 5


def best_of(call: Callable[[], object], repeats: int = 3) -> float:
    """Fastest wall time of `repeats` calls, in seconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return min(times)


def large_catalogue(repeats: int, n_users: int = 4000, n_items: int = 1_000_000) -> dict:
    """Seconds of the evaluated users' top items at a large catalogue, both ways, alternated."""
    pin_large_blocks()  # as an on-demand world does
    g = torch.Generator().manual_seed(0)
    users, items, width = torch.randn(n_users, 20, generator=g), torch.randn(n_items, 20), 34

    def whole_rows() -> torch.Tensor:
        blocks = range(0, n_users, EVAL_BLOCK_USERS)
        return torch.cat([(users[s : s + EVAL_BLOCK_USERS] @ items.T).topk(width).indices
                          for s in blocks])  # fmt: skip

    def chunks() -> torch.Tensor:
        buffer = items.new_empty(EVAL_BLOCK_USERS * EVAL_BLOCK_ITEMS)
        blocks = range(0, n_users, EVAL_BLOCK_USERS)
        return torch.cat([top_of_products(users[s : s + EVAL_BLOCK_USERS], items, width,
                                          EVAL_BLOCK_ITEMS, buffer) for s in blocks])  # fmt: skip

    report = {"load_average_before": os.getloadavg(), "probe_ms_before": speed_probe()}
    times: dict[str, list[float]] = {"whole rows": [], "item chunks": []}
    for _ in range(repeats):
        for name, call in (("whole rows", whole_rows), ("item chunks", chunks)):
            start = time.perf_counter()
            call()
            times[name].append(round(time.perf_counter() - start, 3))
    report.update(
        {
            "shape": [n_users, n_items],
            "width": width,
            "block_users": EVAL_BLOCK_USERS,
            "block_items": EVAL_BLOCK_ITEMS,
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "seconds": times,
            "median_seconds": {k: statistics.median(v) for k, v in times.items()},
            "load_average_after": os.getloadavg(),
            "probe_ms_after": speed_probe(),
        }
    )
    return report


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--large", action="store_true", help="the 100k × 1M top items instead")
    parser.add_argument("--repeats", type=int, default=3, help="with --large")
    parser.add_argument("--out", type=Path, help="with --large: write the JSON here")
    args = parser.parse_args(argv)
    if args.large:
        report = large_catalogue(args.repeats)
        text = json.dumps(report, indent=2)
        print(text)
        if args.out:
            args.out.write_text(text + "\n")
        return
    g = torch.Generator().manual_seed(0)
    truth = torch.rand(N_USERS, N_ITEMS, generator=g) < 0.3
    logged_users = torch.arange(N_USERS).repeat_interleave(LOGGED_PER_USER)
    logged_items = torch.randint(0, N_ITEMS, (N_USERS * LOGGED_PER_USER,), generator=g)
    ranker_scores = torch.randn(N_USERS, N_ITEMS, generator=g)
    scores = torch.randn(N_USERS, N_ITEMS, generator=g)
    users = torch.arange(2000, N_USERS)  # the paper's test users

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    build = best_of(lambda: Evaluator(truth, logged_users, logged_items, ranker_scores, 30))
    print(f"Evaluator(...)                  {build:.3f} s")
    evaluator = Evaluator(truth, logged_users, logged_items, ranker_scores, 30)
    calls: dict[str, Callable[[], object]] = {
        "one_stage_reward (6,040 users)": lambda: evaluator.one_stage_reward(scores),
        "two_stage_reward (6,040 users)": lambda: evaluator.two_stage_reward(scores),
        "one_stage_metrics (4,040 users)": lambda: evaluator.one_stage_metrics(
            scores[users], users
        ),
        "two_stage_metrics (4,040 users)": lambda: evaluator.two_stage_metrics(
            scores[users], users
        ),
        # What the pipeline does each epoch: every user's top items once, then both rewards
        # (all users) and both evaluations' metrics (2,000 validation users) from them.
        "top (6,040 users)": lambda: evaluator.top(scores),
        "rewards_from_top (6,040 users)": lambda: evaluator.rewards_from_top(top),
        "metrics_from_top (2,000 users)": lambda: evaluator.metrics_from_top(
            top[:2000], torch.arange(2000)
        ),
    }
    top = evaluator.top(scores)
    for name, call in calls.items():
        print(f"{name:<32}{best_of(call):.3f} s")


if __name__ == "__main__":
    main(sys.argv[1:])
