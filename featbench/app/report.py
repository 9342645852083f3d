"""The markdown report of a data set's runs: ``results/<dataset>/report.md`` and its PNG charts.

Everything comes from ``summary.csv`` (one row per run, failed runs included with their error),
the runs' CSVs (per-AU intervals) and, for the baselines and the paired tests, the runs'
predictions files.

Intervals and tests
-------------------
Every mean and per-AU value is shown with its interval, ``63.1 [58.8, 68.4]`` (the subject-level
bootstrap of :mod:`featbench.core.stats`, stored with each run; a run written before intervals
existed gets them here, from its predictions file, without retraining). The ranking marks the
runs that a paired test cannot tell apart from the top run, and the claims are decided by the
same test (:mod:`featbench.app.claims`). Runs of repeated splits (``--repeats``) have their own
section (:mod:`featbench.app.repeats`), not rows in the main tables.

The all-positive baseline
-------------------------
A detector that says *present* on every frame has, for an AU with a share ``p`` of positive test
frames, precision ``p`` and recall 1, hence F1 = 2p / (1 + p). It is the floor any run's F1 must
clear to mean something (F1 moves with ``p``; DISFA's AU25 baseline alone is high), so the report
shows it per AU beside the runs, with the expected F1 of a predictor that says *present* at
random at the AU's base rate (F1 = p, :func:`featbench.core.stats.chance_f1`): a run must beat
both to have learnt anything.
"""

import datetime as _dt
import math
from dataclasses import dataclass, field

import numpy as np

from featbench.core import stats
from featbench.core.identity import WeightsId, parse_members, weights_of
from featbench.core.results import (read_au_intervals, read_predictions, read_summary,
                                    read_summary_rows, store_intervals)
from featbench.core.splits import without_repeats  # the repeats: their own section
from featbench.core.workspace import atomic_write_text, save_figure

from classify.ensemble import command_for_run
from featbench.app.claims import RUN_PLAN, claims_lines, power_lines
from featbench.app.cells import (as_float as _float, ci as _ci, md_table as _md_table,
                                 mean_ci as _mean_ci, num as _num)
from featbench.app.comparisons import Comparer, is_tied, refused_lines, ties_with_top
from featbench.app.repeats import write_repeats
from featbench.app.report_intensity import intensity_lines, is_intensity
from featbench.app.report_cross import cross_lines
from featbench.app.report_probe import probe_lines

#: the PNG charts, beside report.md
CHART_MEAN = "report_mean_f1.png"
CHART_PER_AU = "report_per_au_f1.png"
#: ``featbench report --latex``: the runs table for a paper, beside report.md
LATEX_TABLE = "report_runs.tex"
#: runs shown in the per-AU chart
TOP_RUNS = 10

RANDOM_FLAG = "random init, not pretrained"


def describe_weights(weights):
    """Return a reader-proof description of a run's ``weights`` column.

    Random-weight runs (``random:<seed>``, or ensembles with such members) are flagged
    ``random init, not pretrained`` so nobody mistakes them for pretrained networks.
    """
    w = "" if weights is None or (isinstance(weights, float) and math.isnan(weights)) else str(weights)
    if not w:
        return "—"
    members = parse_members(w)  # an ensemble: "model=weights; model=weights"
    if members:
        random = [m for m, wid in members if wid.is_random]
        kinds = sorted({str(wid).split(":")[0] for _, wid in members})
        text = "members: " + ", ".join(kinds)
        if random:
            text += f" — **includes {RANDOM_FLAG} members** ({', '.join(random)})"
        return text
    if WeightsId.parse(w).is_random:
        return f"{w} — **{RANDOM_FLAG}**"
    if w == "imagenet":
        return "imagenet (pretrained)"
    if w.startswith("sha256:"):
        return f"file {w[:19]}…"
    return {"vggface": "vggface (pretrained on faces)", "dlib": "dlib (pretrained, shipped)",
            "none": "none (hand-crafted)"}.get(w, w)


def is_random(weights):
    """Whether a run's weights (or any ensemble member's) are a random initialisation.

    Read through :class:`~featbench.core.identity.WeightsId`: a file named ``random_init.pth`` is not.
    """
    return any(w.is_random for w in weights_of("" if weights is None else weights))


