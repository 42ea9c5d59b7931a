"""`twostage evaluate OUT`: off-policy estimates of every trained policy against its true value.

For the logging policy and each run's candidate generator (its state at the best epoch,
`OUT/runs/<method>-seed<k>.pt`), the stochastic one-stage policy π = softmax(scores) and the
two-stage policy p(a|x) = E_S[q(a|S)] (candidate sets of `eval_k` items from π, the ranker's
softmax over them) are evaluated on the bandit log with IPS and SNIPS, with two propensities:
the single-draw probability the log records and P(a ∈ S)/K, and compared with their exact
values under the world's labels. Writes `OUT/ope.csv` and `OUT/ope.md`.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pandas as pd
import torch

from twostage.errors import ConfigError
from twostage.models import Nominator
from twostage.ope import ips_estimate, snips_estimate, true_value, two_stage_policy
from twostage.pipeline.cache import StageCache, atomic_write_text
from twostage.pipeline.config import BanditConfig, config_from_dict
from twostage.pipeline.experiment import Prepared, prepare
from twostage.pipeline.stages import inclusion_estimate
from twostage.pipeline.training import batches, load_model, seeded
from twostage.results import display_name

OPE_COLUMNS = [
    "policy",
    "method",
    "seed",
    "evaluation",
    "estimator",
    "propensity",
    "estimate",
    "true_value",
    "true_value_stderr",
    "bias",
]


def policy_probs(prepared: Prepared, state: dict, chunk: int = 1024) -> torch.Tensor:
    """(n_users, n_items) float64 softmax of a Nominator's scores over the catalogue."""
    model = load_model(Nominator, prepared.data.catalog, state, prepared.device)
    out = torch.empty(prepared.data.n_users, prepared.data.n_items, dtype=torch.float64)
    with torch.no_grad():
        for idx in batches(prepared.data.n_users, chunk, shuffle=False):
            out[idx] = torch.softmax(model.score_all(idx.to(prepared.device)).cpu().double(), 1)
    return out


def impression_propensities(
    prepared: Prepared, logging_probs: torch.Tensor, bandit: BanditConfig
) -> dict[str, torch.Tensor]:
    """Per-impression logging probabilities: "single" (as logged) and "inclusion" (P(a∈S)/K).

    A log made with single-draw propensities gets its inclusion probabilities estimated here as
    its stage would have (`stages.inclusion_estimate`: same estimator, same generator)."""
    log = prepared.log
    inclusion = log.inclusion_propensities
    if inclusion is None:
        inclusion, _ = inclusion_estimate(logging_probs, log.per_user(log.items), bandit)
        inclusion = inclusion.reshape(-1)
    return {"single": log.single_propensities.double(), "inclusion": inclusion.double() / log.k}


def evaluate_policy(
    prepared: Prepared,
    probs: torch.Tensor,
    propensities: dict[str, torch.Tensor],
    *,
    slate_size: int,
    n_slates: int,
    seed: int,
) -> list[dict]:
    """Rows of estimates and true values for π = probs and its two-stage policy."""
    log, labels = prepared.log, prepared.world.labels
    users, items, rewards = log.users, log.items, log.rewards
    two_stage = two_stage_policy(
        probs,
        prepared.context.ranker_scores,
        slate_size=slate_size,
        n_slates=n_slates,
        labels=labels,
        generator=seeded(seed),
    )
    targets = [
        ("one-stage", "", probs, true_value(probs, labels), 0.0),
        ("two-stage", "two-stage-", two_stage.probs, two_stage.value, two_stage.value_stderr),
    ]
    rows = []
    for evaluation, prefix, target, truth, truth_stderr in targets:
        for propensity, mu in propensities.items():
            for name, estimator in (("ips", ips_estimate), ("snips", snips_estimate)):
                estimate = estimator(target, users, items, rewards, mu)
                rows.append(
                    {
                        "evaluation": evaluation,
                        "estimator": prefix + name,
                        "propensity": propensity,
                        "estimate": estimate,
                        "true_value": truth,
                        "true_value_stderr": truth_stderr,
                        "bias": estimate - truth,
                    }
                )
    return rows


