"""The stage cache: reuse, rebuilding downstream of a change, corrupt artifacts, sharing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny import cli, env, tiny_config

from twostage.errors import TwoStageError
from twostage.pipeline.cache import STAGES, StageCache
from twostage.pipeline.config import SimulatorConfig, profile_config
from twostage.pipeline.experiment import prepare, stage_key


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


def test_the_paper_settings_keep_the_cache_keys_of_older_versions():
    cpu = torch.device("cpu")
    # The key older versions gave the paper's simulator under the paper's stop rule (their
    # default): their caches and runs stay valid. The default now follows the authors' code.
    old = SimulatorConfig(early_stop="run")
    assert stage_key("simulator", old, "fingerprint", cpu) == "7f267c1da90ba454"
    assert stage_key("simulator", SimulatorConfig(), "fingerprint", cpu) != "7f267c1da90ba454"
    smoke = profile_config("smoke").simulator
    assert smoke.val_rows is not None
    assert stage_key("simulator", smoke, "fingerprint", cpu) != "45d75c0fae85d77e"  # the old one


def test_entries_and_clearing_touch_only_the_caches_own_files(tiny_world: Path, tmp_path: Path):
    cache = StageCache(tmp_path / "cache")
    prepare(tiny_config(tiny_world), cache=cache, verbose=False)
    entries = cache.entries()
    assert [e.stage for e in entries] == list(STAGES) and all(e.complete for e in entries)
    assert cache.size() == sum(e.size for e in entries) > 0
    foreign = [cache.root / "notes.txt", cache.root / "world" / "mine.pt"]
    for path in foreign:
        path.write_text("not the cache's")
    removed, skipped = cache.clear("simulator")
    assert [e.stage for e in removed] == ["simulator"] and not skipped
    assert not (cache.root / "simulator").exists()
    assert [e.stage for e in cache.entries()] == list(STAGES[1:])
    removed, _ = cache.clear()
    assert len(removed) == 4 and cache.entries() == []
    assert all(path.read_text() == "not the cache's" for path in foreign)
    assert sorted(p.name for p in cache.root.rglob("*")) == ["mine.pt", "notes.txt", "world"]


def test_clearing_refuses_a_directory_that_is_not_a_cache(tmp_path: Path):
    (tmp_path / "thesis.tex").write_text("keep me")
    with pytest.raises(TwoStageError, match="not a twostage stage cache"):
        StageCache(tmp_path).clear()
    with pytest.raises(TwoStageError, match="unknown stage 'nosuchstage'"):
        StageCache(tmp_path).clear("nosuchstage")
    assert (tmp_path / "thesis.tex").read_text() == "keep me"


def twostage(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "twostage", *args]
    return subprocess.run(command, env=env(), capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_the_cache_command_lists_and_clears_what_reproduce_stored(tiny_world: Path, tmp_path: Path):
    directory = tmp_path / "cache"
    run = subprocess.run(
        cli(tmp_path, tiny_world, tmp_path / "out", seeds="1", epochs=1),
        env=env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip().splitlines()[-1].startswith(f"Stage cache: {directory} (")

    listed = twostage("cache", "--cache-dir", str(directory))
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.strip().splitlines()
    assert lines[0] == f"Stage cache: {directory}"
    assert [line.split()[0] for line in lines[1:-1]] == list(STAGES)
    assert all(" MB " in line for line in lines[1:-1])
    assert lines[-1].startswith("Total: 5 entries, ") and lines[-1].endswith(" MB")

    for args in (["clear", "--stage", "nosuchstage"], ["purge"]):
        refused = twostage("cache", *args, "--cache-dir", str(directory))
        assert refused.returncode == 2 and refused.stdout == ""
        assert refused.stderr.startswith("twostage: error: ")
        assert len(refused.stderr.strip().splitlines()) == 1 and "Traceback" not in refused.stderr
    assert len(StageCache(directory).entries()) == 5  # nothing removed

    cleared = twostage("cache", "clear", "--stage", "world", "--cache-dir", str(directory))
    assert cleared.returncode == 0 and cleared.stdout.startswith("Removed 1 entries")
    assert "world" not in {e.stage for e in StageCache(directory).entries()}
    cleared = twostage("cache", "clear", "--cache-dir", str(directory))
    assert cleared.returncode == 0 and cleared.stdout.startswith("Removed 4 entries")
    assert (
        twostage("cache", "list", "--cache-dir", str(directory))
        .stdout.strip()
        .endswith("Total: 0 entries, 0.0 MB")
    )
