"""AU intensity as a learned task: regression on DISFA's 0-5 scale, judged by ICC(3,1).

:class:`Intensity` is the second :class:`~classify.task.Task` (the first is occurrence):
fine-tuning, transfer's stage 2 and the LSTM train it through the same loop, writer and model
format, with ``--task intensity``.

- **targets**: the data set's intensities 0-5 (``FrameTable.intensities``), -1 unknown: no
  loss, no gradient, no metric;
- **present** (what counts and balances, as occurrence's positives): intensity >= the label
  threshold (2), so training batches and validation rows are balanced as the protocol balances
  occurrence, every frame of an active AU and as many others;
- **loss**: the mean squared error of the network's output over known targets, in units of
  the scale's range (the error divided by 5), and no positive weight (the balancing carries the
  rare high intensities). In raw 0-5 units a frame's gradient is up to 10 and the loss's
  curvature 2, against at most 1 and 1/4 for occurrence's BCE, so the learning rates chosen for
  occurrence overshoot: fine-tuning dlib_face for intensity at its default SGD rate blew its
  activations up to 1e21 and clipped every prediction to 5 or 0 (ICC 0). In range units the
  same rates train both tasks;
- **validation**: the mean over AUs of ICC(3,1) of the clipped outputs (higher is better),
  which chooses the epoch;
- **output**: the network's score clipped to 0-5 is the run's predicted intensity (test
  predictions, ``featbench predict``'s ``_r``);
- **decision**: present when the prediction rounds to >= 2 (``score > 1.5``, featbench's one
  rule ``score > threshold``), never tuned; test metrics are
  :func:`featbench.core.metrics.intensity_metrics` (ICC, r, MAE and the F1 family of that decision).
"""

import numpy as np

from featbench.core.metrics import (INTENSITY_MAX, INTENSITY_MIN, PRESENT_AT, decision_threshold,
                                    icc31, intensity_metrics, nanmean)

from classify.estimators import balance_indices, decide
from classify.intensity import clip_intensity
from classify.task import Settled, Task, register_task


#: the width of the intensity scale: the regression loss's unit
INTENSITY_RANGE = float(INTENSITY_MAX - INTENSITY_MIN)


