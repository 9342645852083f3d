"""AU intensity: the labels the readers keep, the metrics (hand-computed), calibration."""

import json
import math

import numpy as np
import pandas as pd
import pytest

from featbench.app.cli import main
from featbench.core.calibrate import (CalibrationError, calibrate, check_calibration,
                                      neutral_frame, person_references)
from featbench.core.datasets import load_dataset
from featbench.core.errors import UsageError
from featbench.core.identity import WeightsId
from featbench.core.metrics import icc31, intensity_decisions, intensity_metrics, pearson

#: the toy network's seeded-random weights: the identity in the codes keys of its runs
RANDOM0 = WeightsId.random(0)


def _bad(capsys, *argv):
    rc = main(list(argv))
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("featbench: error: "), err
    return lines[0]


# metrics, against values computed by hand ------------------------------------------------
TRUE = np.array([0, 1, 2, 3, 4])
PRED = np.array([0.0, 2.0, 2.0, 4.0, 3.0])


def test_icc_r_mae_hand_computed():
    """Y = [[0,0],[1,2],[2,2],[3,4],[4,3]]: row means 0,1.5,2,3.5,3.5; grand mean 2.1;
    BMS = 2 * 8.7 / 4 = 4.35; residuals +-.1,.4,.1,.4,.6 -> SSE 1.4, EMS = 0.35;
    ICC(3,1) = 4.0 / 4.7. r = 8 / sqrt(10 * 8.8). MAE = 3 / 5. Rounded predictions >= 2
    (> 1.5): 0 1 1 1 1 against 0 0 1 1 1 -> TP 3, FP 1, FN 0, F1 = 6 / 7."""
    m = intensity_metrics(TRUE, PRED)
    assert m["icc"] == pytest.approx(4.0 / 4.7, abs=1e-12)
    assert m["pearson"] == pytest.approx(8.0 / math.sqrt(88.0), abs=1e-12)
    assert m["mae"] == pytest.approx(0.6, abs=1e-12)
    assert m["f1"] == pytest.approx(6 / 7) and m["support"] == 3 and m["frames"] == 5


def test_perfect_prediction():
    m = intensity_metrics(TRUE, TRUE.astype(float))
    assert (m["icc"], m["pearson"], m["mae"], m["f1"]) == (1.0, 1.0, 0.0, 1.0)


def test_constant_prediction_icc_zero_r_undefined():
    """A constant prediction: BMS = EMS = var(truth) / 2, so ICC(3,1) = 0 exactly; r is
    undefined (nan, never 0); MAE = (1+0+1+2+3)/5; nothing called present -> F1 0."""
    m = intensity_metrics(TRUE, np.full(5, 1.0))
    assert m["icc"] == pytest.approx(0.0, abs=1e-12)
    assert math.isnan(m["pearson"])
    assert m["mae"] == pytest.approx(1.4)
    assert m["f1"] == 0.0


def test_undefined_when_both_constant_or_too_few():
    m = intensity_metrics(np.zeros(4, int), np.zeros(4))
    assert math.isnan(m["icc"]) and math.isnan(m["pearson"]) and m["mae"] == 0.0
    assert math.isnan(m["f1"])  # no positive: undefined, as au_metrics says
    assert math.isnan(icc31([3], [3])) and math.isnan(pearson([1], [2]))
    m = intensity_metrics(np.array([-1, -1]), np.array([1.0, 2.0]))
    assert m["frames"] == 0 and math.isnan(m["mae"]) and math.isnan(m["icc"])


def test_unknown_intensities_left_out():
    t = np.r_[TRUE, -1, -1]
    p = np.r_[PRED, 5.0, np.nan]
    m = intensity_metrics(t, p)
    assert m["icc"] == pytest.approx(4.0 / 4.7) and m["frames"] == 5


def test_f1_scored_against_given_occurrence_labels():
    occ = np.array([0, 1, 1, 1, -1])  # other labels than intensity >= 2; -1 left out
    m = intensity_metrics(TRUE, PRED, occ)
    # decisions 0 1 1 1 (1): TP 3, FP 0, FN 0
    assert m["f1"] == 1.0 and m["support"] == 3
    assert intensity_decisions([1.49, 1.5, 1.51, np.nan, 4.0]).tolist() == [0, 0, 1, 0, 1]


# readers keep the intensities ------------------------------------------------------------
def test_disfa_intensities(disfa_tree):
    t = load_dataset("disfa", root=disfa_tree)
    ints = t.intensities(["AU01", "AU25"])
    assert ints.dtype == np.int8 and ints.shape == (16, 2)
    assert ints[:6, 0].tolist() == [0, 1, 2, 3, 4, 5] and set(ints[:, 1]) == {2}


def test_affwild2_has_no_intensities(abaw_tree, capsys):
    t = load_dataset("affwild2", root=abaw_tree)
    with pytest.raises(UsageError, match="occurrence only"):
        t.intensities()


