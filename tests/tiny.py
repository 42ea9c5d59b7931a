"""A tiny synthetic world and the smoke profile shrunk to fit it, for the pipeline tests."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from twostage.data.synthetic import SyntheticShape, write_synthetic_movielens
from twostage.pipeline.config import profile_config, with_overrides

TINY_OVERRIDES = {
    "seeds": (0, 1),
    "simulator": {"epochs": 1, "validate_every": 20},
    "logging_policy": {"n_train": 600, "n_val": 300, "epochs": 2},
    "ranker": {"epochs": 1},
    "candidates": {"epochs": 2, "n_slates": 4, "slate_size": 5, "eval_k": 5},
}


def tiny_config(directory: Path, **overrides):
    config = with_overrides(profile_config("smoke"), TINY_OVERRIDES)
    return with_overrides(config, {"dataset": str(directory), "device": "cpu", **overrides})


def write_tiny_world(directory: Path) -> Path:
    """100 users, 60 items, 2,500 ratings."""
    return write_synthetic_movielens(
        directory / "tiny", shape=SyntheticShape(100, 60, 2500), seed=3
    )


def cli(tmp_path: Path, world: Path, out: Path, seeds: str = "0-3", epochs: int = 2) -> list[str]:
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


def env() -> dict[str, str]:
    return {**os.environ, "MPLBACKEND": "Agg", "PYTHONUNBUFFERED": "1"}


def wait_for_runs(out: Path, count: int, process: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if len(list((out / "runs").glob("*.json"))) >= count:
            return
        if process.poll() is not None:
            raise AssertionError(f"process ended early with {process.returncode}")
        time.sleep(0.05)
    raise AssertionError("no run finished in time")
