"""The `twostage` command line: `data`, `reproduce`, `sweep`, `evaluate`, `compare`, `summarize`."""

from __future__ import annotations

import argparse
import os
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
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = commands.add_parser("data", help="load a dataset and print its summary, or fetch one")
    data.add_argument(
        "words",
        nargs="+",
        metavar="[fetch] DATASET",
        help="ml-1m, ml-100k, synthetic, synthetic-small or a directory; "
        "`fetch ml-1m|ml-100k` only downloads",
    )
    data.add_argument("--no-download", action="store_true", help="never download")

    experiment = argparse.ArgumentParser(add_help=False)  # the flags reproduce and sweep share
    experiment.add_argument(
        "--dataset",
        help="ml-1m (default of the paper profile), ml-100k, synthetic, "
        "synthetic-small or a directory in either MovieLens layout",
    )
    experiment.add_argument(
        "--profile",
        choices=["paper", "smoke"],
        default=os.environ.get("TWOSTAGE_PROFILE", "paper"),
        help="paper: the full protocol (default, or $TWOSTAGE_PROFILE); smoke: small and fast",
    )
    experiment.add_argument("--seeds", help="a count (20), a range (0-4) or a list (1,3,7)")
    experiment.add_argument("--device", default="auto", help="auto, cpu or cuda")
    experiment.add_argument(
        "--threads",
        type=int,
        default=0,
        help="CPU threads for torch (default: torch's choice; 1 is often fastest "
        "for these small models on a busy CPU)",
    )
    experiment.add_argument(
        "--cache-dir", help="stage cache (default $TWOSTAGE_CACHE or the user cache)"
    )

    run = commands.add_parser(
        "reproduce", parents=[experiment], help="run the paper's whole experiment"
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
    run.add_argument("--out", help="output directory (default runs/DATASET-PROFILE)")

    sweep = commands.add_parser(
        "sweep", parents=[experiment], help="ablations: one factor at a time, cached and resumable"
    )
    sweep.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="NAME=V1,V2",
        help="a factor and its values, e.g. alpha=0,1e-3,1e-1 (repeatable); names: "
        "alpha, slate_size, n_slates, temperature, cap, eval_k, epochs, "
        "weight_decay, ranker_epochs, oracle_ranker, positive_share",
    )
    sweep.add_argument("--out", required=True, help="output directory")

    evaluate = commands.add_parser(
        "evaluate",
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
        "compare", help="check a run's summary against a committed one within standard errors"
    )
    compare.add_argument("out", help="an output directory of `twostage reproduce`")
    compare.add_argument("reference", help="a directory with the reference summary.csv")
    compare.add_argument("--n-se", type=float, default=3.0, help="allowed standard errors (3)")

    summarize = commands.add_parser("summarize", help="rebuild the table and figures of a run")
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
    "candidates.alpha": "--alpha",
    "candidates.epochs": "--epochs",
    "world.cut": "--cut",
    "world.positive_share": "--positive-share",
    "bandit.propensity": "--propensity",
}
STAGE_FLAGS = {  # argparse dest → (stage, field) for flags that override one stage setting
    "alpha": ("candidates", "alpha"),
    "epochs": ("candidates", "epochs"),
    "cut": ("world", "cut"),
    "positive_share": ("world", "positive_share"),
    "propensity": ("bandit", "propensity"),
}


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
    for dest, (stage, name) in STAGE_FLAGS.items():
        if getattr(args, dest, None) is not None:
            overrides.setdefault(stage, {})[name] = getattr(args, dest)
    config = with_overrides(profile_config(args.profile), overrides)
    validate(config)
    resolve_device(config.device)
    check_source(config.dataset)
    return config


def runtime(args: argparse.Namespace):
    from twostage.runtime import Runtime

    return Runtime(threads=args.threads)


def cmd_reproduce(args: argparse.Namespace) -> int:
    from twostage.pipeline import reproduce

    config, settings = experiment_config(args), runtime(args)
    name = Path(config.dataset).name if Path(config.dataset).is_dir() else config.dataset
    out = Path(args.out) if args.out else Path("runs") / f"{name}-{config.profile}"
    reproduce(config, out, cache_dir=args.cache_dir, runtime=settings)
    print(f"\nOutputs in {out}/: results.csv, summary.md, summary.csv, run.json, figures/")
    from twostage.pipeline.cache import StageCache

    print(f"{StageCache(args.cache_dir).describe()}; `twostage cache` lists or clears it")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from twostage.pipeline.sweep import parse_grid, sweep

    grid = parse_grid(args.grid)
    config, settings = experiment_config(args), runtime(args)
    summary = sweep(config, grid, args.out, cache_dir=args.cache_dir, runtime=settings)
    chosen = summary[(summary.metric == "Precision@10")]
    print(
        chosen[["factor", "value", "method", "evaluation", "mean", "stderr", "n_seeds"]].to_string(
            index=False
        )
    )
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
    from twostage.report import compare_summaries

    table = compare_summaries(args.out, args.reference, n_se=args.n_se)
    print(table.to_string(index=False))
    disagree = int((~table["agrees"]).sum())
    print(
        f"\n{len(table) - disagree} of {len(table)} means agree within "
        f"{args.n_se:g} standard errors."
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
    args = parser.parse_args(argv)
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
    except KeyboardInterrupt:
        print(
            "\ntwostage: interrupted; finished runs are kept and a rerun resumes.", file=sys.stderr
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
