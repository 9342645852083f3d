"""Per-AU detection metrics: arrays in, floats out.

Conventions, stated once:

- labels are 1 (present), 0 (absent) or -1 (unlabelled); unlabelled frames are left out;
- F1 = 2 TP / (2 TP + FP + FN), from counts pooled over all scored frames (as the DISFA
  literature computes it); it is ``nan`` when the AU has no positive frame (undefined, not 0);
- precision is ``nan`` when nothing is predicted positive, recall when there is no positive;
- ROC-AUC needs both classes and scores, else ``nan``;
- a mean over AUs ignores ``nan`` (``numpy.nanmean``), and is ``nan`` only if all are.
"""

import warnings

import numpy as np

METRICS = ("f1", "accuracy", "precision", "recall", "auc", "support")


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
