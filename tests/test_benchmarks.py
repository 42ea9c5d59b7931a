"""The benchmarks run: the table's timing and the step profile at a tiny size, and the refusals."""

from __future__ import annotations

import json
import os
import statistics
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
    assert built["speed_probe_ms_before"] > 0 and built["speed_probe_ms_after"] > 0
    # The world stage's rate: its FLOPs (run.json) over its seconds, when it was built.
    world = built["world_info"]["flops"] / 1e9 / built["stage_seconds"]["world"]
    assert built["world_gflop_per_s"] == pytest.approx(world, rel=0.05, abs=0.1)
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
    assert cached["world_gflop_per_s"] is None  # nothing was computed


@pytest.mark.slow
def test_profile_step_splits_each_methods_step_into_parts(tiny_world: Path, tmp_path: Path):
    out = tmp_path / "profile.json"
    command = [
        sys.executable, "benchmarks/profile_step.py", "--profile", "smoke", "--dataset",
        str(tiny_world), "--epochs", "2", "--repeats", "2", "--cached", str(tmp_path / "stages"),
        "--out", str(out),
    ]  # fmt: skip
    result = subprocess.run(
        command, cwd=ROOT, env=bench_env(), capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["torch_threads"] == 1 and len(report["load_average_before"]) == 3
    by_method = {m["method"]: m for m in report["methods"]}
    assert set(by_method) == {"ce", "ips", "2s"}
    n_rows = None
    for method, measured in by_method.items():
        parts = measured["per_step_ms_profiled"]
        assert set(parts) == {
            "matrix products", "softmax and cross-entropy", "slate sampler", "embeddings",
            "optimizer", "fills and copies", "other operators", "between operators",
        }  # fmt: skip
        assert all(ms >= 0 for ms in parts.values())
        # Every step has the products, the loss and AdaGrad; only 2-IPS samples slates.
        assert parts["matrix products"] > 0 and parts["optimizer"] > 0
        assert parts["softmax and cross-entropy"] > 0
        assert (parts["slate sampler"] > 0) == (method == "2s")
        # Two epochs of whole batches; an evaluation after each, then the test users once.
        assert measured["steps"] % 2 == 0 and measured["steps"] > 0
        n_rows = n_rows or measured["steps"]
        assert measured["steps"] == n_rows and measured["evaluations"] == 3
        assert len(measured["wall_seconds"]) == len(measured["profiled_seconds"]) == 2
        fastest = measured["per_step_ms_profiled_min"]
        assert all(fastest[part] <= ms for part, ms in parts.items())
        # The parts and the evaluation account for the profiled time (the median of two repeats
        # is their mean, so the medians of the parts add up to the mean of the totals).
        profiled = statistics.mean(measured["profiled_seconds"])
        evaluation = statistics.mean(measured["evaluation_seconds_per_call_profiled"])
        accounted = sum(parts.values()) * measured["steps"] / 1e3
        accounted += evaluation * measured["evaluations"]
        rounding = len(parts) * 5e-7 * measured["steps"] + 5e-5 * measured["evaluations"] + 5e-4
        assert accounted == pytest.approx(profiled, rel=0.02, abs=rounding)
        projection = measured["run_projection"]
        assert projection["steps"] == measured["steps"] // 2 * projection["epochs"]
        # The floor: the fastest products (and sampler) of a step and the fastest evaluation.
        floor_step = fastest["matrix products"] + fastest["slate sampler"]
        assert projection["floor_step_ms"] == pytest.approx(floor_step, abs=2e-3)
        floor = projection["steps"] * projection["floor_step_ms"] / 1e3
        floor += projection["evaluations"] * projection["floor_evaluation_seconds"]
        assert projection["floor_seconds"] == pytest.approx(floor, rel=1e-3, abs=2e-3)
        assert projection["floor_seconds"] > 0


def test_profile_step_refuses_a_bad_setting_before_any_work(tmp_path: Path):
    result = subprocess.run(
        [sys.executable, "benchmarks/profile_step.py", "--cached", str(tmp_path / "stages"),
         "--repeats", "0"],
        cwd=ROOT, env=bench_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    assert "--epochs and --repeats must be at least 1" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "stages").exists()


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


def test_bench_evaluation_times_both_ways_to_a_large_catalogues_top_items(
    monkeypatch: pytest.MonkeyPatch,
):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import bench_evaluation

    report = bench_evaluation.large_catalogue(repeats=2, n_users=70, n_items=40_000)
    assert report["shape"] == [70, 40_000] and report["block_items"] < 40_000
    assert report["probe_ms_before"] > 0 and len(report["load_average_after"]) == 3
    for way in ("whole rows", "item chunks"):
        assert len(report["seconds"][way]) == 2 and all(s > 0 for s in report["seconds"][way])
        assert report["median_seconds"][way] == statistics.median(report["seconds"][way])
