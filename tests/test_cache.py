"""The stage cache: reuse, rebuilding downstream of a change, corrupt artifacts, sharing."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch
from tiny import cli, env, tiny_config

from twostage.pipeline.cache import StageCache
from twostage.pipeline.experiment import prepare


def test_cached_stages_are_reused_and_a_changed_setting_rebuilds_only_downstream(
    tiny_world: Path, tmp_path: Path
):
    cache = StageCache(tmp_path)
    first = prepare(tiny_config(tiny_world), cache=cache, verbose=False)
    assert not any(first.cached.values())
    again = prepare(tiny_config(tiny_world), cache=cache, verbose=False)
    assert all(again.cached.values())
    assert torch.equal(again.world.probabilities, first.world.probabilities)
    changed = prepare(tiny_config(tiny_world, ranker={"epochs": 2}), cache=cache, verbose=False)
    assert changed.cached == {
        "simulator": True,
        "world": True,
        "logging_policy": True,
        "bandit_log": True,
        "ranker": False,
    }
    world_changed = prepare(
        tiny_config(tiny_world, world={"positive_share": 0.2}), cache=cache, verbose=False
    )
    assert world_changed.cached["simulator"] and not world_changed.cached["world"]
    assert not world_changed.cached["ranker"]


def test_a_corrupt_cached_artifact_is_rebuilt_with_a_warning(tiny_world: Path, tmp_path: Path):
    cache = StageCache(tmp_path)
    first = prepare(tiny_config(tiny_world), cache=cache, verbose=False)
    path = cache.path("world", first.keys["world"])
    path.write_bytes(path.read_bytes()[:100])  # truncated
    with pytest.warns(UserWarning, match="corrupt"):
        again = prepare(tiny_config(tiny_world), cache=cache, verbose=False)
    assert not again.cached["world"] and again.cached["simulator"]
    assert torch.equal(again.world.probabilities, first.world.probabilities)


@pytest.mark.slow
def test_two_processes_sharing_a_cache_do_not_corrupt_it(tiny_world: Path, tmp_path: Path):
    outs = [tmp_path / "a", tmp_path / "b"]
    processes = [
        subprocess.Popen(
            cli(tmp_path, tiny_world, out, seeds="0-1"),
            env=env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for out in outs
    ]
    for process in processes:
        _, err = process.communicate(timeout=300)
        assert process.returncode == 0, err[-2000:]
    assert (outs[0] / "results.csv").read_bytes() == (outs[1] / "results.csv").read_bytes()
    cache = StageCache(tmp_path / "cache")
    for stage in ("simulator", "world", "logging_policy", "bandit_log", "ranker"):
        artifacts = list((cache.root / stage).glob("*.pt"))
        assert len(artifacts) == 1
        assert cache.load(stage, artifacts[0].stem) is not None  # checksum holds
