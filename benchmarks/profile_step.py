"""Where a candidate-generator run's time goes, by part, and the floor that the parts set.

    python benchmarks/profile_step.py --cached DIR                 # CE, 1-IPS, 2-IPS on ML-1M shape
    python benchmarks/profile_step.py --cached DIR --slate-sampler fused --methods 2s

For each method it trains real runs (`twostage.pipeline.candidates.train_candidate_generator`,
seed 0) of `--epochs` epochs: `--repeats` plain ones, for the wall time (and the evaluation's),
then `--repeats` under `torch.profiler`. The profile's self times are grouped into parts:

- `evaluation`: everything under `evaluate_epoch` (each epoch's rewards and validation
  metrics, and the test users once at the end);
- `optimizer`: everything under AdaGrad's `step`;
- `slate sampler`: everything under 2-IPS's slate sampling (`sample_slates` with its compiled
  lookup, or the fused kernel), the compiled code included;
- of the remaining torch operators: `matrix products` (mm, addmm, bmm), `softmax and
  cross-entropy` (log-softmax, softmax, NLL, forward and backward), `embeddings` (lookups and
  their backward), `fills and copies`, `other operators`;
- `between operators`: the profiled wall time less every recorded self time — Python, the
  autograd engine's bookkeeping, and the profiler's own cost.

Training parts are given per optimiser step (the median and the fastest of the repeats),
evaluation per call. The JSON then projects a 20-epoch run of the profile from the median plain
wall time, and states a **floor**: the steps of a run times the matrix products of one step
(plus the slate sampler for 2-IPS), plus the run's evaluations, each at the fastest rate any
repeat reached — what a run would cost if everything else took no time at all. A target below
the floor cannot be met by trimming the rest. The profiler inflates small operators, so read the
parts as shares, the plain wall time as the figure. The same work can take several times longer
from one minute to the next on a shared virtual machine (benchmarks/README.md, "The speed
probe"), hence the repeats. Benchmark only on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from twostage import fused_slates, losses
from twostage.errors import TwoStageError
from twostage.pipeline import candidates
from twostage.pipeline.cache import StageCache
from twostage.pipeline.config import profile_config, validate, with_overrides
from twostage.pipeline.experiment import prepare
from twostage.runtime import Runtime, cpu_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pipeline import add_shared_arguments, load_average, speed_probe  # noqa: E402

LABELS = ("evaluation", "slate sampler")  # record_function labels, each a part of its own
OPERATOR_PARTS = {
    "matrix products": ("aten::mm", "aten::addmm", "aten::bmm"),
    "softmax and cross-entropy": (
        "aten::_log_softmax",
        "aten::_log_softmax_backward_data",
        "aten::_softmax",
        "aten::_softmax_backward_data",
        "aten::nll_loss_forward",
        "aten::nll_loss_backward",
        "aten::logsumexp",
    ),
    "embeddings": (
        "aten::embedding",
        "aten::embedding_dense_backward",
        "aten::embedding_backward",
        "aten::index_select",
        "aten::index_add_",
    ),
    "fills and copies": ("aten::fill_", "aten::zero_", "aten::copy_", "aten::zeros"),
}
TRAINING_PARTS = (
    "matrix products",
    "softmax and cross-entropy",
    "slate sampler",
    "embeddings",
    "optimizer",
    "fills and copies",
    "other operators",
    "between operators",
)


@contextmanager
def replaced(*targets: tuple[object, str, Callable[[Callable], Callable]]):
    """Set each `module.name` to `wrapper(original)` for the duration, then put it back."""
    originals = [(module, name, getattr(module, name)) for module, name, _ in targets]
    for (module, name, wrapper), (_, _, original) in zip(targets, originals, strict=True):
        setattr(module, name, wrapper(original))
    try:
        yield
    finally:
        for module, name, original in originals:
            setattr(module, name, original)


def label(name: str) -> Callable[[Callable], Callable]:
    """A wrapper that runs a function under the profiler label `name`."""

    def wrap(function: Callable) -> Callable:
        def wrapped(*args, **kwargs):
            with record_function(name):
                return function(*args, **kwargs)

        return wrapped

    return wrap


def labelled():
    """Labels around evaluation and slate sampling, for the profile."""
    return replaced(
        (candidates, "evaluate_epoch", label("evaluation")),
        (losses, "sample_slates", label("slate sampler")),
        (fused_slates, "slate_coefficients", label("slate sampler")),
    )


def part_of(event) -> str:
    """The part an event's self time belongs to: its outermost label, else its operator."""
    part = None
    node = event
    while node is not None:
        if node.name in LABELS:
            part = node.name
        elif node.name.startswith("Optimizer.step#"):
            part = "optimizer"
        node = node.cpu_parent
    if part is not None:
        return part
    for name, operators in OPERATOR_PARTS.items():
        if event.name in operators:
            return name
    return "other operators"


def profiled_parts(method: str, context, candidates_config, device) -> tuple[dict, float]:
    """One run under the profiler: ({part: seconds}, wall seconds)."""
    with labelled(), profile(activities=[ProfilerActivity.CPU]) as prof:
        started = time.perf_counter()
        candidates.train_candidate_generator(method, 0, context, candidates_config, device)
        profiled = time.perf_counter() - started
    seconds: dict[str, float] = defaultdict(float)
    for event in prof.events():
        seconds[part_of(event)] += event.self_cpu_time_total / 1e6
    seconds["between operators"] = max(0.0, profiled - sum(seconds.values()))
    return seconds, profiled


