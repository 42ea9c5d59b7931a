"""Same weights, both codes: the stage outputs of the authors' code and ours on one exported world.

Seeds cannot pair the two sides' training runs (see README), so the comparison of trained results
is of means over seeds. This check removes training from the comparison: both codes get the same
weights and inputs, and each stage's output is compared number by number:

- simulator: their `ImpressionSimulator` on every pair (its own timestamp) against the exported
  `World.probabilities`;
- ranker: their `Ranker` at each user's mean timestamp against our `Context.ranker_scores`,
  the q of 2-IPS and of the two-stage evaluation;
- candidate generator: one of our trained 2-IPS models, loaded into their `Nominator`: logits,
  and their `Evaluator`'s one- and two-stage Precision@10 and NDCG@10 on validation and test
  users against ours;
- 2-IPS loss: one batch (the log's first `batch_size` positives) from a fresh model, with the
  same sampled slates fed to their `loss_2s` (their `torch.multinomial` replaced by our draws):
  the loss and every parameter's gradient.

Our side writes `WORK/same_weights/ours.pt`; `SCRIPT` runs in their edited copy (one thread) and
prints one JSON object, which `check` returns and the harness writes to `OUT/same_weights.json`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from fidelity.crosscheck import METRICS, CrossCheckError, authors_state, run_script

TRAINED_METHOD, TRAINED_SEED, BATCH_SEED = "2s", 0, 1

SCRIPT = r"""
import json, math, sys
import numpy as np, torch
torch.set_num_threads(1)
import twostage_world, loss as their_loss
from metric import Evaluator
from model import ImpressionSimulator, Nominator, Ranker

ours = torch.load(sys.argv[1])
syn = twostage_world.ExportedWorld(device="cpu")
nu, ni = syn.NUM_USERS, syn.NUM_ITEMS
out = {}
sim = ImpressionSimulator(use_impression_feats=True)
sim.load_state_dict(torch.load(twostage_world.DIR + "/simulator.pt"))
sim.eval()
probs = syn.impression_feats["label_probs"]
worst = 0.0
with torch.no_grad():
    for start in range(0, nu, 64):
        rows = range(start * ni, min(nu, start + 64) * ni)
        feats, _ = syn[rows]
        diff = torch.sigmoid(sim(**feats)) - probs[rows.start:rows.stop]
        worst = max(worst, diff.abs().max().item())
out["simulator_probabilities"] = {"max_abs_diff": worst, "pairs": nu * ni}
ranker = Ranker()
ranker.load_state_dict(torch.load(twostage_world.DIR + "/ranker.pt"))
ranker.eval()
ranker.set_binary(False)
times = syn.impression_feats["real_feats"].view(nu, ni).mean(1).view(-1, 1)
with torch.no_grad():
    ranker_logits = ranker(syn.user_feats, syn.item_feats, {"real_feats": times})
out["ranker_logits"] = {
    "max_abs_diff": (ranker_logits - ours["ranker_scores"]).abs().max().item(),
    "max_abs": ours["ranker_scores"].abs().max().item(),
}
nominator = Nominator()
nominator.load_state_dict(ours["nominator"])
nominator.eval()
nominator.set_binary(False)
u, a, p, r = twostage_world.bandit_log()
ev = Evaluator(u[r > 0], a[r > 0], sim, syn)
splits = {"val": list(range(twostage_world.NUM_VAL_USERS)),
          "test": list(range(twostage_world.NUM_VAL_USERS, nu))}
metrics, logit_diff = [], 0.0
with torch.no_grad():
    for split, users in splits.items():
        logits = nominator({k: v[users] for k, v in syn.user_feats.items()}, syn.item_feats)
        logit_diff = max(logit_diff, (logits - ours["logits"][users]).abs().max().item())
        # their run.py passes one_stage_ranking_eval's edited logits on to the two-stage call
        one = ev.one_stage_ranking_eval(logits, users)
        two = ev.two_stage_ranking_eval(logits, ranker, users)
        for evaluation, res in (("one-stage", one), ("two-stage", two)):
            for metric in ours["metric_names"]:
                metrics.append({"split": split, "evaluation": evaluation, "metric": metric,
                                "authors": float(res[metric]),
                                "ours": ours["metrics"][f"{split}/{evaluation}/{metric}"]})
out["nominator_logits"] = {"max_abs_diff": logit_diff}
out["evaluator"] = metrics
fresh = Nominator()
fresh.load_state_dict(ours["fresh"])
fresh.set_binary(False)
b = ours["batch"]
logits = fresh({k: v[b["users"]] for k, v in syn.user_feats.items()}, syn.item_feats)
queue = [s.reshape(-1) for s in b["slates"]]
their_loss.torch.multinomial = lambda *args, **kwargs: queue.pop(0)
loss = their_loss.loss_2s(logits, b["items"], b["propensities"], ranker_logits[b["users"]],
                          upper_limit=b["cap"], alpha=b["alpha"])