def all_positive_baseline(workspace, dataset):
    """Return the all-positive F1 per AU from the test labels of the runs' predictions files.

    The labels come from the predictions file with the most test frames (every run of one
    protocol scores the same test frames).

    Returns
    -------
    dict
        ``f1`` {AU: 2p/(1+p)} (nan when an AU has no labelled frame), ``chance`` {AU: p} (the
        expected F1 of saying present at random at the base rate), ``p`` {AU: positive share},
        ``frames`` (int), ``source`` (the run whose labels were used); empty when no predictions
        file exists.
    """
    import h5py

    pred_dir = workspace.results_dir(dataset) / "predictions"
    best, size = None, -1
    for path in sorted(pred_dir.glob("*.h5")) if pred_dir.is_dir() else []:
        try:
            with h5py.File(path, "r") as f:
                n = len(f["frames"])
        except (OSError, KeyError):
            continue
        if n > size:
            best, size = path, n
    if best is None:
        return {}
    pred = read_predictions(best)
    labels = pred["labels"]
    share = {}
    for a, au in enumerate(pred["aus"]):
        known = labels[:, a] >= 0
        share[au] = float(np.mean(labels[known, a] == 1)) if known.any() else float("nan")
    return {"f1": {au: float(stats.all_positive_f1(p)) for au, p in share.items()},
            "chance": {au: float(stats.chance_f1(p)) for au, p in share.items()},
            "p": share, "frames": int(len(labels)), "source": best.stem}


def _split(summary):
    """Return (succeeded runs sorted by mean F1, failed runs)."""
    err = summary["error"].fillna("").astype(str) if "error" in summary else ""
    failed = summary[err != ""] if "error" in summary else summary.iloc[:0]
    ok = summary[err == ""] if "error" in summary else summary
    ok = ok.sort_values("mean_f1", ascending=False, na_position="last", kind="stable")
    return ok, failed


def _au_columns(summary):
    return sorted(c[3:] for c in summary.columns if c.startswith("f1_AU"))


def plot_mean_f1(ok, path, *, baseline=None):
    """Grouped bars: mean F1 per network (x) and classifier / region (bars), as the paper's figs 4-10.

    Parameters
    ----------
    ok : DataFrame
        Succeeded summary rows.
    path : Path
        The PNG to write.
    baseline : float, optional
        Mean all-positive F1, drawn as a dashed line.
    """
    from matplotlib import colormaps
    from matplotlib.figure import Figure  # no pyplot: the caller's backend is left alone

    ok = ok[ok["mean_f1"].notna()]
    best = ok.groupby("model")["mean_f1"].max().sort_values(ascending=False)
    # ensembles to the right of the single networks, each side sorted by its best F1
    vote = set(ok.loc[ok["clf"] == "vote", "model"])
    models = [m for m in best.index if m not in vote] + [m for m in best.index if m in vote]
    combos = sorted({(c, r) for c, r in zip(ok["clf"], ok["region"])},
                    key=lambda cr: (cr[0] == "vote", cr[1] != "full", cr[0], cr[1]))
    width = 0.8 / max(len(combos), 1)
    fig = Figure(figsize=(max(6.0, 1.1 * len(models) + 2), 4.8))
    ax = fig.subplots()
    cmap = colormaps["tab10"]
    labelled = set()
    for j, model in enumerate(models):
        # only the combinations this network has, centred on its tick (no gaps for missing ones)
        present = [(i, cr) for i, cr in enumerate(combos)
                   if ((ok["model"] == model) & (ok["clf"] == cr[0]) & (ok["region"] == cr[1])).any()]
        for slot, (i, (clf, region)) in enumerate(present):
            sel = ok[(ok["model"] == model) & (ok["clf"] == clf) & (ok["region"] == region)]
            row = sel.loc[sel["mean_f1"].idxmax()]
            y = float(row["mean_f1"])
            x = j + (slot - (len(present) - 1) / 2) * width
            label = f"{clf} / {region}" if i not in labelled else None
            labelled.add(i)
            ax.bar(x, y, width, label=label, color=cmap(i % 10))
            top = _error_bar(ax, x, y, row)
            ax.text(x, top + 0.01, f"{y * 100:.0f}", ha="center", va="bottom", fontsize=7)
    if baseline is not None and not math.isnan(baseline):
        ax.axhline(baseline, color="k", ls="--", lw=1, label=f"all-positive baseline ({baseline * 100:.1f})")
    labels = []
    for m in models:
        w = ok.loc[ok["model"] == m, "weights"].astype(str).iloc[0] if "weights" in ok else ""
        flag = "\n(random-init members)" if m in vote else "\n(random init)"
        labels.append(m + (flag if is_random(w) else ""))
    ax.set_xticks(range(len(models)))
    ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("mean F1 over AUs")
    highs = [_float(v) for v in (ok["mean_f1_hi"] if "mean_f1_hi" in ok else [])]
    ax.set_ylim(0, min(1.05, max([baseline or 0] + list(ok["mean_f1"])
                                 + [h for h in highs if not math.isnan(h)]) + 0.15))
    ax.set_title("Mean F1 per network and classifier / region"
                 + ("\n(error bars: interval over test subjects)" if highs else ""))
    handles, names = ax.get_legend_handles_labels()
    order = sorted(range(len(names)), key=lambda k: names[k].startswith("all-positive"))
    ax.legend([handles[k] for k in order], [names[k] for k in order], fontsize=7, ncol=2,
              loc="upper right")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def _error_bar(ax, x, y, row):
    """Draw ``row``'s mean F1 interval as an error bar at ``x``; return the top of what was drawn."""
    lo, hi = _float(row.get("mean_f1_lo")), _float(row.get("mean_f1_hi"))
    if math.isnan(lo) or math.isnan(hi):
        return y
    ax.errorbar(x, y, yerr=[[max(y - lo, 0.0)], [max(hi - y, 0.0)]], fmt="none", ecolor="k",
                elinewidth=0.8, capsize=2)
    return max(y, hi)


