"""Every kind of run learns something: each beats the all-positive baseline on a small embedded set.

Issue 31, item 4: the LSTM on HOG codes of the embedded set fell to the all-positive baseline
(mean F1 0.131, AUC below 0.5 on four AUs) and nothing in the suite noticed. Here every kind --
LDA, SVM, the LSTM, ridge / SVR, fine-tuning (occurrence and intensity), transfer's stage 2 and
the vote -- trains on one small embedded set (12 subjects x 48 frames of ``featbench data
synth``, HOG codes and aligned faces made once per session) and must beat what learns nothing:

- occurrence: the mean F1 over its AUs above the mean F1 of calling every test frame present
  (2p / (1 + p) for a positive rate p), and each AU's AUC above 0.5;
- intensity: each AU's ICC(3,1) above 0 (a constant prediction scores 0).

The metrics are computed here from the run's predictions file (labels, scores, decisions), by
brute force, independently of featbench's metric code.
"""

import numpy as np
import pytest

#: lower-face AUs with positives in every part of the set's paper split
AUS = ("AU12", "AU25")


@pytest.fixture(scope="session")
def embedded(tmp_path_factory):
    """``featbench data synth --subjects 12 --frames 48`` (left camera), aligned and HOG-encoded
    (the whole face); returns ``(workspace, table)``."""
    import torch

    from extract.extractor import extract_features
    from featbench.core.datasets import load_dataset
    from featbench.core.synth import generate_dataset
    from featbench.core.workspace import Workspace

    torch.set_num_threads(1)
    ws = Workspace(tmp_path_factory.mktemp("embedded"))
    generate_dataset(ws.data_dir("synth"), subjects=12, frames=48, seed=0, progress=False,
                     right_camera=False, workers=1)
    table = load_dataset("synth", workspace=ws, progress=False)
    extract_features(table, ws, "hog", progress=False)
    return ws, table


# --- metrics, by hand ------------------------------------------------------------------------------
def brute_auc(y, s):
    """P(score of a positive > score of a negative), ties half: every pair compared."""
    pos, neg = s[y == 1], s[y == 0]
    return float(np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg]))


def brute_f1(y, d):
    tp = sum(1 for a, b in zip(y, d) if a == 1 and b == 1)
    fp = sum(1 for a, b in zip(y, d) if a == 0 and b == 1)
    fn = sum(1 for a, b in zip(y, d) if a == 1 and b == 0)
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan")


def icc31(y, x):
    """ICC(3,1) of two 'raters' (truth, prediction) from the two-way ANOVA's mean squares."""
    data = np.stack([y, x], axis=1).astype(np.float64)
    n, k = data.shape
    grand = data.mean()
    ss_rows = k * ((data.mean(axis=1) - grand) ** 2).sum()
    ss_cols = n * ((data.mean(axis=0) - grand) ** 2).sum()
    ss_err = ((data - grand) ** 2).sum() - ss_rows - ss_cols
    ms_rows, ms_err = ss_rows / (n - 1), ss_err / ((n - 1) * (k - 1))
    return (ms_rows - ms_err) / (ms_rows + (k - 1) * ms_err)


def assert_beats_all_positive(predictions, aus=AUS):
    """Mean F1 above the all-positive baseline's, each AU's AUC above 0.5 (see the module
    docstring); returns the figures for the failure message."""
    from classify.ensemble import read_predictions

    pred = read_predictions(predictions)
    cols = [list(pred["aus"]).index(au) for au in aus]
    f1, base, auc = [], [], {}
    for au, j in zip(aus, cols):
        known = pred["labels"][:, j] >= 0
        y = pred["labels"][known, j]
        s, d = pred["scores"][known, j], pred["decisions"][known, j]
        p = y.mean()
        f1.append(brute_f1(y, d))
        base.append(2 * p / (1 + p))
        auc[au] = brute_auc(y, s)
    figures = {"f1": np.round(f1, 3), "all-positive": np.round(base, 3), "auc": auc}
    assert np.mean(f1) > np.mean(base), figures
    assert all(a > 0.5 for a in auc.values()), figures
    return figures


