"""The Ray backend: the local backend's results, on a Ray instance and on a two-process cluster."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from tiny import tiny_config

from twostage.errors import ConfigError
from twostage.pipeline.cache import StageCache
from twostage.pipeline.experiment import check_jobs, prepare, run_all
from twostage.pipeline.sweep import sweep
from twostage.runtime import Runtime


@pytest.fixture(scope="module")
def local_runs(tiny_world: Path, tmp_path_factory: pytest.TempPathFactory):
    """The tiny world's stages and its runs on the local backend with one thread."""
    tmp = tmp_path_factory.mktemp("ray")
    config = tiny_config(tiny_world)
    prepared = prepare(config, cache=StageCache(tmp / "cache"), verbose=False)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        local = run_all(prepared, config, tmp / "local", verbose=False)
    finally:
        torch.set_num_threads(before)
    return config, prepared, local, tmp


@pytest.fixture
def ray():
    """The ray module (the `ray` extra, installed by CI); each test starts or joins its own Ray
    and none is left running after it."""
    module = pytest.importorskip("ray", reason="the ray extra is not installed")
    if module.is_initialized():
        module.shutdown()
    yield module
    module.shutdown()


@pytest.mark.slow
def test_a_local_ray_instance_gives_the_local_results_and_resumes(local_runs, ray):
    config, prepared, local, tmp = local_runs
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    out = tmp / "on-ray"
    # One run stored beforehand: Ray trains only the others, and that one is kept as it is.
    (out / "runs").mkdir(parents=True)
    for suffix in (".json", ".pt"):
        name = f"ce-seed1{suffix}"
        shutil.copy(tmp / "local" / "runs" / name, out / "runs" / name)
    kept = out / "runs" / "ce-seed1.json"
    stamp = kept.stat().st_mtime_ns
    runtime = Runtime(threads=2, jobs=2, backend="ray")  # tasks of one CPU and one thread
    on_ray = run_all(prepared, config, out, verbose=False, runtime=runtime)
    assert on_ray.to_csv(index=False) == local.to_csv(index=False)
    assert kept.stat().st_mtime_ns == stamp
    for run in (tmp / "local" / "runs").glob("*-seed*.json"):
        stored = json.loads((out / "runs" / run.name).read_text())
        assert stored["key"] == json.loads(run.read_text())["key"]
        assert (out / "runs" / run.name).with_suffix(".pt").is_file()


@pytest.mark.slow
def test_a_sweep_on_ray_gives_the_local_sweep(local_runs, ray):
    config, _, _, tmp = local_runs
    grid = {"alpha": [0.0, 0.1]}
    cache = tmp / "cache"
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        local = sweep(config, grid, tmp / "sweep-local", cache_dir=cache, verbose=False)
    finally:
        torch.set_num_threads(before)
    runtime = Runtime(threads=2, jobs=2, backend="ray")  # starts its own local instance
    try:  # the sweep sets this process's threads (the stages'); later tests expect them back
        on_ray = sweep(
            config, grid, tmp / "sweep-ray", cache_dir=cache, runtime=runtime, verbose=False
        )
    finally:
        torch.set_num_threads(before)
    assert ray.is_initialized()
    assert on_ray.to_csv(index=False) == local.to_csv(index=False)
    assert (tmp / "sweep-ray" / "sweep.csv").read_bytes() == (
        tmp / "sweep-local" / "sweep.csv"
    ).read_bytes()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_a_two_process_cluster_gives_the_local_results(local_runs, ray, tmp_path):
    """`ray start --head` and a second `ray start` node on this machine, one CPU each; the run
    joins it by address, as it would a real cluster's head."""
    config, prepared, local, _ = local_runs
    ray_cli = shutil.which("ray") or str(Path(sys.executable).parent / "ray")
    port = _free_port()
    address = f"127.0.0.1:{port}"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    # This cluster's sockets and logs, away from other Ray users; a short path, as a Unix
    # socket's path may not exceed about 100 characters.
    temp = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
    start = [ray_cli, "start", "--num-cpus=1", "--disable-usage-stats"]
    try:
        subprocess.run(
            [*start, "--head", f"--port={port}", "--include-dashboard=false", f"--temp-dir={temp}"],
            check=True,
            env=env,
            capture_output=True,
            timeout=120,
        )
        subprocess.run(
            [*start, f"--address={address}"], check=True, env=env, capture_output=True, timeout=120
        )
        runtime = Runtime(threads=1, backend="ray", address=address)
        on_cluster = run_all(prepared, config, tmp_path / "cluster", verbose=False, runtime=runtime)
        nodes = [node for node in ray.nodes() if node["Alive"]]
        assert len(nodes) == 2
    finally:
        ray.shutdown()
        subprocess.run([ray_cli, "stop", "--force"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(temp, ignore_errors=True)
    assert on_cluster.to_csv(index=False) == local.to_csv(index=False)


def test_without_ray_the_ray_backend_is_refused_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(ConfigError, match=r"\.\[ray\]"):
        check_jobs(Runtime(backend="ray"), torch.device("cpu"))


def test_bad_backend_settings_are_refused():
    with pytest.raises(ConfigError, match="runtime.backend"):
        Runtime(backend="dask")
    with pytest.raises(ConfigError, match="--backend ray"):
        Runtime(address="127.0.0.1:6379")
    with pytest.raises(ConfigError, match="CPU only"):
        check_jobs(Runtime(backend="ray"), torch.device("cuda"))


@pytest.mark.parametrize("mode, pinned", [("dense", False), ("on-demand", True)])
def test_a_ray_task_pins_large_blocks_for_an_on_demand_world(monkeypatch, mode, pinned):
    """A Ray worker is a process of its own: it pins glibc's large-block threshold itself, as
    `prepare` does in the driver, when the world is on demand (and only then)."""
    import dataclasses

    from twostage.pipeline import experiment, ray_backend
    from twostage.pipeline.config import ExperimentConfig

    calls: list[int] = []
    monkeypatch.setattr(ray_backend, "pin_large_blocks", lambda: calls.append(1) or True)
    monkeypatch.setattr(experiment, "train_run", lambda context, config, device, job: "ran")
    config = ExperimentConfig()
    config = dataclasses.replace(config, world=dataclasses.replace(config.world, mode=mode))
    before = torch.get_num_threads()
    try:
        assert ray_backend._task(None, config, ("ce", 0, "key"), 1) == "ran"
    finally:
        torch.set_num_threads(before)
    assert bool(calls) == pinned
