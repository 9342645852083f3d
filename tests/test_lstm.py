"""classify --clf lstm: the sequence cutter on hand-made tracks, a temporal toy AU that only a
sequence model can learn, the run's contracts, weight noise only in training, bad flags."""

import json

import h5py
import numpy as np
import pytest

from classify.lstm import LSTMOptions, cut_sequences, cut_track, load_model, score_sequences
from classify.run import classify_run, join_codes
from featbench.core.aus import DISFA_AUS
from featbench.app.cli import main
from classify.ensemble import ensemble_run, read_predictions, resolve_preset
from featbench.core.frames import FrameTable, build_frames
from featbench.core.results import read_summary
from featbench.core.splits import PAPER_SPLIT
from featbench.core.workspace import Workspace

from test_classify import SUBJECTS, write_features


# --- the cutter --------------------------------------------------------------------------------
def test_cut_track_runs_context_and_long_inactive_stretches():
    y = np.array([0] * 10 + [1] * 3 + [0] * 597 + [1] * 2 + [0] * 5)  # 617 frames
    # run 10-12 +-3 -> 7..15; run 610-611 +-3 -> 607..614; the 591 frames between: dropped
    assert cut_track(y, mode="train", context=3, drop_gap=500) == [(0, 7), (7, 16), (607, 615), (615, 617)]
    # a shorter gap is kept, as its own inactive sequence
    assert cut_track(y, mode="train", context=3, drop_gap=600) == [
        (0, 7), (7, 16), (16, 607), (607, 615), (615, 617)]
    # runs closer than twice the context merge into one sequence
    assert cut_track(np.array([0, 1, 0, 0, 1, 0, 0, 0, 0, 0]), context=1, drop_gap=3) == [(0, 6)]
    # test: the whole track, nothing dropped
    assert cut_track(y, mode="test") == [(0, 617)]
    assert cut_track(y, mode="whole") == [(0, 617)]


def test_unlabelled_frames_break_training_sequences_but_not_test():
    y = np.array([0, 0, 1, 1, -1, 1, 0, 0, 0])
    assert cut_track(y, mode="train", context=1, drop_gap=10) == [(0, 1), (1, 4), (5, 7), (7, 9)]
    assert cut_track(y, mode="whole") == [(0, 4), (5, 9)]
    assert cut_track(y, mode="test") == [(0, 9)]
    # multilabel: a frame is active when any AU is; unlabelled only when no AU is labelled
    y2 = np.array([[0, 0], [0, 1], [-1, 0], [-1, -1], [0, 0]])
    assert cut_track(y2, mode="whole") == [(0, 3), (4, 5)]


def test_cut_sequences_never_cross_subjects_and_reports_missing_frames():
    # two subjects' rows interleaved in the table; subject B lacks frame 4 (no codes)
    subj = np.array([0, 1] * 8)
    frame = np.repeat(np.arange(8), 2)
    rows = np.array([r for r in range(16) if not (subj[r] == 1 and frame[r] == 4)])
    y = np.zeros(16, dtype=np.int8)
    y[(subj == 0) & (frame >= 5)] = 1
    test = cut_sequences(rows, subj, frame, y, mode="test")
    assert test.missing_breaks == 1
    assert sorted(np.concatenate(test.sequences).tolist()) == rows.tolist()  # every frame, once
    for s in test.sequences:
        assert len(set(subj[s])) == 1  # never two subjects
        assert (np.diff(frame[s]) == 1).all()  # frame order, no bridged gap
    assert [len(s) for s in test.sequences] == [8, 4, 3]
    train = cut_sequences(rows, subj, frame, y, mode="train", context=1, drop_gap=4)
    # A: 0..3 inactive (4 frames: dropped), 4..7 active; B: 0..3 dropped, 5..7 (after the
    # missing frame, 3 frames) kept
    assert [frame[s].tolist() for s in train.sequences] == [[4, 5, 6, 7], [5, 6, 7]]
    assert [subj[s[0]] for s in train.sequences] == [0, 1]
    assert train.report()["inactive_frames_dropped"] == 8


# --- a temporal toy AU -------------------------------------------------------------------------
HOLD = 5


def temporal_table(n_frames=60, seed=0, dims=6, aus=DISFA_AUS):
    """AU01 is on for the HOLD frames *after* a one-frame cue in dim 0; on-frames look like noise."""
    rng = np.random.default_rng(seed)
    rows, X = [], []
    for s in SUBJECTS:
        x = rng.normal(size=(n_frames, dims)).astype(np.float32)
        y = np.zeros(n_frames, dtype=int)
        t = int(rng.integers(1, 8))
        while t < n_frames:
            x[t, 0] += 6.0
            y[t + 1:t + 1 + HOLD] = 1
            t += HOLD + 1 + int(rng.integers(3, 12))
        for f in range(n_frames):
            row = {"subject": s, "video": f"LeftVideo{s}", "frame": f, "source": "",
                   "source_index": f, "landmark_file": "", "split": ""}
            for au in aus:
                row[au] = int(y[f]) if au == "AU01" else int(rng.random() < 0.3)
            rows.append(row)
        X.append(x)
    return FrameTable("synth", "/nonexistent", tuple(aus), build_frames(rows, aus)), np.concatenate(X)


