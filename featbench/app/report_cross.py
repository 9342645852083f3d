"""The cross-data-set part of the report of a joined data set ``X+Y``
(:mod:`featbench.core.datasets.joined`): "trained on X, tested on Y" beside "trained on Y,
tested on Y" for the same settings.

A ``cross`` run and its ``within`` twin differ only in the protocol (their run names differ
only in that tag: ``hog__full__svm__cross`` / ``hog__full__svm__within``) and score the same
test frames of Y, so the difference of their F1 is what the change of data set costs. Where
``summary.csv`` carries the statistics' intervals (``mean_f1_lo`` / ``mean_f1_hi``), they are
shown beside each F1.
"""

import numpy as np

from featbench.app.cells import mean_ci, md_table, num as pct

#: the protocol tags of the two sides
CROSS, WITHIN = "cross", "within"


def twin_name(run):
    """The ``within`` run of the ``cross`` run named ``run`` (its tag's ``cross`` swapped)."""
    head, sep, tag = str(run).rpartition("__")
    if not sep:
        return None
    parts = tag.split("-")
    if CROSS not in parts:
        return None
    return f"{head}__{'-'.join(WITHIN if p == CROSS else p for p in parts)}"


def cross_pairs(ok):
    """Return ``[(cross row, within row or None)]`` of the runs in ``ok`` (summary rows)."""
    if not len(ok) or "protocol" not in ok:
        return []
    by_name = {str(r["run"]): r for _, r in ok.iterrows()}
    return [(r, by_name.get(twin_name(r["run"])))
            for _, r in ok.iterrows() if str(r.get("protocol")) == CROSS]


def _drops(pairs, comparer):
    """Per pair, the paired comparison cross - within over Y's test subjects (None where a
    side has no predictions file or no twin), Holm-adjusted over the table's pairs."""
    twins = [i for i, (_, w) in enumerate(pairs) if w is not None]
    out = [None] * len(pairs)
    if comparer is None or not twins:
        return out
    found = comparer.compare_many([(str(pairs[i][0]["run"]), str(pairs[i][1]["run"]))
                                   for i in twins], metric="f1")
    for i, f in zip(twins, found):
        out[i] = f
    return out


def _drop_cells(cross, within, found, pct, alpha):
    """The table's drop, its interval and the test's verdict for one pair."""
    from featbench.core.stats import verdict

    if within is None:
        return ["", "", ""]
    if found is None:  # no predictions to pair: the difference of the two point estimates
        return [pct(float(cross["mean_f1"]) - float(within["mean_f1"])), "—", "not tested"]
    diff, lo, hi = found["diff"][-1], found["lo"][-1], found["hi"][-1]
    # the claim tested: training on the other set costs F1 (within - cross > 0)
    said = verdict(-diff, found.get("p_adj", float("nan")), alpha)
    word = {"holds": "drop", "reversed": "gain"}.get(said, "not decided")
    where = ""
    if abs(diff - (float(cross["mean_f1"]) - float(within["mean_f1"]))) > 5e-4:
        # a run without a classifier for some AU: the paired mean is over the AUs both score,
        # so it is not the difference of the two columns beside it; say so
        both = int(np.isfinite(np.asarray(found["diff"][:-1], dtype=float)).sum())
        where = f" (over the {both} AUs both score)"
    return [f"{pct(diff)} [{pct(lo)}, {pct(hi)}]{where}",
            f"{found.get('p_adj', float('nan')):.3f}", word]


def cross_lines(dataset, ok, comparer=None):
    """Return the report's cross-data-set lines ([] unless ``dataset`` is joined and has
    ``cross`` runs): mean F1 within and across, the drop with its paired interval and test
    (``comparer``: :class:`featbench.app.comparisons.Comparer`; both runs score the same test
    frames, so the drop is paired over Y's test subjects), then per AU."""
    from featbench.core.datasets.joined import split_name

    parts = split_name(dataset)
    pairs = cross_pairs(ok) if parts else []
    if not pairs:
        return []
    xn, yn = parts
    aus = sorted(c[3:] for c in ok.columns if c.startswith("f1_AU"))
    rows, per_au = [], []
    alpha = 0.05 if comparer is None else comparer.settings.alpha
    for (cross, within), found in zip(pairs, _drops(pairs, comparer)):
        rows.append([f"`{cross['model']}`", cross["region"], cross["clf"],
                     "— (run it with --protocol within)" if within is None else mean_ci(within, "f1"),
                     mean_ci(cross, "f1"), *_drop_cells(cross, within, found, pct, alpha)])
        for name, r in (("within", within), ("cross", cross)):
            if r is not None:
                per_au.append([f"`{r['run']}` ({name})"] + [pct(r.get(f"f1_{a}")) for a in aus])
    return [f"## Across data sets: trained on {xn}, tested on {yn}", "",
            f"Each row: one network, region and classifier trained on {yn} (within, {yn}'s own "
            f"protocol) and on {xn} (cross: every choice, C and thresholds included, made on "
            f"{xn}'s subjects), both scored on the same test frames of {yn}; on the AUs both "
            f"sets label. Mean F1 in %; cross - within with its paired interval over {yn}'s "
            f"test subjects, and the paired permutation test's p, Holm-adjusted over the "
            f"rows: *drop* (or *gain*) when the change of data set decides it, else *not "
            f"decided* at this sample size.", "",
            md_table(["network", "region", "clf", f"trained on {yn}, tested on {yn}",
                    f"trained on {xn}, tested on {yn}", "cross - within", "p (Holm)",
                    "verdict"], rows), "",
            "Per AU (F1 %):", "",
            md_table(["run"] + aus, per_au), ""]
