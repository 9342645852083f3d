"""Per-AU detection metrics: arrays in, floats out.

Conventions, stated once:

- labels are 1 (present), 0 (absent) or -1 (unlabelled); unlabelled frames are left out;
- F1 = 2 TP / (2 TP + FP + FN), from counts pooled over all scored frames (as the DISFA
  literature computes it); it is ``nan`` when the AU has no positive frame (undefined, not 0);
- precision is ``nan`` when nothing is predicted positive, recall when there is no positive;
- ROC-AUC needs both classes and scores, else ``nan``;
- a mean over AUs ignores ``nan`` (``numpy.nanmean``), and is ``nan`` only if all are.

Intensity (0-5, DISFA's scale; :func:`intensity_metrics`), per AU over the frames whose
intensity is known (``-1`` = unknown, left out), as the DISFA intensity literature reports it:

- ICC(3,1) (Shrout & Fleiss 1979: two-way mixed, consistency, single rater) of the two
  "raters" truth and prediction: ``(BMS - EMS) / (BMS + EMS)`` with ``BMS`` the between-frames
  and ``EMS`` the residual mean square. A *constant* prediction gives ``BMS == EMS``, so
  ICC = 0 exactly (it agrees with no variation of the truth); ICC is ``nan`` only when
  ``BMS + EMS == 0`` (truth and prediction both constant) or there are fewer than 2 frames;
- Pearson r is ``nan`` (undefined, not 0) when the truth or the prediction is constant (a
  constant prediction, an AU never active in test) or there are fewer than 2 frames;
- MAE is the mean absolute difference (``nan`` only without frames);
- F1 at intensity >= 2: a frame is called present when its prediction, *rounded to the label
  scale*, is at least the label threshold: ``prediction > threshold - 0.5``
  (:func:`decision_threshold`; the labels are integers, so label 2 stands for (1.5, 2.5]; the
  strict ``>`` is featbench's one decision rule, ``score > threshold``), scored against the
  occurrence labels with :func:`au_metrics`; so an intensity run's F1 compares with an
  occurrence run's.
"""

import warnings

import numpy as np

METRICS = ("f1", "accuracy", "precision", "recall", "auc", "support")
#: what :func:`intensity_metrics` returns besides the F1 family of :func:`au_metrics`
INTENSITY_METRICS = ("icc", "pearson", "mae")
#: the intensity scale's bounds (DISFA, FACS A-E as 1-5, 0 = absent)
INTENSITY_MIN, INTENSITY_MAX = 0.0, 5.0
#: the protocol's label threshold: present when intensity >= 2
PRESENT_AT = 2


def au_metrics(y_true, y_pred, scores=None):
    """Return the metrics of one AU.

    Parameters
    ----------
    y_true : array of shape (n,)
        1 present, 0 absent, -1 unlabelled (ignored).
    y_pred : array of shape (n,)
        Binary decisions.
    scores : array of shape (n,), optional
        Continuous scores (higher = more likely present) for ROC-AUC.

    Returns
    -------
    dict
        ``f1``, ``accuracy``, ``precision``, ``recall``, ``auc`` (floats, maybe nan),
        ``support`` (int: positive frames), ``frames`` (int: labelled frames).
    """
    y_true = np.asarray(y_true).ravel()
    keep = y_true >= 0
    t = y_true[keep] == 1
    p = np.asarray(y_pred).ravel()[keep] == 1
    tp = int(np.sum(t & p))
    fp = int(np.sum(~t & p))
    fn = int(np.sum(t & ~p))
    n = int(t.size)
    support = int(t.sum())
    nan = float("nan")
    out = {
        "f1": 2 * tp / (2 * tp + fp + fn) if support else nan,
        "accuracy": float(np.mean(t == p)) if n else nan,
        "precision": tp / (tp + fp) if tp + fp else nan,
        "recall": tp / support if support else nan,
        "auc": nan,
        "support": support,
        "frames": n,
    }
    if scores is not None and 0 < support < n:
        from sklearn.metrics import roc_auc_score

        out["auc"] = float(roc_auc_score(t, np.asarray(scores).ravel()[keep]))
    return out


def nanmean(values):
    """Mean ignoring nan; nan (without a warning) when every value is nan or there are none."""
    values = np.asarray(list(values), dtype=float)
    if values.size == 0 or np.all(np.isnan(values)):
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(np.nanmean(values))


