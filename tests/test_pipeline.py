"""The pipeline on a tiny synthetic world: stages, caching, resumption, determinism, CLI errors."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from twostage.cli import main
from twostage.data import load_movielens
from twostage.data.synthetic import SyntheticShape, write_synthetic_movielens
from twostage.errors import NumericsError
from twostage.losses import ips_loss
from twostage.pipeline import reproduce
from twostage.pipeline.cache import StageCache
from twostage.pipeline.config import profile_config, with_overrides
from twostage.pipeline.experiment import prepare, run_all
from twostage.results import RESULT_COLUMNS

TINY_OVERRIDES = {
    "seeds": (0, 1),
    "simulator": {"epochs": 1, "validate_every": 20},
    "logging_policy": {"n_train": 600, "n_val": 300, "epochs": 2},
    "ranker": {"epochs": 1},
    "candidates": {"epochs": 2, "n_slates": 4, "slate_size": 5, "eval_k": 5},
}


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("world") / "tiny"
    return write_synthetic_movielens(directory, shape=SyntheticShape(100, 60, 2500), seed=3)


def tiny_config(directory: Path, **overrides):
    config = with_overrides(profile_config("smoke"), TINY_OVERRIDES)
    return with_overrides(config, {"dataset": str(directory), "device": "cpu", **overrides})


def test_stages_produce_a_consistent_world(tiny_world: Path, tmp_path: Path):
    prepared = prepare(tiny_config(tiny_world), cache=StageCache(tmp_path), verbose=False)
    world, log = prepared.world, prepared.log
    n_users, n_items = prepared.data.n_users, prepared.data.n_items
    assert world.probabilities.shape == (n_users, n_items)
    assert world.positive_share == pytest.approx(0.08, abs=0.01)  # default rule off ML-1M
    assert torch.equal(world.labels, world.probabilities >= world.cut)
    assert len(log) == n_users * 5
    # five distinct items per user, propensities are the policy's single-draw probabilities
    per_user = log.items.view(n_users, 5)
    assert all(len(set(row.tolist())) == 5 for row in per_user)
    assert ((log.propensities > 0) & (log.propensities <= 1)).all()
    assert torch.equal(log.rewards, world.labels[log.users, log.items].float())


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


def test_nan_propensities_stop_training_with_a_clear_message():
    logits = torch.zeros(3, 4, requires_grad=True)
    with pytest.raises(NumericsError, match="propensit"):
        ips_loss(logits, torch.tensor([0, 1, 2]), torch.tensor([0.2, float("nan"), 0.3]))


@pytest.mark.parametrize(
    "argv, message",
    [
        (["reproduce", "--dataset", "ml-2m"], "Unknown dataset 'ml-2m'"),
        (["reproduce", "--seeds", "5-2"], "range is empty"),
        (["reproduce", "--alpha", "-1"], "alpha must be"),
        (["reproduce", "--methods", "ce,dro"], "Unknown method"),
        (["reproduce", "--cut", "1.5"], "probability"),
    ],
)
def test_bad_flags_fail_before_any_work(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_a_directory_with_neither_layout_is_refused_by_the_cli(tmp_path: Path, capsys):
    assert main(["reproduce", "--dataset", str(tmp_path)]) == 2
    assert "neither MovieLens layout" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_refused(capsys):
    assert main(["reproduce", "--device", "cuda"]) == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_bad_data_through_the_cli_gives_one_paragraph_and_status_2(tmp_path: Path, capsys):
    directory = tmp_path / "bad"
    directory.mkdir()
    (directory / "users.dat").write_text("1::F::1::10::48067\n")
    (directory / "movies.dat").write_text("1::Toy Story (1995)::Comedy\n")
    (directory / "ratings.dat").write_text("1::1::9::978300760\n")
    assert main(["data", str(directory)]) == 2
    err = capsys.readouterr().err
    assert "ratings.dat, line 1" in err and "from 1 to 5" in err
    assert "Traceback" not in err
    with pytest.raises(Exception, match="from 1 to 5"):
        main(["--debug", "data", str(directory)])


# ---------------------------------------------------------------- real processes
def _cli(tmp_path: Path, world: Path, out: Path, seeds: str = "0-3", epochs: int = 2) -> list[str]:
    return [
        sys.executable,
        "-m",
        "twostage",
        "reproduce",
        "--profile",
        "smoke",
        "--dataset",
        str(world),
        "--seeds",
        seeds,
        "--epochs",
        str(epochs),
        "--out",
        str(out),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--device",
        "cpu",
    ]


def _env() -> dict[str, str]:
    return {**os.environ, "MPLBACKEND": "Agg", "PYTHONUNBUFFERED": "1"}


def _wait_for_runs(out: Path, count: int, process: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if len(list((out / "runs").glob("*.json"))) >= count:
            return
        if process.poll() is not None:
            raise AssertionError(f"process ended early with {process.returncode}")
        time.sleep(0.05)
    raise AssertionError("no run finished in time")


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_a_killed_sweep_resumes_without_recomputing_and_matches(
    sig, tiny_world: Path, tmp_path: Path
):
    out = tmp_path / "killed"
    command = _cli(tmp_path, tiny_world, out, seeds="0-9", epochs=8)
    process = subprocess.Popen(
        command,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        # A shell's background jobs inherit an ignored SIGINT; give the child the default back.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    _wait_for_runs(out, 2, process)
    process.send_signal(sig)
    process.wait(timeout=60)
    finished = {p.name: p.stat().st_mtime_ns for p in (out / "runs").glob("*.json")}
    assert finished and not (out / "results.csv").exists()
    for path in (out / "runs").glob("*.json"):
        json.loads(path.read_text())  # every stored run is whole
    resumed = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    for name, stamp in finished.items():
        assert (out / "runs" / name).stat().st_mtime_ns == stamp  # not recomputed
    assert "[simulator] cached" in resumed.stderr + resumed.stdout
    straight = tmp_path / "straight"
    done = subprocess.run(
        [*command[:-6], "--out", str(straight), *command[-4:]],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert (out / "results.csv").read_bytes() == (straight / "results.csv").read_bytes()


@pytest.mark.slow
def test_two_processes_sharing_a_cache_do_not_corrupt_it(tiny_world: Path, tmp_path: Path):
    outs = [tmp_path / "a", tmp_path / "b"]
    processes = [
        subprocess.Popen(
            _cli(tmp_path, tiny_world, out, seeds="0-1"),
            env=_env(),
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


def test_reproduce_writes_every_output(tiny_world: Path, tmp_path: Path):
    out = reproduce(
        tiny_config(tiny_world), tmp_path / "out", cache_dir=tmp_path / "cache", verbose=False
    )
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
    assert list((out / "figures").glob("*.png"))
    assert load_movielens(tiny_world).synthetic


def test_sweep_runs_each_cell_once_and_resumes(tiny_world: Path, tmp_path: Path):
    from twostage.pipeline.sweep import parse_grid, sweep

    grid = parse_grid(["alpha=0,0.1", "oracle_ranker=true"])
    config = tiny_config(tiny_world, seeds=(0,))
    summary = sweep(config, grid, tmp_path / "sweep", cache_dir=tmp_path / "cache", verbose=False)
    assert set(summary.factor) == {"alpha", "oracle_ranker"}
    assert set(summary[summary.factor == "alpha"].method) == {"2s"}
    assert set(summary[summary.factor == "oracle_ranker"].method) == {"ce", "ips", "2s"}
    assert (tmp_path / "sweep" / "figures" / "alpha.png").stat().st_size > 1000
    run_file = tmp_path / "sweep" / "cells" / "alpha=0.1" / "runs" / "2s-seed0.json"
    stamp = run_file.stat().st_mtime_ns
    again = sweep(config, grid, tmp_path / "sweep", cache_dir=tmp_path / "cache", verbose=False)
    assert run_file.stat().st_mtime_ns == stamp
    assert again.equals(summary)


def test_the_oracle_ranker_scores_by_the_simulators_truth(tiny_world: Path, tmp_path: Path):
    config = tiny_config(tiny_world, ranker={"epochs": 1, "oracle": True})
    prepared = prepare(config, cache=StageCache(tmp_path), verbose=False)
    scores = prepared.context.ranker_scores
    order = scores.argsort(dim=1)
    assert torch.equal(order, prepared.world.probabilities_at_mean.argsort(dim=1))
    # the oracle's top candidate is always a true positive when one exists in the catalogue
    top = scores.argmax(1)
    has_positive = prepared.world.truth.any(1)
    assert prepared.world.truth[torch.arange(len(top)), top][has_positive].all()


def test_sweep_grid_errors_are_clear():
    from twostage.errors import ConfigError
    from twostage.pipeline.sweep import parse_grid

    with pytest.raises(ConfigError, match="NAME one of"):
        parse_grid(["gamma=1"])
    with pytest.raises(ConfigError, match="must be ints"):
        parse_grid(["slate_size=ten"])


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


def test_a_numerics_error_in_training_names_stage_epoch_and_step(tiny_world, tmp_path):
    from twostage.pipeline.candidates import train_candidate_generator

    config = tiny_config(tiny_world)
    prepared = prepare(config, cache=StageCache(tmp_path), verbose=False)
    context = prepared.context
    context.propensities = context.propensities.clone()
    context.propensities[3] = float("nan")  # slipped past the log check
    small = with_overrides(config, {"candidates": {"batch_size": 8}}).candidates
    with pytest.raises(NumericsError, match=r"candidate generator ips seed 0, epoch 0, step 0"):
        train_candidate_generator("ips", 0, context, small, prepared.device)
