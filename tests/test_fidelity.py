"""The fidelity harness (fidelity/crosscheck.py) without the authors' code or MovieLens: the
export format, the module added to their copy, the edit list, the summary and the arguments."""

from __future__ import annotations

import importlib.util
import json
import math
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from tiny import tiny_config

from fidelity import crosscheck as cc
from twostage.pipeline.cache import StageCache
from twostage.pipeline.experiment import prepare


@pytest.fixture(scope="module")
def exported(tiny_world: Path, tmp_path_factory: pytest.TempPathFactory):
    """(prepared, config, export folder, manifest) of the tiny world."""
    config = tiny_config(
        tiny_world, simulator={"epochs": 1, "validate_every": 20, "early_stop": "authors"}
    )
    root = tmp_path_factory.mktemp("fidelity")
    prepared = prepare(config, cache=StageCache(root / "cache"), verbose=False)
    manifest = cc.export_world(prepared, config, root / "world")
    return prepared, config, root / "world", manifest


def test_export_round_trips_shapes_dtypes_and_hash(exported) -> None:
    prepared, _, folder, manifest = exported
    loaded_manifest, files = cc.load_export(folder)
    assert loaded_manifest == manifest
    n_users, n_items = prepared.data.catalog.n_users, prepared.data.catalog.n_items
    world, log = files["world.npz"], files["log.npz"]
    assert world["user_categorical"].shape == (n_users, 5)
    assert world["item_categorical"].shape == (n_items, 2)
    assert world["timestamps"].shape == world["labels"].shape == (n_users, n_items)
    assert world["labels"].dtype == bool and log["users"].dtype == np.int64
    assert manifest["files"]["log.npz"]["tensors"]["propensities"] == {
        "shape": [len(prepared.log)],
        "dtype": "float32",
    }
    np.testing.assert_array_equal(world["labels"], prepared.world.labels.numpy())
    np.testing.assert_array_equal(log["items"], prepared.log.items.numpy())
    np.testing.assert_array_equal(log["rewards"], prepared.log.rewards.numpy())
    assert manifest["sizes"]["NUM_USERS"] == n_users
    assert manifest["sizes"]["NUM_VAL_USERS"] == len(prepared.context.val_users)
    assert manifest["config"]["simulator"]["early_stop"] == "authors"
    assert len(manifest["content_hash"]) == 64


def test_export_renames_weights_to_the_authors_names(exported) -> None:
    _, _, folder, _ = exported
    simulator = torch.load(folder / "simulator.pt")
    ranker = torch.load(folder / "ranker.pt")
    assert {
        "linear.0.weight",
        "linear.2.weight",
        "linear.4.bias",
        "user_rep.zip_embedding.weight",
        "item_rep.year_embedding.weight",
    } <= set(simulator)
    assert not [
        k for k in simulator if "feature_embeddings" in k or k.startswith(("first", "rest"))
    ]
    assert "linear.weight" in ranker and "context_linear.weight" not in ranker