def icc31(y_true, y_pred):
    """Return ICC(3,1) of two raters (truth, prediction) over n frames; nan when undefined.

    Parameters
    ----------
    y_true, y_pred : arrays of shape (n,)
        No unknown values (the caller masks them).

    Notes
    -----
    With ``Y`` the (n, 2) table, ``BMS = 2 * var(row means)`` (sample variance, n - 1) and
    ``EMS = SSE / (n - 1)`` where ``SSE`` sums the squared residuals of ``Y`` after removing
    row and column means. A constant prediction gives ICC = 0 (module docstring).
    """
    Y = np.stack([np.asarray(y_true, dtype=np.float64).ravel(),
                  np.asarray(y_pred, dtype=np.float64).ravel()], axis=1)
    n = Y.shape[0]
    if n < 2:
        return float("nan")
    rows = Y.mean(axis=1, keepdims=True)
    cols = Y.mean(axis=0, keepdims=True)
    grand = Y.mean()
    bms = 2.0 * np.sum((rows - grand) ** 2) / (n - 1)
    ems = np.sum((Y - rows - cols + grand) ** 2) / (n - 1)
    if bms + ems <= 0:
        return float("nan")
    return float((bms - ems) / (bms + ems))


def pearson(y_true, y_pred):
    """Return Pearson's r of two arrays of shape (n,); nan when either is constant or n < 2."""
    a = np.asarray(y_true, dtype=np.float64).ravel()
    b = np.asarray(y_pred, dtype=np.float64).ravel()
    if a.size < 2:
        return float("nan")
    a, b = a - a.mean(), b - b.mean()
    den = np.sqrt(np.sum(a * a) * np.sum(b * b))
    if not den > 0:
        return float("nan")
    return float(np.clip(np.sum(a * b) / den, -1.0, 1.0))


def decision_threshold(threshold=PRESENT_AT):
    """Return the score threshold of intensity decisions: ``threshold - 0.5`` (module docstring)."""
    return float(threshold) - 0.5


def intensity_decisions(y_pred, threshold=PRESENT_AT):
    """Return int8 decisions (1 present) of intensity predictions: rounded >= ``threshold``,
    i.e. ``y_pred > threshold - 0.5``; ``nan`` predictions give 0."""
    with np.errstate(invalid="ignore"):
        return (np.asarray(y_pred, dtype=np.float64) > decision_threshold(threshold)).astype(np.int8)


def intensity_metrics(y_int, y_pred, y_occ=None, *, threshold=PRESENT_AT):
    """Return the intensity metrics of one AU (module docstring for the conventions).

    Parameters
    ----------
    y_int : array of shape (n,)
        True intensity 0-5; -1 unknown (left out).
    y_pred : array of shape (n,)
        Predicted intensity (continuous).
    y_occ : array of shape (n,), optional
        Occurrence labels (1 / 0 / -1) for the F1 family; default ``y_int >= threshold``.
    threshold : int
        The label threshold of the occurrence labels (protocol: 2).

    Returns
    -------
    dict
        ``icc``, ``pearson``, ``mae`` (floats, maybe nan), ``frames`` (frames with a known
        intensity), and :func:`au_metrics`' ``f1``, ``accuracy``, ``precision``, ``recall``,
        ``support`` of the rounded prediction ``>= threshold`` against ``y_occ``, and ``auc``,
        the ROC-AUC of the predicted intensity against ``y_occ``.
    """
    y_int = np.asarray(y_int).ravel()
    y_pred = np.asarray(y_pred, dtype=np.float64).ravel()
    if y_occ is None:
        y_occ = np.where(y_int >= 0, (y_int >= threshold).astype(np.int8), -1)
    known = (y_int >= 0) & np.isfinite(y_pred)
    t, p = y_int[known].astype(np.float64), y_pred[known]
    y_occ = np.asarray(y_occ).ravel()
    scored = np.isfinite(y_pred[y_occ >= 0]).all()  # ROC-AUC of the intensities, when all exist
    out = au_metrics(y_occ, intensity_decisions(y_pred, threshold), y_pred if scored else None)
    out.pop("frames")
    out.update({"icc": icc31(t, p), "pearson": pearson(t, p),
                "mae": float(np.mean(np.abs(t - p))) if t.size else float("nan"),
                "frames": int(t.size)})
    return out
