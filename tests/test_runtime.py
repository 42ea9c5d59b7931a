"""Runtime settings: apart from the config, in no cache key, and older runs' copies are dropped."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest
import torch

from twostage import runtime
from twostage.errors import ConfigError
from twostage.pipeline.config import ExperimentConfig, WorldConfig, config_from_dict
from twostage.runtime import Runtime

ROOT = Path(__file__).resolve().parents[1]


def test_runtime_settings_are_not_experiment_settings():
    names = {f.name for f in dataclasses.fields(ExperimentConfig)}
    world = {f.name for f in dataclasses.fields(WorldConfig)}
    runtime = {f.name for f in dataclasses.fields(Runtime)}
    assert runtime == {"threads", "chunk_users", "jobs", "backend", "address"}
    assert not runtime & names and "chunk_users" not in world


def test_runtime_refuses_what_cannot_work():
    with pytest.raises(ConfigError, match="runtime.threads") as err:
        Runtime(threads=-3)
    assert err.value.setting == "runtime.threads"
    with pytest.raises(ConfigError, match="runtime.chunk_users"):
        Runtime(chunk_users=0)


@pytest.fixture
def torch_threads():
    """Restore torch's thread count after a test that sets it."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_threads_rule_explicit_then_environment_then_every_core(monkeypatch, torch_threads):
    monkeypatch.setattr(runtime, "machine_cores", lambda: 2)  # a 2-core machine
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert Runtime().apply() == (2, "all cores") and torch.get_num_threads() == 2
    assert Runtime(threads=1).apply() == (1, "--threads") and torch.get_num_threads() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert Runtime().apply() == (1, "$OMP_NUM_THREADS") and torch.get_num_threads() == 1
    assert Runtime(threads=2).apply() == (2, "--threads")  # the explicit count always wins
    assert torch.get_num_threads() == 2
    monkeypatch.setenv("OMP_NUM_THREADS", "2,1")  # a nested list: its first level
    assert Runtime().resolve_threads() == (2, "$OMP_NUM_THREADS")
    for ignored in ("", "0", "-1", "many"):  # what OpenMP would ignore: the next rule applies
        monkeypatch.setenv("OMP_NUM_THREADS", ignored)
        assert Runtime().resolve_threads() == (2, "all cores")


def test_every_core_is_what_this_process_may_use():
    assert 1 <= runtime.machine_cores() <= (os.cpu_count() or 1)
    assert runtime.env_threads({"OMP_NUM_THREADS": "3"}) == 3
    assert runtime.env_threads({}) is None


@pytest.mark.parametrize("name", ["beyond/ml-100k-topk-single", "beyond/ml-100k-inclusion"])
def test_committed_runs_with_runtime_settings_in_their_config_still_load(name: str):
    values = json.loads((ROOT / "results" / name / "run.json").read_text())["config"]
    assert "threads" in values and "chunk_users" in values["world"]  # written by an older version
    config = config_from_dict(values)
    assert config.dataset == values["dataset"] and config.world.seed == values["world"]["seed"]


@pytest.mark.parametrize("name", ["ml-100k", "worlds-ml-100k/world-0", "synthetic-ml1m"])
def test_committed_runs_of_this_version_keep_runtime_settings_out_of_their_config(name: str):
    meta = json.loads((ROOT / "results" / name / "run.json").read_text())
    values = meta["config"]
    assert "threads" not in values and "chunk_users" not in values["world"]
    assert meta["runtime"]["jobs"] == 2 and meta["runtime"]["run_threads"] == 1
    assert config_from_dict(values).simulator.early_stop == "authors"