def _manifest(tmp_path, text):
    import cv2

    for name in ("a.png", "b.png", "c.png"):
        cv2.imwrite(str(tmp_path / name), np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "manifest.csv").write_text(text)
    return tmp_path


def test_folder_manifest_intensities(tmp_path):
    root = _manifest(tmp_path, "image,subject,AU12_int,AU06_r,AU06\n"
                               "a.png,p1,3,1,1\n"
                               "b.png,p1,1,,0\n"
                               "c.png,p2,,-1,\n")
    t = load_dataset("folder", root=root)
    assert t.aus == ("AU06", "AU12")
    assert t.has_intensity and t.label_threshold == 2
    assert t.frames["AU12_int"].tolist() == [3, 1, -1]
    assert t.frames["AU12"].tolist() == [1, 0, -1]          # from the intensity, >= 2
    assert t.frames["AU06"].tolist() == [1, 0, -1]          # its own column, as written
    assert t.frames["AU06_int"].tolist() == [1, -1, -1]
    t3 = load_dataset("folder", root=root, threshold=4)
    assert t3.frames["AU12"].tolist() == [0, 0, -1]


def test_folder_manifest_intensity_out_of_range(tmp_path, capsys):
    root = _manifest(tmp_path, "image,subject,AU12_int\na.png,p1,3\nb.png,p1,6\n")
    msg = _bad(capsys, "data", "info", "--dataset", "folder", "--root", str(root))
    assert "manifest.csv:3" in msg and "AU12_int" in msg and "0-5" in msg


def test_folder_manifest_without_intensity_columns(tmp_path):
    root = _manifest(tmp_path, "image,subject,AU12\na.png,p1,1\n")
    t = load_dataset("folder", root=root)
    assert not t.has_intensity
    with pytest.raises(UsageError, match="AUnn_int"):
        t.require_intensity()


# calibration -------------------------------------------------------------------------------
def _codes():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(9, 4)).astype(np.float32)
    groups = np.array(["a"] * 5 + ["b"] * 4)
    return X, groups


def test_calibrate_median_and_neutral():
    X, groups = _codes()
    out = calibrate(X, groups, "median")
    for g in ("a", "b"):
        np.testing.assert_allclose(np.median(out[groups == g], axis=0), 0, atol=1e-6)
        np.testing.assert_allclose(out[groups == g],
                                   X[groups == g] - np.median(X[groups == g], axis=0), atol=1e-6)
    neu = calibrate(X, groups, "neutral")
    for g in ("a", "b"):
        rows = X[groups == g]
        d = ((rows - np.median(rows, axis=0)) ** 2).sum(axis=1)
        k = int(np.argmin(d))
        assert neutral_frame(rows) == k
        np.testing.assert_allclose(neu[groups == g], rows - rows[k], atol=1e-6)
        assert not neu[groups == g][k].any()  # the neutral frame itself becomes the zero code
    np.testing.assert_array_equal(calibrate(X, groups, "none"), X)
    assert check_calibration(None) == "none"


def test_calibrate_is_per_person_and_leaves_input_alone():
    X, groups = _codes()
    before = X.copy()
    a_only = calibrate(X[groups == "a"], groups[groups == "a"], "median")
    both = calibrate(X, groups, "median")
    np.testing.assert_array_equal(X, before)
    np.testing.assert_allclose(both[groups == "a"], a_only)  # b's frames change nothing of a's


def test_calibration_errors():
    X, groups = _codes()
    with pytest.raises(CalibrationError, match="no frames with codes for c"):
        person_references(X, groups, "median", require=["a", "c"])
    with pytest.raises(UsageError, match="did you mean 'median'"):
        calibrate(X, groups, "medain")


# the intensity run ----------------------------------------------------------------------------
from featbench.core.aus import DISFA_AUS  # noqa: E402
from featbench.core.frames import FrameTable  # noqa: E402
from featbench.core.results import read_summary  # noqa: E402
from featbench.core.splits import PAPER_SPLIT  # noqa: E402
from featbench.core.workspace import Workspace  # noqa: E402

from classify.kinds import load_scorer  # noqa: E402
from featbench.core.modelfile import open_model  # noqa: E402
from classify.run import classify_run  # noqa: E402


def intensity_run(ws, dataset, **kw):
    """An intensity run on codes (``featbench classify --task intensity``), ridge by default."""
    kw.setdefault("clf", "ridge")
    return classify_run(ws, dataset, task="intensity", **kw)
from test_classify import SUBJECTS, make_table, write_features  # noqa: E402

DIMS = 16


