"""Top-K IPS loss (Chen et al., WSDM 2019) against a per-row reference, and its wiring."""

from __future__ import annotations

import math

import pytest
import torch

from twostage import objectives
from twostage.errors import ConfigError
from twostage.losses import ips_loss
from twostage.losses_topk import top_k_multiplier, topk_ips_loss
from twostage.pipeline.config import CandidateConfig, ExperimentConfig, parse_methods
from twostage.results import display_name


def reference_loss(logits, actions, propensities, k, cap, floor):
    """Plain per-row loops, in float64."""
    rows = logits.shape[0]
    log_pi, weights = [], []
    for i in range(rows):
        row = logits[i].double()
        log_p = row - torch.logsumexp(row, 0)
        pi_a = math.exp(log_p[actions[i]].item())
        weight = pi_a / propensities[i].item() * k * (1 - pi_a) ** (k - 1)
        weights.append(min(max(weight, floor), cap))
        log_pi.append(log_p[actions[i]])
    mean = sum(weights) / rows
    return -sum(w / mean * lp for w, lp in zip(weights, log_pi, strict=True)) / rows


def _batch(seed: int = 0, rows: int = 7, items: int = 9):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(rows, items, generator=g, dtype=torch.float64) * 2).requires_grad_()
    actions = torch.randint(0, items, (rows,), generator=g)
    propensities = torch.rand(rows, generator=g, dtype=torch.float64) * 0.3 + 0.01
    return logits, actions, propensities


@pytest.mark.parametrize("k, cap, floor", [(5, 10.0, 0.01), (2, 1.5, 0.3), (1, 100.0, 1e-3)])
def test_values_and_gradients_match_a_per_row_reference(k, cap, floor):
    logits, actions, propensities = _batch(k)
    loss = topk_ips_loss(logits, actions, propensities, k=k, cap=cap, floor=floor)
    (grad,) = torch.autograd.grad(loss, logits)
    reference_logits = logits.detach().clone().requires_grad_()
    expected = reference_loss(reference_logits, actions, propensities, k, cap, floor)
    (expected_grad,) = torch.autograd.grad(expected, reference_logits)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-10)
    assert torch.allclose(grad, expected_grad, rtol=1e-9, atol=1e-12)


def test_with_k_one_it_is_the_one_stage_ips_loss():
    logits, actions, propensities = _batch(3)
    assert topk_ips_loss(logits, actions, propensities, k=1).item() == pytest.approx(
        ips_loss(logits, actions, propensities).item(), rel=1e-12
    )


def test_the_multiplier_favours_items_the_policy_rarely_picks():
    pi = torch.tensor([0.0, 0.1, 0.5, 0.9, 1.0])
    lam = top_k_multiplier(pi, 5)
    assert lam[0].item() == 5.0 and lam[-1].item() == 0.0
    assert (lam[1:] < lam[:-1]).all()
    with pytest.raises(ConfigError, match="k must be"):
        top_k_multiplier(pi, 0)


def test_the_registered_ips_topk_uses_the_logs_k():
    logits, actions, propensities = _batch(4)
    config = CandidateConfig()
    batch = objectives.Batch(logits, actions, propensities, None, k=3)
    got = objectives.get("ips-topk").loss(batch, config, None)
    want = topk_ips_loss(logits, actions, propensities, k=3, cap=config.cap, floor=config.floor)
    assert got.item() == want.item()


def test_ips_topk_is_accepted_but_not_a_default_method():
    assert ExperimentConfig().methods == objectives.paper_methods() == ("ce", "ips", "2s")
    assert "ips-topk" in objectives.OBJECTIVES and display_name("ips-topk") == "Top-K IPS"
    assert parse_methods("ce,ips-topk") == ("ce", "ips-topk")
    with pytest.raises(ConfigError, match="ips-topk"):
        parse_methods("dro")