def plot_per_au(ok, path, *, baseline=None, top=TOP_RUNS, intervals=None, chance=None):
    """Heatmap of per-AU F1 of the ``top`` best runs, with the all-positive baseline (and the F1
    of guessing at the base rate, ``chance``) as last rows; each cell's interval (``intervals``:
    {run: {AU: (lo, hi)}}) under its value."""
    from matplotlib.figure import Figure  # no pyplot: the caller's backend is left alone

    aus = _au_columns(ok)
    rows = ok[ok["mean_f1"].notna()].head(top)
    names = [r["run"] + ((" (random-init members)" if r["clf"] == "vote" else " (random init)")
                         if is_random(r.get("weights")) else "") for _, r in rows.iterrows()]
    grid = [[_float(r.get(f"f1_{au}")) for au in aus] for _, r in rows.iterrows()]
    floors = [(name, per_au) for name, per_au in (("all-positive baseline", baseline),
                                                   ("random at the base rate", chance)) if per_au]
    for name, per_au in floors:
        names.append(name)
        grid.append([per_au.get(au, float("nan")) for au in aus])
    grid = np.array(grid, dtype=float).reshape(len(names), len(aus))
    spans = [(intervals or {}).get(run, {}) for run in rows["run"]]
    fig = Figure(figsize=(max(6.0, 0.75 * len(aus) + 4), 0.55 * len(names) + 1.6))
    ax = fig.subplots()
    im = ax.imshow(np.ma.masked_invalid(grid), cmap="viridis", vmin=0, vmax=1, aspect="auto")
    for i in range(grid.shape[0]):
        for j in range(grid.shape[1]):
            v = grid[i, j]
            lo, hi = spans[i].get(aus[j], (np.nan, np.nan)) if i < len(spans) else (np.nan, np.nan)
            text = "—" if math.isnan(v) else f"{v * 100:.0f}"
            if not (math.isnan(v) or math.isnan(lo) or math.isnan(hi)):
                text += f"\n{lo * 100:.0f}-{hi * 100:.0f}"
            ax.text(j, i, text, ha="center", va="center", fontsize=6,
                    color="white" if not math.isnan(v) and v < 0.6 else "black")
    ax.set_xticks(range(len(aus)))
    ax.set_xticklabels(aus, fontsize=8)
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels(names, fontsize=7)
    if floors:
        ax.axhline(len(names) - len(floors) - 0.5, color="w", lw=2)
    ax.set_title(f"Per-AU F1 (%) of the {len(rows)} best runs"
                 + (" (under each: its interval)" if any(spans) else ""))
    fig.colorbar(im, ax=ax, fraction=0.03, pad=0.02, label="F1")
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def headline(workspace, dataset, *, n=5):
    """Return the top ``n`` runs by mean F1 as a markdown table (what ``featbench report`` prints),
    each mean with its interval."""
    ok, _ = _split(read_summary(workspace, dataset))
    ok = without_repeats(ok[~is_intensity(ok)])
    return _md_table(["run", "weights", "mean F1 [interval]", "mean acc [interval]"],
                     [[r["run"], describe_weights(r.get("weights")), _mean_ci(r, "f1"),
                       _mean_ci(r, "accuracy")] for _, r in ok.head(n).iterrows()])