names = [n for n, _ in fresh.named_parameters()]
grads = torch.autograd.grad(loss, list(fresh.parameters()))
out["two_stage_loss"] = {
    "authors": loss.item(), "ours": b["loss"],
    "grad_max_abs_diff": max((g - b["grads"][n]).abs().max().item() for n, g in zip(names, grads)),
    "grad_max_abs": max(g.abs().max().item() for g in grads),
    "slates_used": len(b["slates"]) - len(queue),
}
print(json.dumps(out))
"""


def our_side(prepared, config, dest: Path) -> Path:
    """Write what `SCRIPT` compares against into `dest/ours.pt` and return its path.

    Holds: ranker_scores (n_users, n_items); nominator (their names), logits (n_users, n_items)
    and metrics {split/evaluation/metric: value} of our 2-IPS seed-0 model at its best epoch;
    fresh (their names) and batch {users, items, propensities (B,), slates (B, K, L), cap, alpha,
    loss, grads} for one loss evaluation.
    """
    from twostage.losses import two_stage_ips_loss
    from twostage.models import Nominator
    from twostage.pipeline.candidates import train_candidate_generator
    from twostage.sampling import sample_slates

    context, cfg = prepared.context, config.candidates
    trained = train_candidate_generator(
        TRAINED_METHOD, TRAINED_SEED, context, cfg, prepared.device, test_every_epoch=False
    )
    best = trained["best_epoch"]
    metrics = {
        f"{r['split']}/{r['evaluation']}/{r['metric']}": r["value"]
        for r in trained["rows"]
        if r["epoch"] == best and r["split"] in ("val", "test") and r["metric"] in METRICS
    }
    model = Nominator(context.catalog)
    model.load_state_dict(trained["state"])
    model.eval()
    with torch.no_grad():
        logits = model.score_all(torch.arange(context.catalog.n_users))

    torch.manual_seed(BATCH_SEED)
    fresh = Nominator(context.catalog)
    rows = torch.arange(min(cfg.batch_size, len(context.users)))
    users, items = context.users[rows], context.items[rows]
    propensities = context.propensities[rows]
    batch_logits = fresh.score_all(users)
    with torch.no_grad():
        slates = sample_slates(
            F.softmax(batch_logits.detach() / cfg.temperature, dim=1),
            cfg.n_slates,
            cfg.slate_size,
            generator=torch.Generator().manual_seed(BATCH_SEED),
        )
    loss = two_stage_ips_loss(
        batch_logits,
        items,
        propensities,
        context.ranker_scores[users],
        alpha=cfg.alpha,
        temperature=cfg.temperature,
        cap=cfg.cap,
        floor=cfg.floor,
        slates=slates.clone(),
    )
    names = [n for n, _ in fresh.named_parameters()]
    grads = dict(zip(names, torch.autograd.grad(loss, list(fresh.parameters())), strict=True))
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / "ours.pt"
    torch.save(
        {
            "ranker_scores": context.ranker_scores.cpu(),
            "nominator": authors_state(trained["state"], "nominator"),
            "logits": logits,
            "metrics": metrics,
            "metric_names": list(METRICS),
            "fresh": authors_state(fresh.state_dict(), "nominator"),
            "batch": {
                "users": users,
                "items": items,
                "propensities": propensities,
                "slates": slates,
                "cap": cfg.cap,
                "alpha": cfg.alpha,
                "loss": loss.item(),
                "grads": authors_state(grads, "nominator"),
            },
        },
        path,
    )
    return path


def check(prepared, config, copy: Path, export: Path, work: Path) -> dict:
    """Run both sides; return their comparison (see the module docstring)."""
    if config.candidates.floor != 0.01 or not math.isclose(config.candidates.temperature, math.e):
        raise CrossCheckError(
            "the same-weights check needs the authors' fixed floor 0.01 and temperature e "
            f"(their loss_2s defaults); got floor {config.candidates.floor}, "
            f"temperature {config.candidates.temperature}."
        )
    ours = our_side(prepared, config, work / "same_weights")
    out = run_script(copy, export, SCRIPT, str(ours.resolve()), what="the same-weights check")
    return json.loads(out.strip().splitlines()[-1])


def markdown(result: dict) -> list[str]:
    """Lines for summary.md: each stage's largest difference, and the evaluator side by side."""
    loss = result["two_stage_loss"]
    lines = [
        "## Same weights, both codes",
        "",
        "Both codes given the same weights and inputs (`fidelity/same_weights.py`); largest "
        "absolute differences in float32:",
        "",
        f"- simulator probabilities, {result['simulator_probabilities']['pairs']:,} pairs: "
        f"{result['simulator_probabilities']['max_abs_diff']:.2g}",
        f"- ranker logits (largest |logit| {result['ranker_logits']['max_abs']:.3g}): "
        f"{result['ranker_logits']['max_abs_diff']:.2g}",
        f"- candidate-generator logits (our trained 2-IPS, seed {TRAINED_SEED}): "
        f"{result['nominator_logits']['max_abs_diff']:.2g}",
        f"- 2-IPS loss on one batch with the same {loss['slates_used']} rows of slates: "
        f"theirs {loss['authors']:.7g}, ours {loss['ours']:.7g}; gradients "
        f"{loss['grad_max_abs_diff']:.2g} (largest |gradient| {loss['grad_max_abs']:.3g})",
        "",
        "| split | evaluation | metric | authors' evaluator | ours |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {m['split']} | {m['evaluation']} | {m['metric']} | {m['authors']:.6f} | "
        f"{m['ours']:.6f} |"
        for m in result["evaluator"]
    ]
    return lines
