"""Stages 1–5 on a tiny world: the world, the bandit log, the oracle ranker, numerics errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from tiny import tiny_config

from twostage.errors import NumericsError
from twostage.losses import ips_loss
from twostage.pipeline.cache import StageCache
from twostage.pipeline.config import with_overrides
from twostage.pipeline.experiment import prepare


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


def test_nan_propensities_stop_training_with_a_clear_message():
    logits = torch.zeros(3, 4, requires_grad=True)
    with pytest.raises(NumericsError, match="propensit"):
        ips_loss(logits, torch.tensor([0, 1, 2]), torch.tensor([0.2, float("nan"), 0.3]))


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


def _simulator(tiny_world: Path, progress=None, **settings):
    from twostage.data import load_movielens
    from twostage.pipeline.config import SimulatorConfig
    from twostage.pipeline.stages import train_simulator

    config = SimulatorConfig(epochs=1, validate_every=4, **settings)
    return train_simulator(load_movielens(str(tiny_world)), config, torch.device("cpu"), progress)


def test_the_validation_subsample_is_the_whole_split_by_default_else_a_fixed_subset():
    from twostage.pipeline.config import SimulatorConfig
    from twostage.pipeline.stages import validation_rows

    split = slice(600, 800)
    assert validation_rows(split, SimulatorConfig()) == split
    assert validation_rows(split, SimulatorConfig(val_rows=200)) == split
    rows = validation_rows(split, SimulatorConfig(val_rows=50))
    assert len(rows) == 50 and len(set(rows.tolist())) == 50
    assert rows.min() >= 600 and rows.max() < 800 and torch.equal(rows, rows.sort().values)
    assert torch.equal(rows, validation_rows(split, SimulatorConfig(val_rows=50)))


def test_the_simulators_checks_use_the_validation_subsample(tiny_world: Path):
    whole = _simulator(tiny_world, stop_auc=1.0).info
    assert _simulator(tiny_world, stop_auc=1.0, val_rows=500).info == whole  # ≥ the split: same
    sub = _simulator(tiny_world, stop_auc=1.0, val_rows=60).info
    assert [s for s, _ in sub["curve"]] == [s for s, _ in whole["curve"]]
    assert [a for _, a in sub["curve"]] != [a for _, a in whole["curve"]]
    # the reported AUCs stay on the whole splits
    assert (sub["val_auc"], sub["test_auc"]) == (whole["val_auc"], whole["test_auc"])
    assert _simulator(tiny_world, stop_auc=1.0, val_rows=60).info == sub


def test_the_simulator_bar_ends_at_the_steps_trained_when_stopping_early(tiny_world: Path):
    import io

    from tqdm import tqdm

    with tqdm(total=12, file=io.StringIO()) as bar:  # 1,500 rows / 128 per batch
        info = _simulator(tiny_world, progress=bar, stop_auc=0.0).info
        assert info["stopped_early"] and info["steps"] == 4
        assert bar.n == bar.total == info["steps"]
        assert "stopped early: val AUC" in bar.postfix


def test_the_world_reports_its_progress_in_users(tiny_world: Path):
    import io

    from tqdm import tqdm

    from twostage.data import load_movielens
    from twostage.pipeline.config import WorldConfig
    from twostage.pipeline.stages import build_world

    data = load_movielens(str(tiny_world))
    state = _simulator(tiny_world).state
    with tqdm(total=data.n_users, file=io.StringIO()) as bar:
        build_world(data, state, WorldConfig(), torch.device("cpu"), chunk_users=32, progress=bar)
        assert bar.n == data.n_users


def test_the_world_is_the_simulators_plain_forward_cut_into_labels(tiny_world: Path):
    from twostage.data import load_movielens
    from twostage.models import ImpressionSimulator
    from twostage.pipeline.config import WorldConfig
    from twostage.pipeline.stages import build_world
    from twostage.pipeline.training import load_model

    data, cpu = load_movielens(str(tiny_world)), torch.device("cpu")
    state = _simulator(tiny_world).state
    world = build_world(data, state, WorldConfig(), cpu, chunk_users=7)
    model = load_model(ImpressionSimulator, data.catalog, state, cpu)
    n_users, n_items = world.probabilities.shape
    users = torch.arange(n_users).repeat_interleave(n_items)
    items = torch.arange(n_items).repeat(n_users)
    with torch.no_grad():
        plain = torch.sigmoid(model(users, items, world.timestamps.reshape(-1)))
        at_mean = torch.sigmoid(model(users, items, world.mean_timestamps[users]))
    plain, at_mean = plain.view(n_users, n_items), at_mean.view(n_users, n_items)
    torch.testing.assert_close(world.probabilities, plain, atol=1e-5, rtol=0)
    torch.testing.assert_close(world.probabilities_at_mean, at_mean, atol=1e-5, rtol=0)
    assert world.probabilities.std() > 0.01  # the pairs' probabilities differ
    assert torch.equal(world.labels, world.probabilities >= world.cut)
    assert torch.equal(world.truth, world.probabilities_at_mean > world.cut)
    # the plain forward's labels differ at most where a probability is within rounding of the cut
    sure = (plain - world.cut).abs() > 1e-5
    assert torch.equal(world.labels[sure], (plain >= world.cut)[sure])
    sure = (at_mean - world.cut).abs() > 1e-5
    assert torch.equal(world.truth[sure], (at_mean > world.cut)[sure])
    # the same seed draws the same world; other chunks of users change only the rounding
    fields = ("timestamps", "probabilities", "probabilities_at_mean", "labels", "truth", "cut")
    again = build_world(data, state, WorldConfig(), cpu, chunk_users=7)
    for field in fields:
        same = torch.as_tensor(getattr(world, field)), torch.as_tensor(getattr(again, field))
        assert torch.equal(*same), field
    whole = build_world(data, state, WorldConfig(), cpu, chunk_users=n_users)
    torch.testing.assert_close(whole.probabilities, world.probabilities, atol=1e-6, rtol=0)
    torch.testing.assert_close(
        whole.probabilities_at_mean, world.probabilities_at_mean, atol=1e-6, rtol=0
    )
    assert whole.cut == pytest.approx(world.cut, abs=1e-6)
    sure = (world.probabilities - world.cut).abs() > 1e-5
    assert torch.equal(whole.labels[sure], world.labels[sure])
    sure = (world.probabilities_at_mean - world.cut).abs() > 1e-5
    assert torch.equal(whole.truth[sure], world.truth[sure])


def test_a_built_world_reports_its_flop_rate_and_a_cached_one_does_not(
    tiny_world: Path, tmp_path: Path, capsys: pytest.CaptureFixture
):
    config = tiny_config(tiny_world)
    prepare(config, cache=StageCache(tmp_path), verbose=True)
    built = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[world]")]
    prepare(config, cache=StageCache(tmp_path), verbose=True)
    cached = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[world]")]
    assert re.match(r"\[world\] built [0-9.]+s \([0-9]+ GFLOP/s\) · ", built[0])
    assert cached[0].startswith("[world] cached") and "GFLOP/s" not in cached[0]


def _rule(tiny_world: Path, rule: str, **settings) -> dict:
    from twostage.data import load_movielens
    from twostage.pipeline.config import SimulatorConfig
    from twostage.pipeline.stages import train_simulator

    config = SimulatorConfig(epochs=2, early_stop=rule, **settings)  # 12 steps an epoch
    data = load_movielens(str(tiny_world))
    return train_simulator(data, config, torch.device("cpu")).info


@pytest.mark.parametrize(
    ("rule", "settings", "checks", "steps"),
    [
        # the paper's text: steps counted across epochs; a pass ends training
        ("run", {"validate_every": 5, "stop_auc": 1.0}, [5, 10, 15, 20], 24),
        ("run", {"validate_every": 5, "stop_auc": 0.0}, [5], 5),
        ("run", {"validate_every": 20, "stop_auc": 1.0}, [20], 24),
        # the authors' code: steps counted within each epoch; a pass ends only that epoch
        ("authors", {"validate_every": 5, "stop_auc": 1.0}, [5, 10, 17, 22], 24),
        ("authors", {"validate_every": 5, "stop_auc": 0.0}, [5, 10], 10),
        ("authors", {"validate_every": 20, "stop_auc": 1.0}, [], 24),  # never checks
    ],
)
def test_the_simulators_two_stop_rules(tiny_world: Path, rule, settings, checks, steps):
    info = _rule(tiny_world, rule, **settings)
    assert [step for step, _ in info["curve"]] == checks
    assert info["steps"] == steps


def test_the_ratings_order_groups_by_user_stably(tiny_world: Path, tmp_path: Path):
    import shutil

    from twostage.pipeline.stages import rating_order

    users = torch.tensor([2, 0, 2, 1, 0, 2])
    assert rating_order(users, "file") is None
    assert rating_order(users, "user").tolist() == [1, 4, 3, 0, 2, 5]
    # The tiny world's file is grouped by user already (as ML-1M's): both orders train alike.
    grouped_file = _rule(tiny_world, "run", validate_every=5, ratings_order="user")
    assert grouped_file == _rule(tiny_world, "run", validate_every=5)
    shuffled = tmp_path / "shuffled"
    shutil.copytree(tiny_world, shuffled)
    lines = (shuffled / "ratings.dat").read_text().splitlines(keepends=True)
    blocks: dict[str, list[str]] = {}
    for line in lines:  # each user's ratings, in file order
        blocks.setdefault(line.split("::")[0], []).append(line)
    keys = list(blocks)
    order = torch.randperm(len(keys), generator=torch.Generator().manual_seed(0)).tolist()
    (shuffled / "ratings.dat").write_text("".join("".join(blocks[keys[i]]) for i in order))
    grouped = _rule(shuffled, "run", validate_every=5, ratings_order="user")
    assert grouped == _rule(tiny_world, "run", validate_every=5, ratings_order="user")
    assert _rule(shuffled, "run", validate_every=5) != grouped
