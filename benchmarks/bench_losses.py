"""Time the batched 2-IPS loss against a per-row loop that mirrors the original `loss_2s`.

One step is forward + backward at batch 128 × 3,883 items (MovieLens-1M), 100 slates of 30; with
numba, also the batched loss with the fused slate sampler (`--slate-sampler fused`):

    python benchmarks/bench_losses.py [--out benchmarks/results/losses.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from twostage import fused_slates
from twostage.losses import two_stage_ips_loss

BATCH, N_ITEMS, N_SLATES, SLATE_SIZE = 128, 3883, 100, 30
ALPHA, CAP, FLOOR = 1e-3, 10.0, 0.01


def _unique_and_padding(samples: torch.Tensor, padding_idx: int) -> torch.Tensor:
    """The original notebook's helper: distinct items of each row, padded with `padding_idx`."""
    samples, _ = torch.sort(samples, dim=-1)
    diff = samples - torch.roll(samples, -1, dims=-1)
    diff[:, -1] = 1
    keep = (diff != 0).to(samples.dtype)
    samples = samples * keep + (1 - keep) * padding_idx
    samples, _ = torch.sort(samples, dim=-1)
    return torch.unique(samples, dim=-1)


def per_row_loss(
    logits: torch.Tensor,
    actions: torch.Tensor,
    propensities: torch.Tensor,
    ranker_logits: torch.Tensor,
) -> torch.Tensor:
    """The original `loss_2s`, one row at a time (torch.multinomial per row)."""
    n_items = logits.size(1)
    ranker = F.pad(ranker_logits.detach(), (0, 1), value=-math.inf)
    probs = F.softmax(logits.detach() / math.e, dim=1)
    log_pi = F.pad(F.log_softmax(logits, dim=1), (0, 1), value=0.0)
    rows = torch.arange(logits.size(0))
    weights = (F.softmax(logits.detach(), dim=1)[rows, actions] / propensities).clamp(FLOOR, CAP)
    weights = weights / weights.mean()
    first, second = [], []
    for i in range(logits.size(0)):
        samples = torch.multinomial(probs[i], N_SLATES * SLATE_SIZE, replacement=True)
        samples = samples.view(N_SLATES, SLATE_SIZE)
        samples = torch.cat([samples, actions[i].view(1, 1).expand(N_SLATES, 1)], dim=1)
        samples = _unique_and_padding(samples, n_items)
        q = F.softmax(ranker[i][samples], dim=1)[samples == actions[i]]
        others = log_pi[i][samples].sum(dim=1) - log_pi[i, actions[i]]
        second.append((weights[i] * q * others).mean())
        first.append((weights[i] * q).mean())
    loss = -(torch.stack(first) * log_pi[rows, actions]).mean()
    return loss - ALPHA * torch.stack(second).mean()


def batched_loss(
    logits: torch.Tensor,
    actions: torch.Tensor,
    propensities: torch.Tensor,
    ranker_logits: torch.Tensor,
    slate_sampler: str = "torch",
) -> torch.Tensor:
    return two_stage_ips_loss(
        logits,
        actions,
        propensities,
        ranker_logits,
        alpha=ALPHA,
        n_slates=N_SLATES,
        slate_size=SLATE_SIZE,
        cap=CAP,
        floor=FLOOR,
        slate_sampler=slate_sampler,
    )


def fused_loss(*tensors: torch.Tensor) -> torch.Tensor:
    """The batched loss with `--slate-sampler fused` (`twostage.fused_slates`)."""
    return batched_loss(*tensors, slate_sampler="fused")


def time_steps(step: Callable[[], None], warmup: int, repeats: int) -> list[float]:
    """Wall-clock milliseconds of each of `repeats` calls, after `warmup` untimed calls."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append((time.perf_counter() - start) * 1e3)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/losses.json"))
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    logits = (torch.randn(BATCH, N_ITEMS) * 2).requires_grad_()
    ranker_logits = torch.randn(BATCH, N_ITEMS) * 2
    actions = torch.randint(0, N_ITEMS, (BATCH,))
    propensities = torch.rand(BATCH) * 0.01 + 1e-4

    results = {}
    variants = [("batched", batched_loss), ("per_row", per_row_loss)]
    if fused_slates.available(torch.device("cpu")):
        variants.append(("fused", fused_loss))
    for name, loss_fn in variants:

        def step(loss_fn=loss_fn) -> None:
            logits.grad = None
            loss_fn(logits, actions, propensities, ranker_logits).backward()

        repeats = max(args.repeats // 4, 3) if name == "per_row" else args.repeats
        times = time_steps(step, args.warmup, repeats)
        results[name] = {
            "median_ms": statistics.median(times),
            "min_ms": min(times),
            "steps": repeats,
        }
        print(f"{name:8s} median {statistics.median(times):8.1f} ms/step  min {min(times):8.1f}")

    ratio = results["per_row"]["median_ms"] / results["batched"]["median_ms"]
    print(f"speed-up (median per-row / median batched): {ratio:.1f}x")
    report = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores",
        "torch_threads": torch.get_num_threads(),
        # Other jobs on the machine slow multi-threaded torch ops badly; record the load.
        "load_average_1min": os.getloadavg()[0],
        "torch": torch.__version__,
        "shape": {
            "batch": BATCH,
            "n_items": N_ITEMS,
            "n_slates": N_SLATES,
            "slate_size": SLATE_SIZE,
        },
        "ms_per_step": results,
        "speedup": ratio,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
