"""Runtime settings: apart from the config, in no cache key, and older runs' copies are dropped."""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import subprocess
import sys
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


_RETAINED = """
import sys
import numpy as np
from twostage.runtime import pin_large_blocks

def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) * 1024

pinned = pin_large_blocks() if sys.argv[1] == "pin" else False
big = np.ones(30 << 17)  # 30 MB, mapped; freeing it raises glibc's threshold unless pinned
del big
before = rss()
block = np.ones(8 << 17)  # 8 MB: its own mapping when pinned, else from the heap
del block
print(pinned, rss() - before)
"""


@pytest.mark.skipif(
    not Path("/proc/self/status").exists() or platform.libc_ver()[0] != "glibc",
    reason="glibc's malloc on Linux only",
)
def test_pinned_large_blocks_go_back_to_the_system_when_freed():
    """A freed large temporary is returned with the pin, and stays in the process without it
    (the heap growth that stalled the million-item bandit log)."""

    def retained(mode: str) -> tuple[str, int]:
        out = subprocess.run(
            [sys.executable, "-c", _RETAINED, mode], capture_output=True, text=True, check=True
        ).stdout.split()
        return out[0], int(out[1])

    pinned, kept = retained("pin")
    assert pinned == "True" and kept < 1 << 20
    unpinned, kept_unpinned = retained("none")
    assert unpinned == "False" and kept_unpinned > 4 << 20  # the pin is what makes the difference


def _loop_threads() -> int:
    return runtime.compiled_loop_threads()


def test_compiled_loops_run_serially_in_a_forked_process() -> None:
    import multiprocessing

    assert runtime.compiled_loop_threads() == torch.get_num_threads()
    with multiprocessing.get_context("fork").Pool(1) as pool:
        assert pool.apply(_loop_threads) == 1