def intensity_table(n_frames=20, seed=0):
    """27 subjects x ``n_frames``; each AU active (1-5) on 40 % of frames, else 0."""
    frames = make_table(n_frames, seed).frames
    rng = np.random.default_rng(seed)
    for au in DISFA_AUS:
        v = np.where(rng.random(len(frames)) < 0.4, rng.integers(1, 6, len(frames)), 0)
        frames[au], frames[f"{au}_int"] = (v >= 2).astype(np.int8), v.astype(np.int8)
    return FrameTable("synth", "/nonexistent", DISFA_AUS, frames, has_intensity=True,
                      label_threshold=2)


def intensity_codes(table, seed=1):
    """Dim j < 12 = intensity of AU j + noise, plus a large per-subject offset on every dim
    (identity: what calibration removes)."""
    rng = np.random.default_rng(seed)
    subjects = table.frames["subject"].to_numpy()
    offset = {s: rng.normal(scale=3.0, size=DIMS) for s in SUBJECTS}
    X = rng.normal(scale=0.7, size=(len(table), DIMS)) + np.stack([offset[s] for s in subjects])
    X[:, :12] += table.intensities()
    return X.astype(np.float32)


@pytest.fixture
def int_setup(tmp_path):
    ws = Workspace(tmp_path)
    table = intensity_table()
    codes = intensity_codes(table)
    write_features(ws, table, codes)
    return ws, table, codes


def irun(ws, table, **kw):
    kw.setdefault("model", "toy")
    kw.setdefault("clf", "ridge")
    return intensity_run(ws, "synth", table=table, progress=False, **kw)


def _test_rows(table):
    return table.frames["subject"].isin(PAPER_SPLIT["test"]).to_numpy()


def test_intensity_run_outputs_and_calibration_helps(int_setup):
    ws, table, codes = int_setup
    plain = irun(ws, table)
    assert plain["run"] == "toy__full__ridge"
    csv = pd.read_csv(plain["csv"])
    assert list(csv.columns[:7]) == ["au", "icc", "pearson", "mae", "f1", "support", "frames"]
    assert list(csv["au"]) == list(DISFA_AUS) + ["mean"]
    cal = irun(ws, table, calibrate="median")
    assert cal["run"] == "toy__full__ridge__calmed"
    # the subjects' offsets hide the intensities until each person's median is subtracted
    assert cal["mean"]["icc"] > plain["mean"]["icc"] + 0.2
    assert cal["mean"]["icc"] > 0.8 and cal["mean"]["mae"] < plain["mean"]["mae"]
    summary = read_summary(ws, "synth").set_index("run")
    row = summary.loc["toy__full__ridge__calmed"]
    assert row["task"] == "intensity" and row["calibrate"] == "median"
    assert row["mean_icc"] == pytest.approx(cal["mean"]["icc"], abs=1e-4)
    assert row["mean_f1"] == pytest.approx(cal["mean"]["f1"], abs=1e-4)
    assert "icc_AU26" in summary.columns and "f1_AU26" in summary.columns
    import h5py

    with h5py.File(cal["predictions"], "r") as f:
        scores, ints = f["scores"][:], f["intensities"][:]
        assert f.attrs["task"] == "intensity" and f.attrs["calibrate"] == "median"
        assert {k.decode() for k in f["frames"][:]["subject"]} == set(PAPER_SPLIT["test"])
    assert scores.min() >= 0 and scores.max() <= 5  # clipped to the scale
    np.testing.assert_array_equal(ints, table.intensities()[_test_rows(table)])


def regressors(out):
    """``{au: (weight, bias)}`` of an intensity run's saved model (one fold)."""
    model = open_model(out["models_dir"])
    return {au: (model.tensors(g)["weight"], model.tensors(g)["bias"][0])
            for au, g in model.manifest["settings"]["units"][0].items()}


@pytest.mark.parametrize("method", ["none", "median", "neutral"])
def test_saved_model_reproduces_the_test_predictions(int_setup, method):
    """The run's model alone, through the scorer predict uses (each test subject's frames one
    face track, calibrated as the run calibrated them), gives the run's test predictions."""
    import h5py

    ws, table, codes = int_setup
    out = irun(ws, table, clf="svr", calibrate=method)
    model = load_scorer(open_model(out["models_dir"]))
    test = _test_rows(table)
    keys = table.keys()[test]
    tracks = [((k["subject"], k["video"]), int(k["frame"])) for k in keys]
    got, dec, thr = model.score({("toy", RANDOM0, "full"): codes[test]}, tracks)
    with h5py.File(out["predictions"], "r") as f:
        np.testing.assert_array_equal(got, f["scores"][:])
        np.testing.assert_array_equal(dec, f["decisions"][:])
    assert model.calibrate == method and model.task.name == "intensity" and set(thr) == {1.5}
    if method == "median":  # an export is the same model in one file
        from featbench.core.modelfile import export_model

        exported = load_scorer(open_model(export_model(out["models_dir"], ws.root / "i.safetensors")))
        np.testing.assert_array_equal(exported.score({("toy", RANDOM0, "full"): codes[test]},
                                                     tracks)[0], got)


