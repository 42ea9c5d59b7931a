"""The experiment: every run, resumption, determinism, the chosen epoch, the outputs."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from tiny import TINY_OVERRIDES, tiny_config

from twostage.data import load_movielens
from twostage.errors import NumericsError
from twostage.pipeline import reproduce
from twostage.pipeline.cache import StageCache
from twostage.pipeline.experiment import prepare, run_all
from twostage.results import RESULT_COLUMNS


def test_runs_resume_and_results_are_deterministic(tiny_world: Path, tmp_path: Path):
    config = tiny_config(tiny_world)
    prepared = prepare(config, cache=StageCache(tmp_path / "cache"), verbose=False)
    results = run_all(prepared, config, tmp_path / "out", verbose=False)
    assert list(results.columns) == RESULT_COLUMNS
    assert set(results.method) == {"ce", "ips", "2s"} and set(results.seed) == {0, 1}
    run_file = tmp_path / "out" / "runs" / "2s-seed1.json"
    stamp = run_file.stat().st_mtime_ns
    again = run_all(prepared, config, tmp_path / "out", verbose=False)
    assert run_file.stat().st_mtime_ns == stamp  # not recomputed
    assert again.equals(results)
    fresh = run_all(prepared, config, tmp_path / "out2", verbose=False)
    assert fresh.to_csv(index=False) == results.to_csv(index=False)


def test_best_epoch_maximises_validation_two_stage_precision(tiny_world: Path, tmp_path: Path):
    config = tiny_config(tiny_world, candidates={**TINY_OVERRIDES["candidates"], "epochs": 3})
    prepared = prepare(config, cache=StageCache(tmp_path), verbose=False)
    results = run_all(prepared, config, tmp_path / "out", verbose=False)
    for (_method, _seed), run in results.groupby(["method", "seed"]):
        sel = run[
            (run.split == "val") & (run.evaluation == "two-stage") & (run.metric == "Precision@10")
        ].sort_values("epoch")
        assert run.best_epoch.iloc[0] == int(sel.value.to_numpy().argmax())


def test_reproduce_writes_every_output(tiny_world: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    before = torch.get_num_threads()
    try:
        out = reproduce(
            tiny_config(tiny_world), tmp_path / "out", cache_dir=tmp_path / "cache", verbose=False
        )
    finally:
        torch.set_num_threads(before)
    for name in (
        "results.csv",
        "summary.md",
        "summary.csv",
        "run.json",
        "world_probabilities.json",
    ):
        assert (out / name).is_file(), name
    meta = json.loads((out / "run.json").read_text())
    assert meta["synthetic"] is True and meta["data"]["fingerprint"]
    assert meta["config"]["candidates"]["alpha"] == 1e-3
    # The world's FLOPs, counted from the shapes: two passes over every user × item pair, each
    # pair 100·50 + 50·1 multiply-adds after the simulator's first layer, 2 FLOPs each.
    pairs = meta["data"]["users"] * meta["data"]["items"]
    assert meta["world"]["flops"] == 2 * 2 * pairs * (100 * 50 + 50)
    # The thread count the run used, and the rule that chose it (twostage.runtime).
    assert meta["runtime"]["threads"] == 0 and meta["runtime"]["torch_threads"] == 1
    assert meta["runtime"]["threads_from"] == "$OMP_NUM_THREADS"
    assert list((out / "figures").glob("*.png"))
    assert load_movielens(tiny_world).synthetic


@pytest.mark.parametrize("bad", [0.0, float("nan"), 1.5])
def test_a_bandit_log_with_bad_propensities_is_refused_naming_the_row(bad, tiny_world, tmp_path):
    from twostage.pipeline.experiment import make_context

    config = tiny_config(tiny_world)
    prepared = prepare(config, cache=StageCache(tmp_path), verbose=False)
    propensities = prepared.log.propensities.clone()
    propensities[7] = bad
    log = dataclasses.replace(prepared.log, propensities=propensities)
    with pytest.raises(NumericsError, match="bandit log: impression 7 .*expected a probability"):
        make_context(prepared.data, prepared.world, log, prepared.ranker, config, prepared.device)


def test_parallel_jobs_give_the_serial_results_and_resume(tiny_world: Path, tmp_path: Path):
    from twostage.pipeline import experiment
    from twostage.runtime import Runtime

    config = tiny_config(tiny_world)
    before = torch.get_num_threads()
    try:
        prepared = prepare(config, cache=StageCache(tmp_path / "cache"), verbose=False)
        torch.set_num_threads(1)
        serial = run_all(prepared, config, tmp_path / "serial", verbose=False)
        # One run stored beforehand: the pool trains only the other five, and keeps that one.
        (tmp_path / "parallel" / "runs").mkdir(parents=True)
        for suffix in (".json", ".pt"):
            name = f"ips-seed1{suffix}"
            (tmp_path / "parallel" / "runs" / name).write_bytes(
                (tmp_path / "serial" / "runs" / name).read_bytes()
            )
        kept = tmp_path / "parallel" / "runs" / "ips-seed1.json"
        stamp = kept.stat().st_mtime_ns
        runtime = Runtime(threads=2, jobs=2)
        parallel = run_all(prepared, config, tmp_path / "parallel", verbose=False, runtime=runtime)
    finally:
        torch.set_num_threads(before)
    assert parallel.to_csv(index=False) == serial.to_csv(index=False)
    assert kept.stat().st_mtime_ns == stamp
    for run in (tmp_path / "serial" / "runs").glob("*-seed*.json"):
        stored = json.loads((tmp_path / "parallel" / "runs" / run.name).read_text())
        assert stored["key"] == json.loads(run.read_text())["key"]
        assert (tmp_path / "parallel" / "runs" / run.name).with_suffix(".pt").is_file()
    assert not experiment._SHARED  # the workers' view of the stages is not kept alive


def test_jobs_are_refused_where_workers_cannot_run():
    from twostage.errors import ConfigError
    from twostage.pipeline.experiment import check_jobs
    from twostage.runtime import Runtime

    with pytest.raises(ConfigError, match="runtime.jobs must be ≥ 1"):
        Runtime(jobs=0)
    with pytest.raises(ConfigError, match="CPU only"):
        check_jobs(Runtime(jobs=2), torch.device("cuda"))
    check_jobs(Runtime(jobs=1), torch.device("cuda"))  # one job: nothing to fork
    assert Runtime(threads=2, jobs=2).threads_per_job() == 1
    assert Runtime(threads=1, jobs=4).threads_per_job() == 1
    assert Runtime(threads=8, jobs=3).threads_per_job() == 2