def profile_method(method: str, config, context, epochs: int, repeats: int) -> dict:
    """One method over `epochs` epochs of seed 0: `repeats` plain runs (wall time, evaluation
    time), then `repeats` profiled runs (parts); medians, and the floor from the minima."""
    run_config = with_overrides(config, {"candidates": {"epochs": epochs}})
    device = torch.device("cpu")
    # A warm-up epoch: compiled kernels loaded, caches and allocator settled.
    warm = with_overrides(config, {"candidates": {"epochs": 1}})
    candidates.train_candidate_generator(method, 0, context, warm.candidates, device)

    evaluations = {"calls": 0, "seconds": 0.0}

    def timed(evaluate: Callable) -> Callable:
        def counted(*args, **kwargs):
            started = time.perf_counter()
            rows = evaluate(*args, **kwargs)
            evaluations["calls"] += 1
            evaluations["seconds"] += time.perf_counter() - started
            return rows

        return counted

    probe_before, walls, evaluation_runs = speed_probe(), [], []
    with replaced((candidates, "evaluate_epoch", timed)):
        for _ in range(repeats):
            evaluations.update(calls=0, seconds=0.0)
            started = time.perf_counter()
            candidates.train_candidate_generator(method, 0, context, run_config.candidates, device)
            walls.append(time.perf_counter() - started)
            evaluation_runs.append(evaluations["seconds"] / evaluations["calls"])
    per_run = evaluations["calls"]
    profiles = [profiled_parts(method, context, run_config.candidates, device) for _ in walls]
    probe_after = speed_probe()
    # The loop drops the last partial batch (the paper's code), so every epoch has this many.
    steps_per_epoch = len(context.users) // config.candidates.batch_size
    steps = steps_per_epoch * epochs

    def per_step(pick) -> dict[str, float]:
        return {
            part: round(1e3 * pick([seconds[part] for seconds, _ in profiles]) / steps, 3)
            for part in TRAINING_PARTS
        }

    wall, evaluation_s = statistics.median(walls), statistics.median(evaluation_runs)
    fastest = per_step(min)
    paper_epochs = config.candidates.epochs
    run_steps, run_evaluations = steps_per_epoch * paper_epochs, paper_epochs + 1
    floor_step_ms = fastest["matrix products"] + fastest["slate sampler"]
    floor = run_steps * floor_step_ms / 1e3 + run_evaluations * min(evaluation_runs)
    return {
        "method": method,
        "epochs_profiled": epochs,
        "steps": steps,
        "evaluations": per_run,
        "speed_probe_ms_before": probe_before,
        "speed_probe_ms_after": probe_after,
        "wall_seconds": [round(w, 3) for w in walls],
        "wall_seconds_median": round(wall, 3),
        "profiled_seconds": [round(seconds, 3) for _, seconds in profiles],
        "step_ms_plain": round(1e3 * (wall - evaluation_s * per_run) / steps, 3),
        "evaluation_seconds_per_call_plain": round(evaluation_s, 4),
        "per_step_ms_profiled": per_step(statistics.median),
        "per_step_ms_profiled_min": fastest,
        "evaluation_seconds_per_call_profiled": [
            round(seconds["evaluation"] / per_run, 4) for seconds, _ in profiles
        ],
        "run_projection": {
            "epochs": paper_epochs,
            "steps": run_steps,
            "evaluations": run_evaluations,
            "seconds_from_plain_median": round(wall / epochs * paper_epochs, 3),
            "floor_seconds": round(floor, 3),
            "floor_step_ms": round(floor_step_ms, 3),
            "floor_evaluation_seconds": round(min(evaluation_runs), 4),
            "floor_rule": (
                "steps × (matrix products + slate sampler) per step + evaluations, each at the "
                "fastest of the repeats"
            ),
        },
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_shared_arguments(parser, "benchmarks/results/step-profile.json")
    parser.add_argument("--epochs", type=int, default=2, help="epochs profiled per method")
    parser.add_argument(
        "--repeats", type=int, default=3, help="plain runs, then profiled runs, per method"
    )
    parser.add_argument(
        "--cached", metavar="DIR", required=True, help="the stage cache (built there if absent)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.epochs < 1 or args.repeats < 1:
        raise TwoStageError("--epochs and --repeats must be at least 1.")
    overrides: dict = {"dataset": args.dataset, "methods": tuple(args.methods.split(","))}
    if args.slate_sampler:
        overrides["candidates"] = {"slate_sampler": args.slate_sampler}
    config = with_overrides(profile_config(args.profile), overrides)
    validate(config)
    runtime = Runtime(threads=args.threads)
    load_before = load_average()
    prepared = prepare(config, cache=StageCache(args.cached), runtime=runtime, verbose=False)
    results = [
        profile_method(method, config, prepared.context, args.epochs, args.repeats)
        for method in config.methods
    ]
    report = {
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "dataset": config.dataset,
        "shape": [prepared.data.n_users, prepared.data.n_items],
        "profile": args.profile,
        "slate_sampler": config.candidates.slate_sampler,
        "cpu_model": cpu_model(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "methods": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    for result in results:
        parts = ", ".join(f"{k} {v}" for k, v in result["per_step_ms_profiled"].items())
        projection = result["run_projection"]
        print(
            f"{result['method']}: {result['step_ms_plain']} ms a step (plain, median of "
            f"{len(result['wall_seconds'])}); profiled parts (ms a step): {parts}; evaluation "
            f"{result['evaluation_seconds_per_call_plain']} s a call; a {projection['epochs']}-"
            f"epoch run ≈ {projection['seconds_from_plain_median']} s, floor "
            f"{projection['floor_seconds']} s"
        )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except TwoStageError as error:  # a refused setting, before any work
        print(f"profile_step.py: error: {error}", file=sys.stderr)
        sys.exit(2)