@pytest.mark.parametrize("method", ["median", "neutral"])
def test_calibration_never_reads_a_test_label(int_setup, tmp_path, method):
    """Poisoned test labels (intensities and occurrence) leave every test prediction and every
    fitted array bit for bit unchanged: neither the calibration nor the fit reads them."""
    import h5py

    ws, table, codes = int_setup
    clean = irun(ws, table, calibrate=method)
    poisoned = intensity_table()
    test = _test_rows(poisoned)
    rng = np.random.default_rng(9)
    for au in DISFA_AUS:
        v = rng.integers(0, 6, size=int(test.sum())).astype(np.int8)
        poisoned.frames.loc[test, f"{au}_int"] = v
        poisoned.frames.loc[test, au] = (v >= 2).astype(np.int8)
    ws2 = Workspace(tmp_path / "poisoned")
    write_features(ws2, poisoned, codes)
    dirty = irun(ws2, poisoned, calibrate=method)
    with h5py.File(clean["predictions"], "r") as a, h5py.File(dirty["predictions"], "r") as b:
        np.testing.assert_array_equal(a["scores"][:], b["scores"][:])
        assert not np.array_equal(a["intensities"][:], b["intensities"][:])  # the labels did change
    ma, mb = regressors(clean), regressors(dirty)
    for au in DISFA_AUS:
        np.testing.assert_array_equal(ma[au][0], mb[au][0])
    assert clean["mean"]["icc"] != dirty["mean"]["icc"]


def test_test_codes_never_reach_the_fit_even_calibrated(int_setup, tmp_path):
    ws, table, codes = int_setup
    clean = irun(ws, table, calibrate="median")
    poisoned = codes.copy()
    test = _test_rows(table)
    poisoned[test] = np.float32(1e4) * np.sign(np.random.default_rng(5).normal(size=poisoned[test].shape))
    ws2 = Workspace(tmp_path / "poisoned")
    write_features(ws2, table, poisoned)
    dirty = irun(ws2, table, calibrate="median")
    ma, mb = regressors(clean), regressors(dirty)
    for au in DISFA_AUS:
        np.testing.assert_array_equal(ma[au][0], mb[au][0])
        assert ma[au][1] == mb[au][1]
    assert [r["alpha"] for r in clean["rows"]] == [r["alpha"] for r in dirty["rows"]]


def test_au_constant_in_training_is_an_error_row(int_setup):
    ws, table, codes = int_setup
    train = table.frames["subject"].isin(PAPER_SPLIT["train"]).to_numpy()
    table.frames.loc[train, "AU05_int"] = np.int8(0)
    table.frames.loc[train, "AU05"] = np.int8(0)
    out = irun(ws, table)
    row = {r["au"]: r for r in out["rows"]}["AU05"]
    assert math.isnan(row["icc"]) and "every training frame has intensity 0" in row["note"]
    assert not math.isnan(out["mean"]["icc"])


def test_occurrence_run_calibrated(tmp_path):
    from classify.run import classify_run

    ws = Workspace(tmp_path)
    table = intensity_table()
    write_features(ws, table, intensity_codes(table))
    plain = classify_run(ws, "synth", model="toy", clf="lda", table=table, progress=False, n_jobs=1)
    cal = classify_run(ws, "synth", model="toy", clf="lda", table=table, progress=False, n_jobs=1,
                       calibrate="median")
    assert cal["run"] == "toy__full__lda__calmed" and cal["meta"]["calibrate"] == "median"
    assert cal["mean"]["f1"] > plain["mean"]["f1"]
    summary = read_summary(ws, "synth").set_index("run")
    assert summary.loc["toy__full__lda__calmed", "task"] == "occurrence"


# the CLI: bad input is one line, exit 2; a good run prints its table ---------------------------
@pytest.mark.parametrize("argv, needle", [
    (["--task", "intensty", "--clf", "ridge"], "unknown task 'intensty'; did you mean 'intensity'?"),
    (["--task", "intensity", "--clf", "lda"], "--task intensity takes --clf lstm, ridge, svr, not lda"),
    (["--task", "intensity", "--clf", "ridge", "--tune-threshold"], "--tune-threshold: not for --task intensity"),
    (["--task", "intensity", "--clf", "lstm", "--tune-threshold"], "--tune-threshold: not for --task intensity"),
    (["--task", "intensity", "--clf", "ridge", "--calibrate", "medain"],
     "unknown calibration 'medain'; did you mean 'median'?"),
    (["--clf", "svm", "--calibrate", "neutrl"], "unknown calibration 'neutrl'"),
])
def test_cli_bad_intensity_flags(tmp_path, capsys, argv, needle):
    msg = _bad(capsys, "--workspace", str(tmp_path), "classify", *argv)
    assert needle in msg