def store_missing_intervals(workspace, dataset, settings=None, *, renew=False):
    """Compute and store the intervals of every succeeded run that has none yet (written before
    intervals existed), from its predictions file; with ``renew``, also of runs whose stored
    intervals were made with other settings. Returns the runs updated."""
    settings = settings or stats.current_settings()
    path = workspace.summary_csv(dataset)
    done = []
    for r in read_summary_rows(path) if path.exists() else []:
        if r.get("error") or not workspace.predictions_path(dataset, r["run"]).exists():
            continue
        stored = (_float(r.get("ci_level")), _float(r.get("ci_resamples")))
        if math.isnan(stored[0]) or (renew and stored != (settings.level, settings.resamples)):
            if store_intervals(workspace, dataset, r["run"], clf=r.get("clf"), settings=settings):
                done.append(r["run"])
    return done


@dataclass
class _Evidence:
    """What the report's tables know beyond summary.csv: intervals per AU, ties with the top run."""

    settings: object
    comparer: object
    per_au: dict = field(default_factory=dict)
    ties: dict = field(default_factory=dict)
    subjects: int = 0


def _evidence(workspace, dataset, summary, ok, settings):
    comparer = Comparer(workspace, dataset, settings)
    subjects = [_float(v) for v in summary.get("ci_subjects", [])]
    return _Evidence(settings=settings, comparer=comparer,
                     per_au={r: read_au_intervals(workspace, dataset, r) for r in ok["run"]},
                     ties=ties_with_top(comparer, list(ok["run"])),
                     subjects=int(max([v for v in subjects if not math.isnan(v)], default=0)))


def training_curves(workspace, dataset, ok):
    """Return the report lines that show the per-epoch curves of the learned runs (fine-tuned nets).

    A run's ``models/<run>/settings.json`` names them: ``units`` -> ``curves`` (a PNG drawn by
    :func:`classify.training.plot_history`) and ``log`` (its CSV). Runs without curves are left out.
    """
    import json

    out = []
    for _, r in ok.iterrows():
        folder = workspace.models_dir(dataset, r["run"])
        try:
            units = json.loads((folder / "settings.json").read_text()).get("units") or {}
        except (OSError, ValueError, AttributeError):
            continue
        shown = [(u, e) for u, e in units.items() if isinstance(e, dict) and e.get("curves")]
        if not shown:
            continue
        out += [f"### `{r['run']}`", ""]
        for unit, e in shown:
            rel = f"models/{folder.name}/{e['curves']}"
            epoch = e.get("best_epoch", "?")
            out += [f"- {unit}: epoch {epoch} chosen on validation (log: `models/{folder.name}/"
                    f"{e.get('log', '')}`)", "", f"  ![{r['run']} {unit}]({rel})", ""]
    return (["## Training curves (loss and validation mean F1 per epoch)", ""] + out) if out else []