def test_a_changed_export_file_is_refused(exported, tmp_path: Path) -> None:
    _, _, folder, _ = exported
    copy = tmp_path / "world"
    import shutil

    shutil.copytree(folder, copy)
    with np.load(copy / "log.npz") as f:
        log = {name: f[name] for name in f.files}
    log["rewards"][0] = 1 - log["rewards"][0]
    np.savez(copy / "log.npz", **log)
    with pytest.raises(cc.CrossCheckError, match="log.npz"):
        cc.load_export(copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["format"] = "something else"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(cc.CrossCheckError, match="format"):
        cc.load_export(copy)


def test_the_added_module_reads_the_export_in_the_authors_layout(exported, monkeypatch) -> None:
    prepared, _, folder, _ = exported
    monkeypatch.setenv(cc.ENV_WORLD, str(folder))
    path = folder.parent / "twostage_world_test.py"
    path.write_text(cc.SHIM_TEXT)
    spec = importlib.util.spec_from_file_location("twostage_world_test", path)
    shim = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(shim)
    syn = shim.ExportedWorld(device="cpu")
    n_items = prepared.data.catalog.n_items
    user, item = 3, 7  # 0-based rows; the authors' impression id is user * NUM_ITEMS + item
    feats, label = syn[[user * n_items + item]]
    assert feats["user_feats"]["categorical_feats"][0, 0] == user + 1  # 1-based ids
    assert feats["item_feats"]["categorical_feats"][0, 0] == item + 1
    assert float(feats["impression_feats"]["real_feats"][0, 0]) == pytest.approx(
        float(prepared.world.timestamps[user, item])
    )
    assert bool(label[0]) == bool(prepared.world.labels[user, item])
    feats, _ = syn[range(user * n_items, (user + 1) * n_items)]
    assert feats["item_feats"]["real_feats"].shape == (n_items, prepared.data.catalog.n_genres)
    u, a, p, r = shim.bandit_log()
    np.testing.assert_array_equal(a, prepared.log.items.numpy())
    assert syn.cut == pytest.approx(prepared.world.cut)


def _fake_checkout(root: Path) -> Path:
    """Files holding every edit's target text, and the other files a checkout has."""
    root.mkdir()
    texts: dict[str, str] = {}
    for edit in cc.EDITS:
        texts[edit.file] = texts.get(edit.file, "# before\n") + edit.old + "\n# between\n"
    for name, text in texts.items():
        (root / name).write_text(text)
    for name in ("metric.py", "loss.py"):
        (root / name).write_text("# fake\n")
    return root


def test_edits_apply_cleanly_to_a_fake_checkout(tmp_path: Path) -> None:
    root = _fake_checkout(tmp_path / "authors")
    copy = cc.prepare_authors_copy(root, tmp_path / "copy")
    for edit in cc.EDITS:
        text = (copy / edit.file).read_text()
        assert edit.new in text and edit.old not in text
    assert (copy / cc.SHIM).is_file() and (copy / "results").is_dir()
    assert (root / "run.py").read_text().count("generate_bandit_samples") == 1  # original kept
    assert "`bandit-log`" in cc.edits_markdown()


def test_a_missing_target_fails_clearly_and_changes_nothing(tmp_path: Path) -> None:
    root = _fake_checkout(tmp_path / "authors")
    before = (root / "model.py").read_text()
    run = (root / "run.py").read_text().replace("num_val_users = 2000\n", "")
    (root / "run.py").write_text(run)
    with pytest.raises(cc.CrossCheckError, match=r"'val-users'.*is not there.*run\.py"):
        cc.apply_edits(root)
    assert (root / "model.py").read_text() == before  # no edit written when one fails
    (root / "run.py").write_text(run + "num_val_users = 2000\n" * 2)
    with pytest.raises(cc.CrossCheckError, match="occurs 2 times"):
        cc.apply_edits(root)


def _result(value: float) -> dict:
    metrics = {"Precision@10": value, "NDCG@10": value}
    return {"one-stage": metrics, "two-stage": dict(metrics), "best_epoch": 1}


def test_summary_counts_means_and_standard_errors() -> None:
    rows = cc.result_rows("authors", "ce", 0, _result(0.1), 1.0)
    rows += cc.result_rows("authors", "ce", 1, _result(0.3), 1.0)
    rows += cc.result_rows("ours", "ce", 0, _result(0.5), 2.0)
    runs = pd.DataFrame(rows)
    table = cc.summarize(runs)
    row = table[(table.evaluation == "two-stage") & (table.metric == "Precision@10")].iloc[0]
    assert (row.authors_n, row.ours_n) == (2, 1)
    assert row.authors_mean == pytest.approx(0.2)
    assert row.authors_se == pytest.approx(np.std([0.1, 0.3], ddof=1) / math.sqrt(2))
    assert math.isnan(row.ours_se) and row["diff"] == pytest.approx(0.3)
    text = cc.summary_markdown(table, runs, ["cmd"])
    assert "(n=2)" in text and "50.00 (n=1)" in text
    assert "CE authors [1, 1]" in text  # each run's best epoch, per side


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--seeds", "3-1"], "range is empty"),
        (["--methods", "ips-topk"], "only ce, ips, 2s"),
        (["--methods", "nope"], "Unknown method"),
        (["--dataset", "/no/such/data"], "--dataset /no/such/data"),
    ],
)
def test_argument_errors_are_clear(tmp_path: Path, capsys, argv, message) -> None:
    checkout = _fake_checkout(tmp_path / "authors")
    base = [str(checkout), "--dataset", str(tmp_path)]
    with pytest.raises(SystemExit):
        cc.parse_args(base + argv)
    assert message in capsys.readouterr().err


def test_a_folder_that_is_not_their_checkout_is_refused(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit):
        cc.parse_args([str(tmp_path), "--dataset", str(tmp_path)])
    assert "missing run.py" in capsys.readouterr().err


def test_the_book_shows_the_edit_list_the_harness_applies() -> None:
    page = Path(__file__).resolve().parents[1] / "book" / "fidelity.md"
    assert cc.edits_markdown() in page.read_text(encoding="utf-8")


