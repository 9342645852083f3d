"""Majority vote on hand-made decisions, and ensemble_run on tiny hand-made predictions files."""

import csv

import numpy as np
import pytest

from featbench.app.cli import main
from classify.vote import majority_vote  # noqa: E402
from classify.ensemble import (ensemble_run, read_predictions, resolve_preset,
                                write_predictions)
from featbench.core.errors import FeatbenchError, MissingRunError
from featbench.core.frames import KEY_DTYPE
from featbench.core.workspace import Workspace


def _vote(dec, scores=None, thr=None):
    dec = np.asarray(dec, dtype=np.int8)[:, :, None]  # (m, n, 1)
    scores = dec.astype(float) - 0.5 if scores is None else np.asarray(scores, float)[:, :, None]
    thr = np.zeros((dec.shape[0], 1)) if thr is None else np.asarray(thr, float)[:, None]
    d, s = majority_vote(dec, scores, thr)
    return d[:, 0], s[:, 0]


def test_odd_members_take_the_majority():
    d, s = _vote([[1, 1, 0, 0], [1, 0, 1, 0], [0, 1, 1, 0]])
    assert d.tolist() == [1, 1, 1, 0]
    assert ((s > 0) == (d == 1)).all()


def test_all_agree():
    d, _ = _vote([[1, 0, 1], [1, 0, 1], [1, 0, 1], [1, 0, 1]])
    assert d.tolist() == [1, 0, 1]


def test_even_members_tie_broken_by_standardised_margin():
    # 2 members, frame 0..2 are ties (one yes, one no). Member A's scores have std 10,
    # member B's std ~1, so B's margins weigh more per unit of score.
    dec = [[1, 1, 0, 1], [0, 0, 1, 1]]
    a = [5.0, 1.0, -20.0, 14.0]
    b = [-0.1, -2.0, 0.5, 1.5]
    d, s = _vote(dec, [a, b])
    za = (np.array(a)) / np.std(a)
    zb = (np.array(b)) / np.std(b)
    mean = (za + zb) / 2
    assert d[3] == 1  # both agree
    for j in range(3):  # the ties follow the sign of the mean standardised margin
        assert d[j] == int(mean[j] > 0)
    assert ((s > 0) == (d == 1)).all()


def test_tie_uses_member_thresholds():
    # scores identical, thresholds differ: margins are score - threshold
    dec = [[1], [0]]
    d, _ = _vote(dec, [[0.5], [0.5]], thr=[0.0, 2.0])  # margins +0.5 and -1.5: absent
    assert d.tolist() == [0]


def test_per_frame_thresholds_and_abstaining_members():
    # member C has no classifier (nan scores): A and B tie, their margins decide;
    # frame 1's threshold of A is 2 (another fold's), so A's margin there is -1
    dec = np.array([[1, 1], [0, 0], [0, 0]], np.int8)[:, :, None]
    scores = np.array([[1.0, 1.0], [-0.5, -0.5], [np.nan, np.nan]])[:, :, None]
    thr = np.array([[0.0, 2.0], [0.0, 0.0], [0.0, 0.0]])[:, :, None]
    d, s = majority_vote(dec, scores, thr)
    assert d[:, 0].tolist() == [1, 0] and np.isfinite(s).all()
    d, s = majority_vote(dec[2:], scores[2:], thr[2:])  # nobody votes
    assert d.tolist() == [[0], [0]] and np.isnan(s).all()


def test_ensemble_of_members_without_a_classifier_is_nan(tmp_path):
    ws = Workspace(tmp_path)
    labels = np.array([[1, 0, 1], [0, 1, 0]] * 5, np.int8)
    for seed, run in enumerate(("hog__full__svm", "cnn_f__full__svm")):
        _member(ws, run, labels, 0.5, seed=seed)
        path = ws.predictions_path("synth", run)
        import h5py

        with h5py.File(path, "a") as f:  # AU04: no positive training frame, no classifier
            f["scores"][:, 2] = np.nan
            f["decisions"][:, 2] = 0
    out = ensemble_run(ws, "synth", members=["hog__full__svm", "cnn_f__full__svm"])
    with open(out["csv"]) as fh:
        rows = {r["au"]: r for r in csv.DictReader(fh)}
    assert rows["AU04"]["f1"] == "nan" and "no member" in rows["AU04"]["note"]
    assert rows["AU01"]["f1"] != "nan"