FAST = dict(hidden=12, lr=0.005, weight_noise=0.0, epochs=20, batch=8, patience=None, device="cpu")


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    ws = Workspace(tmp_path_factory.mktemp("lstm"))
    table, X = temporal_table()
    write_features(ws, table, X, regions=("full",))
    kw = dict(table=table, model="toy", progress=False, n_jobs=1, aus=["AU01", "AU02"])
    svm = classify_run(ws, "synth", clf="svm", **kw)
    lstm = classify_run(ws, "synth", clf="lstm", lstm=FAST, **kw)
    return ws, table, X, svm, lstm


def test_lstm_learns_what_a_per_frame_svm_cannot(toy):
    _, _, _, svm, lstm = toy
    f1 = {r["au"]: r["f1"] for r in lstm["rows"]}
    assert f1["AU01"] >= 0.9
    assert svm["rows"][0]["f1"] < 0.6  # the on-frames' codes are noise: a per-frame SVM guesses


def test_lstm_run_follows_the_contracts(toy):
    ws, table, X, _, lstm = toy
    assert lstm["run"] == "toy__full__lstm__au1+2-h12-e20-lr0.005-wn0-b8-pnone"
    row = read_summary(ws, "synth").set_index("run").loc[lstm["run"]]
    assert row["clf"] == "lstm" and np.isclose(row["f1_AU01"], lstm["rows"][0]["f1"], atol=1e-3)
    # predictions: every test frame with codes, in frame order per subject
    pred = read_predictions(lstm["predictions"])
    test = np.isin(table.frames["subject"].to_numpy(), PAPER_SPLIT["test"])
    assert len(pred["frames"]) == int(test.sum())
    keys = table.keys()[test]
    assert np.array_equal(pred["frames"], keys)
    assert np.isfinite(pred["scores"]).all()
    # the saved .pt alone reproduces the test decisions, threshold included
    settings = json.loads((lstm["models_dir"] / "settings.json").read_text())
    entry = settings["folds"][0]["aus"]["AU01"]
    assert entry["model_file"] == "AU01.safetensors" and entry["best_epoch"] >= 1
    assert entry["sequences"]["train"]["sequences"] > 12  # cut around runs, not whole videos
    assert entry["sequences"]["test"]["sequences"] == len(PAPER_SPLIT["test"])  # whole videos
    model, saved = load_model(lstm["models_dir"], "AU01")
    pos = join_codes(table, table.keys())
    rows = np.flatnonzero(test)
    seqs = [rows[table.frames["subject"].to_numpy()[rows] == s] for s in PAPER_SPLIT["test"]]
    got_rows, logits = score_sequences(model, X, pos, seqs)
    order = np.argsort(got_rows)
    decided = (logits[order, 0] > saved["thresholds"][0]).astype(np.int8)
    assert np.array_equal(decided, pred["decisions"][:, 0])
    assert np.allclose(logits[order, 0], pred["scores"][:, 0], atol=1e-5)


def test_weight_noise_only_in_training(toy):
    """With a vanishing learning rate, noisy and clean training leave the same network: the noise
    changed the training loss but never the evaluated or saved weights."""
    ws, table, *_ = toy
    still = dict(FAST, lr=1e-12, epochs=2, patience=None)
    kw = dict(table=table, model="toy", progress=False, n_jobs=1, aus=["AU01"])
    clean = classify_run(ws, "synth", clf="lstm", lstm=still, **kw)
    noisy = classify_run(ws, "synth", clf="lstm", lstm=dict(still, weight_noise=2.0), **kw)
    a, b = read_predictions(clean["predictions"]), read_predictions(noisy["predictions"])
    assert np.allclose(a["scores"], b["scores"], atol=1e-5)
    hist = {name: json.loads((r["models_dir"] / "settings.json").read_text())["folds"][0]["aus"]["AU01"]["history"]
            for name, r in (("clean", clean), ("noisy", noisy))}
    assert hist["noisy"][0]["train_loss"] > hist["clean"][0]["train_loss"] * 1.2
    assert hist["noisy"][0]["val_loss"] == pytest.approx(hist["clean"][0]["val_loss"], rel=1e-4)


