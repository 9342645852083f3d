"""The intensity part of the report: intensity runs by mean ICC, per-AU ICC, predicted vs true.

Intensity runs (``task`` = ``intensity`` in ``summary.csv``) are kept out of the occurrence
tables (their ``mean_f1`` is the F1 of rounded intensity >= 2, shown here beside their ICC so the
two tasks can be compared) and get their own section: a table ranked by mean ICC(3,1) with
Pearson r, MAE and that F1; the per-AU ICC; and a chart of predicted against true intensity on
the test frames of the best run with and without person calibration (from their predictions
files). Each mean and per-AU ICC carries its interval (the subject-level bootstrap stored with
the run, :mod:`featbench.core.stats`), and the ranking marks the runs a paired test of ICC
cannot tell apart from the top run.
"""

import numpy as np

from featbench.core.results import read_au_intervals, read_predictions

from featbench.app.cells import ci, md_table, mean_ci

#: the predicted-vs-true chart, beside report.md
CHART_INTENSITY = "report_intensity.png"


def is_intensity(summary):
    """Return a bool Series: the rows of intensity runs (rows without a ``task`` are occurrence)."""
    if "task" not in summary:
        return summary["run"].astype(str) != summary["run"].astype(str)
    from classify.task import TASKS  # the run's task says what it reports (ICC, r, MAE)

    def reports_intensity(name):
        return name in TASKS and "icc" in TASKS.get(name).COLUMNS

    return summary["task"].fillna("").astype(str).map(reports_intensity).astype(bool)


def _ci(r, key, digits=3, spans=None):
    """``0.671 [0.602, 0.733]``: a value with its interval (``spans``: lo, hi), else alone."""
    lo, hi = spans if spans is not None else (r.get(f"{key}_lo"), r.get(f"{key}_hi"))
    return ci(r.get(key), lo, hi, scale=1, digits=digits)


def _ties(comparer, runs):
    """``{run: "≈ top" | "below"}`` against the top run by ICC (empty without a comparer)."""
    if comparer is None or not len(runs):
        return {}
    from featbench.app.comparisons import is_tied, ties_with_top

    found = ties_with_top(comparer, list(runs["run"]), metric="icc")
    return {run: "≈ top" if is_tied(c, comparer.settings.alpha) else "below"
            for run, c in found.items()}


def _icc_spans(workspace, dataset, runs):
    """``{run: {AU: (lo, hi)}}`` of per-AU ICC from the runs' CSVs."""
    return {run: read_au_intervals(workspace, dataset, run, metric="icc") for run in runs["run"]}


def _calibration(r):
    c = str(r.get("calibrate", "") or "")
    return "none" if c in ("", "nan") else c


def chart_runs(runs):
    """Return the runs the chart shows: the best (by mean ICC) without and with calibration."""
    picked = []
    for calibrated in (False, True):
        sel = runs[[(_calibration(r) != "none") == calibrated for _, r in runs.iterrows()]]
        sel = sel[sel["mean_icc"].notna()]
        if len(sel):
            picked.append(sel.iloc[0]["run"])
    return picked


def plot_predicted_vs_true(preds, path):
    """Box plots of predicted intensity per true intensity 0-5, pooled over AUs, one panel per run.

    Parameters
    ----------
    preds : list of (run name, predictions dict with ``scores`` and ``intensities``)
    path : Path
        The PNG to write.
    """
    from matplotlib.figure import Figure  # no pyplot: the caller's backend is left alone

    fig = Figure(figsize=(5.2 * len(preds), 4.4))
    axes = fig.subplots(1, len(preds), squeeze=False)[0]
    for ax, (run, p) in zip(axes, preds):
        t, s = np.asarray(p["intensities"]).ravel(), np.asarray(p["scores"], dtype=float).ravel()
        keep = (t >= 0) & np.isfinite(s)
        levels = [lv for lv in range(6) if np.any(t[keep] == lv)]
        ax.boxplot([s[keep][t[keep] == lv] for lv in levels], positions=levels, widths=0.6,
                   showfliers=False)
        ax.plot([0, 5], [0, 5], "k--", lw=1, label="predicted = true")
        for lv in levels:
            ax.text(lv, 5.15, f"n={int(np.sum(t[keep] == lv))}", ha="center", fontsize=7)
        ax.set_xlim(-0.6, 5.6)
        ax.set_ylim(-0.2, 5.4)
        ax.set_xlabel("true intensity (test frames, all AUs)")
        ax.set_ylabel("predicted intensity")
        ax.set_title(run, fontsize=8)
        ax.legend(loc="lower right", fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def intensity_lines(workspace, dataset, runs, describe_weights, *, comparer=None):
    """Return the report's intensity section (and draw its chart); none when there is no such run.

    Parameters
    ----------
    runs : DataFrame
        The succeeded intensity rows of ``summary.csv``.
    describe_weights : callable
        The report's description of a weights column.
    comparer : featbench.app.comparisons.Comparer, optional
        Marks the runs that cannot be told apart from the top run by ICC.
    """
    if not len(runs):
        return []
    runs = runs.sort_values("mean_icc", ascending=False, na_position="last", kind="stable")
    aus = sorted(c[4:] for c in runs.columns if c.startswith("icc_AU"))
    ties, spans = _ties(comparer, runs), _icc_spans(workspace, dataset, runs)
    top = runs["run"].iloc[0]
    lines = ["## Intensity runs by mean ICC(3,1)", "",
             "ICC(3,1), Pearson r and MAE of the predicted 0-5 intensity on the test frames, "
             "averaged over AUs, each with its interval; F1 of rounded predicted intensity >= 2 "
             "against the occurrence labels (comparable with the occurrence runs' F1, in %). "
             "*vs top*: a paired test of mean ICC against the top run (Holm-adjusted).", "",
             md_table(["#", "run", "model", "clf", "calibration", "weights", "mean ICC", "vs top",
                     "mean r", "mean MAE", "F1 (>= 2)"],
                    [[i + 1, f"`{r['run']}`", r["model"], r["clf"], _calibration(r),
                      describe_weights(r.get("weights")), _ci(r, "mean_icc"),
                      "top" if r["run"] == top else ties.get(r["run"], "—"),
                      _ci(r, "mean_pearson"), _ci(r, "mean_mae"), mean_ci(r, "f1")]
                     for i, (_, r) in enumerate(runs.iterrows())]), "",
             "### Per-AU ICC(3,1) [interval]", "",
             md_table(["run"] + aus + ["mean"],
                    [[f"`{r['run']}`"] + [_ci(r, f"icc_{a}", 2, spans.get(r["run"], {}).get(a))
                                          for a in aus]
                     + [_ci(r, "mean_icc", 2)] for _, r in runs.iterrows()]), ""]
    shown = []
    for run in chart_runs(runs):
        path = workspace.predictions_path(dataset, run)
        if path.exists():
            p = read_predictions(path)
            if "intensities" in p:
                shown.append((run, p))
    if shown:
        plot_predicted_vs_true(shown, workspace.results_dir(dataset) / CHART_INTENSITY)
        lines += [f"![predicted vs true intensity]({CHART_INTENSITY})", "",
                  "(test frames of " + " and ".join(f"`{r}`" for r, _ in shown) + "; boxes: "
                  "quartiles of the predictions at each true intensity, whiskers 1.5 IQR)", ""]
    return lines