def test_shape_errors_are_usage_errors():
    with pytest.raises(FeatbenchError):
        majority_vote(np.zeros((2, 3)), np.zeros((2, 3)), np.zeros(2))


# ensemble_run ----------------------------------------------------------------------------------
AUS = ["AU01", "AU02", "AU04"]


def _keys(n, start=0):
    k = np.empty(n, dtype=KEY_DTYPE)
    k["subject"] = [b"SN003" if i % 2 else b"SN004" for i in range(start, start + n)]
    k["video"] = b"v"
    k["frame"] = np.arange(start, start + n)
    return k


def _member(ws, run, labels, noise, *, seed, n_skip=0, aus=AUS, weights="imagenet"):
    rng = np.random.default_rng(seed)
    scores = labels * 2.0 - 1 + noise * rng.standard_normal(labels.shape)
    model, region, clf = run.split("__")[:3]
    write_predictions(ws.predictions_path("synth", run), frames=_keys(len(labels))[n_skip:],
                      labels=labels[n_skip:], scores=scores[n_skip:],
                      decisions=(scores[n_skip:] > 0).astype(np.int8),
                      fold=np.zeros(len(labels) - n_skip, np.int8), aus=aus,
                      thresholds=np.zeros(len(aus)), run=run, model=model, region=region,
                      clf=clf, weights=weights, protocol="paper", dataset="synth")


@pytest.fixture
def members(tmp_path):
    ws = Workspace(tmp_path)
    rng = np.random.default_rng(0)
    labels = (rng.random((60, 3)) < 0.4).astype(np.int8)
    _member(ws, "hog__full__svm", labels, 1.0, seed=1, weights="none")
    _member(ws, "alexnet__full__svm", labels, 1.0, seed=2)
    _member(ws, "cnn_f__full__svm", labels, 1.0, seed=3)
    _member(ws, "cnn_f__auto__svm", labels, 1.0, seed=4, n_skip=5)
    return ws, labels


def test_ensemble_run_writes_contract_shapes(members):
    ws, labels = members
    out = ensemble_run(ws, "synth", members=["hog__full__svm", "alexnet__full__svm",
                                             "cnn_f__full__svm"], name="trio")
    assert out["run"] == "trio__full__vote"
    with open(out["csv"]) as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0])[:7] == ["au", "f1", "accuracy", "precision", "recall", "support",
                                 "threshold"]
    assert [r["au"] for r in rows] == AUS + ["mean"]
    with open(ws.summary_csv("synth")) as fh:
        summary = {r["run"]: r for r in csv.DictReader(fh)}
    row = summary["trio__full__vote"]
    assert (row["model"], row["region"], row["clf"]) == ("trio", "full", "vote")
    assert "alexnet=imagenet" in row["weights"] and "hog=none" in row["weights"]
    assert {"f1_AU01", "f1_AU02", "f1_AU04"} <= set(row)
    # three noisy members with independent errors: the vote beats the average member
    from featbench.core.metrics import au_metrics

    def mean_f1(p):
        return np.mean([au_metrics(labels[:, a], p["decisions"][:, a])["f1"] for a in range(3)])

    members_f1 = [mean_f1(read_predictions(ws.predictions_path("synth", r)))
                  for r in ("hog__full__svm", "alexnet__full__svm", "cnn_f__full__svm")]
    assert mean_f1(read_predictions(out["predictions"])) > np.mean(members_f1)
    pred = read_predictions(out["predictions"])
    assert pred["clf"] == "vote" and pred["aus"] == AUS
    assert np.array_equal(pred["labels"], labels)
    assert ((pred["scores"] > 0) == (pred["decisions"] == 1)).all()


