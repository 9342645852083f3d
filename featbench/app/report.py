"""The markdown report of a data set's runs: ``results/<dataset>/report.md`` and its PNG charts.

Everything comes from ``summary.csv`` (one row per run, failed runs included with their error) and,
for the all-positive baseline, from the labels in the runs' predictions files.

The all-positive baseline
-------------------------
A detector that says *present* on every frame has, for an AU with a share ``p`` of positive test
frames, precision ``p`` and recall 1, hence F1 = 2p / (1 + p). It is the floor any run's F1 must
clear to mean something (F1 moves with ``p``; DISFA's AU25 baseline alone is high), so the report
shows it per AU beside the runs.
"""

import datetime as _dt
import math

import numpy as np

from featbench.core.identity import WeightsId, parse_members, weights_of
from featbench.core.results import read_summary
from featbench.core.workspace import atomic_write_text, save_figure

from classify.ensemble import command_for_run, read_predictions
from featbench.app.claims import RUN_PLAN, claims_lines
from featbench.app.report_intensity import intensity_lines, is_intensity
from featbench.app.report_cross import cross_lines
from featbench.app.report_probe import probe_lines

#: the PNG charts, beside report.md
CHART_MEAN = "report_mean_f1.png"
CHART_PER_AU = "report_per_au_f1.png"
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
        ``f1`` {AU: 2p/(1+p)} (nan when an AU has no labelled frame), ``p`` {AU: positive share},
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
    f1, share = {}, {}
    for a, au in enumerate(pred["aus"]):
        known = labels[:, a] >= 0
        p = float(np.mean(labels[known, a] == 1)) if known.any() else float("nan")
        share[au] = p
        f1[au] = 2 * p / (1 + p) if known.any() and p > 0 else float("nan")
    return {"f1": f1, "p": share, "frames": int(len(labels)), "source": best.stem}


def _float(v):
    """Return ``v`` as a float; nan for what summary.csv leaves empty (an AU the run did not score)."""
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def _num(v, scale=100.0, digits=1):
    v = _float(v)
    return "—" if math.isnan(v) else f"{v * scale:.{digits}f}"


def _md_table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(lines)


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
            y = float(sel["mean_f1"].max())
            x = j + (slot - (len(present) - 1) / 2) * width
            label = f"{clf} / {region}" if i not in labelled else None
            labelled.add(i)
            ax.bar(x, y, width, label=label, color=cmap(i % 10))
            ax.text(x, y + 0.01, f"{y * 100:.0f}", ha="center", va="bottom", fontsize=7)
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
    ax.set_ylim(0, min(1.0, max([baseline or 0] + list(ok["mean_f1"])) + 0.15))
    ax.set_title("Mean F1 per network and classifier / region")
    handles, names = ax.get_legend_handles_labels()
    order = sorted(range(len(names)), key=lambda k: names[k].startswith("all-positive"))
    ax.legend([handles[k] for k in order], [names[k] for k in order], fontsize=7, ncol=2,
              loc="upper right")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def plot_per_au(ok, path, *, baseline=None, top=TOP_RUNS):
    """Heatmap of per-AU F1 of the ``top`` best runs, with the all-positive baseline as last row."""
    from matplotlib.figure import Figure  # no pyplot: the caller's backend is left alone

    aus = _au_columns(ok)
    rows = ok[ok["mean_f1"].notna()].head(top)
    names = [r["run"] + ((" (random-init members)" if r["clf"] == "vote" else " (random init)")
                         if is_random(r.get("weights")) else "") for _, r in rows.iterrows()]
    grid = [[_float(r.get(f"f1_{au}")) for au in aus] for _, r in rows.iterrows()]
    if baseline:
        names.append("all-positive baseline")
        grid.append([baseline.get(au, float("nan")) for au in aus])
    grid = np.array(grid, dtype=float).reshape(len(names), len(aus))
    fig = Figure(figsize=(max(6.0, 0.6 * len(aus) + 4), 0.42 * len(names) + 1.6))
    ax = fig.subplots()
    im = ax.imshow(np.ma.masked_invalid(grid), cmap="viridis", vmin=0, vmax=1, aspect="auto")
    for i in range(grid.shape[0]):
        for j in range(grid.shape[1]):
            v = grid[i, j]
            ax.text(j, i, "—" if math.isnan(v) else f"{v * 100:.0f}", ha="center", va="center",
                    fontsize=7, color="white" if not math.isnan(v) and v < 0.6 else "black")
    ax.set_xticks(range(len(aus)))
    ax.set_xticklabels(aus, fontsize=8)
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels(names, fontsize=7)
    if baseline:
        ax.axhline(len(names) - 1.5, color="w", lw=2)
    ax.set_title(f"Per-AU F1 (%) of the {len(rows)} best runs")
    fig.colorbar(im, ax=ax, fraction=0.03, pad=0.02, label="F1")
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def headline(workspace, dataset, *, n=5):
    """Return the top ``n`` runs by mean F1 as a markdown table (what ``featbench report`` prints)."""
    ok, _ = _split(read_summary(workspace, dataset))
    ok = ok[~is_intensity(ok)]
    return _md_table(["run", "weights", "mean F1", "mean acc"],
                     [[r["run"], describe_weights(r.get("weights")), _num(r["mean_f1"]),
                       _num(r["mean_accuracy"])] for _, r in ok.head(n).iterrows()])


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