def test_cli_intensity_of_a_data_set_without_intensities(abaw_tree, tmp_path, capsys):
    msg = _bad(capsys, "--workspace", str(tmp_path), "classify", "--task", "intensity", "--clf",
               "ridge", "--dataset", "affwild2", "--root", str(abaw_tree), "--model", "hog")
    assert "affwild2" in msg and "occurrence only" in msg


def test_cli_intensity_run_prints_its_table(int_setup, capsys, monkeypatch):
    ws, table, _ = int_setup
    monkeypatch.setattr("featbench.app.commands.classify.load_table", lambda args, **kw: table)
    rc = main(["--workspace", str(ws.root), "classify", "--task", "intensity", "--clf", "ridge",
               "--calibrate", "neutral", "--quiet"])
    out = capsys.readouterr().out
    assert rc == 0 and "mean ICC" in out and "toy__full__ridge__calneu.csv" in out


# ensembles and the report know the task ------------------------------------------------------
def test_intensity_ensemble_is_the_mean_of_the_members(int_setup):
    import h5py

    from classify.ensemble import ensemble_run

    ws, table, _ = int_setup
    a = irun(ws, table, clf="ridge", calibrate="median")
    b = irun(ws, table, clf="svr", calibrate="median")
    out = ensemble_run(ws, "synth", members=[a["run"], b["run"]], name="ivote")
    assert out["task"] == "intensity" and out["run"] == "ivote__full__vote"
    with h5py.File(a["predictions"], "r") as fa, h5py.File(b["predictions"], "r") as fb, \
            h5py.File(out["predictions"], "r") as fe:
        mean = ((fa["scores"][:].astype(np.float64) + fb["scores"][:]) / 2).astype(np.float32)
        np.testing.assert_array_equal(fe["scores"][:], mean)
        np.testing.assert_array_equal(fe["decisions"][:], (mean > 1.5).astype(np.int8))
        np.testing.assert_array_equal(fe["intensities"][:], fa["intensities"][:])
    row = read_summary(ws, "synth").set_index("run").loc["ivote__full__vote"]
    assert row["task"] == "intensity" and np.isfinite(row["mean_icc"])
    csv = pd.read_csv(out["csv"])
    assert list(csv.columns[:4]) == ["au", "icc", "pearson", "mae"]


def test_ensemble_refuses_mixed_tasks(int_setup):
    from classify.ensemble import ensemble_run
    from classify.run import classify_run

    ws, table, codes = int_setup
    occ = classify_run(ws, "synth", model="toy", clf="lda", table=table, progress=False, n_jobs=1)
    intensity = irun(ws, table)
    with pytest.raises(UsageError, match="mix occurrence and intensity"):
        ensemble_run(ws, "synth", members=[occ["run"], intensity["run"]])


def test_report_has_its_intensity_section_and_chart(int_setup):
    from classify.run import classify_run
    from featbench.app.report import make_report
    from featbench.app.report_intensity import CHART_INTENSITY

    ws, table, _ = int_setup
    classify_run(ws, "synth", model="toy", clf="lda", table=table, progress=False, n_jobs=1)
    irun(ws, table)
    irun(ws, table, calibrate="median")
    text = make_report(ws, "synth").read_text()
    occurrence = text.split("## Runs by mean F1")[1].split("##")[0]
    assert "toy__full__lda" in occurrence and "ridge" not in occurrence
    section = text.split("## Intensity runs by mean ICC(3,1)")[1]
    assert section.index("toy__full__ridge__calmed") < section.index("toy__full__ridge`")
    assert "| median |" in section and "Per-AU ICC" in section
    assert CHART_INTENSITY in section and (ws.results_dir("synth") / CHART_INTENSITY).stat().st_size > 0


@pytest.mark.parametrize("drop", ["all", "all but one"])
def test_calibration_without_frames_of_a_person_is_one_line(int_setup, tmp_path, capsys, monkeypatch, drop):
    """A subject the protocol scores whose frames have no codes (or one frame only) cannot be
    calibrated: one line naming it, exit 2; --calibrate none runs as before."""
    ws, table, codes = int_setup
    keep = table.frames["subject"].to_numpy() != "SN005"
    if drop == "all but one":
        keep[np.flatnonzero(~keep)[0]] = True
    write_features(ws, table, codes[keep], keys=table.keys()[keep])
    monkeypatch.setattr("featbench.app.commands.classify.load_table", lambda args, **kw: table)
    for task in (["--task", "intensity", "--clf", "ridge"], ["--clf", "lda"]):
        msg = _bad(capsys, "--workspace", str(ws.root), "classify", *task, "--calibrate", "median",
                   "--quiet")
        assert "SN005" in msg and ("no frames with codes" in msg or "fewer than 2 frames" in msg)
    assert main(["--workspace", str(ws.root), "classify", "--task", "intensity", "--clf", "ridge",
                 "--quiet"]) == 0


