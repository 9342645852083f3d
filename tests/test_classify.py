"""classify: per-AU LDA / SVM runs on tiny synthetic codes whose answers are known."""

import json

import h5py
import numpy as np
import pandas as pd
import pytest

from classify.estimators import balance_indices, best_threshold
from classify.kinds import load_scorer
from extract.store import open_store
from classify.run import classify_run, join_codes, run_tag
from featbench.core.aus import DISFA_AUS
from featbench.app.cli import main
from featbench.core.errors import MissingRunError
from featbench.core.frames import FrameTable, build_frames
from featbench.core.modelfile import open_model
from featbench.core.results import read_summary
from featbench.core.splits import PAPER_SPLIT
from featbench.core.workspace import Workspace

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
                   keys=None, weights="random:0"):
    """Write ``codes`` (one array, or one per region) through the extract store's writer."""
    path = ws.features_path("synth", model)
    per_region = codes if isinstance(codes, dict) else {r: codes for r in regions}
    dims = next(iter(per_region.values())).shape[1]
    with open_store(path, keys=table.keys() if keys is None else keys, model=model, layer="fc6",
                    weights=weights, input_size=224, dims=dims, overwrite=True) as w:
        for r, c in per_region.items():
            w.write(r, 0, c)
    return path


@pytest.fixture
def setup(tmp_path):
    ws = Workspace(tmp_path)
    table = make_table()
    codes = make_codes(table)
    write_features(ws, table, codes)
    return ws, table, codes


def saved_model(models_dir, au, fold=0):
    """A run's saved per-AU model (threshold inside), loaded from its model folder alone."""
    return load_scorer(open_model(models_dir)).folds[fold][au][0]


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
    assert (out["models_dir"] / "AU01.safetensors").exists()
    assert (out["models_dir"] / "manifest.json").exists()


def test_test_features_never_reach_the_fit(setup, tmp_path):
    """Poisoned test codes leave scaler, C, threshold and coefficients unchanged (no leak)."""
    ws, table, codes = setup
    clean = run(ws, table, tune_threshold=True)
    poisoned = codes.copy()
    test = table.frames["subject"].isin(PAPER_SPLIT["test"]).to_numpy()
    poisoned[test] = np.float32(1e6) * np.sign(np.random.default_rng(5).normal(size=poisoned[test].shape))
    ws2 = Workspace(tmp_path / "poisoned")
    write_features(ws2, table, poisoned)
    dirty = run(ws2, table, tune_threshold=True)
    for au in DISFA_AUS:
        a = saved_model(clean["models_dir"], au).estimator_
        b = saved_model(dirty["models_dir"], au).estimator_
        np.testing.assert_array_equal(a.named_steps["scale"].mean_, b.named_steps["scale"].mean_)
        np.testing.assert_array_equal(a.named_steps["scale"].scale_, b.named_steps["scale"].scale_)
        np.testing.assert_array_equal(a.named_steps["clf"].coef_, b.named_steps["clf"].coef_)
        assert a.named_steps["clf"].C == b.named_steps["clf"].C
    assert [r["threshold"] for r in clean["rows"]] == [r["threshold"] for r in dirty["rows"]]
    assert by_au(clean)["AU01"]["f1"] == 1.0 and by_au(dirty)["AU01"]["f1"] < 1.0  # test did change


def test_balancing_keeps_all_positives_and_as_many_negatives_reproducibly():
    y = np.array([1] * 7 + [0] * 50)
    a = balance_indices(y, np.random.default_rng(3))
    b = balance_indices(y, np.random.default_rng(3))
    np.testing.assert_array_equal(a, b)
    assert (y[a] == 1).sum() == 7 and (y[a] == 0).sum() == 7
    assert set(np.flatnonzero(y == 1)) <= set(a)
    few_neg = np.array([1] * 10 + [0] * 3)
    assert balance_indices(few_neg, np.random.default_rng(0)).size == 13  # nothing dropped


def test_run_balances_train_and_validation_but_not_test(setup):
    ws, table, _ = setup
    out = run(ws, table)
    fold = json.loads((out["models_dir"] / "settings.json").read_text())["folds"][0]
    y = table.frames["AU04"].to_numpy()
    subj = table.frames["subject"]
    for part, n_key, pos_key in (("train", "n_train", "n_train_pos"), ("validation", "n_val", "n_val_pos")):
        pos = int((y[subj.isin(fold[part]).to_numpy()] == 1).sum())
        assert fold["aus"]["AU04"][pos_key] == pos and fold["aus"]["AU04"][n_key] == 2 * pos
    assert by_au(out)["AU04"]["frames"] == int(subj.isin(PAPER_SPLIT["test"]).sum())
    unbalanced = run(ws, table, balance=False, class_weight="balanced")
    assert unbalanced["run"] == "toy__full__svm__nobal-cw"
    assert by_au(unbalanced)["AU04"]["n_train"] == int(subj.isin(fold["train"]).sum())