def test_multilabel_one_network_and_ensemble_members(toy):
    ws, table, _, svm, _ = toy
    ml = classify_run(ws, "synth", clf="lstm", table=table, model="toy", progress=False, n_jobs=1,
                      aus=["AU01", "AU02"], tune_threshold=True,
                      lstm=dict(FAST, multilabel=True, epochs=3))
    assert ml["run"].split("__")[-1].startswith("thr-au1+2-ml")
    assert sorted(p.name for p in ml["models_dir"].glob("*.safetensors")) == ["multilabel.safetensors"]
    _, saved = load_model(ml["models_dir"], "multilabel")
    assert saved["aus"] == ["AU01", "AU02"] and len(saved["thresholds"]) == 2
    pred = read_predictions(ml["predictions"])  # decided with the tuned thresholds, per AU
    assert np.allclose(pred["thresholds"], saved["thresholds"])
    assert np.array_equal(pred["decisions"], (pred["scores"] > pred["thresholds"]).astype(np.int8))
    out = ensemble_run(ws, "synth", members=[svm["run"], ml["run"]], name="mix")
    assert out["frames"] == len(read_predictions(svm["predictions"])["frames"])


def test_fe_preset_mixes_svm_and_lstm_members(tmp_path):
    ws = Workspace(tmp_path)
    table, X = temporal_table(n_frames=30, aus=("AU01",))  # default AUs: default run names
    write_features(ws, table, X, model="hog", regions=("full",), weights="none")
    write_features(ws, table, X + 0.1, model="alexnet", regions=("full",), weights="imagenet")
    kw = dict(table=table, progress=False, n_jobs=1)
    for model in ("hog", "alexnet"):
        classify_run(ws, "synth", model=model, clf="svm", **kw)
    assert "hog__full__lstm" not in resolve_preset(ws, "synth", "fe")
    # an LSTM run with the paper's settings (its default name) joins the preset; one with other
    # settings (a tagged name) does not
    short = classify_run(ws, "synth", model="hog", clf="lstm", lstm=dict(epochs=1), **kw)
    assert short["run"] == "hog__full__lstm__e1"
    assert "hog__full__lstm__e1" not in resolve_preset(ws, "synth", "fe")
    import shutil  # stands in for a 40-epoch run of the paper's settings: same file, its name

    shutil.copy(short["predictions"], ws.predictions_path("synth", "hog__full__lstm"))
    members = resolve_preset(ws, "synth", "fe")
    assert members == ["alexnet__full__svm", "hog__full__svm", "hog__full__lstm"]
    out = ensemble_run(ws, "synth", preset="fe")
    assert out["members"] == members


def test_a_frame_without_codes_breaks_the_test_sequence_and_is_reported(tmp_path):
    ws = Workspace(tmp_path)
    table, X = temporal_table(n_frames=30, aus=("AU01",))
    keys = table.keys()
    gone = int(np.flatnonzero((keys["subject"] == b"SN003") & (keys["frame"] == 10))[0])
    keep = np.arange(len(keys)) != gone
    write_features(ws, table, X[keep], regions=("full",), keys=keys[keep])
    out = classify_run(ws, "synth", model="toy", clf="lstm", table=table, progress=False,
                       n_jobs=1, lstm=dict(FAST, epochs=1))
    assert "sequences broken at frames without codes: 1 in test" in out["rows"][0]["note"]
    pred = read_predictions(out["predictions"])
    test = np.isin(keys["subject"].astype(str), PAPER_SPLIT["test"])
    assert len(pred["frames"]) == int(test.sum()) - 1 and keys[gone] not in pred["frames"]


# --- bad input ---------------------------------------------------------------------------------
@pytest.mark.parametrize("flags, message", [
    (["--clf", "lstm", "--hidden", "0"], "--hidden must be an integer >= 1"),
    (["--clf", "lstm", "--lr", "-1"], "--lr must be a number > 0"),
    (["--clf", "lstm", "--weight-noise", "-0.5"], "--weight-noise must be a number >= 0"),
    (["--clf", "lstm", "--epochs", "0"], "--epochs must be an integer >= 1"),
    (["--clf", "lstm", "--context", "-2"], "--context must be an integer >= 0"),
    (["--clf", "lstm", "--device", "tpu"], "--device tpu"),
    (["--clf", "svm", "--hidden", "50"], "--hidden: only for --clf lstm"),
])
def test_bad_lstm_flag_is_one_line_exit_2(tmp_path, capsys, flags, message):
    status = main(["--workspace", str(tmp_path), "classify", "--model", "toy"] + flags)
    err = capsys.readouterr().err
    assert status == 2
    assert err.count("\n") == 1 and err.startswith("featbench: error: ") and message in err
    assert not (tmp_path / "results").exists()  # nothing written


def test_options_tag_names_only_non_defaults():
    assert LSTMOptions().tag() is None
    assert LSTMOptions(multilabel=True, hidden=64).tag() == "ml-h64"
