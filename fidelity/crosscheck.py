"""Same-world cross-check of our candidate generators against the authors' public code (#12).

    python fidelity/crosscheck.py AUTHORS_CHECKOUT --dataset PATH [--seeds 0-9]
        [--methods ce,ips,2s] [--out results/fidelity/ml-100k]

1. Build our world (stages 1–5 of `twostage.pipeline`) and export what the authors' `run.py`
   needs — simulator, logging policy and ranker weights under their parameter names, every
   pair's features, timestamps, probabilities and labels, and our bandit log — as a folder of
   `.pt`/`.npz` files with `manifest.json` (shapes, dtypes, sizes, config, content hash).
2. Copy their checkout into a scratch folder and apply `EDITS` (named text substitutions) plus
   one added module (`twostage_world.py`), so that their code loads that world instead of
   building or sampling its own, and sizes its models to our data.
3. Train their candidate generators (CE, 1-IPS, 2-IPS) for each seed, one subprocess with one
   thread at a time, and read their result pickle; train ours on the same world and seeds.
4. Write `runs.csv`, `summary.csv`, `summary.md` (mean ± s.e. over seeds, per side) and
   `edits.md` into `--out`. Runs already in `runs.csv` are kept (the command resumes).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

FORMAT = "twostage-fidelity-world/1"
ENV_WORLD = "TWOSTAGE_FIDELITY_WORLD"  # the export folder, for the module added to their copy
MANIFEST = "manifest.json"
SHIM = "twostage_world.py"
AUTHORS_LOSS = {"ce": "loss_ce", "ips": "loss_ips", "2s": "loss_2s"}
METHOD_LABEL = {"ce": "CE", "ips": "1-IPS", "2s": "2-IPS"}
METRICS = ("Precision@10", "NDCG@10")
# "ours" starts from our own initial weights for the seed; "paired" runs our code from the
# authors' initial weights for the same seed (their Nominator built right after their
# torch.manual_seed(seed), as run.py does), so that each seed pairs the two codes.
SIDES = ("authors", "ours", "paired")
# The catalog's side features in the authors' column order (model.py's UserRep / ItemRep).
USER_FIELDS = ("gender", "age", "occupation", "zip")
ITEM_FIELDS = ("year",)
SIDE_LABEL = {"authors": "authors", "ours": "ours", "paired": "ours from their init"}
CURVES = "curves.csv"  # validation metrics per epoch of every run
CURVE_COLUMNS = ["side", "method", "seed", "epoch", "evaluation", "metric", "value"]
SAME_WEIGHTS = "same_weights.json"  # written by the same-weights check, read into summary.md
RUN_COLUMNS = ["side", "method", "seed", "evaluation", "metric", "value", "best_epoch", "seconds"]


class CrossCheckError(Exception):
    """A setting, file or edit the cross-check cannot use; the message names it."""


# ---------------------------------------------------------------- edits to their copy
@dataclass(frozen=True)
class Edit:
    """Replace the text `old` (which must occur exactly once) in `file` by `new`."""

    name: str
    file: str
    old: str
    new: str
    why: str


EDITS: tuple[Edit, ...] = (
    Edit(
        "sizes",
        "model.py",
        "NUM_ITEMS = 3883\nNUM_YEARS = 81\nNUM_GENRES = 18\nNUM_USERS = 6040\n"
        "NUM_OCCUPS = 21\nNUM_AGES = 7\nNUM_ZIPS = 3439\n",
        "from twostage_world import SIZES\n\nNUM_ITEMS = SIZES['NUM_ITEMS']\n"
        "NUM_YEARS = SIZES['NUM_YEARS']\nNUM_GENRES = SIZES['NUM_GENRES']\n"
        "NUM_USERS = SIZES['NUM_USERS']\nNUM_OCCUPS = SIZES['NUM_OCCUPS']\n"
        "NUM_AGES = SIZES['NUM_AGES']\nNUM_ZIPS = SIZES['NUM_ZIPS']\n",
        "model.py hard-codes ML-1M's sizes (6,040 users, 3,883 items, 3,439 zip codes, …); "
        "metric.py imports two of them. They become the exported world's sizes.",
    ),
    Edit(
        "no-torchnet",
        "run.py",
        "from torchnet.meter import AUCMeter\n",
        "AUCMeter = None  # twostage fidelity: used only by training branches that never run\n",
        "torchnet is unmaintained and not installed; AUCMeter only serves the simulator and "
        "logging-policy training branches, which do not run when their weights are given.",
    ),
    Edit(
        "no-six",
        "run.py",
        "from six.moves import cPickle as pickle\n",
        "import pickle\n",
        "six only supplies Python 2's cPickle; Python 3's pickle is the same format.",
    ),
    Edit(
        "import-world",
        "run.py",
        "from data import MovieLensDataset, SyntheticMovieLensDataset\n",
        "import twostage_world\n",
        "The ML-1M readers of data.py are replaced by the module that loads our exported world.",
    ),
    Edit(
        "world-folder",
        "run.py",
        'filepath = "./"\n',
        "filepath = twostage_world.DIR\n",
        "simulator.pt, logging_policy.pt and ranker.pt are read from the export, never the ML-1M "
        "weights shipped with their repository (the copy's are deleted as well).",
    ),
    Edit(
        "world-dataset",
        "run.py",
        "dataset = MovieLensDataset(filepath, device=device)\n",
        "dataset = twostage_world.ExportedWorld(device=device)\n",
        "The real-data set only gives the sizes (and the simulator's training data, not used: "
        "the simulator is given).",
    ),
    Edit(
        "world-synthetic",
        "run.py",
        "syn = SyntheticMovieLensDataset(\n    filepath, simulator_path, synthetic_data_path, "
        "device=device)\n",
        "syn = dataset\n",
        "Every pair's timestamp, probability and label come from our world instead of being "
        "re-sampled; their labels use their hard-coded ML-1M cut 0.764506, ours the world's cut.",
    ),
    Edit(
        "bandit-log",
        "run.py",
        "u, a, p, r = generate_bandit_samples(\n    logging_policy, syn,\n    k=5)",
        "u, a, p, r = twostage_world.bandit_log()",
        "Their run re-samples the bandit log with torch.multinomial on every call; both sides "
        "must learn from the same logged users, items, propensities and rewards.",
    ),
    Edit(
        "val-users",
        "run.py",
        "num_val_users = 2000\n",
        "num_val_users = twostage_world.NUM_VAL_USERS\n",
        "2,000 of ML-1M's 6,040 users validate; ours scales that share to the data "
        "(round(2000·n_users/6040), e.g. 312 of ML-100K's 943).",
    ),
)


def apply_edits(root: Path, edits: tuple[Edit, ...] = EDITS) -> None:
    """Apply `edits` in place to the files under `root`; every edit's text must occur once.

    All edits are checked before any file is written, so a failed check leaves `root` as it was.
    """
    texts: dict[str, str] = {}
    for edit in edits:
        path = root / edit.file
        if edit.file not in texts:
            if not path.is_file():
                raise CrossCheckError(f"edit {edit.name!r}: {path} does not exist.")
            texts[edit.file] = path.read_text(encoding="utf-8")
        count = texts[edit.file].count(edit.old)
        if count != 1:
            first = edit.old.splitlines()[0] if edit.old else ""
            found = "is not there" if count == 0 else f"occurs {count} times"
            raise CrossCheckError(
                f"edit {edit.name!r}: the text starting {first!r} {found} in {path}; the "
                "authors' code is not the version these edits were written for."
            )
        texts[edit.file] = texts[edit.file].replace(edit.old, edit.new)
    for name, text in texts.items():
        (root / name).write_text(text, encoding="utf-8")


def edits_markdown(edits: tuple[Edit, ...] = EDITS) -> str:
    """The edit list as a markdown table (shown by the book)."""
    lines = ["| # | edit | file | replaces | why |", "|---|---|---|---|---|"]
    for i, edit in enumerate(edits, 1):
        old = edit.old.splitlines()[0].strip().replace("|", "\\|")
        more = " …" if len(edit.old.strip().splitlines()) > 1 else ""
        lines.append(f"| {i} | `{edit.name}` | `{edit.file}` | `{old}`{more} | {edit.why} |")
    return "\n".join(lines)


# The module added to their copy (our code, not theirs): it gives run.py the attributes of their
# SyntheticMovieLensDataset, filled from the export, and the exported bandit log.
SHIM_TEXT = '''"""Added by twostage's fidelity harness: the exported world, authors' layout."""
import json
import os

import numpy as np
import torch

DIR = os.environ["TWOSTAGE_FIDELITY_WORLD"]
with open(os.path.join(DIR, "manifest.json")) as f:
    MANIFEST = json.load(f)
SIZES = MANIFEST["sizes"]
NUM_VAL_USERS = SIZES["NUM_VAL_USERS"]


class ExportedWorld:
    """What run.py and metric.py use of SyntheticMovieLensDataset: features (1-based ids in
    column 0), every pair's impression features in user-major order, the cut, to_device."""

    def __init__(self, device="cpu"):
        self.device = device
        self.cut = MANIFEST["cut"]
        for key, value in SIZES.items():
            setattr(self, key, value)
        w = np.load(os.path.join(DIR, "world.npz"))
        n_users, n_items = SIZES["NUM_USERS"], SIZES["NUM_ITEMS"]
        self.user_feats = {"categorical_feats": torch.from_numpy(w["user_categorical"])}
        self.item_feats = {
            "categorical_feats": torch.from_numpy(w["item_categorical"]),
            "real_feats": torch.from_numpy(w["item_genres"]),
        }
        self.impression_feats = {
            "user_ids": torch.arange(1, n_users + 1).repeat_interleave(n_items),
            "item_ids": torch.arange(1, n_items + 1).repeat(n_users),
            "real_feats": torch.from_numpy(w["timestamps"]).reshape(-1, 1),
            "label_probs": torch.from_numpy(w["probabilities"]).reshape(-1),
            "labels": torch.from_numpy(w["labels"]).reshape(-1).to(torch.float32),
        }

    def __len__(self):
        return len(self.impression_feats["user_ids"])

    def __getitem__(self, idx):
        if isinstance(idx, range):
            idx = torch.arange(idx.start, idx.stop, idx.step)
        elif isinstance(idx, list):
            idx = torch.tensor(idx, dtype=torch.long)
        user_id = self.impression_feats["user_ids"][idx]
        item_id = self.impression_feats["item_ids"][idx]
        feats = {
            "impression_feats": {"real_feats": self.impression_feats["real_feats"][idx]},
            "user_feats": {k: v[user_id - 1] for k, v in self.user_feats.items()},
            "item_feats": {k: v[item_id - 1] for k, v in self.item_feats.items()},
        }
        return feats, self.impression_feats["labels"][idx]

    def to_device(self, data):
        if isinstance(data, torch.Tensor):
            return data.to(self.device)
        if isinstance(data, dict):
            return {key: self.to_device(value) for key, value in data.items()}
        if isinstance(data, list):
            return [self.to_device(x) for x in data]
        raise NotImplementedError("Type {} not supported.".format(type(data)))


