"""How sure a number is: subject-level bootstrap intervals, paired tests, multiplicity correction.

Arrays in, numbers out (STYLE 6): the callers read the predictions files and write the tables.

Conventions, stated once
------------------------
- **The unit of resampling is the test subject.** Frames of one person are strongly correlated
  (one face, one session), so resampling frames would pretend there are thousands of independent
  observations where there are nine. Every statistic here resamples *subjects*, each with all its
  frames (a cluster bootstrap; Field & Welsh 2007, *J. R. Stat. Soc. B* 69: 369-390). With
  several cross-validation folds each fold's test subjects are resampled within the fold
  (a stratified bootstrap), as the folds were made.
- **Sufficient statistics per subject.** F1, accuracy, precision and recall are functions of the
  pooled confusion counts, and ICC(3,1), Pearson r and MAE of six sums and a count, so a
  resample is a weight per subject (how often it was drawn) times a (subjects x AUs x counts)
  table: a resample costs a matrix product, never a pass over frames. ROC-AUC pools pairs of a
  positive and a negative frame; the (AU, subject, subject) table of pairs ranked correctly
  (ties half) makes it a quadratic form in the same weights. Memory: the bootstrap
  distribution (reported values x resamples) and, per batch of :data:`BATCH` resamples, the
  draws (batch x subjects) and their products (batch x subjects x AUs); never frames.
- **Intervals** are percentile intervals (Efron & Tibshirani 1993, ch. 13) of
  :data:`DEFAULT_RESAMPLES` resamples drawn by :func:`scipy.stats.bootstrap` (seeded). Not BCa:
  its acceleration is a jackknife over the subjects, nine of them in the paper protocol, which
  is itself too noisy to correct anything, and BCa is undefined for a degenerate distribution
  (a run whose decisions equal the labels must get F1 1 with a zero-width interval, and does).
  With fewer than about 10 subjects a percentile cluster bootstrap is somewhat too narrow: read
  the intervals as the least uncertainty there is. A resample in which an AU has no positive
  frame leaves that AU's F1 undefined; the interval is taken over the resamples where it is
  defined, and is ``nan`` when fewer than half are. The mean over AUs is undefined in such a
  resample too (not a mean over the AUs left), so its interval is one of means over the same
  AUs as the run's own.
- **The point estimate is the run's own**: per fold, then averaged over folds, as classifier
  runs compute it (:mod:`classify.learn.writer`), or over all test frames at once for
  ensembles (:func:`pools_folds`), so the interval surrounds the number in the table.
- **Paired comparison** of two runs on the frames both scored: the difference of a metric
  (run A minus run B) with a paired bootstrap interval (the same subjects drawn for both runs),
  and a two-sided **paired permutation test over subjects** (each subject's frames keep their
  labels; which run's predictions count as "A" is swapped per subject; :func:`scipy.stats.
  permutation_test` with ``permutation_type="samples"``). It is exact — every one of the 2^S
  swaps — when 2^S is at most the number of resamples (S = 9 test subjects: 512), and needs
  no assumption beyond the exchangeability of two equally good runs within a subject, which is
  what "no difference" means. Dietterich (1998, *Neural Computation* 10: 1895-1923) showed that
  tests treating correlated units as independent find differences that are not there; the
  subject is the independent unit here.
- **Many comparisons**: Holm's step-down correction (Holm 1979, *Scand. J. Statist.* 6: 65-70)
  of the p-values of one table (:func:`holm`). It controls the chance of *any* false verdict in
  the table, whatever the dependence between comparisons (they share runs), and is uniformly
  more powerful than Bonferroni; a claim table is a list of findings each of which a reader
  takes on its own, so the family-wise error is the right thing to bound rather than the
  false discovery rate (Benjamini & Hochberg 1995: :func:`benjamini_hochberg`, for screening
  many AUs).
- A verdict (:func:`verdict`) is *holds* (adjusted p < alpha, difference in the claimed
  direction), *reversed* (adjusted p < alpha, the other direction) or *not decided* — never a
  bare difference of point estimates.
"""

import math
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from featbench.core.errors import StoreError, UsageError

