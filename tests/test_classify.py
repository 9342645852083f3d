"""classify: per-AU LDA / SVM runs on tiny synthetic codes whose answers are known."""

import json

import h5py
import numpy as np
import pandas as pd
import pytest

from classify.estimators import balance_indices, best_threshold, decide, fit_au
from extract.store import open_store
from classify.run import classify_run, join_codes, run_tag
from featbench.aus import DISFA_AUS
from featbench.frames import FrameTable, build_frames
from featbench.results import read_summary
from featbench.splits import PAPER_SPLIT
from featbench.workspace import Workspace

SUBJECTS = sorted(s for part in PAPER_SPLIT.values() for s in part)
DIMS = 12


def make_table(n_frames=24, seed=0, subjects=SUBJECTS):
    """27 subjects x ``n_frames``; AU01 separable on dim 0, AU02 random, others weakly coded."""
    rng = np.random.default_rng(seed)
    rows = []
    for s in subjects:
        for f in range(n_frames):
            row = {"subject": s, "video": f"LeftVideo{s}", "frame": f, "source": "", "source_index": f,
                   "landmark_file": "", "split": ""}
            for au in DISFA_AUS:
                row[au] = int(rng.random() < 0.3)
            rows.append(row)
    frames = build_frames(rows, DISFA_AUS)
    return FrameTable("synth", "/nonexistent", DISFA_AUS, frames)


def make_codes(table, seed=1):
    """Codes (n, DIMS): dim 0 = +-3 by AU01 (separable); dims 2..11 = noisy other AUs; AU02 uncoded."""
    rng = np.random.default_rng(seed)
    n = len(table)
    X = rng.normal(size=(n, DIMS)).astype(np.float32)
    X[:, 0] = 3 * (2 * table.frames["AU01"].to_numpy() - 1) + rng.uniform(-0.5, 0.5, n)
    for j, au in enumerate(DISFA_AUS[2:]):
        X[:, 2 + j % (DIMS - 2)] += 1.5 * table.frames[au].to_numpy()
    return X


def write_features(ws, table, codes, *, model="toy", regions=("full", "upper", "middle", "lower"),
                   keys=None):
    """Write ``codes`` through the extract store (the real feature-file layout)."""
    path = ws.features_path("synth", model)
    with open_store(path, keys=table.keys() if keys is None else keys, model=model, layer="fc6",
                    weights="random:0", input_size=224, dims=codes.shape[1], overwrite=True) as w:
        for r in regions:
            w.write(r, 0, codes)
    return path


@pytest.fixture
def setup(tmp_path):
    ws = Workspace(tmp_path)
    table = make_table()
    codes = make_codes(table)
    write_features(ws, table, codes)
    return ws, table, codes


def run(ws, table, **kw):
    kw.setdefault("model", "toy")
    kw.setdefault("clf", "svm")
    return classify_run(ws, "synth", table=table, progress=False, n_jobs=2, **kw)


def by_au(result):
    return {r["au"]: r for r in result["rows"]}


def test_separable_au_reaches_f1_one_and_permuted_stays_near_chance(setup):
    ws, table, _ = setup
    for clf in ("svm", "lda"):
        res = by_au(run(ws, table, clf=clf))
        assert res["AU01"]["f1"] == 1.0
        assert res["AU01"]["auc"] == 1.0
        assert 0.3 < res["AU02"]["auc"] < 0.7  # AU02 is not coded at all: chance


def test_outputs_follow_the_contracts(setup):
    ws, table, _ = setup
    out = run(ws, table)
    assert out["run"] == "toy__full__svm"
    csv = pd.read_csv(out["csv"])
    assert list(csv.columns[:7]) == ["au", "f1", "accuracy", "precision", "recall", "support", "threshold"]
    assert list(csv["au"]) == list(DISFA_AUS) + ["mean"]
    summary = read_summary(ws, "synth")
    row = summary.set_index("run").loc["toy__full__svm"]
    assert row["weights"] == "random:0" and row["protocol"] == "paper"
    assert "f1_AU26" in summary.columns
    test_subjects = set(PAPER_SPLIT["test"])
    with h5py.File(out["predictions"], "r") as f:
        keys = f["frames"][:]
        assert {k.decode() for k in keys["subject"]} == test_subjects
        assert f["scores"].shape == f["decisions"].shape == f["labels"].shape == (len(keys), 12)
        assert json.loads(f.attrs["aus"]) == list(DISFA_AUS)
        assert f.attrs["weights"] == "random:0"
    settings = json.loads((out["models_dir"] / "settings.json").read_text())
    assert settings["seed"] == 0 and settings["folds"][0]["test"] == list(PAPER_SPLIT["test"])
    assert "C" in settings["folds"][0]["aus"]["AU01"]
    assert (out["models_dir"] / "AU01.joblib").exists()