def bandit_log():
    """users, items (0-based rows), propensities, rewards: numpy arrays (n_users * K,)."""
    log = np.load(os.path.join(DIR, "log.npz"))
    return log["users"], log["items"], log["propensities"], log["rewards"]
'''


# Run in their copy: their evaluator's truth (Evaluator.get_target_rankings, their simulator
# code on the exported weights) against the exported World.truth, pair by pair.
TRUTH_CHECK = """
import json, numpy as np, torch
torch.set_num_threads(1)
import twostage_world
from metric import Evaluator
from model import ImpressionSimulator
syn = twostage_world.ExportedWorld(device="cpu")
sim = ImpressionSimulator(use_impression_feats=True)
sim.load_state_dict(torch.load(twostage_world.DIR + "/simulator.pt"))
sim.eval()
u, a, p, r = twostage_world.bandit_log()
truth = np.load(twostage_world.DIR + "/world.npz")["truth"]
theirs = np.zeros_like(truth)
for i, items in enumerate(Evaluator(u[r > 0], a[r > 0], sim, syn).target_rankings):
    theirs[i, items] = True
differ = theirs != truth
print(json.dumps({"pairs": int(truth.size), "positive_ours": int(truth.sum()),
                  "positive_theirs": int(theirs.sum()), "differing_pairs": int(differ.sum()),
                  "differing_users": int(differ.any(1).sum())}))
"""


def their_env(copy: Path, export: Path) -> dict[str, str]:
    """The environment of a process in their copy: the export's folder, one thread, their
    modules importable."""
    return {
        **os.environ,
        ENV_WORLD: str(export.resolve()),
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "PYTHONPATH": str(copy),
    }


def run_script(copy: Path, export: Path, script: str, *args: str, what: str) -> str:
    """Run `script` (Python source) in their copy with `args`; return its stdout. A failure
    raises `CrossCheckError` naming `what` and ending with the script's stderr."""
    done = subprocess.run(
        [sys.executable, "-c", script, *args],
        cwd=copy,
        env=their_env(copy, export),
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise CrossCheckError(f"{what} in {copy} failed:\n" + done.stderr[-3000:])
    return done.stdout


def check_truth(copy: Path, export: Path) -> dict:
    """Count the pairs where their evaluator's truth and the exported `World.truth` differ."""
    out = run_script(copy, export, TRUTH_CHECK, what="the truth check")
    return json.loads(out.strip().splitlines()[-1])


def prepare_authors_copy(checkout: Path, dest: Path) -> Path:
    """A fresh copy of the authors' checkout in `dest` with `EDITS` applied, the added module
    written, their shipped ML-1M weights removed and `results/` created. Returns `dest`."""
    check_checkout(checkout)
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(checkout, dest, ignore=shutil.ignore_patterns(".git"))
    apply_edits(dest)
    for name in ("simulator.pt", "logging_policy.pt", "ranker.pt", "full_impression_feats.pt"):
        (dest / name).unlink(missing_ok=True)
    (dest / SHIM).write_text(SHIM_TEXT, encoding="utf-8")
    (dest / "results").mkdir(exist_ok=True)
    return dest


def check_checkout(checkout: Path) -> None:
    missing = [
        n for n in ("run.py", "model.py", "metric.py", "loss.py") if not (checkout / n).is_file()
    ]
    if missing:
        raise CrossCheckError(
            f"AUTHORS_CHECKOUT {checkout}: missing {', '.join(missing)}; expected a checkout of "
            "github.com/jiaqima/Off-Policy-2-Stage."
        )


# ---------------------------------------------------------------- export of our world
def authors_state(state: dict[str, torch.Tensor], kind: str) -> dict[str, torch.Tensor]:
    """Our state dict of `kind` ("simulator", "nominator", "ranker") under the authors'
    parameter names (model.py); the tensors are the same."""
    renames = [
        ("user_rep.feature_embeddings.0.", "user_rep.gender_embedding."),
        ("user_rep.feature_embeddings.1.", "user_rep.age_embedding."),
        ("user_rep.feature_embeddings.2.", "user_rep.occup_embedding."),
        ("user_rep.feature_embeddings.3.", "user_rep.zip_embedding."),
        ("item_rep.feature_embeddings.0.", "item_rep.year_embedding."),
    ]
    renames += {
        "simulator": [("first.", "linear.0."), ("rest.1.", "linear.2."), ("rest.3.", "linear.4.")],
        "nominator": [("user_linear.", "linear.")],
        "ranker": [("context_linear.", "linear.")],
    }[kind]
    out = {}
    for key, value in state.items():
        new = key
        for old_prefix, new_prefix in renames:
            if key.startswith(old_prefix):
                new = new_prefix + key[len(old_prefix) :]
                break
        if new == key and not key.startswith(
            ("user_rep.user_embedding", "item_rep.item_embedding", "item_rep.genre_linear")
        ):
            raise CrossCheckError(f"{kind} weights: no authors' name for parameter {key!r}.")
        out[new] = value.detach().cpu().contiguous()
    return out


def tensor_digest(tensors: dict[str, np.ndarray]) -> str:
    """sha256 over names, dtypes, shapes and bytes, in name order (independent of file format)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        array = np.ascontiguousarray(tensors[name])
        h.update(f"{name}|{array.dtype.str}|{array.shape}|".encode())
        h.update(array.tobytes())
    return h.hexdigest()


def _describe(tensors: dict[str, np.ndarray]) -> dict:
    return {
        "tensors": {n: {"shape": list(a.shape), "dtype": str(a.dtype)} for n, a in tensors.items()},
        "sha256": tensor_digest(tensors),
    }


def _read_file(path: Path) -> dict[str, np.ndarray]:
    if path.suffix == ".npz":
        with np.load(path) as f:
            return {name: f[name] for name in f.files}
    return {k: v.numpy() for k, v in torch.load(path, map_location="cpu").items()}


def export_world(prepared, config, dest: Path) -> dict:
    """Write `prepared` (a `twostage.pipeline.experiment.Prepared`) to `dest` for the authors'
    code; return the manifest.

    Files (users and items are 0-based rows; ids 1-based in column 0 of the features):
        world.npz: user_categorical (n_users, 5) int64 [id, gender, age, occupation, zip];
            item_categorical (n_items, 2) int64 [id, year]; item_genres (n_items, G) float32;
            timestamps, probabilities (n_users, n_items) float32; labels, truth (n_users,
            n_items) bool.
        log.npz: users, items (n_users·K,) int64; propensities, rewards (n_users·K,) float32.
        simulator.pt, logging_policy.pt, ranker.pt: state dicts under the authors' names.
        manifest.json: format, sizes, cut, config, per-file tensor shapes/dtypes/sha256 and a
            content hash over all files.
    """
    from twostage.pipeline.candidates import validation_size
    from twostage.runtime import cpu_model

    catalog = prepared.data.catalog
    if tuple(catalog.user_fields) != USER_FIELDS or tuple(catalog.item_fields) != ITEM_FIELDS:
        raise CrossCheckError(
            f"dataset {config.dataset}: the authors' models need user features {USER_FIELDS} "
            f"and item features {ITEM_FIELDS}; this catalog has {catalog.user_fields} and "
            f"{catalog.item_fields}."
        )
    dest.mkdir(parents=True, exist_ok=True)
    world, log = prepared.world, prepared.log
    files: dict[str, dict[str, np.ndarray]] = {
        "world.npz": {
            "user_categorical": catalog.user_features.numpy().astype(np.int64),
            "item_categorical": catalog.item_features.numpy().astype(np.int64),
            "item_genres": catalog.item_genres.numpy().astype(np.float32),
            "timestamps": world.timestamps.numpy().astype(np.float32),
            "probabilities": world.probabilities.numpy().astype(np.float32),
            "labels": world.labels.numpy().astype(bool),
            "truth": world.truth.numpy().astype(bool),
        },
        "log.npz": {
            "users": log.users.numpy().astype(np.int64),
            "items": log.items.numpy().astype(np.int64),
            "propensities": log.propensities.numpy().astype(np.float32),
            "rewards": log.rewards.numpy().astype(np.float32),
        },
    }
    for name, values in files.items():
        np.savez(dest / name, **values)
    for name, kind, model in (
        ("simulator.pt", "simulator", prepared.simulator),
        ("logging_policy.pt", "nominator", prepared.logging_policy),
        ("ranker.pt", "ranker", prepared.ranker),
    ):
        state = authors_state(model.state, kind)
        torch.save(state, dest / name)
        files[name] = {k: v.numpy() for k, v in state.items()}
    cards = dict(zip(catalog.user_fields, catalog.user_cardinalities, strict=True))
    sizes = {
        "NUM_USERS": catalog.n_users,
        "NUM_ITEMS": catalog.n_items,
        "NUM_GENRES": catalog.n_genres,
        "NUM_YEARS": int(catalog.item_cardinalities[0]),
        "NUM_AGES": cards["age"],
        "NUM_OCCUPS": cards["occupation"],
        "NUM_ZIPS": cards["zip"],
        "NUM_GENDERS": cards["gender"],
        "NUM_VAL_USERS": validation_size(catalog.n_users),
        "K": log.k,
    }
    if sizes["NUM_GENDERS"] != 2:
        raise CrossCheckError(
            f"dataset {config.dataset}: {sizes['NUM_GENDERS']} genders; the authors' UserRep "
            "has an embedding for exactly 2."
        )
    described = {name: _describe(values) for name, values in files.items()}
    manifest = {
        "format": FORMAT,
        "dataset": str(config.dataset),
        "sizes": sizes,
        "cut": float(world.cut),
        "cut_rule": world.cut_rule,
        "config": config.to_dict(),
        "stage_keys": dict(prepared.keys),
        # The world depends on these too: another thread count or CPU kind trains another
        # simulator (float sums in another order), hence another world.
        "built_by": {
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "cpu": cpu_model(),
        },
        "log_summary": {
            "impressions": int(log.users.numel()),
            "positives": int(log.rewards.sum().item()),
            "distinct_items": int(log.items.unique().numel()),
        },
        "files": described,
        "content_hash": content_hash(described),
    }
    text = json.dumps(manifest, indent=2)
    (dest / MANIFEST).write_text(text, encoding="utf-8")
    return json.loads(text)  # as a reader sees it (tuples become lists)


def content_hash(described: dict) -> str:
    return hashlib.sha256(
        "".join(f"{n}:{d['sha256']}\n" for n, d in sorted(described.items())).encode()
    ).hexdigest()


def load_export(dest: Path) -> tuple[dict, dict[str, dict[str, np.ndarray]]]:
    """Read an export and check it against its manifest (format, every file's tensors, shapes,
    dtypes and hashes, the content hash). Returns (manifest, {file: {tensor: array}})."""
    path = dest / MANIFEST
    if not path.is_file():
        raise CrossCheckError(f"{path}: no manifest; not a fidelity export.")
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if manifest.get("format") != FORMAT:
        raise CrossCheckError(f"{path}: format {manifest.get('format')!r}, expected {FORMAT!r}.")
    files = {}
    for name, described in manifest["files"].items():
        if not (dest / name).is_file():
            raise CrossCheckError(f"{dest / name}: listed in the manifest but missing.")
        values = _read_file(dest / name)
        if _describe(values) != described:
            raise CrossCheckError(
                f"{dest / name}: its tensors do not match {path} (changed after export?)."
            )
        files[name] = values
    if content_hash(manifest["files"]) != manifest["content_hash"]:
        raise CrossCheckError(f"{path}: content_hash does not match its files' hashes.")
    return manifest, files


# ---------------------------------------------------------------- runs
def read_authors_pickle(path: Path) -> dict:
    """Their run's result pickle (best epoch, validation and test results per epoch) →
    {"one-stage", "two-stage": test metrics at the best epoch, "best_epoch", "curve": the
    validation rows of every epoch}."""
    with open(path, "rb") as f:
        best_epoch, val_results, test_results = pickle.load(f)
    one, two = test_results[best_epoch]
    curve = [
        {"epoch": epoch, "evaluation": evaluation, "metric": metric, "value": float(res[metric])}
        for epoch, pair in enumerate(val_results)
        for evaluation, res in zip(("one-stage", "two-stage"), pair, strict=True)
        for metric in METRICS
    ]
    return {
        "one-stage": dict(one),
        "two-stage": dict(two),
        "best_epoch": best_epoch,
        "curve": curve,
    }


def run_authors(
    copy: Path, export: Path, method: str, seed: int, timeout: float, keep: Path
) -> tuple[dict, float]:
    """One run of their `run.py` (CPU, one thread); its result pickle is copied to `keep`.
    Returns ({evaluation: test metrics at the best validation epoch, "best_epoch", "curve"},
    seconds)."""
    loss = AUTHORS_LOSS[method]
    command = [
        sys.executable,
        "run.py",
        "--loss_type",
        loss,
        "--seed",
        str(seed),
        "--device",
        "cpu",
    ]
    start = time.perf_counter()
    done = subprocess.run(
        command,
        cwd=copy,
        env=their_env(copy, export),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    seconds = time.perf_counter() - start
    (copy / "results" / f"{loss}_{seed}.log").write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        raise CrossCheckError(
            f"their run.py --loss_type {loss} --seed {seed} failed ({done.returncode}):\n"
            + done.stderr[-3000:]
        )
    produced = copy / "results" / f"{loss.split('_')[1]}-a0.001_{seed}.pkl"
    keep.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(produced, keep / f"{loss}_{seed}.pkl")
    return read_authors_pickle(produced), seconds


# Run in their copy: their Nominator's initial weights for a seed, built as run.py builds it
# (torch.manual_seed, torch.cuda.manual_seed, then Nominator()).
INITIAL_WEIGHTS = """
import sys, torch
torch.set_num_threads(1)
import twostage_world
from model import Nominator
seed = int(sys.argv[1])
torch.manual_seed(seed)
torch.cuda.manual_seed(seed)
torch.save(Nominator().state_dict(), sys.argv[2])
"""


def authors_initial_state(copy: Path, export: Path, seed: int, dest: Path, ours: dict) -> dict:
    """Their Nominator's initial weights for `seed`, under our parameter names (`ours`: a state
    dict of our Nominator, for the names)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    run_script(
        copy,
        export,
        INITIAL_WEIGHTS,
        str(seed),
        str(dest.resolve()),
        what=f"their initial weights for seed {seed}",
    )
    theirs = torch.load(dest)
    names = dict(zip(authors_state(ours, "nominator"), ours, strict=True))  # their name → ours
    if set(theirs) != set(names):
        raise CrossCheckError(
            f"their Nominator's parameters {sorted(theirs)} do not match ours {sorted(names)}."
        )
    return {names[k]: v for k, v in theirs.items()}


def run_ours(
    prepared, config, method: str, seed: int, initial_state: dict | None = None
) -> tuple[dict, float]:
    from twostage.pipeline.candidates import train_candidate_generator

    start = time.perf_counter()
    out = train_candidate_generator(
        method,
        seed,
        prepared.context,
        config.candidates,
        prepared.device,
        initial_state=initial_state,
    )
    seconds = time.perf_counter() - start
    best = out["best_epoch"]
    result: dict = {"one-stage": {}, "two-stage": {}, "best_epoch": best, "curve": []}
    for row in out["rows"]:
        if row["split"] == "test" and row["epoch"] == best:
            result[row["evaluation"]][row["metric"]] = row["value"]
        elif row["split"] == "val" and row["metric"] in METRICS:
            result["curve"].append({k: row[k] for k in ("epoch", "evaluation", "metric", "value")})
    return result, seconds


def result_rows(side: str, method: str, seed: int, result: dict, seconds: float) -> list[dict]:
    return [
        {
            "side": side,
            "method": method,
            "seed": seed,
            "evaluation": evaluation,
            "metric": metric,
            "value": float(result[evaluation][metric]),
            "best_epoch": result["best_epoch"],
            "seconds": round(seconds, 1),
        }
        for evaluation in ("one-stage", "two-stage")
        for metric in METRICS
    ]


def curve_rows(side: str, method: str, seed: int, curve: list[dict]) -> list[dict]:
    """Rows of `curves.csv`: one run's validation metrics per epoch."""
    return [{"side": side, "method": method, "seed": seed, **point} for point in curve]


def _headline(curves: pd.DataFrame) -> pd.DataFrame:
    """The validation two-stage Precision@10 rows of `curves`, as numbers (rows appended to an
    empty frame come in as object columns)."""
    cell = curves[(curves.evaluation == "two-stage") & (curves.metric == "Precision@10")]
    return cell.astype({"epoch": int, "value": float})


def curve_gaps(curves: pd.DataFrame) -> pd.DataFrame:
    """Per method and side: the mean validation two-stage Precision@10 of every epoch over seeds,
    and the largest gap of that mean curve from the authors' (absolute, over epochs)."""
    cell = _headline(curves)
    means = cell.groupby(["method", "side", "epoch"])["value"].mean().unstack("epoch")
    rows = []
    for (method, side), curve in means.iterrows():
        if side == "authors" or (method, "authors") not in means.index:
            continue
        gap = (curve - means.loc[(method, "authors")]).abs().max()
        rows.append({"method": method, "side": side, "largest_gap": float(gap)})
    return pd.DataFrame(rows, columns=["method", "side", "largest_gap"])


def summarize(runs: pd.DataFrame) -> pd.DataFrame:
    """Per method, evaluation and metric: each side's n, mean, s.e. (std/√n, ddof 1), and the
    difference ours − authors with its s.e. (√(s.e.₁² + s.e.₂²), the sides independent)."""
    from twostage.results import mean_stderr

    cells = ["method", "evaluation", "metric"]
    stats = mean_stderr(runs.groupby([*cells, "side"], sort=False)["value"])
    rows = []
    for (method, evaluation, metric), _ in runs.groupby(cells, sort=False):
        row = {
            "method": METHOD_LABEL.get(method, method),
            "evaluation": evaluation,
            "metric": metric,
        }
        for side in SIDES:
            key = (method, evaluation, metric, side)
            have = key in stats.index
            row[f"{side}_n"] = int(stats.at[key, "n_seeds"]) if have else 0
            row[f"{side}_mean"] = stats.at[key, "mean"] if have else np.nan
            row[f"{side}_se"] = stats.at[key, "stderr"] if have else np.nan
        row["diff"] = row["ours_mean"] - row["authors_mean"]
        row["diff_se"] = float(np.hypot(row["authors_se"], row["ours_se"]))
        row["diff_over_se"] = row["diff"] / row["diff_se"] if row["diff_se"] > 0 else np.nan
        row.update(paired_difference(runs, method, evaluation, metric))
        rows.append(row)
    return pd.DataFrame(rows)


def paired_difference(runs: pd.DataFrame, method: str, evaluation: str, metric: str) -> dict:
    """Per seed run by both, paired − authors (the same initial weights): n, mean and s.e.
    (std/√n, ddof 1) of those differences."""
    cell = runs[(runs.method == method) & (runs.evaluation == evaluation) & (runs.metric == metric)]
    by_seed = cell.pivot_table(index="seed", columns="side", values="value", aggfunc="first")
    if not {"authors", "paired"} <= set(by_seed.columns):
        return {"paired_diff_n": 0, "paired_diff": np.nan, "paired_diff_se": np.nan}
    diffs = (by_seed["paired"] - by_seed["authors"]).dropna()
    n = len(diffs)
    se = float(diffs.std(ddof=1) / np.sqrt(n)) if n > 1 else np.nan
    return {
        "paired_diff_n": n,
        "paired_diff": float(diffs.mean()) if n else np.nan,
        "paired_diff_se": se,
    }


def summary_markdown(
    table: pd.DataFrame,
    runs: pd.DataFrame,
    commands: list[str],
    same: dict | None = None,
    gaps: pd.DataFrame | None = None,
) -> str:
    def cell(mean: float, se: float, n: int) -> str:
        if not n:
            return "—"
        return f"{100 * mean:.2f} ± {100 * se:.2f} (n={n})" if n > 1 else f"{100 * mean:.2f} (n=1)"

    lines = [
        "# Fidelity cross-check: the authors' code and ours on one exported world",
        "",
        "Test users, at each run's best validation epoch (two-stage Precision@10, as both codes "
        "select). Values ×100, mean ± s.e. over seeds (n seeds). *ours*: our code from our own "
        "initial weights; *ours from their init*: our code from the authors' initial weights for "
        "the same seed, so that each seed pairs the two codes (the 2-IPS slates still come from "
        "different random streams). *paired*: mean ± s.e. over seeds of (ours from their init − "
        "authors). A difference under ~2 s.e. is not a difference.",
        "",
        "| method | evaluation | metric | authors | ours | ours − authors | "
        "ours from their init | paired | /s.e. |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in table.itertuples():
        diff = "—" if np.isnan(r.diff) else f"{100 * r.diff:+.2f} ± {100 * r.diff_se:.2f}"
        paired, ratio = "—", "—"
        if r.paired_diff_n:
            paired = f"{100 * r.paired_diff:+.2f}"
            if r.paired_diff_n > 1:
                paired += f" ± {100 * r.paired_diff_se:.2f} (n={r.paired_diff_n})"
                # metrics are float32: an s.e. below 1e-5 is rounding, not a difference
                if r.paired_diff_se > 1e-5:
                    ratio = f"{r.paired_diff / r.paired_diff_se:+.1f}"
        lines.append(
            f"| {r.method} | {r.evaluation} | {r.metric} | "
            f"{cell(r.authors_mean, r.authors_se, r.authors_n)} | "
            f"{cell(r.ours_mean, r.ours_se, r.ours_n)} | {diff} | "
            f"{cell(r.paired_mean, r.paired_se, r.paired_n)} | {paired} | {ratio} |"
        )
    per_run = runs.drop_duplicates(["side", "method", "seed"])
    epochs = per_run.groupby(["method", "side"], sort=False)["best_epoch"]
    lines += [
        "",
        "Best validation epoch (0-based, of 20) per run: "
        + "; ".join(
            f"{METHOD_LABEL.get(m, m)} {s} {sorted(int(e) for e in v)}" for (m, s), v in epochs
        ),
    ]
    times = per_run.groupby(["side", "method"])["seconds"]
    lines += [
        "",
        "Seconds per run (one CPU thread): "
        + "; ".join(
            f"{s} {METHOD_LABEL.get(m, m)} median {v:.0f}" for (s, m), v in times.median().items()
        ),
        "",
    ]
    if gaps is not None and not gaps.empty:
        lines += [
            "Validation curves (`curves.csv`, `figures/curves.png`): largest gap, over epochs, of "
            "the mean validation two-stage Precision@10 from the authors' mean curve (×100): "
            + "; ".join(
                f"{METHOD_LABEL.get(g.method, g.method)} {SIDE_LABEL[g.side]} "
                f"{100 * g.largest_gap:.2f}"
                for g in gaps.itertuples()
            ),
            "",
        ]
    lines += ["Commands:", ""]
    lines += [f"    {c}" for c in commands]
    if same is not None:
        from fidelity.same_weights import markdown

        lines += ["", *markdown(same)]
    return "\n".join(lines) + "\n"


def curves_figure(curves: pd.DataFrame):
    """One panel per method: each side's mean validation two-stage Precision@10 per epoch over
    seeds, with a ±1 s.e. band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cell = _headline(curves)
    methods = [m for m in AUTHORS_LOSS if m in set(cell.method)]
    fig, axes = plt.subplots(1, len(methods), figsize=(4 * len(methods), 3.2), squeeze=False)
    for ax, method in zip(axes[0], methods, strict=True):
        for side in SIDES:
            runs = cell[(cell.method == method) & (cell.side == side)]
            if runs.empty:
                continue
            by_epoch = runs.groupby("epoch")["value"]
            mean, se = by_epoch.mean(), by_epoch.sem().fillna(0)
            n = runs.seed.nunique()
            ax.plot(mean.index, 100 * mean, label=f"{SIDE_LABEL[side]} (n={n})")
            ax.fill_between(mean.index, 100 * (mean - se), 100 * (mean + se), alpha=0.2)
        ax.set_title(METHOD_LABEL.get(method, method))
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("validation two-stage P@10 ×100")
    axes[0][-1].legend(fontsize=8)
    fig.suptitle("Validation curves, mean ± s.e. over seeds", fontsize=10)
    fig.tight_layout()
    return fig


def write_outputs(
    out: Path, runs: pd.DataFrame, commands: list[str], curves: pd.DataFrame | None = None
) -> None:
    from twostage.files import atomic_write_text
    from twostage.plots import save_png

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "runs.csv", runs.to_csv(index=False))
    if curves is not None:
        atomic_write_text(out / CURVES, curves.to_csv(index=False))
    if runs.empty:
        return
    table = summarize(runs)
    atomic_write_text(out / "summary.csv", table.to_csv(index=False, float_format="%.6g"))
    same_path = out / SAME_WEIGHTS
    same = json.loads(same_path.read_text(encoding="utf-8")) if same_path.is_file() else None
    gaps = None
    if curves is not None and not curves.empty:
        gaps = curve_gaps(curves)
        figure = curves_figure(curves)
        save_png(figure, out / "figures" / "curves.png", dpi=110)
        import matplotlib.pyplot as plt

        plt.close(figure)
    atomic_write_text(out / "summary.md", summary_markdown(table, runs, commands, same, gaps))
    atomic_write_text(out / "edits.md", edits_markdown() + "\n")


# ---------------------------------------------------------------- command line
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from twostage.pipeline.config import parse_methods, parse_seeds

    parser = argparse.ArgumentParser(prog="crosscheck", description=__doc__.split("\n\n")[0])
    parser.add_argument("authors", type=Path, metavar="AUTHORS_CHECKOUT")
    parser.add_argument(
        "--dataset",
        required=True,
        help="a MovieLens folder (ML-100K, ML-1M), or synthetic (the ML-1M-shaped world)",
    )
    parser.add_argument("--seeds", default="0-9")
    parser.add_argument("--methods", default="ce,ips,2s")
    parser.add_argument("--out", type=Path, default=Path("results/fidelity/ml-100k"))
    parser.add_argument(
        "--work",
        type=Path,
        default=Path("/tmp/twostage-fidelity"),
        help="scratch folder for the export and the edited copy",
    )
    parser.add_argument("--ratings-order", default="user", choices=("file", "user"))
    parser.add_argument(
        "--sides",
        default="authors,ours,paired",
        help="which sides to run, a comma list of authors, ours (our code, our initial weights) "
        "and paired (our code from the authors' initial weights for the seed)",
    )
    parser.add_argument(
        "--redo-ours",
        action="store_true",
        help="drop our rows (ours, paired) for the chosen methods and seeds from OUT/runs.csv "
        "and run them again (after a change to our code; their rows are kept)",
    )
    parser.add_argument(
        "--skip-same-weights",
        action="store_true",
        help="skip the same-weights check of every stage's outputs (same_weights.py)",
    )
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per authors' run")
    parser.add_argument(
        "--summarize", action="store_true", help="only rewrite the tables from OUT/runs.csv"
    )
    args = parser.parse_args(argv)
    try:
        args.seeds = parse_seeds(args.seeds)
        args.methods = parse_methods(args.methods)
    except ValueError as error:
        parser.error(str(error))
    args.sides = tuple(side.strip() for side in args.sides.split(",") if side.strip())
    if not args.sides or any(side not in SIDES for side in args.sides):
        parser.error(f"--sides {args.sides}: expected a comma list of {', '.join(SIDES)}.")
    if args.redo_ours and not {"ours", "paired"} & set(args.sides):
        parser.error("--redo-ours needs ours or paired in --sides.")
    bad = [m for m in args.methods if m not in AUTHORS_LOSS]
    if bad:
        parser.error(
            f"--methods {','.join(bad)}: the authors' code has only {', '.join(AUTHORS_LOSS)}."
        )
    from twostage.data import SYNTHETIC_SOURCES

    if args.dataset not in SYNTHETIC_SOURCES and not Path(args.dataset).is_dir():
        parser.error(
            f"--dataset {args.dataset}: not a folder of MovieLens files, nor one of "
            f"{', '.join(SYNTHETIC_SOURCES)}."
        )
    if not args.authors.is_dir():
        parser.error(f"AUTHORS_CHECKOUT {args.authors}: not a folder.")
    try:
        check_checkout(args.authors)
    except CrossCheckError as error:
        parser.error(str(error))
    return args


def check_same_world(world_json: Path, runs_path: Path, content_hash: str) -> None:
    """Refuse to add runs on another world to an OUT folder that already holds runs: the
    comparison is only meaningful on one world (e.g. a simulator retrained on another CPU kind,
    or other settings, gives another one)."""
    if not (world_json.is_file() and runs_path.is_file()):
        return
    recorded = json.loads(world_json.read_text(encoding="utf-8")).get("content_hash")
    if recorded != content_hash:
        raise CrossCheckError(
            f"{world_json}: its runs were made on the world {recorded}, but this export is "
            f"{content_hash}. Use another --out (or remove {runs_path}) to start a new comparison."
        )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    commands_path = args.out / "commands.json"
    if args.summarize:
        if not (args.out / "runs.csv").is_file():
            raise CrossCheckError(f"--summarize: {args.out / 'runs.csv'} does not exist.")
        commands = json.loads(commands_path.read_text()) if commands_path.is_file() else []
        curves_path = args.out / CURVES
        curves = pd.read_csv(curves_path) if curves_path.is_file() else None
        write_outputs(args.out, pd.read_csv(args.out / "runs.csv"), commands, curves)
        return 0
    from twostage.files import atomic_write_text
    from twostage.models import Nominator
    from twostage.pipeline.cache import StageCache
    from twostage.pipeline.config import profile_config, with_overrides
    from twostage.pipeline.experiment import prepare

    torch.set_num_threads(1)
    config = with_overrides(
        profile_config("paper"),
        {
            "dataset": str(args.dataset),
            "device": "cpu",
            "methods": args.methods,
            "seeds": args.seeds,
            "simulator": {"early_stop": "authors", "ratings_order": args.ratings_order},
        },
    )
    prepared = prepare(config, cache=StageCache(args.cache_dir))
    export = args.work / "world"
    manifest = export_world(prepared, config, export)
    load_export(export)  # what their code will read is what the manifest says
    runs_path = args.out / "runs.csv"
    check_same_world(args.out / "world.json", runs_path, manifest["content_hash"])
    copy = prepare_authors_copy(args.authors, args.work / "authors")
    args.out.mkdir(parents=True, exist_ok=True)
    manifest["truth_check"] = check_truth(copy, export)
    if not args.skip_same_weights:
        from fidelity import same_weights

        atomic_write_text(
            args.out / SAME_WEIGHTS,
            json.dumps(same_weights.check(prepared, config, copy, export, args.work), indent=2),
        )
    (args.out / "world.json").write_text(
        json.dumps(
            {
                k: manifest[k]
                for k in (
                    "format",
                    "sizes",
                    "cut",
                    "cut_rule",
                    "config",
                    "stage_keys",
                    "built_by",
                    "log_summary",
                    "content_hash",
                    "truth_check",
                )
            },
            indent=2,
        ),
        encoding="utf-8",
    )
    commands = [
        "python fidelity/crosscheck.py " + " ".join(sys.argv[1:] if argv is None else argv),
        f"(their side, in the edited copy) {ENV_WORLD}=<export> OMP_NUM_THREADS=1 "
        "python run.py --loss_type {loss_ce|loss_ips|loss_2s} --seed S --device cpu",
    ]
    commands_path.write_text(json.dumps(commands, indent=2), encoding="utf-8")
    runs = pd.read_csv(runs_path) if runs_path.is_file() else pd.DataFrame(columns=RUN_COLUMNS)
    curves_path = args.out / CURVES
    curves = (
        pd.read_csv(curves_path) if curves_path.is_file() else pd.DataFrame(columns=CURVE_COLUMNS)
    )
    keep = args.work / "runs" / manifest["content_hash"][:16]  # their result pickles
    if args.redo_ours:
        ours = [s for s in ("ours", "paired") if s in args.sides]

        def without_ours(frame: pd.DataFrame) -> pd.DataFrame:
            redo = (
                frame.side.isin(ours)
                & frame.method.isin(args.methods)
                & frame.seed.isin(args.seeds)
            )
            return frame[~redo].reset_index(drop=True)

        runs, curves = without_ours(runs), without_ours(curves)
    for seed in args.seeds:
        for method in args.methods:
            for side in args.sides:
                done = (runs.side == side) & (runs.method == method) & (runs.seed == seed)
                if done.any():
                    have = (curves.side == side) & (curves.method == method) & (curves.seed == seed)
                    kept = keep / f"{AUTHORS_LOSS[method]}_{seed}.pkl"
                    if side == "authors" and not have.any() and kept.is_file():
                        rows = curve_rows(side, method, seed, read_authors_pickle(kept)["curve"])
                        curves = pd.concat([curves, pd.DataFrame(rows)], ignore_index=True)
                        write_outputs(args.out, runs, commands, curves)
                    continue
                if side == "authors":
                    result, seconds = run_authors(copy, export, method, seed, args.timeout, keep)
                elif side == "paired":
                    initial = authors_initial_state(
                        copy,
                        export,
                        seed,
                        args.work / "initial" / f"nominator_{seed}.pt",
                        Nominator(prepared.data.catalog).state_dict(),
                    )
                    result, seconds = run_ours(prepared, config, method, seed, initial)
                else:
                    result, seconds = run_ours(prepared, config, method, seed)
                new = pd.DataFrame(result_rows(side, method, seed, result, seconds))
                runs = new if runs.empty else pd.concat([runs, new], ignore_index=True)
                new = pd.DataFrame(curve_rows(side, method, seed, result["curve"]))
                curves = new if curves.empty else pd.concat([curves, new], ignore_index=True)
                write_outputs(args.out, runs, commands, curves)
                two = result["two-stage"]["Precision@10"]
                print(
                    f"[{side}] {method} seed {seed}: two-stage P@10 {two:.4f} · {seconds:.0f}s",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    # Run as the package module, so that fidelity.same_weights and this script share one
    # CrossCheckError (a second copy of this file under __main__ would not catch its errors).
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from fidelity.crosscheck import CrossCheckError as Error
    from fidelity.crosscheck import main as run

    try:
        sys.exit(run())
    except Error as error:
        sys.exit(f"crosscheck: error: {error}")