def make_report(workspace, dataset):
    """Write ``results/<dataset>/report.md`` and its two PNG charts from ``summary.csv``.

    Parameters
    ----------
    workspace : Workspace
    dataset : str

    Returns
    -------
    Path
        The report.

    Raises
    ------
    MissingRunError
        No run recorded for ``dataset`` yet.
    """
    summary = read_summary(workspace, dataset)
    every, failed = _split(summary)
    ok, ok_intensity = every[~is_intensity(every)], every[is_intensity(every)]  # own tables each
    aus = _au_columns(summary)
    base = all_positive_baseline(workspace, dataset)
    base_f1 = base.get("f1", {})
    base_mean = float(np.nanmean([base_f1[a] for a in aus if a in base_f1])) \
        if any(a in base_f1 and not math.isnan(base_f1[a]) for a in aus) else float("nan")
    lines = (_header_lines(dataset, every, failed) + _weights_lines(every) + _baseline_lines(base, base_mean)
             + _runs_lines(ok, base_mean) + _per_au_lines(ok, aus, base_f1, base_mean)
             + _ensemble_lines(ok) + _claims_lines(workspace, dataset, ok)
             + training_curves(workspace, dataset, ok)
             + intensity_lines(workspace, dataset, ok_intensity, describe_weights)
             + probe_lines(workspace, dataset, ok) + cross_lines(dataset, ok)
             + _failed_lines(failed))
    if len(ok):
        out_dir = workspace.results_dir(dataset)
        plot_mean_f1(ok, out_dir / CHART_MEAN, baseline=base_mean)
        plot_per_au(ok, out_dir / CHART_PER_AU, baseline=base_f1 or None)
    path = workspace.report_path(dataset)
    atomic_write_text(path, "\n".join(lines))
    return path

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


def _baseline_lines(base, base_mean):
    """The all-positive baseline's paragraph (none when the test labels are unknown)."""
    if math.isnan(base_mean):
        return []
    return [f"All-positive baseline (says *present* on every frame; F1 = 2p/(1+p) with p the "
            f"share of positive test frames, from `{base['source']}`'s {base['frames']} test "
            f"frames): mean F1 **{base_mean * 100:.1f}**. A run below it has learnt nothing "
            "useful on average.", ""]


def _runs_lines(ok, base_mean):
    """The runs ranked by mean F1, one table row each."""
    lines = ["## Runs by mean F1", "",
             _md_table(["#", "run", "model", "region", "clf", "weights", "mean F1", "mean acc",
                        "mean AUC"],
                       [[i + 1, f"`{r['run']}`", r["model"], r["region"], r["clf"],
                         describe_weights(r.get("weights")), _num(r["mean_f1"]),
                         _num(r["mean_accuracy"]), _num(r.get("mean_auc"))]
                        for i, (_, r) in enumerate(ok.iterrows())]), ""]
    if not math.isnan(base_mean):
        lines += [f"(all-positive baseline: mean F1 {base_mean * 100:.1f})", ""]
    return lines


def _per_au_lines(ok, aus, base_f1, base_mean):
    """The per-AU F1 table (baseline as last row) between the two charts."""
    return [f"![mean F1 per network and classifier]({CHART_MEAN})", "",
            "## Per-AU F1 (%)", "",
            _md_table(["run"] + aus + ["mean"],
                      [[f"`{r['run']}`" + (" ⚠ random" if is_random(r.get("weights")) else "")]
                       + [_num(r.get(f"f1_{a}")) for a in aus] + [_num(r["mean_f1"])]
                       for _, r in ok.iterrows()]
                      + ([["*all-positive baseline*"] + [_num(base_f1.get(a)) for a in aus]
                          + [_num(base_mean)]] if base_f1 else [])), "",
            f"![per-AU F1 of the best runs]({CHART_PER_AU})", ""]


def _ensemble_lines(ok):
    """The ensembles and their members (none when no vote was run)."""
    ensembles = ok[ok["clf"] == "vote"]
    if not (len(ensembles) and "members" in ensembles):
        return []
    return (["## Ensembles (majority vote; ties broken by the mean standardised margin)", ""]
            + [f"- `{r['run']}`: {r['members']}" for _, r in ensembles.iterrows()] + [""])


def _claims_lines(workspace, dataset, ok):
    """The paper's claims checked on these runs (:mod:`featbench.app.claims`), with the networks
    the last ``featbench run`` left out (its ``run_plan.json``, when there is one)."""
    import json

    rows = [{"run": r["run"], "mean_f1": _float(r["mean_f1"]), "weights": r.get("weights", ""),
             "members": r.get("members", "")} for _, r in ok.iterrows()]
    try:
        plan = json.loads((workspace.results_dir(dataset) / RUN_PLAN).read_text())
        left = dict(plan.get("left_out") or {})
    except (OSError, ValueError, AttributeError):
        left = {}
    return claims_lines(rows, left_out=left)


def _failed_lines(failed):
    """The failed runs with their errors and the command that reruns each."""
    if not len(failed):
        return ["## Failed runs", "", "None.", ""]
    return ["## Failed runs", "",
            _md_table(["run", "error", "rerun with"],
                      [[f"`{r['run']}`", str(r["error"]), f"`{command_for_run(r['run'])}`"]
                       for _, r in failed.iterrows()]), ""]