def test_thresholds_come_from_validation_not_test(setup):
    ws, table, _ = setup
    first = run(ws, table, tune_threshold=True)
    assert first["run"] == "toy__full__svm__thr"
    flipped = make_table()
    test = flipped.frames["subject"].isin(PAPER_SPLIT["test"]).to_numpy()
    for au in DISFA_AUS:
        flipped.frames.loc[test, au] = 1 - flipped.frames.loc[test, au]
    second = run(ws, flipped, tune_threshold=True)
    assert [r["threshold"] for r in first["rows"]] == [r["threshold"] for r in second["rows"]]
    assert any(r["threshold"] != 0 for r in first["rows"])
    assert by_au(second)["AU01"]["f1"] == 0.0  # test labels did change the score, not the threshold


def test_best_threshold_maximises_f1():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    s = 2 * y - 1 + rng.normal(size=300)
    t = best_threshold(y, s)
    f1 = lambda c: 2 * ((s > c) & (y == 1)).sum() / ((s > c).sum() + (y == 1).sum())
    assert f1(t) >= max(f1(c) for c in np.linspace(-4, 4, 801)) - 1e-12
    assert best_threshold(np.zeros(5), s[:5]) == 0.0


def test_au_without_test_positives_is_nan_and_without_training_positives_an_error_row(setup):
    ws, table, codes = setup
    t = make_table()
    subj = t.frames["subject"]
    t.frames.loc[subj.isin(PAPER_SPLIT["test"]), "AU05"] = 0
    t.frames.loc[subj.isin(PAPER_SPLIT["train"]), "AU09"] = 0
    out = run(ws, t)
    rows = by_au(out)
    assert np.isnan(rows["AU05"]["f1"]) and rows["AU05"]["support"] == 0
    assert "no positive in test" in rows["AU05"]["note"]
    assert np.isnan(rows["AU09"]["f1"]) and "no positive frame in training" in rows["AU09"]["note"]
    assert any(n.startswith("AU09:") for n in out["notes"])
    assert np.isfinite(out["mean"]["f1"])  # the mean skips the undefined AUs
    with h5py.File(out["predictions"], "r") as f:
        k = json.loads(f.attrs["aus"]).index("AU09")
        assert np.isnan(f["scores"][:, k]).all() and (f["decisions"][:, k] == 0).all()
    csv = pd.read_csv(out["csv"])
    assert np.isnan(csv.set_index("au").loc["AU09", "f1"])


def test_kfold_stores_every_frame_once_and_reports_spread(tmp_path):
    ws = Workspace(tmp_path)
    subjects = SUBJECTS[:9]
    table = make_table(n_frames=30, subjects=subjects)
    write_features(ws, table, make_codes(table))
    out = run(ws, table, clf="lda", protocol="kfold:3")
    assert out["run"] == "toy__full__lda__kfold3"
    with h5py.File(out["predictions"], "r") as f:
        keys = f["frames"][:]
        assert len(keys) == len(table) == len(np.unique(keys))
        assert set(f["fold"][:]) == {0, 1, 2} and f["thresholds"].shape == (3, 12)
    assert all("f1_std" in r for r in out["rows"]) and by_au(out)["AU01"]["f1_std"] == 0.0
    assert by_au(out)["AU01"]["support"] == int((table.frames["AU01"] == 1).sum())
    assert (out["models_dir"] / "AU01-kfold3-fold2.safetensors").exists()
    assert len(load_scorer(open_model(out["models_dir"])).folds) == 3


