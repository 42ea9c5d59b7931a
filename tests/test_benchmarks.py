"""The benchmarks run: the table's timing at a tiny size, and the GPU check's refusal on a CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny import env

ROOT = Path(__file__).resolve().parents[1]


def bench_env(**extra: str) -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return {**env(), "PYTHONPATH": path, "OMP_NUM_THREADS": "1", **extra}


def bench(tmp_path: Path, world: Path, name: str, *flags: str) -> dict:
    out = tmp_path / f"{name}.json"
    command = [
        sys.executable, "benchmarks/bench_pipeline.py", "--profile", "smoke", "--dataset",
        str(world), "--seeds", "1", "--epochs", "1", "--cached", str(tmp_path / "stages"),
        "--out", str(out), *flags,
    ]  # fmt: skip
    result = subprocess.run(
        command, cwd=ROOT, env=bench_env(), capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.slow
def test_bench_pipeline_times_every_stage_and_run_of_the_table(tiny_world: Path, tmp_path: Path):
    built = bench(tmp_path, tiny_world, "built", "--run-dir", str(tmp_path / "run"))
    for key in (
        "date", "cpu_model", "torch", "torch_threads", "threads_from", "device", "stage_seconds",
        "run_seconds", "run_seconds_median", "table_seconds", "peak_rss_gb", "figures",
        "load_average_before", "load_average_after", "authors_machine",
    ):  # fmt: skip
        assert key in built, key
    assert built["torch_threads"] == 1 and built["threads_from"] == "$OMP_NUM_THREADS"
    assert set(built["stage_seconds"]) == {
        "simulator", "world", "logging_policy", "bandit_log", "ranker", "evaluator"
    }  # fmt: skip
    assert {m: len(s) for m, s in built["run_seconds"].items()} == {"ce": 1, "ips": 1, "2s": 1}
    assert not any(built["stage_cached"].values())
    assert len(built["load_average_before"]) == 3
    figures = {f["figure"]: f for f in built["figures"]}
    assert set(figures) >= {"simulator", "world", "run:2s", "table"}
    assert figures["run:2s"]["authors_seconds"] == 1620.0
    # A smoke run at a tiny size is not the authors' experiment: their figures, but no ratios.
    assert built["comparable_to_authors"] is False
    assert all(f["ratio_to_authors"] is None for f in figures.values())
    assert (tmp_path / "run" / "summary.md").is_file()  # --run-dir keeps the run

    cached = bench(tmp_path, tiny_world, "cached")  # the same stage cache: the cached path
    assert all(cached["stage_cached"].values())
    assert cached["stage_cache"].startswith("reused")


def test_gpu_check_refuses_clearly_without_cuda(tmp_path: Path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the check would run the whole table")
    result = subprocess.run(
        ["bash", "benchmarks/gpu_check.sh"],
        cwd=ROOT, env=bench_env(GPU_CHECK_RUN_DIR=str(tmp_path / "run")),
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "gpu_check.sh: no CUDA device" in result.stderr and "nothing was run" in result.stderr
    assert "== the table" not in result.stdout and not (tmp_path / "run").exists()
