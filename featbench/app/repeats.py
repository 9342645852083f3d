"""Repeated splits (``--repeats N``): how much a ranking of runs moves when the subjects are
dealt into folds again.

A repeat is a run under the protocol ``kfold:K:rN`` (:func:`featbench.core.splits.
repeat_protocols`: the subjects shuffled into K folds with the split's own seed N); its name
carries the tag ``kfoldKrN``. This module gathers the repeats of each run from ``summary.csv``
and writes ``results/<dataset>/repeats_kfoldK.csv`` (one row per run: mean F1 in each repeat,
mean ± sd over repeats, the share of repeats in which it ranks first, its mean rank) and
``repeats_kfoldK.md`` (the same table and the rank correlations between repeats), which the
report shows.
"""

import math

import numpy as np

from featbench.core import stats
from featbench.core.identity import RunKey
from featbench.core.errors import UsageError
from featbench.core.splits import repeat_of
from featbench.core.workspace import atomic_write_text


def _base_name(run, tag):
    """The run's name without its repeat tag (what the repeats of one setting share)."""
    try:
        key = RunKey.parse(run)
    except UsageError:
        return run
    return str(RunKey(key.model, key.region, key.clf, tuple(t for t in key.tags if t != tag)))


def gather(rows, *, metric="mean_f1"):
    """Group the repeat runs of summary ``rows`` (dicts of strings) by base protocol.

    Returns
    -------
    dict
        ``{base protocol: {"repeats": [N...], "runs": [base names], "scores": (runs, repeats)}}``
        for every base protocol with at least two repeats; a run missing from a repeat (failed,
        not run) is nan there.
    """
    cells = {}
    for r in rows:
        rep = repeat_of(r.get("protocol"))
        if rep is None or r.get("error"):
            continue
        base, n = rep
        tag = f"{base.replace(':', '')}r{n}"
        try:
            value = float(r.get(metric) or "nan")
        except ValueError:
            value = float("nan")
        cells.setdefault(base, {})[(_base_name(r["run"], tag), n)] = value
    out = {}
    for base, found in sorted(cells.items()):
        repeats = sorted({n for _, n in found})
        runs = sorted({run for run, _ in found})
        if len(repeats) < 2:
            continue
        scores = np.array([[found.get((run, n), np.nan) for n in repeats] for run in runs])
        out[base] = {"repeats": repeats, "runs": runs, "scores": scores}
    return out


def _order(found, stab):
    """Runs best first by mean over repeats."""
    return sorted(range(len(found["runs"])),
                  key=lambda i: (-np.nan_to_num(stab["mean"][i], nan=-np.inf), found["runs"][i]))


def repeats_markdown(base, found, stab):
    """The repeats table of one base protocol, as report lines."""
    n = len(found["repeats"])
    lines = [f"### `{base}`, {n} repeated splits", "",
             f"Each run trained and tested {n} times, the subjects dealt into folds anew each "
             f"time (`{base}:r1` ... `{base}:r{found['repeats'][-1]}`; balancing and solver seeds "
             "unchanged). Mean F1 over AUs, %: mean ± sd over the repeats; first: the share of "
             "repeats in which the run ranks first (a tie counts for each); mean rank: 1 = best.",
             "",
             "| run | mean F1 ± sd | min - max | first | mean rank |" + "".join(
                 f" r{r} |" for r in found["repeats"]),
             "| --- | --- | --- | --- | --- |" + " --- |" * n]
    for i in _order(found, stab):
        s = found["scores"][i] * 100
        lines.append(f"| `{found['runs'][i]}` | {stab['mean'][i] * 100:.1f} ± "
                     f"{stab['sd'][i] * 100:.1f} | {np.nanmin(s):.1f} - {np.nanmax(s):.1f} | "
                     f"{stab['first'][i] * 100:.0f}% | {stab['mean_rank'][i]:.1f} |"
                     + "".join(f" {v:.1f} |" if math.isfinite(v) else " — |" for v in s))
    if stab["pairs"]:
        lines += ["", f"Rank correlation of the runs' mean F1 between two repeats (over the "
                      f"{stab['pairs']} pair{'s' if stab['pairs'] > 1 else ''} of repeats): Spearman ρ mean {stab['spearman']:.2f} "
                      f"(min {stab['spearman_min']:.2f}), Kendall τ mean {stab['kendall']:.2f} "
                      f"(min {stab['kendall_min']:.2f}).", ""]
    else:
        lines += ["", "(rank correlations between repeats need at least 3 runs)", ""]
    return lines


def write_repeats(workspace, dataset, rows):
    """Write the repeats tables of ``rows`` (summary rows) and return the report's lines.

    Returns
    -------
    list of str
        A section per base protocol (none when no run was repeated).
    """
    found = gather(rows)
    if not found:
        return []
    lines = ["## Repeated splits: how much the ranking moves", ""]
    for base, f in found.items():
        stab = stats.rank_stability(f["scores"])
        name = f"repeats_{base.replace(':', '')}"
        body = repeats_markdown(base, f, stab)
        folder = workspace.results_dir(dataset)
        atomic_write_text(folder / f"{name}.csv", _csv(f, stab))
        atomic_write_text(folder / f"{name}.md", "\n".join(body) + "\n")
        lines += body + [f"(tables: `{name}.csv`, `{name}.md`)", ""]
    return lines


def _csv(found, stab):
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["run", "repeats", "mean_f1_mean", "mean_f1_sd", "first_share", "mean_rank"]
               + [f"mean_f1_r{r}" for r in found["repeats"]])
    for i in _order(found, stab):
        w.writerow([found["runs"][i], int(np.isfinite(found["scores"][i]).sum())]
                   + [f"{v:.4f}" for v in (stab["mean"][i], stab["sd"][i], stab["first"][i],
                                           stab["mean_rank"][i])]
                   + [f"{v:.4f}" for v in found["scores"][i]])
    return buf.getvalue()  # the rank correlations between repeats are in the .md beside it