def test_frames_without_codes_are_counted_and_auto_uses_each_aus_region(tmp_path):
    ws = Workspace(tmp_path)
    table = make_table()
    codes = make_codes(table)
    keep = np.arange(len(table)) % 10 != 0  # every 10th frame has no face, hence no codes
    write_features(ws, table, codes[keep], keys=table.keys()[keep], regions=("full", "upper", "lower"))
    with pytest.raises(MissingRunError, match="--region all"):
        run(ws, table, region="auto")
    failed = read_summary(ws, "synth").set_index("run").loc["toy__auto__svm"]
    assert "--region all" in failed["error"]
    noise = np.random.default_rng(9).normal(size=codes.shape).astype(np.float32)
    # only the upper region's codes carry AU01 (an upper-face AU): auto must use them for AU01
    write_features(ws, table, {"full": noise[keep], "upper": codes[keep], "middle": noise[keep],
                               "lower": noise[keep]}, keys=table.keys()[keep])
    out = run(ws, table, region="auto")
    assert by_au(out)["AU01"]["f1"] == 1.0
    assert by_au(run(ws, table, region="lower"))["AU01"]["f1"] < 0.8
    assert out["meta"]["frames_without_codes"] == int((~keep).sum())
    assert any("have no codes" in n for n in out["notes"])
    assert read_summary(ws, "synth").set_index("run").loc["toy__auto__svm", "error"] == ""  # replaced
    pos = join_codes(table, table.keys()[keep])
    assert (pos[~keep] == -1).all() and (pos[keep] == np.arange(keep.sum())).all()


def test_rerun_replaces_its_own_row_and_keeps_others(setup):
    ws, table, _ = setup
    run(ws, table, clf="svm")
    run(ws, table, clf="lda")
    before = read_summary(ws, "synth").set_index("run")
    run(ws, table, clf="svm", aus="AU01,AU02")  # another run: tagged, leaves the full one alone
    second = run(ws, table, clf="lda", seed=0)
    after = read_summary(ws, "synth").set_index("run")
    assert sorted(after.index) == ["toy__full__lda", "toy__full__svm", "toy__full__svm__au1+2"]
    assert after.loc["toy__full__svm", "created"] == before.loc["toy__full__svm", "created"]
    assert after.loc["toy__full__svm", "mean_f1"] == before.loc["toy__full__svm", "mean_f1"]
    assert after.loc["toy__full__lda", "mean_f1"] == pytest.approx(second["mean"]["f1"], abs=1e-4)


def test_run_tag_names_only_non_defaults():
    assert run_tag() is None
    assert run_tag(protocol="kfold:5", tune_threshold=True, balance=False) == "kfold5-thr-nobal"
    assert run_tag(protocol="literature") == "literature"


@pytest.mark.parametrize("argv, message", [
    (["classify", "--clf", "svmm", "--model", "toy"], "unknown classifier 'svmm'; did you mean 'svm'?"),
    (["classify", "--clf", "lstm", "--model", "hog"], "featbench extract --model hog"),
    (["classify", "--clf", "svm", "--model", "hog"], "featbench extract --model hog"),
    (["classify", "--clf", "svm", "--model", "hgo"], "unknown model 'hgo'; did you mean 'hog'?"),
    (["finetune", "--reinit", "fc9"], "unknown --reinit value 'fc9'"),
])
def test_cli_bad_input_is_one_line_exit_2(tmp_path, capsys, argv, message):
    status = main(["--workspace", str(tmp_path)] + argv)
    err = capsys.readouterr().err
    assert status == 2
    assert err.count("\n") == 1 and err.startswith("featbench: error: ") and message in err
    assert "Traceback" not in err


def test_cli_prints_the_table_and_csv_path(setup, capsys, monkeypatch):
    ws, table, _ = setup
    # the command's own reference (imported by name), so the CLI classifies this tiny table
    monkeypatch.setattr("featbench.app.commands.classify.load_table", lambda args, **kw: table)
    status = main(["--workspace", str(ws.root), "classify", "--clf", "lda", "--quiet", "--jobs", "1"])
    out = capsys.readouterr().out
    assert status == 0
    assert "AU01" in out and "mean F1" in out and str(ws.run_csv("synth", "toy__full__lda")) in out