def test_ensemble_run_intersects_frames_and_aus(members):
    ws, labels = members
    _member(ws, "dlib_face__full__svm", labels[:, :2], 1.0, seed=5, aus=AUS[:2])
    out = ensemble_run(ws, "synth", members=["cnn_f__auto__svm", "alexnet__full__svm",
                                             "dlib_face__full__svm"])
    assert out["run"].startswith("vote-") and out["run"].endswith("__mixed__vote")
    assert out["frames"] == 55 and out["aus"] == AUS[:2]
    assert any("5 frames" in n for n in out["notes"])
    assert any("AU04" in n for n in out["notes"])


def test_presets_pick_one_run_per_family(members):
    ws, labels = members
    # cnn_m shares cnn_f's family (vgg-cnn) and comes first in the preference order
    _member(ws, "cnn_m__full__svm", labels, 1.0, seed=5)
    fe = resolve_preset(ws, "synth", "fe")
    assert set(fe) == {"hog__full__svm", "alexnet__full__svm", "cnn_m__full__svm"}
    region = resolve_preset(ws, "synth", "fe+region")
    assert "cnn_f__auto__svm" in region and set(fe) < set(region)
    with pytest.raises(FeatbenchError, match="fine-tun"):
        resolve_preset(ws, "synth", "fe+ft")
    out = ensemble_run(ws, "synth", preset="fe+region")
    assert out["run"] == "ensemble-fe+region__mixed__vote"


def test_random_init_runs_never_vote_in_a_preset(members):
    """Controls stay out of every preset: a random-init network's SVM, a network fine-tuned from
    random weights and the SVM on its codes (weights finetuned:<that run>); --members still votes
    them."""
    ws, labels = members
    _member(ws, "cnn_m__full__svm", labels, 0.2, seed=5, weights="random:0")  # would win cnn_f's family
    _member(ws, "vgg16__full__svm", labels, 0.2, seed=6, weights="random:3")
    _member(ws, "cnn_f__full__ft__ml", labels, 0.2, seed=7, weights="random:0")
    _member(ws, "cnn_f-ft__full__svm", labels, 0.2, seed=8,
            weights="finetuned:cnn_f__full__ft__ml sha256:ab12")
    assert set(resolve_preset(ws, "synth", "fe")) == {"hog__full__svm", "alexnet__full__svm",
                                                      "cnn_f__full__svm"}
    with pytest.raises(FeatbenchError, match="random-init ones are controls"):
        resolve_preset(ws, "synth", "fe+ft")
    out = ensemble_run(ws, "synth", preset="fe")
    assert "vgg16__full__svm" not in out["members"]
    assert any("controls" in n and "cnn_f-ft__full__svm" in n and "vgg16__full__svm" in n
               for n in out["notes"])
    # a fine-tuned network from pretrained weights joins fe+ft; its codes' SVM too
    _member(ws, "dlib_face__full__ft__ml", labels, 0.5, seed=9, weights="dlib")
    _member(ws, "dlib_face-ft__full__svm", labels, 0.5, seed=10,
            weights="finetuned:dlib_face__full__ft__ml sha256:cd34")
    ft = resolve_preset(ws, "synth", "fe+ft")
    assert {"dlib_face__full__ft__ml", "dlib_face-ft__full__svm"} <= set(ft)
    assert not {"cnn_f__full__ft__ml", "cnn_f-ft__full__svm"} & set(ft)
    named = ensemble_run(ws, "synth", members=["hog__full__svm", "vgg16__full__svm", "cnn_m__full__svm"])
    assert named["members"] == ["hog__full__svm", "vgg16__full__svm", "cnn_m__full__svm"]


def test_missing_member_names_the_command(members, capsys):
    ws, _ = members
    with pytest.raises(MissingRunError, match="featbench classify --clf lda --model vgg16"):
        ensemble_run(ws, "synth", members=["hog__full__svm", "vgg16__full__lda"])
    status = main(["--workspace", str(ws.root), "ensemble",
                   "--members", "hog__full__svm,alexnet__upper__svm"])
    assert status == 2
    err = capsys.readouterr().err
    assert "alexnet__upper__svm" in err
    assert "featbench classify --clf svm --model alexnet --region upper" in err