DEFAULT_LEVEL = 0.95
DEFAULT_RESAMPLES = 1000
DEFAULT_SEED = 0
#: below this many resamples a 95 % percentile interval rests on a handful of values per tail
MIN_RESAMPLES = 100
#: the metrics of an occurrence run that carry an interval, in table order
OCCURRENCE_METRICS = ("f1", "accuracy", "precision", "recall", "auc")
#: and those an intensity run adds
INTENSITY_METRICS = ("icc", "pearson", "mae")
#: resamples evaluated at once: bounds the working memory (resamples x subjects x AUs per
#: batch); only the bootstrap distribution itself (reported values x resamples) grows with them
BATCH = 250
#: the interval type, as tables and reports name it
METHOD = "percentile bootstrap over test subjects"
TEST = "paired permutation test over subjects"
_TP, _FP, _FN, _TN = range(4)
#: per-subject intensity sums: n, sum t, sum p, sum t^2, sum p^2, sum t p, sum |t - p|
_N, _ST, _SP, _STT, _SPP, _STP, _SAD = range(7)


# settings -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CISettings:
    """How intervals and tests are computed: confidence level, resamples, resampling seed."""

    level: float = DEFAULT_LEVEL
    resamples: int = DEFAULT_RESAMPLES
    seed: int = DEFAULT_SEED

    @property
    def alpha(self):
        """The tests' significance level, ``1 - level`` (0.05 for 95 % intervals)."""
        return 1.0 - self.level

    def record(self, subjects):
        """The columns a table stores with its intervals."""
        return {"ci_level": self.level, "ci_resamples": self.resamples, "ci_subjects": int(subjects)}

    def describe(self, subjects=None):
        """How an interval was made: ``percentile bootstrap over 9 test subjects (1000
        resamples, seed 0)``."""
        over = METHOD if subjects is None else METHOD.replace("test subjects", f"{subjects} test subjects")
        return f"{over} ({self.resamples} resamples, seed {self.seed})"


def check_settings(level=None, resamples=None, seed=None):
    """Return :class:`CISettings` of the given values (defaults for None), checked.

    Raises
    ------
    UsageError
        Naming the flag: a level outside (0, 1), fewer than :data:`MIN_RESAMPLES` resamples.
    """
    level = DEFAULT_LEVEL if level is None else level
    resamples = DEFAULT_RESAMPLES if resamples is None else resamples
    try:
        level = float(level)
    except (TypeError, ValueError):
        level = float("nan")
    if not 0.0 < level < 1.0:
        raise UsageError(f"--ci-level {level:g}: a fraction between 0 and 1 (0.95 for 95 % "
                         "intervals)" if math.isfinite(level) else "--ci-level: not a number")
    if int(resamples) != resamples or int(resamples) < MIN_RESAMPLES:
        raise UsageError(f"--ci-resamples {resamples}: at least {MIN_RESAMPLES} (an interval's "
                         "tails need them; 1000 is the default)")
    return CISettings(level, int(resamples), DEFAULT_SEED if seed is None else int(seed))


_CURRENT = [CISettings()]


def current_settings():
    """The settings runs written now use (:func:`using_settings`; default :class:`CISettings`)."""
    return _CURRENT[-1]


@contextmanager
def using_settings(settings):
    """Within the block, every run written (``write_run(predictions=...)``) uses ``settings``.

    The command line sets them once (``--ci-level``, ``--ci-resamples``), so that the run
    writers need not pass them through every layer.
    """
    _CURRENT.append(settings)
    try:
        yield settings
    finally:
        _CURRENT.pop()


def pools_folds(clf):
    """Whether a run of classifier ``clf`` scores its folds' frames at once (ensembles) rather
    than per fold and then averaged (every classifier run)."""
    return str(clf) == "vote"