def test_summarize_rewrites_the_tables_from_runs_csv(tmp_path: Path) -> None:
    checkout = _fake_checkout(tmp_path / "authors")
    out = tmp_path / "out"
    base = [str(checkout), "--dataset", str(tmp_path), "--out", str(out), "--summarize"]
    with pytest.raises(cc.CrossCheckError, match="runs.csv does not exist"):
        cc.main(base)
    out.mkdir()
    rows = cc.result_rows("authors", "2s", 0, _result(0.25), 3.0)
    rows += cc.result_rows("ours", "2s", 0, _result(0.75), 1.0)
    pd.DataFrame(rows).to_csv(out / "runs.csv", index=False)
    assert cc.main(base) == 0
    table = pd.read_csv(out / "summary.csv")
    assert set(table.method) == {"2-IPS"} and table["diff"].tolist() == [0.5] * 4
    assert "`bandit-log`" in (out / "edits.md").read_text()


def test_the_same_weights_inputs_hold_our_loss_and_gradients(exported, tmp_path: Path) -> None:
    """What the authors' side is compared against (`fidelity/same_weights.py`): our batch's loss
    and gradients recompute from the saved weights and slates, under their parameter names."""
    from fidelity import same_weights
    from twostage.losses import two_stage_ips_loss
    from twostage.models import Nominator

    prepared, config, _, _ = exported
    saved = torch.load(same_weights.our_side(prepared, config, tmp_path))
    cfg, catalog = config.candidates, prepared.data.catalog
    b = saved["batch"]
    assert b["slates"].shape == (len(b["users"]), cfg.n_slates, cfg.slate_size)
    assert saved["logits"].shape == (catalog.n_users, catalog.n_items)
    assert set(saved["metrics"]) == {
        f"{s}/{e}/{m}"
        for s in ("val", "test")
        for e in ("one-stage", "two-stage")
        for m in cc.METRICS
    }
    model = Nominator(catalog)
    ours = {k: v for k, v in model.state_dict().items()}
    names = dict(zip(cc.authors_state(ours, "nominator"), ours, strict=True))  # theirs → ours
    model.load_state_dict({names[k]: v for k, v in saved["fresh"].items()})
    loss = two_stage_ips_loss(
        model.score_all(b["users"]),
        b["items"],
        b["propensities"],
        prepared.context.ranker_scores[b["users"]],
        alpha=b["alpha"],
        cap=b["cap"],
        slates=b["slates"].clone(),
    )
    assert loss.item() == pytest.approx(b["loss"], rel=1e-6)
    grads = dict(
        zip(
            [n for n, _ in model.named_parameters()],
            torch.autograd.grad(loss, list(model.parameters())),
            strict=True,
        )
    )
    for theirs, grad in cc.authors_state(grads, "nominator").items():
        torch.testing.assert_close(grad, b["grads"][theirs])


def test_the_same_weights_section_reads_in_the_summary(tmp_path: Path) -> None:
    from fidelity import same_weights

    result = {
        "simulator_probabilities": {"max_abs_diff": 1e-7, "pairs": 1000},
        "ranker_logits": {"max_abs_diff": 2e-6, "max_abs": 16.0},
        "nominator_logits": {"max_abs_diff": 3e-6},
        "two_stage_loss": {
            "authors": 1.5,
            "ours": 1.5000001,
            "grad_max_abs_diff": 5e-8,
            "grad_max_abs": 0.2,
            "slates_used": 128,
        },
        "evaluator": [
            {
                "split": "val",
                "evaluation": "two-stage",
                "metric": "NDCG@10",
                "authors": 0.61,
                "ours": 0.62,
            }
        ],
    }
    out = tmp_path / "out"
    out.mkdir()
    rows = cc.result_rows("authors", "ce", 0, _result(0.25), 3.0)
    (out / cc.SAME_WEIGHTS).write_text(json.dumps(result))
    cc.write_outputs(out, pd.DataFrame(rows), ["cmd"])
    text = (out / "summary.md").read_text()
    assert "\n".join(same_weights.markdown(result)) in text
    assert "| val | two-stage | NDCG@10 | 0.610000 | 0.620000 |" in text