# learned methods: the Intensity task ---------------------------------------------------------
def graded_cache(path, table, seed=0):
    """test_finetune's aligned-face cache, its faces redrawn: the upper block brightens with
    AU01's intensity and the lower block darkens with AU12's (0-5); noise elsewhere."""
    import h5py

    from test_finetune import write_cache

    write_cache(path, table, seed=seed)
    with h5py.File(path, "r+") as f:
        imgs = f["faces"][:]
        a1, a12 = (table.frames[c].to_numpy().astype(int) for c in ("AU01_int", "AU12_int"))
        imgs[:, 5:13, 12:36] = (128 + 24 * a1)[:, None, None, None]
        imgs[:, 36:43, 12:36] = (128 - 24 * a12)[:, None, None, None]
        f["faces"][...] = imgs
    return path


FT_FAST = dict(model="timm:test_efficientnet", weights="random:0", input_size=48, epochs=3,
               batch_size=16, lr=3e-3, optimizer="adam", aus="AU01,AU12", device="cpu",
               head="multilabel")


def test_finetune_intensity_regresses_and_writes_the_intensity_contracts(tmp_path):
    import h5py
    import torch

    from classify.finetune import FinetuneConfig, finetune_run, load_unit
    from classify.infer import score_batches
    from featbench.core.facesource import FaceInput, FaceSource

    torch.set_num_threads(1)
    table = intensity_table(n_frames=8)
    cache = graded_cache(tmp_path / "faces.h5", table)
    ws = Workspace(tmp_path / "ws")
    res = finetune_run(ws, "synth", FinetuneConfig(**FT_FAST), table=table, aligned_path=cache,
                       progress=False, task="intensity")
    assert res["run"] == "timm-test_efficientnet__full__ft__ml-au1+12-intensity"
    icc = {r["au"]: r["icc"] for r in res["rows"]}
    assert icc["AU01"] > 0.5 and icc["AU12"] > 0.5, icc
    row = read_summary(ws, "synth").set_index("run").loc[res["run"]]
    assert row["task"] == "intensity" and np.isfinite(row["mean_icc"])
    assert list(pd.read_csv(res["csv"]).columns[:4]) == ["au", "icc", "pearson", "mae"]
    test = np.flatnonzero(_test_rows(table))
    with h5py.File(res["predictions"], "r") as f:
        scores, labels, ints = f["scores"][:], f["labels"][:], f["intensities"][:]
        assert f.attrs["task"] == "intensity"
    assert scores.min() >= 0 and scores.max() <= 5
    np.testing.assert_array_equal(ints, table.intensities(["AU01", "AU12"])[test])
    np.testing.assert_array_equal(labels, table.labels(["AU01", "AU12"])[test])
    net, _ = load_unit(res["models_dir"])  # the saved network reproduces the clipped predictions
    with FaceSource(cache, FaceInput("full", 48, resize_full=True)) as source:
        s = score_batches(net, (torch.from_numpy(f) for _, _, f in source.batches(test, 32)),
                          device="cpu")
    np.testing.assert_allclose(np.clip(s, 0, 5), scores, rtol=1e-4, atol=1e-4)
    manifest = json.loads((res["models_dir"] / "manifest.json").read_text())
    assert manifest["task"] == "intensity" and manifest["settings"]["task"]["threshold"] == 2


@pytest.mark.slow
def test_transfer_stage2_intensity_from_a_folder_manifest_with_intensities(tmp_path):
    """Transfer's stage 2 regresses AU12's intensity (a block that brightens with it) from a
    folder manifest's AU12_int column; the run writes the intensity contracts."""
    from dataclasses import replace

    import cv2
    import h5py
    import torch

    from classify.transfer import format_result, run_stage2
    from featbench.core.datasets.folder import read_folder
    from test_transfer import SETTINGS

    torch.set_num_threads(1)
    root = tmp_path / "faces"
    root.mkdir()
    rows, rng = ["image,subject,AU12_int"], np.random.default_rng(0)
    for s in range(8):
        for f in range(10):
            v = int(rng.integers(0, 6))
            im = rng.integers(0, 50, (32, 32, 3), dtype=np.uint8)
            im[:10] = 30 + 40 * v
            cv2.imwrite(str(root / f"S{s}_{f}.png"), im)
            rows.append(f"S{s}_{f}.png,S{s},{v}")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    table = read_folder(root)
    table.pre_aligned = True
    settings = replace(SETTINGS, task="intensity", epochs=(2, 8))
    out = run_stage2(Workspace(tmp_path / "ws"), table, settings, stage1=None, progress=False)
    assert out["run"].endswith("__transfer__nostage1-intensity") and out["task"] == "intensity"
    assert out["icc"] > 0.5, out["icc"]
    with h5py.File(out["predictions"], "r") as f:
        s, ints = f["scores"][:], f["intensities"][:]
        assert f.attrs["task"] == "intensity" and "scores_are" not in f.attrs
    assert s.min() >= 0 and s.max() <= 5 and set(np.unique(ints)) <= set(range(6))
    assert "mean ICC" in format_result({"control": out})
    scorer = load_scorer(open_model(Workspace(tmp_path / "ws").models_dir(table.dataset, out["run"])))
    fold = scorer.folds[0]
    assert scorer.task.name == "intensity" and fold["AU12"][1] == 1.5  # not a probability threshold
    assert not fold["AU12"][0].probability and "scores" not in scorer.info


