"""The `twostage` command line: `data`, `reproduce`, `sweep`, `evaluate`, `compare`, `summarize`."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from twostage.errors import TwoStageError

EXIT_USER_ERROR = 2


def build_parser() -> argparse.ArgumentParser:
    from twostage.objectives import OBJECTIVES, paper_methods

    parser = argparse.ArgumentParser(
        prog="twostage",
        description="Off-policy learning in two-stage recommender systems (Ma et al., WWW 2020).",
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    parser.add_argument("--version", action="version", version=_version())
    # --debug after the subcommand too; SUPPRESS keeps the top-level value when it is not given.
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = commands.add_parser(
        "data", parents=[debug], help="load a dataset and print its summary, or fetch one"
    )
    data.add_argument(
        "words",
        nargs="+",
        metavar="[fetch] DATASET",
        help="ml-1m, ml-100k, synthetic, synthetic-small, a synthetic world of any size "
        "(synthetic:users=N,items=M[,ratings=R][,seed=S]) or a directory; "
        "`fetch ml-1m|ml-100k` only downloads",
    )
    data.add_argument("--no-download", action="store_true", help="never download")

    experiment = argparse.ArgumentParser(add_help=False, parents=[debug])  # reproduce and sweep
    experiment.add_argument(
        "--dataset",
        help="ml-1m (default of the paper profile), ml-100k, synthetic (ML-1M-shaped), "
        "synthetic-small, a synthetic world of any size "
        "synthetic:users=N,items=M[,ratings=R][,seed=S] (keys in any order; ratings default "
        "to max(30*users, items+20*users), seed to 0; written once to the data cache), "
        "or a directory in either MovieLens layout",
    )
    experiment.add_argument(
        "--profile",
        choices=["paper", "smoke"],
        default=os.environ.get("TWOSTAGE_PROFILE", "paper"),
        help="paper: the full protocol, 3 methods × 20 seeds (default, or $TWOSTAGE_PROFILE); "
        "smoke: 3 seeds, short schedules, on the small synthetic world (synthetic-small) "
        "unless --dataset is given — a check, not a result",
    )
    experiment.add_argument("--seeds", help="a count (20), a range (0-4) or a list (1,3,7)")
    experiment.add_argument("--device", default="auto", help="auto, cpu or cuda")
    experiment.add_argument(
        "--threads",
        type=int,
        default=0,
        help="CPU threads for torch; always wins (default: $OMP_NUM_THREADS if set, else "
        "every core; 1 is often fastest for these small models on a busy CPU)",
    )
    experiment.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="runs trained at once, each in a worker process with threads/jobs threads "
        "(default 1; CPU only): on 2 cores, --jobs 2 gives each run one thread",
    )
    experiment.add_argument(
        "--backend",
        choices=["local", "ray"],
        default="local",
        help="local: this process, or --jobs forked workers (default); ray: every run a Ray "
        "task, on a Ray instance started with --threads CPUs or on the cluster at --address "
        '(pip install -e ".[ray]")',
    )
    experiment.add_argument(
        "--address",
        help="with --backend ray: a running Ray cluster's address (host:port of its head, or "
        "auto); each task uses threads/jobs CPUs and threads",
    )
    experiment.add_argument(
        "--cache-dir", help="stage cache (default $TWOSTAGE_CACHE or the user cache)"
    )

    run = commands.add_parser(
        "reproduce",
        parents=[experiment],
        help="run the paper's whole experiment",
        description=REPRODUCE_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument(
        "--methods",
        help=f"comma-separated subset of {','.join(OBJECTIVES)} "
        f"(default {','.join(paper_methods())})",
    )
    run.add_argument("--alpha", type=float, help="2-IPS weight of the other-items term (1e-3)")
    run.add_argument("--cut", type=float, help="probability cut that labels the world")
    run.add_argument("--positive-share", type=float, help="label the top share of pairs instead")
    run.add_argument("--epochs", type=int, help="candidate-generator epochs (20)")
    run.add_argument(
        "--propensity",
        choices=["single", "inclusion"],
        help="logged propensity: single-draw softmax (the paper's, default) or "
        "P(item among the K shown), by Monte Carlo",
    )
    run.add_argument(
        "--early-stop",
        choices=["run", "authors"],
        help="the simulator's stop rule: authors (default, the authors' code, which produced the "
        "paper's tables: checks every 500 steps within each epoch, a pass ends only that epoch) "
        "or run (the paper's text: a validation AUC above 0.735 ends training)",
    )
    run.add_argument(
        "--ratings-order",
        choices=["file", "user"],
        help="order of the ratings before the simulator's positional 3:1:1 split: file "
        "(default) or user (stably grouped by user, as ML-1M's ratings.dat ships)",
    )
    run.add_argument(
        "--world",
        choices=["dense", "on-demand"],
        help="dense (default, the paper's: every pair's label held in memory) or on-demand (for "
        "large catalogues: labels computed when needed, the cut from sampled pairs, only "
        "--eval-users users evaluated)",
    )
    run.add_argument(
        "--eval-users",
        type=int,
        help="on-demand world: users evaluated, the first ones, half validation, half test (4000)",
    )
    run.add_argument(
        "--cut-sample",
        type=int,
        help="on-demand world: random pairs whose quantile sets the cut (1000000)",
    )
    run.add_argument(
        "--softmax",
        choices=["full", "sampled"],
        help="candidate generators' softmax: full (default, the paper's) or sampled (for large "
        "catalogues: each step scores the logged item, the generator's head and tail items "
        "with the log-Q correction)",
    )
    run.add_argument("--head-size", type=int, help="sampled softmax: head items per row (100)")
    run.add_argument("--negatives", type=int, help="sampled softmax: tail items per step (1000)")
    run.add_argument(
        "--proposal",
        choices=["uniform", "popularity"],
        help="sampled softmax: the tail's proposal (uniform)",
    )
    run.add_argument(
        "--head-index",
        choices=["exact", "faiss"],
        help="sampled softmax: how the head is found, rebuilt every epoch: exact (scores every "
        "item) or faiss (an inverted-file index; needs faiss-cpu)",
    )
    run.add_argument(
        "--slate-sampler",
        choices=["torch", "fused"],
        help="how 2-IPS draws its candidate sets: torch (default: torch's generator, batched "
        "bookkeeping) or fused (the same distribution from a counter hash, summed in one "
        "compiled pass; CPU with numba; another random stream, so other numbers)",
    )
    run.add_argument(
        "--optimizer",
        choices=["adagrad", "lazy-adagrad"],
        help="every trained stage's optimiser: adagrad (default, the paper's: every parameter "
        "at every step) or lazy-adagrad (the user and item id tables updated only in the rows "
        "a step touched; for large catalogues)",
    )
    run.add_argument(
        "--world-seeds",
        help="run on several semi-synthetic worlds (stages 1-5 reseeded), e.g. 0-4: one folder "
        "per world, and a summary with each world's mean, the grand mean ± its standard error "
        "between worlds and the share of the variance between worlds",
    )
    run.add_argument(
        "--out",
        help="output directory (default runs/DATASET-PROFILE, plus the settings that differ "
        "from the profile's, e.g. runs/ml-100k-paper-alpha=0.01); a folder holding runs of "
        "another configuration is refused",
    )

    sweep = commands.add_parser(
        "sweep",
        parents=[experiment],
        help="ablations: one factor at a time, cached and resumable",
        description="Ablations: the base settings (the same flags as reproduce) with one factor "
        "changed at a time; every cell's runs are cached and resumable. Writes OUT/sweep.csv, "
        "OUT/figures/ and OUT/cells/.",
    )
    sweep.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="NAME=V1,V2",
        help="a factor and its values, e.g. alpha=0,1e-3,1e-1 (repeatable); names: "
        "alpha, slate_size, n_slates, temperature, cap, eval_k, epochs, "
        "weight_decay, ranker_epochs, oracle_ranker, positive_share, world_seed",
    )
    sweep.add_argument("--out", required=True, help="output directory")

    evaluate = commands.add_parser(
        "evaluate",
        parents=[debug],
        help="off-policy estimates (IPS, SNIPS, two-stage) of a run's policies "
        "against their true values: OUT/ope.csv, OUT/ope.md",
    )
    evaluate.add_argument("out", help="an output directory of `twostage reproduce`")
    evaluate.add_argument("--cache-dir", help="the stage cache the run used")
    evaluate.add_argument(
        "--n-slates",
        type=int,
        default=200,
        help="candidate sets per user for the two-stage policy (200)",
    )

    compare = commands.add_parser(
        "compare",
        parents=[debug],
        help="check a run's summary against a committed one within standard errors",
    )
    compare.add_argument("out", help="an output directory of `twostage reproduce`")
    compare.add_argument("reference", help="a directory with the reference summary.csv")
    compare.add_argument("--n-se", type=float, default=3.0, help="allowed standard errors (3)")
    compare.add_argument(
        "--floor",
        type=float,
        default=0.5,
        help="smallest allowed difference, in percentage points (0.5): rows whose standard "
        "error rounds to zero (every seed got the same value) would otherwise have to match "
        "to the last digit",
    )
    compare.add_argument(
        "--allow-different",
        action="store_true",
        help="compare runs of different experiments (data set, profile or settings) anyway, "
        "with a warning; by default they are refused",
    )

    summarize = commands.add_parser(
        "summarize", parents=[debug], help="rebuild the table and figures of a run"
    )
    summarize.add_argument("out", help="an output directory of `twostage reproduce`")

    cache = commands.add_parser(
        "cache", help="list the stage cache's entries and sizes (default), or clear them"
    )
    cache.add_argument("action", nargs="?", default="list", metavar="list|clear")
    cache.add_argument(
        "--stage",
        help="only this stage's entries: simulator, world, logging_policy, bandit_log or ranker "
        "(later stages' entries stay valid)",
    )
    cache.add_argument(
        "--cache-dir", help="stage cache (default $TWOSTAGE_CACHE or the user cache)"
    )
    return parser


REPRODUCE_DESCRIPTION = """\
Run the paper's whole experiment: the impression simulator, the semi-synthetic world, the
logging policy, the bandit log and the ranker (stages 1-5, cached and shared between runs),
then every candidate generator (method x seed, each saved as it finishes: an interrupted run
resumes), then OUT/summary.md, summary.csv, run.json and figures/.