class Intensity(Task):
    """AU intensity: per-AU regression on 0-5 (see the module docstring).

    Parameters
    ----------
    threshold : int
        The label threshold: intensity >= ``threshold`` is *present* (protocol: 2).
    """

    name = "intensity"
    METRICS = ("icc", "pearson", "mae", "f1", "accuracy", "precision", "recall")

    def __init__(self, threshold=PRESENT_AT):
        self.threshold = int(threshold)
        self.decision = (f"present when the predicted intensity rounds to >= {self.threshold} "
                         f"(score > {decision_threshold(self.threshold):g}); score clipped to 0-5")

    def targets(self, table, aus):
        return table.intensities(aus)

    def positive(self, y):
        return np.asarray(y) >= self.threshold

    def balance(self, y, rng):
        return balance_indices(self.positive(y).astype(np.int8), rng)

    def loss(self, scores, y, weight=None, *, reduction="mean"):
        mask = (y >= 0).float()
        # in units of the scale's range: see the module docstring
        err = ((scores.float() - y.float().clamp(min=0)) / INTENSITY_RANGE) ** 2 * mask
        total = err.sum()
        return total if reduction == "sum" else total / mask.sum().clamp(min=1)

    def output(self, scores):
        return None if scores is None else clip_intensity(scores)

    def _icc(self, y, scores):
        y, s = np.asarray(y), self.output(np.asarray(scores, dtype=np.float64))
        out = []
        for j in range(y.shape[1]):
            k = (y[:, j] >= 0) & np.isfinite(s[:, j])
            out.append(icc31(y[k, j], s[k, j]) if k.sum() > 1 else float("nan"))
        return out

    def validate(self, y, scores):
        y, s = np.asarray(y), np.asarray(scores, dtype=np.float64)
        known = y >= 0
        mse = float(np.mean((s[known] - y[known]) ** 2)) if known.any() else float("nan")
        return {"val_score": nanmean(self._icc(y, s)), "val_loss": mse}

    def settle(self, y, scores, *, tune):
        y = np.asarray(y)
        k = y.shape[1] if y.ndim == 2 else 0
        values = self._icc(y, scores) if scores is not None and len(y) else [float("nan")] * k
        return Settled([decision_threshold(self.threshold)] * k, values)

    def decide(self, scores, thresholds):
        return decide(scores, thresholds)

    def metrics(self, y, decisions, scores=None):
        return intensity_metrics(y, self.output(scores), threshold=self.threshold)

    def stored(self, y):
        y = np.asarray(y)
        occ = np.where(y >= 0, (y >= self.threshold).astype(np.int8), -1).astype(np.int8)
        return {"labels": occ, "intensities": y.astype(np.int8)}

    def to_json(self):
        return {**super().to_json(), "threshold": self.threshold}

    # --- what an intensity run reports, and how intensity runs combine ---------------------------
    COLUMNS = ("au", "icc", "pearson", "mae", "f1", "support", "frames")
    SHOWN = ("icc", "pearson", "mae", "f1", "support")
    classes = False  # regression: a fixed decision rule, no class weights
    predict_column = "r"  # predict's AUxx_r: the intensity 0-5

    def at_threshold(self, threshold):
        threshold = int(threshold or PRESENT_AT)
        return self if threshold == self.threshold else Intensity(threshold)

    needs_table = True

    def check_table(self, table):
        table.require_intensity()

    def labelled_aus(self, table, aus):
        """Those of ``aus`` with a known intensity on some frame: BP4D codes intensity for 5 of
        its 12 AUs, so a run there scores those 5, not 7 empty rows beside them. A table with no
        intensity at all keeps ``aus``: :meth:`check_table` is what refuses it, in its words."""
        if not table.has_intensity:
            return list(aus)
        frames = table.frames
        return [au for au in aus
                if f"{au}_int" in frames.columns and (frames[f"{au}_int"] >= 0).any()]

    def summary_fields(self, mean, rows):
        return {**{f"mean_{k}": mean[k] for k in ("icc", "pearson", "mae")},
                **{f"icc_{r['au']}": r["icc"] for r in rows}}

    def combine(self, decisions, scores, thresholds, *, scales=None):
        """The mean of the members' (or folds') intensities, over those that score an AU (a nan
        abstains), decided as a run decides: rounded >= the label threshold."""
        scores = np.asarray(scores, dtype=np.float64)
        have = np.isfinite(scores)
        # members' thresholds per AU (k,) or per frame and AU (n, k): the largest that is known
        thr = np.fmax.reduce(np.asarray(thresholds, dtype=float), axis=0)
        thr = np.where(np.isfinite(thr), thr, decision_threshold(self.threshold))
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = (np.where(have, scores, 0).sum(axis=0) / have.sum(axis=0)).astype(np.float32)
            dec = (mean > thr).astype(np.int8)
        return dec, mean, (np.fmax.reduce(thr, axis=0) if thr.ndim > 1 else thr)

    def vote_rows(self, first, decisions, scores, aus):
        """Per-AU rows of an intensity ensemble (the intensity run's columns)."""
        rows = []
        for a, au in enumerate(aus):
            m = intensity_metrics(first["intensities"][:, a], scores[:, a], first["labels"][:, a],
                                  threshold=self.threshold)
            rows.append({"au": au, **{k: m[k] for k in ("icc", "pearson", "mae", "f1", "support",
                                                        "frames", "accuracy", "precision", "recall",
                                                        "auc")}})
        return rows

    def vote_meta(self):
        return {"label_threshold": self.threshold}

    def describe(self, mean, meta, defined):
        return (f"mean ICC {mean['icc']:.3f}, r {mean['pearson']:.3f}, MAE {mean['mae']:.3f}, F1 of "
                f"rounded intensity >= {meta.get('label_threshold') or self.threshold} ")


#: the intensity task at the protocol's threshold (``get_task("intensity")``)
INTENSITY = register_task(Intensity())