@pytest.mark.parametrize("n, d", [(60, 150), (300, 40)])
def test_shrinkage_lda_equals_sklearns_lsqr_auto(n, d):
    """The fast LDA is scikit-learn's lsqr + Ledoit-Wolf model, for n < d and n > d."""
    from sklearn.base import clone
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    from classify.estimators import ShrinkageLDA

    rng = np.random.default_rng(n)
    X = rng.normal(size=(n, d)) * rng.uniform(0.5, 2, d)
    X[:, 3] = 1.0  # a constant feature, as dead relu units give
    y = (X[:, 0] + rng.normal(size=n) > 0.5).astype(int)
    for priors in (None, (0.5, 0.5)):
        ref = LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto", priors=priors).fit(X, y)
        fast = clone(ShrinkageLDA(priors=priors)).fit(X, y)
        np.testing.assert_allclose(fast.coef_, ref.coef_, rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(fast.intercept_, ref.intercept_, rtol=1e-8)
        np.testing.assert_allclose(fast.decision_function(X), ref.decision_function(X), rtol=1e-7, atol=1e-9)


def _finetuned_codes(ws, table, run="toy__full__ft__ml"):
    """Codes ``toy-ft`` of the network the fine-tuning run ``run`` trained under the paper
    protocol: its record holds its folds as the one writer records them."""
    from classify.learn.writer import fold_record
    from featbench.core.splits import make_splits

    folder = ws.models_dir("synth", run)
    folder.mkdir(parents=True)
    folds = [fold_record(s, {}) for s in make_splits(table, "paper")]
    (folder / "settings.json").write_text(json.dumps({"run": run, "clf": "ft", "folds": folds}))
    write_features(ws, table, make_codes(table), model="toy-ft",
                   weights=f"finetuned:{run} sha256:{'ab' * 32}")
    return folder / "settings.json"


def _listing(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize("protocol", ["kfold:3", "literature"])
def test_codes_of_a_network_fine_tuned_on_test_subjects_are_refused(tmp_path, capsys, monkeypatch,
                                                                    protocol):
    ws, table = Workspace(tmp_path), make_table(n_frames=8)
    record = _finetuned_codes(ws, table)
    monkeypatch.setattr("featbench.app.commands.classify.load_table", lambda args, **kw: table)
    argv = ["--workspace", str(ws.root), "classify", "--clf", "lda", "--model", "toy-ft",
            "--quiet", "--jobs", "1", "--protocol"]
    before = _listing(ws.root)
    assert main(argv + [protocol]) == 2
    err = capsys.readouterr().err
    # the paper's 18 training + validation subjects: each is tested by some fold of the others
    trained = sorted(PAPER_SPLIT["train"] + PAPER_SPLIT["validation"])
    assert err.count("\n") == 1 and "toy__full__ft__ml" in err
    assert f"trained on {len(trained)} of this protocol's test subjects ({', '.join(trained[:3])} " in err
    assert _listing(ws.root) == before  # refused before the lock, the fit or a failure row
    # the protocol it was fine-tuned under tests only subjects it never saw: the run is made
    assert main(argv + ["paper"]) == 0
    assert ws.predictions_path("synth", "toy-ft__full__lda").exists()
    capsys.readouterr()
    # a network whose record is not in the workspace cannot be checked: said, not refused
    record.unlink()
    assert main(argv + [protocol]) == 0
    err = capsys.readouterr().err
    assert "featbench: warning: " in err and "toy__full__ft__ml" in err and "not checked" in err


def _contents(root):
    """Every file under ``root``: its path and bytes (temporary siblings included, by name)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_rerun_that_fails_while_writing_leaves_the_previous_run_whole(setup, capsys, monkeypatch):
    import dataclasses

    from classify.kinds import get_kind, register_kind
    from featbench.core.errors import StoreError

    ws, table, _ = setup
    monkeypatch.setattr("featbench.app.commands.classify.load_table", lambda args, **kw: table)
    argv = ["--workspace", str(ws.root), "classify", "--clf", "lda", "--model", "toy", "--quiet",
            "--jobs", "1"]
    assert main(argv) == 0
    results, run = ws.results_dir("synth"), "toy__full__lda"
    before = _contents(results)
    assert {f"predictions/{run}.h5", f"{run}.csv", "summary.csv"} <= set(before)
    assert any(k.startswith(f"models/{run}/") for k in before)
    # other codes: a rerun that got as far as writing would change every output
    write_features(ws, table, make_codes(table, seed=2))
    lda = get_kind("lda")

    def save_then_fail(folder, record):
        lda.save(folder, record)  # the model files are written, then the disk gives out
        raise StoreError(f"{folder}: quota exceeded")

    register_kind(dataclasses.replace(lda, save=save_then_fail), replace=True)
    try:
        assert main(argv) == 2
    finally:
        register_kind(lda, replace=True)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "quota exceeded" in err
    assert _contents(results) == before  # the old predictions, models, table, row; no temp file
    # the summary row goes in last: when it cannot, the three files already swapped in go back
    summary = ws.summary_csv("synth")
    summary.write_text(summary.read_text() + "damaged\n")
    damaged = _contents(results)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "summary.csv:3: 1 fields" in err
    assert _contents(results) == damaged
    summary.write_bytes(before["summary.csv"])
    assert main(argv) == 0  # once fixed, the rerun replaces all of them
    after = _contents(results)
    assert after[f"predictions/{run}.h5"] != before[f"predictions/{run}.h5"]
    assert after[f"{run}.csv"] != before[f"{run}.csv"] and set(after) == set(before)
