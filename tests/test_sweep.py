"""Sweeps: one cell per value, resumption after a kill, grid errors."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest
from tiny import cli, env, tiny_config, wait_for_runs


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_a_killed_sweep_resumes_without_recomputing_and_matches(
    sig, tiny_world: Path, tmp_path: Path
):
    out = tmp_path / "killed"
    command = cli(tmp_path, tiny_world, out, seeds="0-9", epochs=8)
    process = subprocess.Popen(
        command,
        env=env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        # A shell's background jobs inherit an ignored SIGINT; give the child the default back.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    wait_for_runs(out, 2, process)
    process.send_signal(sig)
    process.wait(timeout=60)
    finished = {p.name: p.stat().st_mtime_ns for p in (out / "runs").glob("*.json")}
    assert finished and not (out / "results.csv").exists()
    for path in (out / "runs").glob("*.json"):
        json.loads(path.read_text())  # every stored run is whole
    resumed = subprocess.run(command, env=env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    for name, stamp in finished.items():
        assert (out / "runs" / name).stat().st_mtime_ns == stamp  # not recomputed
    assert "[simulator] cached" in resumed.stderr + resumed.stdout
    straight = tmp_path / "straight"
    done = subprocess.run(
        [*command[:-6], "--out", str(straight), *command[-4:]],
        env=env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert (out / "results.csv").read_bytes() == (straight / "results.csv").read_bytes()


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


def test_sweep_grid_errors_are_clear():
    from twostage.errors import ConfigError
    from twostage.pipeline.sweep import parse_grid

    with pytest.raises(ConfigError, match="NAME one of"):
        parse_grid(["gamma=1"])
    with pytest.raises(ConfigError, match="must be ints"):
        parse_grid(["slate_size=ten"])


def test_committed_sweep_tables_hold_each_cell_once() -> None:
    """A committed `sweep.csv` assembled from several sweeps must not repeat a cell's rows
    (figures and readers would count them twice)."""
    import pandas as pd

    root = Path(__file__).resolve().parents[1] / "results"
    tables = sorted(root.glob("**/sweep.csv"))
    assert tables, "no committed sweep.csv found"
    for path in tables:
        table = pd.read_csv(path, dtype={"value": str})
        key = ["factor", "value", "method", "evaluation", "metric"]
        repeated = table[table.duplicated(key, keep=False)]
        assert repeated.empty, f"{path}: repeated rows {repeated[key].drop_duplicates().head()}"
