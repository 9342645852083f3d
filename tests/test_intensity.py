"""AU intensity: the labels the readers keep, the metrics (hand-computed), calibration."""

import math

import numpy as np
import pytest

from featbench.app.cli import main
from featbench.core.calibrate import (CalibrationError, calibrate, check_calibration,
                                      neutral_frame, person_references)
from featbench.core.datasets import load_dataset
from featbench.core.errors import UsageError
from featbench.core.metrics import icc31, intensity_decisions, intensity_metrics, pearson


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
    (>= 1.5): 0 1 1 1 1 against 0 0 1 1 1 -> TP 3, FP 1, FN 0, F1 = 6 / 7."""
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
    assert intensity_decisions([1.49, 1.5, np.nan, 4.0]).tolist() == [0, 1, 0, 1]


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