Profiles:
  paper  the paper's protocol: CE, 1-IPS and 2-IPS x 20 seeds, on ML-1M unless --dataset
         says otherwise. On a 2-core CPU with --threads 2: ML-100K about 10 min, the
         ML-1M-shaped synthetic world (and ML-1M) about an hour; --jobs 2 is faster.
  smoke  3 seeds and short schedules on the small synthetic world (synthetic-small) unless
         --dataset is given: about 15 s (3 min on --dataset synthetic). A check that
         everything runs, not a result.

Every setting is checked before any stage starts; a refusal is one line and exit status 2."""


def _version() -> str:
    import twostage

    return f"twostage {twostage.__version__}"


def cmd_data(args: argparse.Namespace) -> int:
    from twostage.data import ARCHIVES, fetch_movielens, load_movielens

    words = args.words
    if words[0] == "fetch":
        if len(words) != 2 or words[1] not in ARCHIVES:
            raise TwoStageError(f"usage: twostage data fetch {'|'.join(ARCHIVES)}")
        print(fetch_movielens(words[1]))
        return 0
    if len(words) != 1:
        raise TwoStageError("usage: twostage data DATASET  or  twostage data fetch NAME")
    print(load_movielens(words[0], download=not args.no_download).summary())
    return 0


# Library settings and the flags that set them: errors name the setting, the CLI adds the flag.
FLAGS = {
    "dataset": "--dataset",
    "seeds": "--seeds",
    "methods": "--methods",
    "device": "--device",
    "runtime.threads": "--threads",
    "runtime.jobs": "--jobs",
    "runtime.backend": "--backend",
    "runtime.address": "--address",
    "candidates.alpha": "--alpha",
    "candidates.epochs": "--epochs",
    "world.cut": "--cut",
    "world.positive_share": "--positive-share",
    "bandit.propensity": "--propensity",
    "simulator.early_stop": "--early-stop",
    "simulator.ratings_order": "--ratings-order",
}
STAGE_FLAGS = {  # argparse dest → (stage, field) for flags that override one stage setting
    "alpha": ("candidates", "alpha"),
    "epochs": ("candidates", "epochs"),
    "cut": ("world", "cut"),
    "positive_share": ("world", "positive_share"),
    "propensity": ("bandit", "propensity"),
    "early_stop": ("simulator", "early_stop"),
    "ratings_order": ("simulator", "ratings_order"),
    "world": ("world", "mode"),
    "eval_users": ("world", "eval_users"),
    "cut_sample": ("world", "cut_sample"),
    "softmax": ("candidates", "softmax"),
    "head_size": ("candidates", "head_size"),
    "negatives": ("candidates", "n_negatives"),
    "proposal": ("candidates", "proposal"),
    "head_index": ("candidates", "head_index"),
    "slate_sampler": ("candidates", "slate_sampler"),
}


def stage_overrides(args: argparse.Namespace) -> dict:
    """{stage: {setting: value}} of the stage flags given in `args` (`STAGE_FLAGS`, and
    `--optimizer` for every trained stage); flags `args` lacks or left unset are skipped."""
    overrides: dict = {}
    for dest, (stage, name) in STAGE_FLAGS.items():
        if getattr(args, dest, None) is not None:
            overrides.setdefault(stage, {})[name] = getattr(args, dest)
    if getattr(args, "optimizer", None) is not None:  # one flag, every trained stage
        for stage in ("simulator", "logging_policy", "ranker", "candidates"):
            overrides.setdefault(stage, {})["optimizer"] = args.optimizer
    return overrides


def experiment_config(args: argparse.Namespace):
    """The ExperimentConfig of the `reproduce`/`sweep` flags, validated before any work starts."""
    from twostage.data import check_source
    from twostage.pipeline.config import (
        parse_methods,
        parse_seeds,
        profile_config,
        validate,
        with_overrides,
    )
    from twostage.pipeline.training import resolve_device

    overrides: dict = {"device": args.device}
    if args.dataset:
        overrides["dataset"] = args.dataset
    if args.seeds:
        overrides["seeds"] = parse_seeds(args.seeds)
    if getattr(args, "methods", None):
        overrides["methods"] = parse_methods(args.methods)
    overrides.update(stage_overrides(args))
    config = with_overrides(profile_config(args.profile), overrides)
    validate(config)
    resolve_device(config.device)
    check_source(config.dataset)
    return config


def runtime(args: argparse.Namespace):
    from twostage.runtime import Runtime

    return Runtime(threads=args.threads, jobs=args.jobs, backend=args.backend, address=args.address)


def default_out(config) -> Path:
    """runs/DATASET-PROFILE, plus each setting that differs from the profile's (seeds, methods
    and device aside: a folder holds any of those), so that two configurations never share one."""
    from dataclasses import replace

    from twostage.pipeline.config import profile_config
    from twostage.pipeline.experiment import FREE_SETTINGS
    from twostage.report import config_differences

    name = Path(config.dataset).name if Path(config.dataset).is_dir() else config.dataset
    name = name.replace(":", "-").replace(",", "-")  # a synthetic spec: no ':' in folder names
    profile = replace(profile_config(config.profile), dataset=config.dataset)
    changed = [
        setting
        for setting, _, _ in config_differences(
            profile.to_dict(), config.to_dict(), free=FREE_SETTINGS
        )
    ]
    suffix = "".join(f"-{key.split('.')[-1]}={_value(config, key)}" for key in changed)
    return Path("runs") / f"{name}-{config.profile}{suffix}"


def _value(config, dotted: str) -> str:
    value = config
    for part in dotted.split("."):
        value = getattr(value, part)
    return f"{value:g}" if isinstance(value, float) else str(value)


def cmd_reproduce(args: argparse.Namespace) -> int:
    from twostage.pipeline import reproduce
    from twostage.pipeline.experiment import check_out_dir

    config, settings = experiment_config(args), runtime(args)
    if args.world_seeds is not None:
        return reproduce_worlds(args, config, settings)
    out = check_out_dir(Path(args.out) if args.out else default_out(config), config)
    reproduce(config, out, cache_dir=args.cache_dir, runtime=settings, command=args.command_line)
    print(f"\nOutputs in {out}/: results.csv, summary.md, summary.csv, run.json, figures/")
    from twostage.pipeline.cache import StageCache

    print(f"{StageCache(args.cache_dir).describe()}; `twostage cache` lists or clears it")
    return 0


def reproduce_worlds(args: argparse.Namespace, config, settings) -> int:
    from twostage.pipeline import api
    from twostage.pipeline.config import parse_seeds

    try:
        world_seeds = parse_seeds(args.world_seeds)
    except TwoStageError as err:
        raise TwoStageError(f"--world-seeds: {str(err).removeprefix('seeds')}".strip()) from None
    if len(world_seeds) < 2:
        raise TwoStageError("--world-seeds: give at least two worlds (e.g. 0-4).")
    out = Path(args.out) if args.out else Path(f"{default_out(config)}-worlds={args.world_seeds}")
    api.reproduce_worlds(
        config,
        world_seeds,
        out,
        cache_dir=args.cache_dir,
        runtime=settings,
        command=args.command_line,
    )
    print(f"\nOutputs in {out}/: summary.md, worlds.csv, worlds_summary.csv, world-<seed>/")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from twostage.pipeline.sweep import parse_grid, sweep
    from twostage.report import format_sweep

    grid = parse_grid(args.grid)
    config, settings = experiment_config(args), runtime(args)
    summary = sweep(config, grid, args.out, cache_dir=args.cache_dir, runtime=settings)
    print(format_sweep(summary, "Precision@10"))
    print(f"\nOutputs in {args.out}/: sweep.csv, figures/, cells/")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from twostage.errors import ConfigError
    from twostage.pipeline.offpolicy import evaluate

    if args.n_slates < 1:
        raise ConfigError(f"--n-slates must be ≥ 1, got {args.n_slates}.")
    out = evaluate(args.out, cache_dir=args.cache_dir, n_slates=args.n_slates)
    print((out / "ope.md").read_text())
    print(f"Outputs in {out}/: ope.csv, ope.md")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from twostage.report import compare_summaries, format_comparison, run_differences

    if args.floor < 0 or args.n_se < 0:
        raise TwoStageError(
            f"--n-se and --floor must be ≥ 0, got {args.n_se:g} and {args.floor:g}."
        )
    from twostage.pipeline.config import ExperimentConfig

    defaults = ExperimentConfig().to_dict()  # for settings an older run.json lacks
    differences = run_differences(args.out, args.reference, defaults)
    if differences and args.allow_different:
        print(
            "twostage: warning: comparing runs of different experiments: " + "; ".join(differences),
            file=sys.stderr,
        )
    table = compare_summaries(
        args.out,
        args.reference,
        n_se=args.n_se,
        floor=args.floor / 100,
        allow_different=args.allow_different,
        defaults=defaults,
    )
    print(format_comparison(table))
    disagree = int((~table["agrees"]).sum())
    print(
        f"\n{len(table) - disagree} of {len(table)} means agree within {args.n_se:g} standard "
        f"errors (or {args.floor:g} points, whichever is larger)."
    )
    return 1 if disagree else 0


def cmd_summarize(args: argparse.Namespace) -> int:
    from twostage.pipeline import summarize

    print(summarize(args.out))
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    import time

    from twostage.pipeline.cache import StageCache, megabytes

    cache = StageCache(args.cache_dir)
    if args.action not in ("list", "clear"):
        raise TwoStageError(f"cache {args.action!r}: expected list or clear.")
    if args.action == "clear":
        removed, skipped = cache.clear(args.stage)
        freed = sum(entry.size for entry in removed)
        print(f"Removed {len(removed)} entries ({megabytes(freed)}) from {cache.root}.")
        for entry in skipped:
            print(f"Kept {entry.stage}/{entry.key}: another process is building it.")
        return 0
    entries = cache.entries(args.stage)
    print(f"Stage cache: {cache.root}")
    for entry in entries:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(entry.modified))
        note = "" if entry.complete else "  (incomplete)"
        print(f"  {entry.stage:<15} {entry.key}  {megabytes(entry.size):>10}  {when}{note}")
    total = sum(entry.size for entry in entries)
    print(f"Total: {len(entries)} entries, {megabytes(total)}")
    return 0


def user_message(err: TwoStageError) -> str:
    """The error's message in the command line's words: `world.cut` → `--cut`.

    Dotted setting names are replaced by their flags wherever they stand; a message about a plain
    setting (`seeds`) starts with its flag, in place of the name or before the message.
    """
    text = str(err)
    for setting, flag in FLAGS.items():
        if "." in setting:
            text = text.replace(setting, flag)
    setting = getattr(err, "setting", None) or ""
    flag = FLAGS.get(setting)
    if flag is None or text.startswith(flag):
        return text
    if text.startswith((f"{setting} ", f"{setting}:")):
        return flag + text[len(setting) :]
    return f"{flag}: {text}"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args.command_line = shlex.join(["twostage", *argv])
    handlers = {
        "data": cmd_data,
        "reproduce": cmd_reproduce,
        "sweep": cmd_sweep,
        "summarize": cmd_summarize,
        "compare": cmd_compare,
        "evaluate": cmd_evaluate,
        "cache": cmd_cache,
    }
    try:
        return handlers[args.command](args)
    except TwoStageError as err:
        if args.debug:
            raise
        print(f"twostage: error: {user_message(err)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except BrokenPipeError:
        # The reader (e.g. `| head`) has gone: stop quietly, as other command-line tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        print(
            "\ntwostage: interrupted; finished runs are kept and a rerun resumes.", file=sys.stderr
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