def make_report(workspace, dataset, *, settings=None, latex=False):
    """Write ``results/<dataset>/report.md`` and its two PNG charts from ``summary.csv``.

    Parameters
    ----------
    workspace : Workspace
    dataset : str
    settings : CISettings, optional
        Intervals and tests (default :func:`featbench.core.stats.current_settings`); given, the
        stored intervals made with other settings are computed again.
    latex : bool
        Also write :data:`LATEX_TABLE` (booktabs).

    Returns
    -------
    Path
        The report.

    Raises
    ------
    MissingRunError
        No run recorded for ``dataset`` yet.
    """
    renew = settings is not None
    settings = settings or stats.current_settings()
    read_summary(workspace, dataset)  # no results yet: said before anything is computed
    store_missing_intervals(workspace, dataset, settings, renew=renew)
    summary = read_summary(workspace, dataset)
    every, failed = _split(summary)
    main = without_repeats(every)
    ok, ok_intensity = main[~is_intensity(main)], main[is_intensity(main)]  # own tables each
    aus = _au_columns(summary)
    base = all_positive_baseline(workspace, dataset)
    ev = _evidence(workspace, dataset, summary, ok, settings)
    lines = (_header_lines(dataset, every, failed) + _weights_lines(main)
             + _statistics_lines(ev, ok) + _baseline_lines(base, aus)
             + _runs_lines(ok, base, aus, ev) + _per_au_lines(ok, aus, base, ev)
             + _ensemble_lines(ok) + _claims_lines(workspace, dataset, ok, ev)
             + write_repeats(workspace, dataset, read_summary_rows(workspace.summary_csv(dataset)))
             + training_curves(workspace, dataset, ok)
             + intensity_lines(workspace, dataset, ok_intensity, describe_weights,
                               comparer=ev.comparer)
             + probe_lines(workspace, dataset, ok) + cross_lines(dataset, ok, ev.comparer)
             + _failed_lines(failed))
    if len(ok):
        out_dir = workspace.results_dir(dataset)
        plot_mean_f1(ok, out_dir / CHART_MEAN, baseline=_mean_of(base.get("f1", {}), aus))
        plot_per_au(ok, out_dir / CHART_PER_AU, baseline=base.get("f1") or None,
                    intervals=ev.per_au, chance=base.get("chance") or None)
        if latex:
            atomic_write_text(out_dir / LATEX_TABLE, latex_table(ok, ev))
    path = workspace.report_path(dataset)
    atomic_write_text(path, "\n".join(lines))
    return path


def _mean_of(per_au, aus):
    """The nan-mean of ``per_au`` over ``aus``; nan when none is known."""
    vals = [per_au[a] for a in aus if a in per_au and not math.isnan(per_au[a])]
    return float(np.mean(vals)) if vals else float("nan")


def _header_lines(dataset, ok, failed):
    """The report's title and what it covers: data set, protocols, date, run counts, how to redo it."""
    col = (lambda name: ok[name] if name in ok else [""] * len(ok))
    protocols = sorted({str(p) for p in col("protocol") if str(p) not in ("", "nan")})
    return [f"# featbench report — {dataset}", "",
            f"- data set: `{dataset}`" + (f" (protocol: {', '.join(protocols)})" if protocols else ""),
            f"- generated: {_dt.datetime.now().isoformat(timespec='seconds')}",
            f"- runs: {len(ok)} succeeded, {len(failed)} failed; F1 and accuracy in %, "
            "averaged over AUs (nan-free AUs only)",
            "- reproduce: `featbench run` (quick preset; `--preset paper` for every network), "
            "or one run at a time with the commands below; then `featbench report`",
            ""]


def _weights_lines(ok):
    """The "read this first" section: which runs use random weights, and what each weights label means."""
    random_runs = [r["run"] for _, r in ok.iterrows() if is_random(r.get("weights"))]
    lines = ["## Weights: read this first", ""]
    if random_runs:
        lines += [f"**{len(random_runs)} run(s) use randomly initialised networks ({RANDOM_FLAG}).** "
                  "They are controls that show what pretraining adds, not the paper's pretrained "
                  "networks; their numbers say nothing about ImageNet features. They are marked "
                  f"*{RANDOM_FLAG}* below and *(random init)* in the charts: "
                  + ", ".join(f"`{r}`" for r in random_runs), ""]
    else:
        lines += ["No run uses random weights.", ""]
    return lines + ["`imagenet`: the network's published pretrained weights; `random:<seed>`: a seeded "
                    "random initialisation; `file sha256:…`: weights loaded from a file; `none`: a "
                    "hand-crafted descriptor (HOG) or a network shipped with its own weights (dlib).", ""]


def _statistics_lines(ev, ok):
    """How sure the numbers are: the interval, the test, the correction (none without runs)."""
    if not len(ok):
        return []
    st = ev.settings
    missing = [r for r in ok["run"] if not ev.comparer.has(r)]
    lines = ["## How sure these numbers are", "",
             f"Each value is shown as `value [low, high]`, its {st.level * 100:g}% interval: a "
             f"{st.describe(ev.subjects or None)}. Subjects are resampled with all their frames, "
             "because frames of one person are not independent; with few test subjects the "
             "interval is wide, and that is the point. Intervals are not adjusted for the number "
             "of values in a table; the tests are. "
             "Differences between runs (the ranking's *vs top* column, the claims) are paired over "
             f"the subjects both runs scored and decided by a {stats.TEST}, the p-values "
             f"Holm-adjusted over the comparisons of each table (alpha {st.alpha:.2g}). "
             "`featbench compare RUN_A RUN_B` shows one comparison in full, per AU.", ""]
    if missing:
        lines += [f"No interval for {', '.join(f'`{r}`' for r in missing)}: no predictions file "
                  "(rerun the run to get one).", ""]
    return lines


