"""The cross-data-set part of the report of a joined data set ``X+Y``
(:mod:`featbench.core.datasets.joined`): "trained on X, tested on Y" beside "trained on Y,
tested on Y" for the same settings.

A ``cross`` run and its ``within`` twin differ only in the protocol (their run names differ
only in that tag: ``hog__full__svm__cross`` / ``hog__full__svm__within``) and score the same
test frames of Y, so the difference of their F1 is what the change of data set costs. Where
``summary.csv`` carries the statistics' intervals (``mean_f1_lo`` / ``mean_f1_hi``), they are
shown beside each F1.
"""

import math

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


def _f1(row, pct):
    """``row``'s mean F1 in %, with its interval when the summary has one."""
    text = pct(row.get("mean_f1"))
    lo, hi = row.get("mean_f1_lo"), row.get("mean_f1_hi")
    try:
        if not (math.isnan(float(lo)) or math.isnan(float(hi))):
            text += f" [{pct(lo)}, {pct(hi)}]"
    except (TypeError, ValueError):
        pass
    return text


def cross_pairs(ok):
    """Return ``[(cross row, within row or None)]`` of the runs in ``ok`` (summary rows)."""
    if not len(ok) or "protocol" not in ok:
        return []
    by_name = {str(r["run"]): r for _, r in ok.iterrows()}
    return [(r, by_name.get(twin_name(r["run"])))
            for _, r in ok.iterrows() if str(r.get("protocol")) == CROSS]


def cross_lines(dataset, ok):
    """Return the report's cross-data-set lines ([] unless ``dataset`` is joined and has
    ``cross`` runs): mean F1 within and across, the drop, then per AU."""
    from featbench.app.report_probe import _num as pct
    from featbench.app.report_intensity import _table
    from featbench.core.datasets.joined import split_name

    parts = split_name(dataset)
    pairs = cross_pairs(ok) if parts else []
    if not pairs:
        return []
    xn, yn = parts
    aus = sorted(c[3:] for c in ok.columns if c.startswith("f1_AU"))
    rows, per_au = [], []
    for cross, within in pairs:
        drop = (float("nan") if within is None
                else float(cross["mean_f1"]) - float(within["mean_f1"]))
        rows.append([f"`{cross['model']}`", cross["region"], cross["clf"],
                     "— (run it with --protocol within)" if within is None else _f1(within, pct),
                     _f1(cross, pct), pct(drop)])
        for name, r in (("within", within), ("cross", cross)):
            if r is not None:
                per_au.append([f"`{r['run']}` ({name})"] + [pct(r.get(f"f1_{a}")) for a in aus])
    return [f"## Across data sets: trained on {xn}, tested on {yn}", "",
            f"Each row: one network, region and classifier trained on {yn} (within, {yn}'s own "
            f"protocol) and on {xn} (cross: every choice, C and thresholds included, made on "
            f"{xn}'s subjects), both scored on the same test frames of {yn}; on the AUs both "
            f"sets label. Mean F1 in %; drop = cross - within.", "",
            _table(["network", "region", "clf", f"trained on {yn}, tested on {yn}",
                    f"trained on {xn}, tested on {yn}", "drop"], rows), "",
            "Per AU (F1 %):", "",
            _table(["run"] + aus, per_au), ""]