def evaluate(
    out_dir: str | Path,
    *,
    cache_dir: str | Path | None = None,
    n_slates: int = 200,
    verbose: bool = True,
) -> Path:
    """Write `OUT/ope.csv` and `OUT/ope.md` for the runs of a `reproduce` output folder."""
    out_dir = Path(out_dir)
    meta_path = out_dir / "run.json"
    if not meta_path.is_file():
        raise ConfigError(
            f"{out_dir} is not an output folder of `twostage reproduce` ({meta_path.name} not "
            "found): give the folder a finished run wrote to (its --out, e.g. runs/ml-100k-paper)."
        )
    config = config_from_dict(json.loads(meta_path.read_text())["config"])
    models = [
        (method, seed, out_dir / "runs" / f"{method}-seed{seed}.pt")
        for method in config.methods
        for seed in config.seeds
    ]
    if config.methods and not any(path.is_file() for _, _, path in models):
        raise ConfigError(
            f"No trained models in {out_dir / 'runs'} (*.pt): `evaluate` needs the folder a "
            "run wrote them to (committed results/ folders keep summaries only)."
        )
    prepared = prepare(config, cache=StageCache(cache_dir), verbose=verbose)
    logging_probs = policy_probs(prepared, prepared.logging_policy.state)
    propensities = impression_propensities(prepared, logging_probs, config.bandit)
    slate_size = config.candidates.eval_k
    policies = [("logging", "logging", config.logging_policy.seed, logging_probs)]
    missing = []
    for method, seed, path in models:
        if not path.is_file():
            missing.append(path.name)
            continue
        state = torch.load(io.BytesIO(path.read_bytes()), map_location="cpu")
        policies.append(("candidate generator", method, seed, policy_probs(prepared, state)))
    rows = []
    for policy, method, seed, probs in policies:
        for row in evaluate_policy(
            prepared, probs, propensities, slate_size=slate_size, n_slates=n_slates, seed=seed
        ):
            rows.append({"policy": policy, "method": method, "seed": seed, **row})
    frame = pd.DataFrame(rows)[OPE_COLUMNS]
    atomic_write_text(out_dir / "ope.csv", frame.to_csv(index=False))
    atomic_write_text(out_dir / "ope.md", ope_markdown(frame, out_dir, missing))
    return out_dir


def ope_markdown(frame: pd.DataFrame, out_dir: Path, missing: list[str]) -> str:
    """Mean bias and its spread over seeds per method × estimator, then the greedy rewards."""
    table = (
        frame.groupby(["method", "evaluation", "estimator", "propensity"], sort=False)
        .agg(
            true_value=("true_value", "mean"),
            estimate=("estimate", "mean"),
            mean_bias=("bias", "mean"),
            bias_sd=("bias", "std"),
            seeds=("seed", "nunique"),
        )
        .reset_index()
    )
    table["method"] = table["method"].map(display_name)
    lines = [
        "# Off-policy evaluation against the truth",
        "",
        "Stochastic policies: one-stage π = softmax(candidate-generator scores); two-stage",
        "p(a|x) = E_S[q(a|S)]. `single` divides by the logged single-draw propensity, `inclusion`",
        "by P(a ∈ S)/K; bias = estimate − true value (mean and SD over seeds). The candidate",
        "generators were trained on this log's positives: their estimates are in-sample.",
        "",
        *_markdown(table),
    ]
    if missing:
        lines += ["", f"Runs without a saved model (not evaluated): {', '.join(missing)}."]
    results_path = out_dir / "results.csv"
    if results_path.is_file():
        results = pd.read_csv(results_path)
        greedy = results[(results.metric == "reward") & (results.epoch == results.best_epoch)]
        greedy = (
            greedy.groupby(["method", "evaluation"], sort=False)["value"]
            .agg(["mean", "std", "count"])
            .reset_index()
        )
        greedy["method"] = greedy["method"].map(display_name)
        lines += [
            "",
            "## Greedy top-item reward at the best epoch (from results.csv)",
            "",
            "The deterministic policies the paper reports, for comparison.",
            "",
            *_markdown(greedy),
        ]
    return "\n".join(lines) + "\n"


def _markdown(frame: pd.DataFrame) -> list[str]:
    """A pipe table; floats to 4 significant digits."""

    def cell(value) -> str:
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    lines += [
        "| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)
    ]
    return lines
