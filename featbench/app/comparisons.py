"""Paired comparisons of a workspace's runs: what ``featbench compare``, the report's claims and
its ranking ask of :mod:`featbench.core.stats`, with the predictions files read once.

Two runs are compared on the test frames both scored (matched by frame key) and the AUs both
have; the metric is F1 (two intensity runs: ICC(3,1)). See :mod:`featbench.core.stats` for the
interval, the test and the correction.
"""

import numpy as np

from featbench.core import stats
from featbench.core.errors import FeatbenchError, MissingRunError, StoreError, did_you_mean
from featbench.core.results import read_predictions, read_summary_rows


class Comparer:
    """Compares runs of one data set; reads each predictions file once.

    Parameters
    ----------
    workspace : Workspace
    dataset : str
    settings : CISettings, optional
        Default :func:`featbench.core.stats.current_settings`.
    """

    def __init__(self, workspace, dataset, settings=None):
        self.workspace, self.dataset = workspace, dataset
        self.settings = settings or stats.current_settings()
        path = workspace.summary_csv(dataset)
        rows = read_summary_rows(path) if path.exists() else []
        self.rows = {r["run"]: r for r in rows}
        self._preds = {}
        #: ``{(a, b): why}``: pairs :meth:`compare_many` could not compare (no common AU or frame,
        #: other labels): said beside the table, never the end of the whole report
        self.refused = {}
        self._compared = {}  # (a, b, metric) -> the comparison: a report asks for some twice

    def has(self, run):
        """Whether ``run``'s predictions file exists (a run without one cannot be compared)."""
        return self.workspace.predictions_path(self.dataset, run).exists()

    def check(self, run):
        """Raise :class:`MissingRunError` (one line, the runs there are) unless ``run`` can be
        compared."""
        if self.has(run):
            return
        known = sorted(r for r in self.rows if self.has(r))
        where = self.workspace.predictions_path(self.dataset, run)
        if not known:
            raise MissingRunError(f"{where}: no predictions file for run {run!r}, and no run of "
                                  f"{self.dataset} has one yet (make one with featbench classify)")
        raise MissingRunError(did_you_mean(
            run, known, what="run", hint=f"no {where.name} in {where.parent}; "
            f"{self.workspace.summary_csv(self.dataset)} lists the {len(known)} runs there are"))

    def predictions(self, run):
        if run not in self._preds:
            self._preds[run] = read_predictions(self.workspace.predictions_path(self.dataset, run))
        return self._preds[run]

    def clf(self, run):
        row = self.rows.get(run) or {}
        return row.get("clf") or str(self.predictions(run).get("clf", ""))

    def task(self, run):
        return str(self.predictions(run).get("task") or "occurrence")

    def headline(self, run):
        """The metric two runs of ``run``'s task are compared by: the task's headline (the
        first of its ``METRICS``: ICC for intensity) when the statistics resample it, else the
        F1 of the decisions (every task decides)."""
        from classify.task import get_task

        try:
            first = get_task(self.task(run)).METRICS[0]
        except (FeatbenchError, IndexError):  # a task this featbench does not know
            return "f1"
        return first if first in stats.OCCURRENCE_METRICS + stats.INTENSITY_METRICS else "f1"

    def compare(self, a, b, *, metric=None):
        """Return :func:`featbench.core.stats.compare_tables`' dict for runs ``a`` and ``b``, with
        ``run_a``, ``run_b``, ``notes`` and ``p_holm`` (the per-AU p-values Holm-adjusted over
        the AUs; the mean's own p stays as it is)."""
        self.check(a)
        self.check(b)
        if metric is None:
            metric = self.headline(a) if self.task(a) == self.task(b) else "f1"
        if (a, b, metric) not in self._compared:
            self._compared[a, b, metric] = self._compare(a, b, metric)
        return dict(self._compared[a, b, metric])  # each table adds its own p_adj to its copy

    def _compare(self, a, b, metric):
        ta, tb, notes = stats.paired_tables(
            self.predictions(a), self.predictions(b), pooled_a=stats.pools_folds(self.clf(a)),
            pooled_b=stats.pools_folds(self.clf(b)), names=(a, b))
        if self.task(a) != self.task(b):
            notes.append("an intensity run against an occurrence run: compared by the F1 of "
                         "their decisions (intensity rounded >= 2)")
        out = stats.compare_tables(ta, tb, metric=metric, settings=self.settings)
        out["p_holm"] = np.append(stats.holm(out["p"][:-1]), np.nan)
        out.update(run_a=a, run_b=b, notes=notes)
        return out

    def compare_many(self, pairs, *, metric=None):
        """Compare each ``(a, b)`` of ``pairs`` (None where a run has no predictions file) and
        Holm-adjust the mean's p-values over the pairs compared: ``p_adj`` in each dict."""
        found = [self._compare_or_none(a, b, metric) if self.has(a) and self.has(b) else None
                 for a, b in pairs]
        adjusted = stats.holm([c["p"][-1] if c else np.nan for c in found])
        for c, p in zip(found, adjusted):
            if c is not None:
                c["p_adj"] = float(p)
        return found


    def _compare_or_none(self, a, b, metric):
        """:meth:`compare`, or None (the reason kept in :attr:`refused`) for a pair the test
        cannot pair: a run on other AUs (``--aus``) or other labels (``--threshold``) beside the
        others is not compared, and the rest of the table still is."""
        try:
            return self.compare(a, b, metric=metric)
        except StoreError as e:
            self.refused[(a, b)] = str(e)
            return None


def refused_lines(comparer, pairs=None):
    """Report lines naming the pairs ``comparer`` could not compare (of ``pairs``; None: all)."""
    found = [(ab, why) for ab, why in comparer.refused.items() if pairs is None or ab in pairs]
    if not found:
        return []
    return ["Not compared (the paired test needs the same AUs and labels on common frames): "
            + "; ".join(why for _, why in found) + ".", ""]


def ties_with_top(comparer, runs, *, metric=None):
    """``{run: comparison with the top run}`` for ``runs`` (best first) that have predictions;
    a run is *tied* with the top when the Holm-adjusted p of that comparison is >= alpha."""
    if not runs or not comparer.has(runs[0]):
        return {}
    others = [r for r in runs[1:] if comparer.has(r)]
    found = comparer.compare_many([(runs[0], r) for r in others], metric=metric)
    return {r: c for r, c in zip(others, found) if c is not None}


def is_tied(comparison, alpha):
    """Whether a comparison with the top run leaves the two runs indistinguishable."""
    return comparison is not None and not comparison.get("p_adj", 1.0) < alpha