def test_lstm_regresses_an_intensity_only_its_memory_can_see(tmp_path):
    """AU01's intensity is the size of a one-frame cue, held for the next frames, whose codes are
    noise: the LSTM (``--clf lstm --task intensity``) recalls it; predictions are clipped."""
    import torch

    from classify.ensemble import read_predictions
    from classify.run import classify_run

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    frames, X = make_table(60, 0).frames, []
    frames["AU01_int"] = np.int8(0)
    for s in SUBJECTS:
        rows = np.flatnonzero(frames["subject"].to_numpy() == s)
        x, y, t = rng.normal(size=(60, 6)).astype(np.float32), np.zeros(60, np.int8), 2
        while t < 55:
            v = int(rng.integers(1, 6))
            x[t, 0] += 2.0 * v
            y[t + 1:t + 5] = v
            t += 5 + int(rng.integers(3, 10))
        frames.loc[rows, "AU01_int"], frames.loc[rows, "AU01"] = y, (y >= 2).astype(np.int8)
        X.append(x)
    for au in DISFA_AUS[1:]:
        frames[f"{au}_int"] = frames[au]
    table = FrameTable("synth", "/nonexistent", DISFA_AUS, frames, has_intensity=True,
                       label_threshold=2)
    ws = Workspace(tmp_path)
    write_features(ws, table, np.concatenate(X), regions=("full",))
    out = classify_run(ws, "synth", model="toy", clf="lstm", table=table, progress=False, n_jobs=1,
                       aus=["AU01"], task="intensity",
                       # 0.005 in raw 0-5 units: the same SGD steps on the loss in range units
                       lstm=dict(hidden=12, lr=0.125, weight_noise=0.0, epochs=10, batch=8,
                                 patience=None, device="cpu"))
    assert out["run"].startswith("toy__full__lstm__au1-") and out["run"].endswith("-intensity")
    assert out["task"] == "intensity"
    assert out["rows"][0]["icc"] > 0.6, out["rows"][0]["icc"]
    ridge = intensity_run(ws, "synth", model="toy", table=table, aus=["AU01"], progress=False)
    assert ridge["rows"][0]["icc"] < 0.3  # per frame, the held intensity is noise
    pred = read_predictions(out["predictions"])
    assert pred["task"] == "intensity" and pred["scores"].min() >= 0 and pred["scores"].max() <= 5
    test = _test_rows(table)
    np.testing.assert_array_equal(pred["intensities"][:, 0], table.intensities(["AU01"])[test, 0])
    np.testing.assert_array_equal(pred["labels"][:, 0], table.labels(["AU01"])[test, 0])


# featbench predict: AUxx_r ------------------------------------------------------------------------
def test_predict_columns_of_an_intensity_run_and_of_a_pair(int_setup):
    from classify.run import classify_run
    from featbench.apply.output import intensity_sidecar, outputs_of
    from featbench.apply.runmodel import load_run

    ws, table, _ = int_setup
    irun(ws, table)
    classify_run(ws, "synth", model="toy", clf="lda", table=table, progress=False, n_jobs=1)
    occ, inten = load_run(ws, "synth", "toy__full__lda"), load_run(ws, "synth", "toy__full__ridge")
    alone = outputs_of(inten)
    assert alone.columns()[5:7] == ["AU01_c", "AU02_c"] and "AU01_p" not in alone.columns()
    assert alone.columns()[-13:-11] == ["AU01_r", "AU02_r"]
    pair = outputs_of(occ, inten)
    cols = pair.columns()
    assert cols.index("AU26_c") < cols.index("AU01_p") < cols.index("AU26_p") < cols.index("AU01_r")
    with pytest.raises(UsageError, match="give the occurrence run as --run"):
        outputs_of(inten, inten)
    with pytest.raises(UsageError, match="is an occurrence run"):
        outputs_of(occ, occ)
    df = pd.DataFrame({"AU01_c": pd.array([1, 1, 0, 0, None], dtype="Int8"),
                       "AU01_r": [2.0, 1.0, 3.0, 0.2, np.nan]})
    pair = outputs_of(occ, inten)
    pair.occurrence.aus, pair.intensity.aus = ["AU01"], ["AU01"]
    side = intensity_sidecar(pair, df)
    assert side["disagreements"] == {"AU01": 2} and "never forced to agree" in side["rule"]


