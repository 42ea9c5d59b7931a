"""What a newcomer types wrong, through the real `twostage` command: one line, status 2, no
traceback, and nothing built or written (issue #13)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tiny import env

from twostage.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def twostage(*args: str, cwd: Path, extra_env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "twostage", *args],
        cwd=cwd,
        env={**env(), **(extra_env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


def assert_refused(result: subprocess.CompletedProcess, *phrases: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("twostage: error: "), result.stderr
    for phrase in phrases:
        assert phrase in lines[0], lines[0]


def nothing_in(*folders: Path) -> bool:
    return all(not folder.exists() or not any(folder.iterdir()) for folder in folders)


@pytest.fixture
def place(tmp_path: Path) -> dict:
    """A working directory and the cache folders a refusal must leave empty."""
    cache, data = tmp_path / "stages", tmp_path / "data"
    return {
        "cwd": tmp_path,
        "cache": cache,
        "extra_env": {"TWOSTAGE_CACHE": str(cache), "TWOSTAGE_DATA": str(data)},
    }


@pytest.mark.parametrize(
    ("args", "phrases"),
    [
        (["reproduce", "--profile", "smoke", "--alpha", "nan"], ["--alpha", "finite", "nan"]),
        (["reproduce", "--profile", "smoke", "--alpha", "inf"], ["--alpha", "finite", "inf"]),
        (["reproduce", "--profile", "smoke", "--cut", "nan"], ["--cut"]),
        (
            ["sweep", "--profile", "smoke", "--grid", "alpha=0.1,nan", "--out", "sw"],
            ["--grid alpha=nan", "finite"],
        ),
        (
            ["sweep", "--profile", "smoke", "--grid", "temperature=inf", "--out", "sw"],
            ["--grid temperature=inf", "finite"],
        ),
        (["reproduce", "--profile", "smoke", "--seeds", "0"], ["--seeds", "0-0"]),
        (["reproduce", "--profile", "smoke", "--threads", "-3"], ["--threads", "≥ 0"]),
        (["reproduce", "--profile", "smoke", "--jobs", "0"], ["--jobs", "≥ 1"]),
        (["reproduce", "--dataset", "/no/such/dir"], ["/no/such/dir", "no such directory"]),
        (["reproduce", "--dataset", "ml-2m"], ["Unknown dataset 'ml-2m'"]),
        (["reproduce", "--profile", "smoke", "--out", "a-file"], ["a-file", "is a file"]),
        (["reproduce", "--profile", "smoke", "--out", "a-file/sub"], ["a-file", "is a file"]),
        (["evaluate", "no-such-run"], ["not an output folder", "no-such-run"]),
    ],
)
def test_bad_input_is_refused_before_any_work(place: dict, args: list[str], phrases: list[str]):
    (place["cwd"] / "a-file").write_text("not a folder\n")
    result = twostage(*args, cwd=place["cwd"], extra_env=place["extra_env"])
    assert_refused(result, *phrases)
    assert nothing_in(place["cache"], place["cwd"] / "runs", place["cwd"] / "sw")
    assert (place["cwd"] / "a-file").read_text() == "not a folder\n"


def test_debug_after_the_subcommand_shows_the_traceback(place: dict):
    result = twostage(
        "reproduce", "--profile", "smoke", "--alpha", "-1", "--debug", cwd=place["cwd"],
        extra_env=place["extra_env"],
    )  # fmt: skip
    assert result.returncode != 0 and "Traceback" in result.stderr
    assert "ConfigError" in result.stderr


def test_reproduce_help_says_what_the_profiles_do_and_cost(place: dict):
    result = twostage("reproduce", "--help", cwd=place["cwd"])
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    assert "synthetic-small" in text and "20 seeds" in text and "not a result" in text
    description = text.split("Profiles:")[1].split("options:")[0]
    assert "{" not in description  # no unfilled placeholder


def test_a_folder_of_another_configuration_is_refused_and_left_alone(place: dict):
    from twostage.pipeline.config import profile_config, with_overrides

    other = with_overrides(profile_config("smoke"), {"candidates": {"alpha": 0.5}})
    runs = place["cwd"] / "runs" / "mine" / "runs"
    runs.mkdir(parents=True)
    (runs / "config.json").write_text(json.dumps(other.to_dict()))
    before = sorted(p.name for p in runs.iterdir())
    result = twostage(
        "reproduce", "--profile", "smoke", "--out", "runs/mine", cwd=place["cwd"],
        extra_env=place["extra_env"],
    )  # fmt: skip
    assert_refused(result, "runs/mine", "another configuration", "--alpha: 0.5 vs 0.001")
    assert sorted(p.name for p in runs.iterdir()) == before
    assert nothing_in(place["cache"])


def test_the_default_folder_is_keyed_by_the_settings_that_differ():
    from twostage.cli import build_parser, default_out, experiment_config

    def folder(*args: str) -> str:
        return str(default_out(experiment_config(build_parser().parse_args(["reproduce", *args]))))

    assert folder("--profile", "smoke") == "runs/synthetic-small-smoke"
    assert folder("--profile", "smoke", "--seeds", "0-1", "--methods", "ce") == (
        "runs/synthetic-small-smoke"
    )
    assert folder("--profile", "smoke", "--alpha", "0.01", "--propensity", "inclusion") == (
        "runs/synthetic-small-smoke-propensity=inclusion-alpha=0.01"
    )


def test_a_closed_pipe_ends_quietly(tmp_path: Path):
    """`twostage summarize OUT | head`: the reader is gone before the summary is printed."""
    run = tmp_path / "committed"
    shutil.copytree(ROOT / "results" / "ml-100k", run)
    process = subprocess.Popen(
        [sys.executable, "-m", "twostage", "summarize", str(run)],
        env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    process.stdout.close()  # nobody reads: the first print meets a broken pipe
    stderr = process.stderr.read()
    process.wait(timeout=120)
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr, stderr
    assert (run / "summary.md").read_text().startswith("# Off-policy two-stage recommendation")


def test_evaluate_on_a_committed_folder_says_why_before_building_stages(place: dict):
    run = place["cwd"] / "committed"
    shutil.copytree(ROOT / "results" / "ml-100k", run)
    result = twostage("evaluate", str(run), cwd=place["cwd"], extra_env=place["extra_env"])
    assert_refused(result, "No trained models", "committed")
    assert nothing_in(place["cache"])


def test_a_run_whose_reader_goes_away_ends_quietly(tmp_path: Path, tiny_world: Path):
    command = (
        f"{sys.executable} -m twostage reproduce --profile smoke --dataset {tiny_world} "
        f"--seeds 0-0 --epochs 1 --out {tmp_path / 'out'} --cache-dir {tmp_path / 'c'} | head -1"
    )
    result = subprocess.run(
        ["bash", "-c", command], env=env(), capture_output=True, text=True, timeout=300
    )
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr
    assert result.stdout.startswith("[simulator]")


def test_a_folder_of_an_older_version_with_the_same_settings_is_taken(tmp_path: Path):
    """A committed run.json predates settings (`simulator.val_rows`) and still holds runtime
    settings (`threads`, `world.chunk_users`): the same configuration, so not refused."""
    from twostage.pipeline.config import config_from_dict, with_overrides
    from twostage.pipeline.experiment import check_out_dir

    folder = tmp_path / "older"
    shutil.copytree(ROOT / "results" / "ml-100k", folder)
    config = config_from_dict(json.loads((folder / "run.json").read_text())["config"])
    assert check_out_dir(folder, config) == folder
    with pytest.raises(ConfigError, match="candidates.alpha: 0.001 vs 0.5"):
        check_out_dir(folder, with_overrides(config, {"candidates": {"alpha": 0.5}}))
