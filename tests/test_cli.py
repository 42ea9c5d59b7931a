"""The command line's words for the library's settings, and the flags reproduce and sweep share."""

from __future__ import annotations

import pytest

from twostage.cli import FLAGS, build_parser, experiment_config, user_message
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