@pytest.mark.slow
@pytest.mark.parametrize("calibrate,batch_size", [("none", 32), ("median", 32), ("median", 5)])
def test_predict_r_columns_equal_the_runs_test_predictions_on_an_embedded_video(tmp_path, calibrate,
                                                                             batch_size):
    """A tiny embedded set aligned the way predict aligns (dlib on every frame: its landmark
    files removed), HOG codes, a ridge run; ``featbench predict`` on the test subject's video
    gives the run's own test predictions in AUxx_r and its decisions in AUxx_c (calibrated per
    face track as the run calibrated per subject; in batches of 5 faces too, the track's codes
    held across batches until its video ends)."""
    import shutil

    from classify.ensemble import read_predictions
    from featbench.apply.predict import predict
    from featbench.core.synth import generate_dataset

    ws = Workspace(tmp_path)
    root = generate_dataset(ws.data_dir("synth"), subjects=4, frames=12, right_camera=False,
                            progress=False)
    shutil.rmtree(root / "Landmark_Points")  # training faces aligned from dlib's fit, as predict's
    assert main(["--workspace", str(tmp_path), "extract", "--model", "hog", "--quiet"]) == 0
    assert main(["--workspace", str(tmp_path), "classify", "--task", "intensity", "--clf", "ridge",
                 "--model", "hog", "--calibrate", calibrate, "--quiet"]) == 0
    run = "hog__full__ridge" + ("__calmed" if calibrate == "median" else "")
    pred = read_predictions(ws.predictions_path("synth", run))
    (test,) = {k.decode() for k in pred["frames"]["subject"]}
    order = np.argsort(pred["frames"]["frame"])
    df = predict([root / "Videos_LeftCamera" / f"LeftVideo{test}_comp.avi"], run=run, workspace=ws,
                 progress=False, batch_size=batch_size)
    assert len(df) == len(order) and (df["success"] == 1).all()
    r = df[[f"{a}_r" for a in pred["aus"]]].to_numpy(dtype=np.float32, na_value=np.nan)
    np.testing.assert_array_equal(r, pred["scores"][order])
    c = df[[f"{a}_c" for a in pred["aus"]]].to_numpy(dtype=float, na_value=np.nan)
    have = np.isfinite(r)
    np.testing.assert_array_equal(c[have], pred["decisions"][order][have])
    assert np.isnan(c[~have]).all() and have.any()


def test_a_calibrated_run_scores_whole_tracks_and_refuses_a_photo(int_setup):
    """Per face track, as in training per subject: a track of one frame (a photo) has no
    reference; beside longer tracks it is left empty (nan), alone it is one clear error."""
    from featbench.core.calibrate import CalibrationError

    ws, table, codes = int_setup
    out = irun(ws, table, calibrate="median")
    model = load_scorer(open_model(out["models_dir"]))
    key = ("toy", RANDOM0, "full")
    X = codes[_test_rows(table)][:21]
    tracks = [(("clip", 0), f) for f in range(20)] + [(("clip", 1), 0)]
    s, d, _ = model.score({key: X}, tracks)
    assert np.isfinite(s[:20]).all() and np.isnan(s[20]).all()
    alone, _, _ = model.score({key: X[:20]}, tracks[:20])
    np.testing.assert_array_equal(alone, s[:20])  # another face's frames change nothing
    with pytest.raises(CalibrationError, match="a photo, or a face seen in one frame"):
        model.score({key: X[20:]}, tracks[20:])
    with pytest.raises(UsageError, match="pass the faces' tracks"):
        model.score({key: X[:20]})


def test_a_calibrated_run_whose_model_does_not_say_how_is_refused(int_setup):
    """A run named as person-calibrated (its key's calibration tag) whose manifest lacks the
    calibration (saved before the manifest held it) cannot be applied: one line, the file named."""
    from featbench.apply.runmodel import load_model_file, load_run
    from featbench.core.modelfile import MANIFEST

    ws, table, _ = int_setup
    out = irun(ws, table, calibrate="median")
    assert load_run(ws, "synth", out["run"]).calibrate == "median"
    path = out["models_dir"] / MANIFEST
    manifest = json.loads(path.read_text())
    del manifest["preprocessing"]["calibrate"]
    path.write_text(json.dumps(manifest))
    for load in (lambda: load_run(ws, "synth", out["run"]), lambda: load_model_file(out["models_dir"])):
        with pytest.raises(UsageError, match=f"{out['run']} was trained on person-calibrated codes"):
            load()