def _baseline_lines(base, aus):
    """The baselines' paragraph (none when the test labels are unknown)."""
    base_mean = _mean_of(base.get("f1", {}), aus)
    if math.isnan(base_mean):
        return []
    chance = _mean_of(base.get("chance", {}), aus)
    return [f"What learning nothing scores, from `{base['source']}`'s {base['frames']} test "
            f"frames (p: an AU's share of positive test frames): saying *present* on every frame "
            f"(all-positive baseline, F1 = 2p/(1+p)) mean F1 **{base_mean * 100:.1f}**; saying "
            f"*present* at random at the AU's base rate (expected F1 = p) mean F1 "
            f"**{chance * 100:.1f}**. A run below them has learnt nothing useful on average; "
            "per AU in the table below.", ""]


def _vs_top(run, top, ev):
    """The ranking's *vs top* cell: ``top``, ``≈ top`` (not told apart), ``below`` or ``above``
    (the paired test decides it; above: better than the top run on the frames and AUs both
    scored, though ranked lower by its own mean), with p; ``not comparable`` (said below the
    table) or ``—`` (no predictions file)."""
    if run == top:
        return "top"
    c = ev.ties.get(run)
    if c is None:
        return "not comparable" if (top, run) in ev.comparer.refused else "—"
    p = c.get("p_adj", float("nan"))
    p_text = "<0.001" if p < 0.001 else f"{p:.3f}"
    if is_tied(c, ev.settings.alpha):
        return f"≈ top (p {p_text})"
    # diff is top - run: a decided negative difference puts the run above the top one there
    return f"{'above' if c['diff'][-1] < 0 else 'below'} (p {p_text})"


def _runs_lines(ok, base, aus, ev):
    """The runs ranked by mean F1, one table row each, with intervals and ties with the top run."""
    top = ok["run"].iloc[0] if len(ok) else None
    tied = [r for r in ok["run"] if r in ev.ties and is_tied(ev.ties[r], ev.settings.alpha)]
    lines = ["## Runs by mean F1", "",
             _md_table(["#", "run", "model", "region", "clf", "weights", "mean F1 [interval]",
                        "vs top", "mean acc [interval]", "mean AUC [interval]"],
                       [[i + 1, f"`{r['run']}`", r["model"], r["region"], r["clf"],
                         describe_weights(r.get("weights")), _mean_ci(r, "f1"),
                         _vs_top(r["run"], top, ev), _mean_ci(r, "accuracy"), _mean_ci(r, "auc")]
                        for i, (_, r) in enumerate(ok.iterrows())]), ""]
    if top is not None and ev.ties:
        lines += [f"*vs top*: the paired test of each run against `{top}` (Holm over the "
                  f"{len(ev.ties)} comparisons); ≈ top: not distinguishable from it on this data "
                  f"({len(tied)} run{'s' if len(tied) != 1 else ''}).", ""]
        lines += power_lines(list(ev.ties.values()), ev.settings)
    if top is not None:
        lines += refused_lines(ev.comparer, {(top, r) for r in ok["run"]})
    base_mean = _mean_of(base.get("f1", {}), aus)
    if not math.isnan(base_mean):
        lines += [f"(all-positive baseline: mean F1 {base_mean * 100:.1f}; random at the base "
                  f"rate: {_mean_of(base.get('chance', {}), aus) * 100:.1f})", ""]
    return lines


def _au_cell(r, au, ev):
    lo, hi = ev.per_au.get(r["run"], {}).get(au, (np.nan, np.nan))
    return _ci(r.get(f"f1_{au}"), lo, hi, digits=0)