def test_cli_ensemble_prints_summary(members, capsys):
    ws, _ = members
    status = main(["--workspace", str(ws.root), "ensemble", "--preset", "fe"])
    assert status == 0
    assert "ensemble-fe__full__vote" in capsys.readouterr().out


def _val_scores(ws, run, val_f1):
    """The models/<run>/settings.json a classify run writes, with per-AU validation F1s."""
    import json

    d = ws.models_dir("synth", run)
    d.mkdir(parents=True, exist_ok=True)
    aus = {au: {"val_f1": v} for au, v in zip(AUS, val_f1)}
    (d / "settings.json").write_text(json.dumps({"run": run, "folds": [{"name": "paper", "aus": aus}]}))


def test_fine_tuned_member_replaces_the_weakest_by_validation_f1(members):
    """fe+ft: a fine-tuned tv: network and the SVM on its codes join; the member with the lowest
    mean validation F1 (here cnn_f, not the paper's alexnet) leaves; without validation scores
    the paper's choice, AlexNet-SVM, leaves."""
    ws, labels = members
    _member(ws, "tv-mobilenet_v2__full__ft__ml", labels, 0.5, seed=6)
    _member(ws, "tv-mobilenet_v2__auto__ft__ml-fc67", labels, 0.5, seed=7)
    _member(ws, "tv-mobilenet_v2-ft__full__svm", labels, 0.5, seed=8)
    fe = resolve_preset(ws, "synth", "fe")
    assert set(fe) == {"hog__full__svm", "alexnet__full__svm", "cnn_f__full__svm"}
    _member(ws, "timm-resnet18__full__svm", labels, 1.0, seed=9)  # an open-zoo network's codes
    fe = resolve_preset(ws, "synth", "fe")
    assert set(fe) == {"hog__full__svm", "alexnet__full__svm", "cnn_f__full__svm",
                       "timm-resnet18__full__svm"}
    ft = resolve_preset(ws, "synth", "fe+ft")
    assert set(ft) == {"hog__full__svm", "cnn_f__full__svm", "timm-resnet18__full__svm",
                       "tv-mobilenet_v2__full__ft__ml", "tv-mobilenet_v2-ft__full__svm"}
    for run, f1 in (("hog__full__svm", [0.6, 0.5, np.nan]), ("alexnet__full__svm", [0.7, 0.7, 0.7]),
                    ("cnn_f__full__svm", [0.4, 0.6, 0.5]), ("timm-resnet18__full__svm", [0.6] * 3)):
        _val_scores(ws, run, f1)
    ft = resolve_preset(ws, "synth", "fe+ft")
    assert "cnn_f__full__svm" not in ft and {"hog__full__svm", "alexnet__full__svm"} <= set(ft)
    region = resolve_preset(ws, "synth", "fe+ft+region")
    assert {"cnn_f__auto__svm", "tv-mobilenet_v2__auto__ft__ml-fc67"} <= set(region)
    assert set(ft) < set(region)
    out = ensemble_run(ws, "synth", preset="fe+ft")
    assert out["members"] == ft and np.isfinite(out["mean_f1"])


def test_a_failed_preset_ensemble_is_recorded_under_the_name_it_would_have(members, tmp_path):
    """featbench run writes a failed ensemble's row under the name ensemble_run gives it (the
    members' shared region), and under ``mixed`` when its members cannot be found."""
    from classify.ensemble import preset_run_name

    ws, _ = members
    expected = preset_run_name(ws, "synth", "fe")
    assert expected == ensemble_run(ws, "synth", preset="fe")["run"] == "ensemble-fe__full__vote"
    assert preset_run_name(Workspace(tmp_path / "empty"), "synth", "fe") == "ensemble-fe__mixed__vote"
