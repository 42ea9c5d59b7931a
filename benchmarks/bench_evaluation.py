"""Time the evaluator at MovieLens-1M size (6,040 users × 3,883 items) on random inputs.

Run: ``python benchmarks/bench_evaluation.py``. Prints the best of three runs of each call.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from twostage.evaluation import Evaluator

N_USERS, N_ITEMS, LOGGED_PER_USER = 6040, 3883, 5


def best_of(call: Callable[[], object], repeats: int = 3) -> float:
    """Fastest wall time of `repeats` calls, in seconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
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
    main()