def _per_au_lines(ok, aus, base, ev):
    """The per-AU F1 table (the two baselines as last rows) between the two charts."""
    f1, chance = base.get("f1", {}), base.get("chance", {})
    rows = [[f"`{r['run']}`" + (" ⚠ random" if is_random(r.get("weights")) else "")]
            + [_au_cell(r, a, ev) for a in aus] + [_mean_ci(r, "f1")] for _, r in ok.iterrows()]
    if f1:
        rows.append(["*all-positive baseline*"] + [_num(f1.get(a), digits=0) for a in aus]
                    + [_num(_mean_of(f1, aus))])
        rows.append(["*random at the base rate*"] + [_num(chance.get(a), digits=0) for a in aus]
                     + [_num(_mean_of(chance, aus))])
    return [f"![mean F1 per network and classifier]({CHART_MEAN})", "",
            "## Per-AU F1 (%)", "", "Each cell: F1 [interval] in whole points (intervals this "
            "wide make decimals noise; `featbench compare` and the runs' CSVs have them); the "
            "mean column as in the ranking.",
            "", _md_table(["run"] + aus + ["mean"], rows), "",
            f"![per-AU F1 of the best runs]({CHART_PER_AU})", ""]


def _ensemble_lines(ok):
    """The ensembles and their members (none when no vote was run)."""
    ensembles = ok[ok["clf"] == "vote"]
    if not (len(ensembles) and "members" in ensembles):
        return []
    return (["## Ensembles (majority vote; ties broken by the mean standardised margin)", ""]
            + [f"- `{r['run']}`: {r['members']}" for _, r in ensembles.iterrows()] + [""])


def _claims_lines(workspace, dataset, ok, ev):
    """The paper's claims decided on these runs (:mod:`featbench.app.claims`), with the networks
    the last ``featbench run`` left out (its ``run_plan.json``, when there is one)."""
    import json

    rows = [{"run": r["run"], "mean_f1": _float(r["mean_f1"]), "weights": r.get("weights", ""),
             "members": r.get("members", "")} for _, r in ok.iterrows()]
    try:
        plan = json.loads((workspace.results_dir(dataset) / RUN_PLAN).read_text())
        left = dict(plan.get("left_out") or {})
    except (OSError, ValueError, AttributeError):
        left = {}
    return claims_lines(rows, left_out=left, comparer=ev.comparer)


_TEX = {"\\": r"\textbackslash{}", "_": r"\_", "&": r"\&", "%": r"\%", "#": r"\#", "$": r"\$",
        "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def _tex(text):
    """``text`` with LaTeX's special characters escaped."""
    return "".join(_TEX.get(ch, ch) for ch in str(text))


def latex_table(ok, ev):
    """The runs by mean F1 as a booktabs table: mean F1 [interval], the best in bold, the runs
    the paired test cannot tell apart from it marked with a dagger."""
    level = f"{ev.settings.level * 100:g}"
    top = ok["run"].iloc[0] if len(ok) else None
    lines = [r"% featbench report --latex: needs \usepackage{booktabs}",
             r"\begin{table}[t]", r"\centering",
             r"\begin{tabular}{llrr}", r"\toprule",
             rf"Run & Weights & Mean F1 [{level}\,\% CI] & Mean acc. \\", r"\midrule"]
    for _, r in ok.iterrows():
        f1 = _tex(_mean_ci(r, "f1"))
        if r["run"] == top:
            f1 = rf"\textbf{{{f1}}}"
        elif r["run"] in ev.ties and is_tied(ev.ties[r["run"]], ev.settings.alpha):
            f1 = f1 + r"$^\dagger$"
        # a table in a paper names the weights, not their file's digest
        weights = _tex(describe_weights(r.get("weights")).replace("**", "").split(" sha256:")[0])
        lines.append(rf"\texttt{{{_tex(r['run'])}}} & {weights} & {f1} & "
                     rf"{_tex(_mean_ci(r, 'accuracy'))} \\")
    lines += [r"\bottomrule", r"\end{tabular}",
              rf"\caption{{Mean F1 over AUs (\%) with its {level}\,\% interval: a "
              rf"{_tex(ev.settings.describe(ev.subjects or None))}. Best in bold; "
              rf"$^\dagger$: not distinguishable from the best by a {_tex(stats.TEST)} "
              rf"(Holm-adjusted $p \geq {ev.settings.alpha:.2g}$).}}",
              r"\label{tab:featbench-runs}", r"\end{table}", ""]
    return "\n".join(lines)


def _failed_lines(failed):
    """The failed runs with their errors and the command that reruns each."""
    if not len(failed):
        return ["## Failed runs", "", "None.", ""]
    return ["## Failed runs", "",
            _md_table(["run", "error", "rerun with"],
                      [[f"`{r['run']}`", str(r["error"]), f"`{command_for_run(r['run'])}`"]
                       for _, r in failed.iterrows()]), ""]

