"""The command line's words for the library's settings, and the flags reproduce and sweep share."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from twostage.cli import FLAGS, build_parser, experiment_config, main, user_message
from twostage.errors import ConfigError
from twostage.pipeline.config import profile_config, validate, with_overrides


@pytest.mark.parametrize(
    ("overrides", "setting", "library", "command_line"),
    [
        ({"world": {"cut": 1.5}}, "world.cut", "world.cut must be", "--cut must be"),
        ({"candidates": {"alpha": -1.0}}, "candidates.alpha", "candidates.alpha", "--alpha must"),
        ({"seeds": ()}, "seeds", "No seeds to run", "--seeds: No seeds to run"),
        (
            {"world": {"cut": 0.5, "positive_share": 0.1}},
            None,
            "either world.cut or world.positive_share",
            "either --cut or --positive-share",
        ),
    ],
)
def test_library_names_settings_and_the_command_line_names_flags(
    overrides, setting, library, command_line
):
    with pytest.raises(ConfigError) as err:
        validate(with_overrides(profile_config("smoke"), overrides))
    assert err.value.setting == setting and library in str(err.value)
    assert command_line in user_message(err.value) and "." not in user_message(err.value)[:12]


def test_every_flag_named_for_a_setting_exists():
    reproduce = build_parser()._subparsers._group_actions[0].choices["reproduce"]
    options = {option for action in reproduce._actions for option in action.option_strings}
    assert set(FLAGS.values()) <= options


def test_reproduce_and_sweep_build_the_same_config_from_the_same_flags():
    parser = build_parser()
    shared = ["--profile", "smoke", "--seeds", "0-1", "--device", "cpu", "--threads", "1"]
    run = parser.parse_args(["reproduce", *shared])
    sweep = parser.parse_args(["sweep", *shared, "--grid", "alpha=0", "--out", "x"])
    assert experiment_config(run) == experiment_config(sweep)
    assert experiment_config(run).seeds == (0, 1)


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


def test_a_directory_with_neither_layout_is_refused_by_thecli(tmp_path: Path, capsys):
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


# --- compare: runs of different experiments, and what it prints ---

ROOT = Path(__file__).resolve().parents[1]


def run_folder(folder: Path, dataset: str, profile: str, seeds: list[int]) -> Path:
    """`folder` (a fake run, `fake_results.py`) with summary.csv and a run.json of this data set,
    profile and seeds; every other setting as the paper's."""
    from fake_results import fake_results, write_out

    from twostage.report import write_summary

    write_out(folder, fake_results(seeds=seeds, rng_seed=seeds[0]))
    write_summary(folder)
    run = json.loads((folder / "run.json").read_text())
    run["dataset"] = dataset
    run["config"] = {"profile": profile, "seeds": seeds, "candidates": {"alpha": 1e-3}}
    (folder / "run.json").write_text(json.dumps(run))
    return folder


def twostage(*argv: str) -> subprocess.CompletedProcess:
    """The real command, run from the repository root (so it imports this checkout)."""
    command = [sys.executable, "-m", "twostage", *map(str, argv)]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_compare_refuses_runs_of_different_experiments(out: Path, tmp_path: Path):
    mine = run_folder(out, "ml-100k", "smoke", [0, 1, 2])
    reference = run_folder(tmp_path / "reference", "synthetic", "paper", [5, 6, 7])
    done = twostage("compare", mine, reference)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("twostage: error: ") and done.stderr.count("\n") == 1
    assert "dataset: ml-100k vs synthetic; profile: smoke vs paper" in done.stderr
    assert "--allow-different" in done.stderr and "seeds:" not in done.stderr  # seeds may differ
    assert "Traceback" not in done.stderr and done.stdout == ""


def test_compare_allow_different_warns_and_compares(out: Path, tmp_path: Path):
    mine = run_folder(out, "ml-100k", "smoke", [0, 1, 2])
    reference = run_folder(tmp_path / "reference", "synthetic", "paper", [5, 6, 7])
    done = twostage("compare", mine, reference, "--allow-different")
    assert done.returncode in (0, 1), done.stderr
    assert done.stderr.startswith("twostage: warning: ")
    assert "dataset: ml-100k vs synthetic; profile: smoke vs paper" in done.stderr
    assert "means agree within 3 standard errors" in done.stdout


def test_compare_prints_percent_and_method_names(out: Path, tmp_path: Path):
    from twostage.report import compare_summaries

    mine = run_folder(out, "toy", "paper", [0, 1, 2])
    reference = run_folder(tmp_path / "reference", "toy", "paper", [3, 4, 5])  # other seeds: fine
    done = twostage("compare", mine, reference, "--floor", "2")
    assert done.returncode in (0, 1) and done.stderr == ""
    header, *rows, _, last = done.stdout.splitlines()
    assert header.split() == [
        "method", "evaluation", "metric", "run", "(%)", "reference", "(%)",
        "difference", "(points)", "allowed", "(±", "points)", "agrees",
    ]  # fmt: skip
    table = compare_summaries(mine, reference, floor=0.02)
    assert len(rows) == len(table)
    first = table.iloc[0]
    assert rows[0].split()[:5] == [
        "Cross-entropy",
        first["evaluation"],
        first["metric"],
        f"{100 * first['mean_run']:.1f}",
        f"{100 * first['mean_reference']:.1f}",
    ]
    assert {row.split()[0] for row in rows} == {"Cross-entropy", "1-IPS", "2-IPS"}
    agree = int(table["agrees"].sum())
    assert last == (
        f"{agree} of {len(table)} means agree within 3 standard errors "
        "(or 2 points, whichever is larger)."
    )


def test_the_cache_command_refuses_in_one_line(tmp_path: Path, capsys):
    (tmp_path / "file").write_text("")
    for argv in (
        ["cache", "--cache-dir", str(tmp_path / "file")],
        ["cache", "clear", "--stage", "nosuchstage", "--cache-dir", str(tmp_path)],
        ["cache", "tidy", "--cache-dir", str(tmp_path)],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("twostage: error: ") and len(err.strip().splitlines()) == 1
    assert main(["cache", "clear", "--cache-dir", str(tmp_path / "none")]) == 0
    assert "Removed 0 entries" in capsys.readouterr().out