# the per-subject tables of one run --------------------------------------------------------------
@dataclass
class SubjectTable:
    """A run's test frames reduced to sufficient statistics per subject (module docstring).

    Attributes
    ----------
    subjects : ndarray of str, shape (S,)
    aus : list of k str
    group : ndarray of int, shape (S,)
        The fold whose mean a subject's counts go to (all 0 when the run pools its folds).
    counts : ndarray, shape (S, k, 4)
        Confusion counts tp, fp, fn, tn of the labelled frames.
    pairs : ndarray, shape (k, S, S), or None
        Positive frames of subject s ranked above negative frames of subject t (ties count half),
        within a group only.
    failed : ndarray of bool, shape (G, k)
        A fold without a classifier for the AU (every score nan): its metrics are nan, as the run's.
    moments : ndarray, shape (S, k, 7), or None
        An intensity run's sums (n, t, p, t^2, p^2, t p, |t - p|) over frames of known intensity.
    frames : int
    """

    subjects: np.ndarray
    aus: list
    group: np.ndarray
    counts: np.ndarray
    pairs: object
    failed: np.ndarray
    moments: object
    frames: int
    #: :meth:`_defined`'s answers, per metric (derived once from the table itself)
    _defined_cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def metrics(self):
        """The metrics this run reports with an interval."""
        return OCCURRENCE_METRICS + (INTENSITY_METRICS if self.moments is not None else ())

    def values(self, weights, metrics=None, *, strict_mean=True):
        """Return ``{metric: (B, k + 1)}``: per AU and (last column) their mean, for each row of
        ``weights`` (B, S), how often each subject is drawn.

        The mean is over the AUs the run itself defines (its own nan-mean); a row in which one
        of them is undefined (a resample without a positive frame of a rare AU) has an undefined
        mean (``strict_mean``), rather than a mean over fewer AUs mixed into the distribution
        of means over all of them (which drew the interval toward the easy AUs).
        """
        w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
        metrics = self.metrics if metrics is None else metrics
        per_group = {m: [] for m in metrics}
        for g in range(self.failed.shape[0]):
            cols = np.flatnonzero(self.group == g)
            vals = _group_values(self, w[:, cols], cols, metrics)
            for m in metrics:
                per_group[m].append(np.where(self.failed[g], np.nan, vals[m]))
        out = {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-nan slices: nan, as the run's
            for m in metrics:
                per_au = np.nanmean(np.stack(per_group[m]), axis=0)
                mean = np.nanmean(per_au, axis=1, keepdims=True)
                if strict_mean:
                    lost = np.isnan(per_au[:, self._defined(m)]).any(axis=1, keepdims=True)
                    mean = np.where(lost, np.nan, mean)
                out[m] = np.concatenate([per_au, mean], axis=1)
        return out

    def _defined(self, metric):
        """(k,) bool: the AUs whose ``metric`` the run itself (every subject once) defines."""
        cache = self._defined_cache
        if metric not in cache:
            own = self.values(np.ones((1, len(self.subjects))), (metric,), strict_mean=False)
            cache[metric] = np.isfinite(own[metric][0, :-1])
        return cache[metric]

    def observed(self, metrics=None):
        """The run's own values (every subject once): ``{metric: (k + 1,)}``."""
        return {m: v[0] for m, v in self.values(np.ones((1, len(self.subjects))), metrics).items()}


def _div(num, den):
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def _group_values(table, w, cols, metrics):
    """The metrics of one fold's subjects ``cols`` under weights ``w`` (B, len(cols)): (B, k) each."""
    out = {}
    c = np.tensordot(w, table.counts[cols], axes=(1, 0))  # (B, k, 4)
    tp, fp, fn, tn = (c[..., i] for i in (_TP, _FP, _FN, _TN))
    pos, n = tp + fn, tp + fp + fn + tn
    out["f1"] = np.where(pos > 0, _div(2 * tp, 2 * tp + fp + fn), np.nan)
    out["accuracy"] = _div(tp + tn, n)
    out["precision"] = _div(tp, tp + fp)
    out["recall"] = _div(tp, pos)
    if "auc" in metrics:
        if table.pairs is None:
            out["auc"] = np.full(tp.shape, np.nan)
        else:
            pairs = table.pairs[:, cols][:, :, cols]  # (k, s, s)
            right = np.einsum("bs,kst,bt->bk", w, pairs, w, optimize=True)
            out["auc"] = np.where(pos * (fp + tn) > 0, _div(right, pos * (fp + tn)), np.nan)
    if table.moments is not None and any(m in metrics for m in INTENSITY_METRICS):
        out.update(_intensity_values(np.tensordot(w, table.moments[cols], axes=(1, 0))))
    return out


def _intensity_values(mom):
    """ICC(3,1), Pearson r and MAE from summed moments (B, k, 7) (conventions of
    :mod:`featbench.core.metrics`: ICC(3,1) of two raters = 2 cov / (var t + var p))."""
    n = mom[..., _N]
    with np.errstate(invalid="ignore", divide="ignore"):
        safe = np.where(n > 0, n, 1)
        ctt = mom[..., _STT] - mom[..., _ST] ** 2 / safe
        cpp = mom[..., _SPP] - mom[..., _SP] ** 2 / safe
        ctp = mom[..., _STP] - mom[..., _ST] * mom[..., _SP] / safe
    # a constant series has a centred sum of squares of rounding size, not exactly 0
    tol_t = 1e-9 * np.maximum(mom[..., _STT], 1.0)
    tol_p = 1e-9 * np.maximum(mom[..., _SPP], 1.0)
    some = n >= 2
    icc = np.where(some & (ctt + cpp > tol_t + tol_p), _div(2 * ctp, ctt + cpp), np.nan)
    r = np.where(some & (ctt > tol_t) & (cpp > tol_p),
                 np.clip(_div(ctp, np.sqrt(np.clip(ctt * cpp, 0, None))), -1, 1), np.nan)
    return {"icc": icc, "pearson": r, "mae": _div(mom[..., _SAD], n)}


def subject_table(pred, *, pooled=False, rows=None, aus=None, auc=True):
    """Return the :class:`SubjectTable` of a run's predictions (a dict of :func:`classify.
    ensemble.read_predictions`' arrays: ``frames``, ``labels``, ``scores``, ``decisions``,
    ``fold``, ``aus``; ``intensities`` for an intensity run).

    Parameters
    ----------
    pooled : bool
        The run scores all folds' frames at once (:func:`pools_folds`).
    rows : array of int, optional
        Only these frames (two runs' common frames, in one order).
    aus : list of str, optional
        Only these AUs, in this order.
    auc : bool
        Build the ROC-AUC pair table (a comparison of two runs does not need it).
    """
    rows = np.arange(len(pred["frames"])) if rows is None else np.asarray(rows)
    cols = [pred["aus"].index(a) for a in (aus or pred["aus"])]
    subj = np.asarray(pred["frames"]["subject"][rows]).astype(str)
    subjects, sid = np.unique(subj, return_inverse=True)
    labels = np.asarray(pred["labels"])[rows][:, cols]
    decisions = np.asarray(pred["decisions"])[rows][:, cols] == 1
    scores = np.asarray(pred["scores"], dtype=np.float64)[rows][:, cols]
    fold = np.asarray(pred.get("fold", np.zeros(len(pred["frames"]))))[rows].astype(np.int64)
    group = _subject_groups(sid, fold, len(subjects), pooled)
    failed, scores = _failed_cells(scores, labels, group[sid])
    counts = _counts(labels, decisions, sid, len(subjects))
    moments = None
    if "intensities" in pred:
        moments = _moments(np.asarray(pred["intensities"])[rows][:, cols], scores, sid, len(subjects))
    return SubjectTable(subjects=subjects, aus=[pred["aus"][c] for c in cols], group=group,
                        counts=counts, pairs=_auc_pairs(labels, scores, sid, group) if auc else None,
                        failed=failed, moments=moments, frames=int(len(rows)))


def _subject_groups(sid, fold, n_subjects, pooled):
    """The fold of each subject (renumbered 0..G-1); one group when pooled or a subject straddles
    folds (then no per-fold mean can be taken subject-wise)."""
    if pooled or fold.size == 0:
        return np.zeros(n_subjects, dtype=np.int64)
    first = np.zeros(n_subjects, dtype=np.int64)
    first[sid] = fold
    if np.any(first[sid] != fold):
        return np.zeros(n_subjects, dtype=np.int64)
    return np.unique(first, return_inverse=True)[1].astype(np.int64)


def _failed_cells(scores, labels, frame_group):
    """(G, k) cells where every score is nan (no classifier); other nan scores rank lowest, as an
    ensemble ranks frames no member voted on (:mod:`classify.ensemble`)."""
    n_groups = int(frame_group.max()) + 1 if frame_group.size else 1
    failed = np.zeros((n_groups, scores.shape[1]), dtype=bool)
    scores = scores.copy()
    for g in range(n_groups):
        in_g = frame_group == g
        for a in range(scores.shape[1]):
            s = scores[in_g, a]
            bad = np.isnan(s)
            if bad.all():
                failed[g, a] = True
            elif bad.any():
                s[bad] = np.nanmin(s) - 1
                scores[in_g, a] = s
    return failed, scores


def _per_subject(parts, sid, n_subjects):
    """(S, k, len(parts)): each (n, k) part summed over each subject's frames."""
    k = parts[0].shape[1]
    out = np.zeros((n_subjects, k, len(parts)))
    for i, part in enumerate(parts):
        for a in range(k):
            out[:, a, i] = np.bincount(sid, weights=part[:, a], minlength=n_subjects)
    return out


def _counts(labels, decisions, sid, n_subjects):
    """(S, k, 4) confusion counts of the labelled frames per subject."""
    t, known = labels == 1, labels >= 0
    cells = (t & decisions, ~t & decisions & known, t & ~decisions, ~t & ~decisions & known)
    return _per_subject([c.astype(np.float64) for c in cells], sid, n_subjects)


def _moments(intensities, scores, sid, n_subjects):
    """(S, k, 7) sums of the frames of known intensity and finite prediction per subject."""
    t = intensities.astype(np.float64)
    keep = (intensities >= 0) & np.isfinite(scores)
    t, p = np.where(keep, t, 0.0), np.where(keep, scores, 0.0)
    parts = (keep.astype(np.float64), t, p, t * t, p * p, t * p, np.abs(t - p) * keep)
    return _per_subject(parts, sid, n_subjects)


def _auc_pairs(labels, scores, sid, group):
    """(k, S, S): positive frames of subject s scored above negative frames of subject t (ties
    half), for s and t of one group (ROC-AUC = that sum / (positives x negatives))."""
    n_subjects, k = len(group), labels.shape[1]
    out = np.zeros((k, n_subjects, n_subjects))
    for a in range(k):
        pos = labels[:, a] == 1
        for t in range(n_subjects):
            neg = np.sort(scores[(sid == t) & (labels[:, a] == 0), a])
            if not neg.size:
                continue
            same = group[sid] == group[t]
            ps, owner = scores[pos & same, a], sid[pos & same]
            below = np.searchsorted(neg, ps, "left")
            ties = np.searchsorted(neg, ps, "right") - below
            out[a, :, t] = np.bincount(owner, weights=below + 0.5 * ties, minlength=n_subjects)
    return out


# intervals -----------------------------------------------------------------------------------
def _strata(groups):
    """Subject index arrays of each stratum (subjects sharing every group label), and the
    subjects alone in theirs (always drawn once: resampling one subject gives itself)."""
    keys = np.stack([np.asarray(g) for g in groups], axis=1)
    _, inv = np.unique(keys, axis=0, return_inverse=True)
    inv = np.asarray(inv).ravel()
    parts = [np.flatnonzero(inv == i) for i in range(inv.max() + 1)]
    return [p for p in parts if p.size > 1], np.concatenate(
        [p for p in parts if p.size == 1] or [np.zeros(0, dtype=np.int64)])


def _weights(samples, fixed, n_subjects):
    """(B, S) draw counts from scipy's resampled subject indices (each (B, n_stratum))."""
    idx = np.concatenate([np.atleast_2d(s) for s in samples], axis=1).astype(np.int64)
    b = idx.shape[0]
    flat = (np.arange(b)[:, None] * n_subjects + idx).ravel()
    w = np.bincount(flat, minlength=b * n_subjects).reshape(b, n_subjects).astype(np.float64)
    w[:, fixed] += 1
    return w


def bootstrap_distribution(statistic, groups, n_subjects, settings):
    """Return the (m, B) bootstrap distribution of ``statistic(weights (B, S)) -> (B, m)``.

    Subjects are drawn with replacement within each stratum (the subjects sharing every label
    of ``groups``, a list of (S,) arrays: each run's folds), by :func:`scipy.stats.bootstrap`
    (vectorised, seeded by ``settings.seed``). None when no stratum has two subjects.
    """
    from scipy.stats import bootstrap

    strata, fixed = _strata(groups)
    if not strata:
        return None

    def stat(*samples, axis=-1):
        return np.moveaxis(statistic(_weights(samples, fixed, n_subjects)), -1, 0)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy's own percentile of nan resamples: taken below
        res = bootstrap(tuple(strata), stat, n_resamples=settings.resamples, vectorized=True,
                        method="percentile", confidence_level=settings.level, batch=BATCH,
                        rng=np.random.default_rng(settings.seed))
    return np.asarray(res.bootstrap_distribution)


def percentile_interval(dist, level):
    """``(lo, hi)`` of each row of ``dist`` (m, B): its percentiles over the defined resamples;
    nan where fewer than half of them are defined."""
    alpha = (1 - level) / 2
    defined = np.isfinite(dist)
    enough = defined.mean(axis=-1) >= 0.5
    q = np.quantile(np.where(defined, dist, 0), [alpha, 1 - alpha], axis=-1)
    partly = np.flatnonzero(enough & ~defined.all(axis=-1))
    if partly.size:  # nanquantile is slow: only the rows with undefined resamples take it
        q[:, partly] = np.nanquantile(np.where(defined[partly], dist[partly], np.nan),
                                      [alpha, 1 - alpha], axis=-1)
    return np.where(enough, q[0], np.nan), np.where(enough, q[1], np.nan)


def run_intervals(table, settings=None):
    """Return ``{metric: (value, lo, hi)}`` of a run, each of shape (k + 1,) (AUs, then their mean).

    ``value`` is the run's own (every subject once); ``lo``/``hi`` the percentile interval of the
    subject-level bootstrap (module docstring).
    """
    settings = settings or current_settings()
    metrics = table.metrics
    obs = table.observed()
    k1 = len(table.aus) + 1

    def stat(w):
        vals = table.values(w, metrics)
        return np.concatenate([vals[m] for m in metrics], axis=1)

    dist = bootstrap_distribution(stat, [table.group], len(table.subjects), settings)
    if dist is None:
        lo = hi = np.full(len(metrics) * k1, np.nan)
    else:
        lo, hi = percentile_interval(dist, settings.level)
    return {m: (obs[m], lo[i * k1:(i + 1) * k1], hi[i * k1:(i + 1) * k1])
            for i, m in enumerate(metrics)}


# paired comparison ---------------------------------------------------------------------------
def _frame_index(pred):
    """The frame keys of a predictions dict as one comparable string array (subject, video,
    frame); kept in the dict (``"frame_index"``) for its next comparison."""
    if "frame_index" not in pred:
        pred["frame_index"] = _keys_text(pred["frames"])
    return pred["frame_index"]


def _keys_text(frames):
    return np.char.add(np.char.add(np.asarray(frames["subject"]).astype(str), "\x1f"),
                       np.char.add(np.asarray(frames["video"]).astype(str),
                                   "\x1f" + np.char.zfill(np.asarray(frames["frame"]).astype(str), 9)))


def paired_tables(pred_a, pred_b, *, pooled_a=False, pooled_b=False, names=("A", "B")):
    """Return the two runs' :class:`SubjectTable` on the frames and AUs both scored, and notes.

    AUs a run has no classifier for in some fold are left out (said in the notes).

    Raises
    ------
    StoreError
        No common frame or AU, or other labels on the same frames (naming both runs).
    """
    ka, kb = _frame_index(pred_a), _frame_index(pred_b)
    common, ia, ib = np.intersect1d(ka, kb, assume_unique=True, return_indices=True)
    if not common.size:
        raise StoreError(f"{names[0]} and {names[1]} share no test frame (other data sets or "
                         "protocols?)")
    aus = [a for a in pred_a["aus"] if a in pred_b["aus"]]
    if not aus:
        raise StoreError(f"{names[0]} and {names[1]} share no AU")
    la = np.asarray(pred_a["labels"])[ia][:, [pred_a["aus"].index(a) for a in aus]]
    lb = np.asarray(pred_b["labels"])[ib][:, [pred_b["aus"].index(a) for a in aus]]
    if not np.array_equal(la, lb):
        raise StoreError(f"{names[0]} and {names[1]} have other labels on the same frames "
                         "(another --threshold or data set?)")
    ta = subject_table(pred_a, pooled=pooled_a, rows=ia, aus=aus, auc=False)
    tb = subject_table(pred_b, pooled=pooled_b, rows=ib, aus=aus, auc=False)
    ok = ~(ta.failed.any(axis=0) | tb.failed.any(axis=0))
    notes = []
    if not ok.all():
        notes.append("left out, a run has no classifier for them: "
                     + ", ".join(a for a, good in zip(aus, ok) if not good))
        keep = [a for a, good in zip(aus, ok) if good]
        ta = subject_table(pred_a, pooled=pooled_a, rows=ia, aus=keep, auc=False)
        tb = subject_table(pred_b, pooled=pooled_b, rows=ib, aus=keep, auc=False)
    dropped = max(len(ka), len(kb)) - common.size
    if dropped:
        notes.append(f"{dropped} frames scored by only one run left out")
    return ta, tb, notes


def _stacked(a, b, group):
    """Both runs' subjects in one table of 2S "subjects" (A's, then B's), grouped by ``group``
    (the grouping of the run whose statistic the slot computes)."""
    return SubjectTable(subjects=np.concatenate([a.subjects, b.subjects]), aus=a.aus,
                        group=np.concatenate([group, group]),
                        counts=np.concatenate([a.counts, b.counts]), pairs=None,
                        failed=np.zeros((int(group.max()) + 1, len(a.aus)), dtype=bool),
                        moments=None if a.moments is None or b.moments is None
                        else np.concatenate([a.moments, b.moments]), frames=a.frames + b.frames)


def permutation_pvalues(a, b, metric, settings):
    """Two-sided p-values (k + 1,) of the paired permutation test of ``metric``(A) - ``metric``(B)
    (module docstring); exact when 2^S <= ``settings.resamples``."""
    from scipy.stats import permutation_test

    n = len(a.subjects)
    if n < 2:  # one subject: nothing to swap, no test
        return np.full(len(a.aus) + 1, np.nan), False
    slot_a, slot_b = _stacked(a, b, a.group), _stacked(a, b, b.group)

    none = np.zeros(0, np.int64)

    def diff(x, y, axis=-1):  # x, y: (S,) or (batch, S) indices into the 2S stacked subjects
        wa, wb = _weights([x], none, 2 * n), _weights([y], none, 2 * n)
        out = slot_a.values(wa, (metric,))[metric] - slot_b.values(wb, (metric,))[metric]
        out = np.round(out, 12)  # sums in another order differ by rounding, not by the runs
        return out if np.ndim(x) > 1 else out[0]  # (batch, k + 1): scipy's null layout

    idx = np.arange(n)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = permutation_test((idx, idx + n), diff, permutation_type="samples", vectorized=True,
                               n_resamples=settings.resamples, alternative="two-sided",
                               batch=BATCH, rng=np.random.default_rng(settings.seed))
    p = np.asarray(res.pvalue, dtype=float)
    obs = np.asarray(res.statistic, dtype=float)
    return np.where(np.isfinite(obs), p, np.nan), bool(2 ** n <= settings.resamples)


def compare_tables(a, b, *, metric="f1", settings=None):
    """Compare two runs' :class:`SubjectTable` (same subjects and AUs, :func:`paired_tables`).

    Returns
    -------
    dict
        ``metric``, ``aus``; ``a``, ``b``, ``diff`` (A - B), ``lo``, ``hi`` (paired bootstrap
        interval of the difference), ``p`` (paired permutation test), each of shape (k + 1,):
        per AU then the mean over AUs; ``subjects``, ``frames``, ``exact`` (every swap
        enumerated), ``interval``, ``test`` (what was done, in words).
    """
    settings = settings or current_settings()
    va, vb = a.observed((metric,))[metric], b.observed((metric,))[metric]

    def stat(w):
        return a.values(w, (metric,))[metric] - b.values(w, (metric,))[metric]

    dist = bootstrap_distribution(stat, [a.group, b.group], len(a.subjects), settings)
    lo, hi = (np.full(va.shape, np.nan),) * 2 if dist is None else percentile_interval(dist, settings.level)
    p, exact = permutation_pvalues(a, b, metric, settings)
    n = len(a.subjects)
    how = (f"exact, all {2 ** n} swaps" if exact else f"{settings.resamples} random swaps"
           if n > 1 else "not possible with one subject")
    test = f"{TEST} ({how})"
    return {"metric": metric, "aus": list(a.aus), "a": va, "b": vb, "diff": va - vb, "lo": lo,
            "hi": hi, "p": p, "subjects": n, "frames": a.frames, "exact": exact,
            "interval": f"{settings.level * 100:g}% paired {METHOD} ({settings.resamples} "
                        f"resamples, seed {settings.seed})", "test": test}


# many comparisons and verdicts ---------------------------------------------------------------
def holm(pvalues):
    """Holm's step-down adjusted p-values (nan stays nan and does not count as a comparison)."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = ok.size
    if not m:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    adj = np.maximum.accumulate((m - np.arange(m)) * p[order])
    out[order] = np.minimum(adj, 1.0)
    return out


def benjamini_hochberg(pvalues):
    """Benjamini-Hochberg adjusted p-values (:func:`scipy.stats.false_discovery_control`)."""
    from scipy.stats import false_discovery_control

    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    if ok.any():
        out[ok] = false_discovery_control(p[ok], method="bh")
    return out


VERDICTS = ("holds", "reversed", "not decided")


def verdict(diff, p_adjusted, alpha):
    """*holds* (significant, diff > 0: the claimed direction), *reversed* (significant, diff < 0)
    or *not decided* (at this sample size)."""
    if not (math.isfinite(p_adjusted) and math.isfinite(diff)) or p_adjusted >= alpha or diff == 0:
        return "not decided"
    return "holds" if diff > 0 else "reversed"


# what "learnt nothing" scores -----------------------------------------------------------------
def all_positive_f1(p):
    """F1 of saying *present* on every frame at positive share ``p``: 2p / (1 + p)."""
    p = np.asarray(p, dtype=float)
    return np.where(p > 0, 2 * p / (1 + p), np.nan)


def chance_f1(p):
    """Expected F1 of a predictor that says *present* at random at the AU's base rate ``p``
    (independently of the frame): expected counts tp = n p^2, fp = fn = n p (1 - p), so
    F1 = 2p^2 / (2p^2 + 2p(1 - p)) = p."""
    p = np.asarray(p, dtype=float)
    return np.where(p > 0, p, np.nan)


# repeated splits -----------------------------------------------------------------------------
def rank_stability(scores):
    """How a ranking of runs moves over repeated splits.

    Parameters
    ----------
    scores : array of shape (R runs, N repeats)
        A metric (higher is better) of each run in each repeat; nan = missing.

    Returns
    -------
    dict
        ``mean``, ``sd`` (over repeats, ddof 1), ``first`` (share of repeats in which the run
        ranks first), ``mean_rank`` (1 = best) per run; ``spearman`` and ``kendall``: the mean
        (and ``*_min``) over pairs of repeats of the rank correlation of the runs' scores.
    """
    from scipy.stats import kendalltau, rankdata, spearmanr

    s = np.asarray(scores, dtype=float)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mean, sd = np.nanmean(s, axis=1), np.nanstd(s, axis=1, ddof=1)
        ranks = np.stack([rankdata(-np.nan_to_num(c, nan=-np.inf)) for c in s.T], axis=1)
        best = np.nanmax(s, axis=0)
    first = np.mean(s == best[None, :], axis=1)
    rho, tau = [], []
    for i in range(s.shape[1]):
        for j in range(i + 1, s.shape[1]):
            both = np.isfinite(s[:, i]) & np.isfinite(s[:, j])
            if both.sum() > 2:
                rho.append(spearmanr(s[both, i], s[both, j]).statistic)
                tau.append(kendalltau(s[both, i], s[both, j]).statistic)
    nan = float("nan")
    return {"mean": mean, "sd": sd, "first": first, "mean_rank": ranks.mean(axis=1),
            "spearman": float(np.mean(rho)) if rho else nan,
            "spearman_min": float(np.min(rho)) if rho else nan,
            "kendall": float(np.mean(tau)) if tau else nan,
            "kendall_min": float(np.min(tau)) if tau else nan, "pairs": len(rho)}
