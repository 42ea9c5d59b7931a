"""Runtime settings: apart from the config, in no cache key, and older runs' copies are dropped."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from twostage.errors import ConfigError
from twostage.pipeline.config import ExperimentConfig, WorldConfig, config_from_dict
from twostage.runtime import Runtime

ROOT = Path(__file__).resolve().parents[1]


def test_runtime_settings_are_not_experiment_settings():
    names = {f.name for f in dataclasses.fields(ExperimentConfig)}
    world = {f.name for f in dataclasses.fields(WorldConfig)}
    assert "threads" not in names and "chunk_users" not in world
    assert {f.name for f in dataclasses.fields(Runtime)} == {"threads", "chunk_users"}


def test_runtime_refuses_what_cannot_work():
    with pytest.raises(ConfigError, match="runtime.threads") as err:
        Runtime(threads=-3)
    assert err.value.setting == "runtime.threads"
    with pytest.raises(ConfigError, match="runtime.chunk_users"):
        Runtime(chunk_users=0)


def test_apply_sets_threads_only_when_given():
    before = torch.get_num_threads()
    try:
        Runtime().apply()
        assert torch.get_num_threads() == before
        Runtime(threads=1).apply()
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("name", ["ml-100k", "synthetic-ml1m"])
def test_committed_runs_with_runtime_settings_in_their_config_still_load(name: str):
    values = json.loads((ROOT / "results" / name / "run.json").read_text())["config"]
    assert "threads" in values and "chunk_users" in values["world"]  # written by an older version
    config = config_from_dict(values)
    assert config.dataset == values["dataset"] and config.world.seed == values["world"]["seed"]
