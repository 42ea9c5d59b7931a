"""The objective registry: what derives from it, and a new objective added in one entry."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from twostage import objectives
from twostage.errors import ConfigError
from twostage.losses import ips_loss
from twostage.pipeline import reproduce
from twostage.pipeline.config import ExperimentConfig, parse_methods, profile_config, with_overrides
from twostage.pipeline.sweep import FACTORS
from twostage.results import display_name, method_order

EXAMPLE = Path(__file__).resolve().parents[1] / "book" / "examples" / "unclipped_ips.py"


def test_the_paper_objectives_are_registered_in_the_papers_order():
    assert objectives.paper_methods() == ("ce", "ips", "2s") == ExperimentConfig().methods
    assert [display_name(m) for m in ("ce", "ips", "2s")] == ["Cross-entropy", "1-IPS", "2-IPS"]
    assert [o.name for o in objectives.OBJECTIVES.values() if o.needs_ranker] == ["2s"]


def test_sweep_factors_run_the_objectives_that_read_them():
    assert FACTORS["alpha"].methods == ("2s",)
    assert set(FACTORS["cap"].methods) == {"ips", "2s", "ips-topk"}
    assert FACTORS["epochs"].methods == FACTORS["oracle_ranker"].methods == ("ce", "ips", "2s")


def test_a_name_is_registered_once_and_unknown_names_are_refused():
    with pytest.raises(ConfigError, match="registered already"):
        objectives.register(objectives.Objective("ce", "again", objectives.OBJECTIVES["ce"].loss))
    with pytest.raises(ConfigError, match="Unknown method 'dro'"):
        objectives.get("dro")


@pytest.fixture
def example():
    """The book's example objective, registered for one test and removed after it."""
    spec = importlib.util.spec_from_file_location("unclipped_ips", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
    objectives.OBJECTIVES.pop("ips-unclipped")
    sys.modules.pop("unclipped_ips", None)


def test_the_example_is_ten_lines_of_code():
    code = [line for line in EXAMPLE.read_text().splitlines() if line.strip()]
    assert len(code) <= 12  # docstring and imports included


def test_a_registered_objective_is_accepted_everywhere(example):
    assert parse_methods("ce,ips-unclipped") == ("ce", "ips-unclipped")
    assert display_name("ips-unclipped") == "1-IPS (unclipped)"
    assert method_order(["ips-unclipped", "2s", "ce"]) == ["ce", "2s", "ips-unclipped"]
    assert objectives.paper_methods() == ("ce", "ips", "2s")  # not run by default


def test_the_example_equals_one_stage_ips_when_no_weight_is_clipped(example):
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 5, generator=generator)
    items = torch.tensor([0, 1, 2, 3, 4, 0])
    propensities = torch.softmax(logits, dim=1).gather(1, items[:, None]).squeeze(1) * 2
    batch = objectives.Batch(logits, items, propensities, None, k=5)
    settings = ExperimentConfig().candidates  # weights are 0.5: inside [floor, cap]
    loss = example.UNCLIPPED_IPS.loss(batch, settings, generator)
    assert torch.allclose(loss, ips_loss(logits, items, propensities, cap=10.0, floor=0.01))


@pytest.mark.slow
def test_the_example_runs_through_the_pipeline_and_the_report(example, tmp_path):
    config = with_overrides(
        profile_config("smoke"),
        {"methods": ("ce", "ips-unclipped"), "seeds": (0,), "candidates": {"epochs": 2}},
    )
    out = reproduce(config, tmp_path / "out", cache_dir=tmp_path / "stages", verbose=False)
    summary = pd.read_csv(out / "summary.csv")
    assert set(summary["method"]) == {"ce", "ips-unclipped"}
    assert "| 1-IPS (unclipped) |" in (out / "summary.md").read_text()