def assert_icc_above_zero(predictions, aus=AUS):
    from classify.ensemble import read_predictions

    pred = read_predictions(predictions)
    icc = {}
    for au in aus:
        j = list(pred["aus"]).index(au)
        known = pred["intensities"][:, j] >= 0
        icc[au] = icc31(pred["intensities"][known, j], pred["scores"][known, j])
    assert all(v > 0 for v in icc.values()), icc
    return icc


# --- the kinds ------------------------------------------------------------------------------------
@pytest.mark.parametrize("clf", ["lda", "svm", "lstm"])
def test_a_classifier_on_codes_beats_the_all_positive_baseline(embedded, clf):
    from classify.run import classify_run

    ws, table = embedded
    lstm = dict(device="cpu") if clf == "lstm" else None
    out = classify_run(ws, "synth", model="hog", clf=clf, table=table, aus=list(AUS),
                       progress=False, n_jobs=1, lstm=lstm)
    assert_beats_all_positive(out["predictions"])


@pytest.mark.parametrize("clf", ["ridge", "svr"])
def test_an_intensity_regressor_on_codes_has_icc_above_zero(embedded, clf):
    from classify.run import classify_run

    ws, table = embedded
    out = classify_run(ws, "synth", model="hog", clf=clf, task="intensity", table=table,
                       aus=list(AUS), progress=False)
    assert_icc_above_zero(out["predictions"])


FT = dict(model="timm:test_efficientnet", weights="random:0", input_size=48, epochs=8,
          batch_size=16, lr=3e-3, optimizer="adam", aus=",".join(AUS), device="cpu",
          region="lower")


@pytest.mark.parametrize("task", ["occurrence", "intensity"])
def test_fine_tuning_learns_either_task(embedded, task):
    """A tiny CNN fine-tuned on the lower-face crops (per-AU networks, the default head)."""
    from classify.finetune import FinetuneConfig, finetune_run

    ws, table = embedded
    out = finetune_run(ws, "synth", FinetuneConfig(**FT), table=table, progress=False, task=task)
    if task == "occurrence":
        assert_beats_all_positive(out["predictions"])
    else:
        assert_icc_above_zero(out["predictions"])


def test_transfer_stage2_beats_the_all_positive_baseline(embedded):
    """Stage 2 from a tiny CNN (the control's start, no stage 1), on the whole face: AU04 (the
    brows) and AU25 (the mouth), one network for both."""
    from dataclasses import replace

    from classify.transfer import run_stage2
    from test_transfer import SETTINGS

    ws, table = embedded
    settings = replace(SETTINGS, backbone="timm:test_efficientnet", epochs=(1, 8), input_size=48,
                       hidden=(32, 16))
    aus = ("AU04", "AU25")
    out = run_stage2(ws, table, settings, stage1=None, aus=list(aus), progress=False)
    assert_beats_all_positive(out["predictions"], aus)


def test_the_vote_of_three_classifiers_beats_the_all_positive_baseline(embedded):
    from classify.ensemble import ensemble_run
    from classify.run import classify_run

    ws, table = embedded
    runs = [classify_run(ws, "synth", model="hog", clf=clf, table=table, aus=list(AUS),
                         progress=False, n_jobs=1, lstm=dict(device="cpu") if clf == "lstm" else None,
                         )["run"] for clf in ("lda", "svm", "lstm")]  # reused when made above
    out = ensemble_run(ws, "synth", members=runs)
    assert_beats_all_positive(out["predictions"])


@pytest.mark.slow
def test_dlib_face_fine_tuned_for_intensity_at_its_defaults_does_not_blow_up(embedded):
    """The quick preset's fine-tuned network, for intensity with every default (SGD 1e-3, the
    per-AU head): in raw 0-5 units its activations grew to 1e21 and every prediction was clipped
    to 5 (or 0), ICC 0; the loss in units of the scale's range trains it."""
    from classify.ensemble import read_predictions
    from classify.finetune import FinetuneConfig, finetune_run

    ws, table = embedded
    out = finetune_run(ws, "synth", FinetuneConfig(model="dlib_face", aus=",".join(AUS), epochs=3,
                                                   device="cpu"),
                       table=table, progress=False, task="intensity")
    scores = read_predictions(out["predictions"])["scores"]
    assert (scores.max(axis=0) > scores.min(axis=0)).all(), scores  # not one clipped value
    assert_icc_above_zero(out["predictions"])