def test_paired_differences_are_per_seed_over_seeds_both_sides_ran() -> None:
    rows = []
    for seed, (theirs, ours) in enumerate([(0.50, 0.52), (0.70, 0.71), (0.60, 0.63)]):
        rows += cc.result_rows("authors", "2s", seed, _result(theirs), 1.0)
        rows += cc.result_rows("paired", "2s", seed, _result(ours), 1.0)
    rows += cc.result_rows("authors", "2s", 3, _result(0.9), 1.0)  # no paired run: left out
    got = cc.paired_difference(pd.DataFrame(rows), "2s", "two-stage", "NDCG@10")
    diffs = np.array([0.02, 0.01, 0.03])
    assert got["paired_diff_n"] == 3
    assert got["paired_diff"] == pytest.approx(diffs.mean())
    assert got["paired_diff_se"] == pytest.approx(diffs.std(ddof=1) / math.sqrt(3))
    table = cc.summarize(pd.DataFrame(rows))
    assert (table.paired_diff_n == 3).all() and (table.paired_n == 3).all()


def test_a_run_from_given_initial_weights_starts_from_them(exported) -> None:
    """`initial_state` replaces the seed's initial weights (the fidelity harness's paired side):
    the seed's own weights give the seed's run exactly, other weights another run."""
    from twostage.models import Nominator
    from twostage.pipeline.candidates import train_candidate_generator

    prepared, config, _, _ = exported
    cfg = config.candidates
    plain = train_candidate_generator("2s", 4, prepared.context, cfg, prepared.device)
    torch.manual_seed(4)
    own = Nominator(prepared.data.catalog).state_dict()
    again = train_candidate_generator(
        "2s", 4, prepared.context, cfg, prepared.device, initial_state=own
    )
    assert again["rows"] == plain["rows"]
    torch.manual_seed(5)
    other = Nominator(prepared.data.catalog).state_dict()
    moved = train_candidate_generator(
        "2s", 4, prepared.context, cfg, prepared.device, initial_state=other
    )
    assert moved["rows"] != plain["rows"]


def _their_pickle(path: Path, val_two_p10: list[float], best: int) -> Path:
    """A result pickle as their run.py writes it: (best epoch, [(one, two)] per epoch for
    validation, the same for test), each dict an OrderedDict of metric → value."""
    from collections import OrderedDict

    def pair(v: float):
        one = OrderedDict([("Precision@10", v / 2), ("NDCG@10", v / 3)])
        two = OrderedDict([("Precision@10", v), ("NDCG@10", v / 4)])
        return one, two

    with open(path, "wb") as f:
        pickle.dump((best, [pair(v) for v in val_two_p10], [pair(v + 1) for v in val_two_p10]), f)
    return path


def test_their_pickle_gives_test_metrics_at_the_best_epoch_and_the_curve(tmp_path: Path) -> None:
    got = cc.read_authors_pickle(_their_pickle(tmp_path / "r.pkl", [0.1, 0.4, 0.3], best=1))
    assert got["best_epoch"] == 1
    assert got["two-stage"]["Precision@10"] == pytest.approx(1.4)
    assert got["one-stage"]["NDCG@10"] == pytest.approx(1.4 / 3)
    two = [c for c in got["curve"] if c["evaluation"] == "two-stage"]
    assert [c["value"] for c in two if c["metric"] == "Precision@10"] == [0.1, 0.4, 0.3]
    assert len(got["curve"]) == 3 * 2 * len(cc.METRICS)


def test_curves_give_the_largest_gap_from_the_authors_mean_curve(tmp_path: Path) -> None:
    curves = []
    for seed, offset in enumerate([0.0, 0.02]):
        theirs = [
            {"epoch": e, "evaluation": "two-stage", "metric": "Precision@10", "value": 0.5 + offset}
            for e in range(3)
        ]
        ours = [
            {
                "epoch": e,
                "evaluation": "two-stage",
                "metric": "Precision@10",
                "value": 0.5 + offset + 0.01 * e,
            }
            for e in range(3)
        ]
        curves += cc.curve_rows("authors", "2s", seed, theirs)
        curves += cc.curve_rows("paired", "2s", seed, ours)
    # as the harness builds it: rows appended to an empty frame (object columns)
    curves = pd.concat([pd.DataFrame(columns=cc.CURVE_COLUMNS), pd.DataFrame(curves)])
    gaps = cc.curve_gaps(curves)
    assert gaps.to_dict("records") == [
        {"method": "2s", "side": "paired", "largest_gap": pytest.approx(0.02)}
    ]
    out = tmp_path / "out"
    rows = cc.result_rows("authors", "2s", 0, _result(0.5), 1.0)
    cc.write_outputs(out, pd.DataFrame(rows), ["cmd"], curves)
    assert pd.read_csv(out / cc.CURVES).shape == curves.shape
    assert (out / "figures" / "curves.png").stat().st_size > 0
    assert "2-IPS ours from their init 2.00" in (out / "summary.md").read_text()
