"""What ``featbench predict`` writes: the per-frame CSV, its sidecar JSON, the timeline plot.

Output (DESIGN.md contract), one row per frame and face, OpenFace's column names::

    frame, face_id, timestamp, confidence, success, AU01_c ... AU26_c, AU01_p ... AU26_p,
    [AU01_r ... AU26_r,] input

``frame`` is 1-based within its input, ``timestamp`` in seconds, ``confidence`` the face
detector's score (0 without a face), ``success`` 1 when a face was found and classified.
``AUxx_c`` is the run's 0/1 decision, ``AUxx_p`` its score (the classifier's decision function;
the decision is ``score > threshold``, thresholds in the sidecar). A frame without a face is a
row with ``success = 0`` and empty AU columns; it is never dropped. The sidecar JSON beside the
CSV names the run, its network(s) and weights (random weights flagged as such), the
thresholds, the detector and the featbench version.

Intensity: an intensity run (``featbench classify --task intensity``, or a learned method's
``--task intensity``) as ``--run`` writes ``AUxx_c`` (its predicted intensity rounded >= 2,
``AUxx_r > 1.5``) and ``AUxx_r`` (the predicted intensity, 0-5); ``--run OCC --intensity-run
INT`` writes ``AUxx_c`` / ``AUxx_p`` from OCC and ``AUxx_r`` from INT (:class:`Outputs`). The
rule when they disagree (:data:`DISAGREEMENT_RULE`): each column is its own run's answer, never
forced to agree; the sidecar counts the disagreeing faces per AU.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from featbench.core.datasets import training_data
from featbench.core.errors import UsageError
from featbench.core.workspace import atomic_write_text, save_figure, temp_sibling, writing

#: the columns before the AUs
COLUMNS_HEAD = ("frame", "face_id", "timestamp", "confidence", "success")


# --- the run -------------------------------------------------------------------------------------
@dataclass
class Outputs:
    """Which run fills which of OpenFace's columns (see the module docstring).

    ``occurrence`` fills ``AUxx_c`` and ``AUxx_p``; ``intensity`` fills ``AUxx_r`` (and, when it
    is the only run, ``AUxx_c``: its rounded intensity >= 2).
    """

    occurrence: object = None
    intensity: object = None

    @property
    def runs(self):
        return [m for m in (self.occurrence, self.intensity) if m is not None]

    @property
    def c_run(self):
        return self.occurrence or self.intensity

    def columns(self):
        c = self.c_run.aus
        p = self.occurrence.aus if self.occurrence is not None else []
        r = self.intensity.aus if self.intensity is not None else []
        return (list(COLUMNS_HEAD) + [f"{a}_c" for a in c] + [f"{a}_p" for a in p]
                + [f"{a}_r" for a in r] + ["input"])


def outputs_of(model, intensity=None):
    """Return the :class:`Outputs` of ``--run`` (``model``) and ``--intensity-run``.

    Raises
    ------
    UsageError
        An intensity run as ``--run`` beside ``--intensity-run``, or an occurrence run as
        ``--intensity-run``.
    """
    if intensity is None:  # a run's task says which column its scores fill (Task.predict_column)
        return (Outputs(intensity=model) if model.task.predict_column == "r"
                else Outputs(occurrence=model))
    if model.task.predict_column == "r":
        raise UsageError(f"--run {model.run} is an intensity run: give the occurrence run as --run "
                         f"and the intensity run as --intensity-run")
    if intensity.task.predict_column != "r":
        raise UsageError(f"--intensity-run {intensity.run} is an occurrence run (train one with "
                         "featbench classify --task intensity)")
    return Outputs(occurrence=model, intensity=intensity)


def summary_line(stats, sources, seconds, outputs, out, plot):
    """The one line ``featbench predict`` prints at the end."""
    short = stats.get("uncalibrated_tracks")
    return (f"{stats['frames']} frames ({stats['with_face']} with a face, {stats['faces']} faces) "
            f"of {len(sources)} input(s) in {seconds:.1f} s ({stats['frames'] / max(seconds, 1e-9):.1f} "
            f"frames/s) with {'; '.join(m.describe() for m in outputs.runs)}"
            + (f" -> {out}" if out is not None else "") + (f", {plot}" if plot is not None else "")
            + (f"; {len(short)} face track(s) too short to calibrate ({stats['uncalibrated_faces']} "
               "face(s)): their AU columns are empty" if short else ""))


def uncalibrated_stats(runs):
    """What a person-calibrated run could not calibrate (its per-track rule): the tracks seen in
    fewer frames than a reference needs and their faces, for the summary and the sidecar;
    ``{}`` when every track was calibrated (or no run calibrates)."""
    short = {}
    for m in runs:
        for r in (m, *m.members):
            short.update(r.uncalibrated)
    if not short:
        return {}
    return {"uncalibrated_tracks": sorted(short), "uncalibrated_faces": int(sum(short.values())),
            "uncalibrated_rule": "a face track seen in fewer frames than calibration needs is "
                                 "not calibrated: its rows have a face and empty AU columns"}


def trained_on(model):
    """The training data set of a loaded run: ``{"dataset", "synthetic", "kind"}``.

    Recorded when the run was loaded from its workspace (and so carried by an export); an
    older export without it is judged by the data set's name.
    """
    data = dict(model.info.get("training_data") or training_data(model.dataset))
    return {**data, "kind": "synthetic" if data.get("synthetic") else "real"}


def synthetic_warning(model):
    """The one line ``featbench predict`` prints for a run trained on synthetic faces, else ""."""
    data = trained_on(model)
    if not data.get("synthetic"):
        return ""
    return (f"note: {model.run} was trained on {data['dataset']}, synthetic faces: it checks the "
            "pipeline, it is not a detector for real footage (train on labelled real faces, "
            "e.g. featbench run --dataset disfa --root DIR, and predict with that run)")


def sidecar_path(out):
    """The JSON beside a predictions CSV: ``clip.csv`` -> ``clip.json``."""
    out = Path(out)
    return out.with_suffix(".json") if out.suffix.lower() == ".csv" else out.with_name(out.name + ".json")


def sidecar_of(model, sources, detector, all_faces, stats, seconds, model_file, version):
    """The sidecar JSON's content (before :func:`intensity_sidecar`'s entries) of ``model``."""
    thresholds = None
    if not model.members and len(model.folds) == 1:
        thresholds = {a: model.folds[0][a][1] for a in model.aus if a in model.folds[0]}
    nets = [{"model": m, "weights": str(w), "weights_described": model.weights_text((m, w)),
             "random_init": model.random_init((m, w)), "regions": sorted(r),
             "start_weights": _text(getattr(model.network_for((m, w)), "start_weights", None))}
            for (m, w), r in model.networks().items()]
    return {
        "run": str(model.run), "dataset": model.dataset, "training_data": trained_on(model),
        "clf": model.clf, "networks": nets,
        "members": [str(m.run) for m in model.members], "aus": model.aus,
        "thresholds": thresholds, "decision": "AUxx_c = AUxx_p > threshold"
        if thresholds is not None else "AUxx_c: majority vote of the members' decisions",
        "model_file": str(model_file) if model_file else None,
        "detector": detector, "all_faces": bool(all_faces),
        "alignment": model.alignment, "inputs": [str(s) for s in sources], **stats,
        "seconds": round(seconds, 2), "featbench_version": version,
        "note": "the run's faces were aligned from "
                f"{model.alignment.get('landmarks', 'unknown')} landmarks; here from dlib's 68-point fit",
    }


def _text(identity):
    """An identity's one string form for the JSON (None stays None)."""
    return None if identity is None else str(identity)


#: how ``AUxx_c`` and ``AUxx_r`` relate when they come from two runs (the sidecar says it too)
DISAGREEMENT_RULE = (
    "AUxx_c and AUxx_p come from the occurrence run (--run), AUxx_r from the intensity run "
    "(--intensity-run), each exactly as its run decides; they are never forced to agree. Where "
    "they disagree (AUxx_c = 1 with AUxx_r < 1.5, or AUxx_c = 0 with AUxx_r > 1.5: rounded "
    "intensity >= 2 is the occurrence labels' definition), each column keeps its own run's "
    "answer and 'disagreements' counts those faces per AU: gate one by the other if your "
    "analysis needs them consistent.")


def intensity_sidecar(outputs, table):
    """The sidecar's entries about ``AUxx_r``: the intensity run, its rule, the disagreements."""
    r = outputs.intensity
    if r is None:
        return {}
    out = {"intensity_run": str(r.run), "intensity_calibration": r.calibrate,
           "intensity_columns": "AUxx_r: predicted intensity 0-5 (clipped)"}
    if outputs.occurrence is None:
        out["decision"] = "AUxx_c = AUxx_r > 1.5 (the predicted intensity rounds to >= 2)"
        return out
    out["rule"] = DISAGREEMENT_RULE
    out["disagreements"] = {}
    for au in (a for a in outputs.occurrence.aus if a in r.aus):
        c = table[f"{au}_c"].to_numpy(dtype=float, na_value=np.nan)
        v = table[f"{au}_r"].to_numpy(dtype=float, na_value=np.nan)
        both = np.isfinite(c) & np.isfinite(v)
        out["disagreements"][au] = int(np.sum(both & ((c == 1) != (v > 1.5))))
    return out


class CsvWriter:
    """Append batches of rows to a temporary file beside ``<out>``; rename it at the end.

    The temporary name is unique (:func:`featbench.core.workspace.temp_sibling`) and removed on
    every way out (:meth:`abort` after :meth:`close` does nothing).
    """

    def __init__(self, out, columns):
        self.out = Path(out)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = temp_sibling(self.out)
        self.fh = open(self.tmp, "w", newline="")
        self.fh.write(",".join(columns) + "\n")

    def write(self, df):
        with writing(self.out, "writing the predictions"):
            df.to_csv(self.fh, header=False, index=False, float_format="%.6g",
                      lineterminator="\n")

    def close(self, sidecar, text):
        """Finish the CSV, write the sidecar ``text``, then put the CSV in place."""
        import os

        with writing(self.out, "writing the predictions"):
            self.fh.close()
        with writing(sidecar, "writing the sidecar"):
            atomic_write_text(sidecar, text)
        os.replace(self.tmp, self.out)

    def abort(self):
        import contextlib

        with contextlib.suppress(OSError):  # a full disk fails the flush again: nothing to keep
            self.fh.close()
        self.tmp.unlink(missing_ok=True)


# --- the timeline --------------------------------------------------------------------------------
def plot_timeline(table, aus, out, *, title=""):
    """Draw the AU scores and decisions over time as a PNG (one strip per AU).

    The face with the most rows is shown (with ``--all-faces``, the main face); frames without a
    face are grey bands. Returns the path.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    t = table
    if len(t) and (t["success"] == 1).any():
        main = t.loc[t["success"] == 1, "face_id"].value_counts().idxmax()
        t = t[(t["success"] == 0) | (t["face_id"] == main)].drop_duplicates(["input", "frame"])
    x = np.arange(len(t))
    fig = Figure(figsize=(11, 0.55 * max(len(aus), 1) + 1.4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    nofaces = (t["success"] == 0).to_numpy() if len(t) else np.zeros(0, bool)
    for i, au in enumerate(aus):
        base = len(aus) - 1 - i
        score = f"{au}_p" if f"{au}_p" in t else f"{au}_r"  # an intensity run alone: its intensity
        p = t[score].to_numpy(dtype=float) if len(t) else np.zeros(0)
        c = t[f"{au}_c"].to_numpy(dtype=float, na_value=np.nan) if len(t) else np.zeros(0)
        finite = p[np.isfinite(p)]
        span = np.abs(finite).max() if finite.size and np.abs(finite).max() > 0 else 1.0
        ax.fill_between(x, base, base + 0.8 * np.nan_to_num(c), step="mid", color="tab:orange",
                        alpha=0.45, linewidth=0)
        ax.plot(x, base + 0.4 + 0.4 * p / span, color="tab:blue", linewidth=0.8)
    for j in np.flatnonzero(nofaces):
        ax.axvspan(j - 0.5, j + 0.5, color="0.85", zorder=0)
    ax.set_yticks([len(aus) - 1 - i + 0.4 for i in range(len(aus))])
    ax.set_yticklabels(aus)
    ax.set_xlim(-0.5, max(len(t), 1) - 0.5)
    ax.set_ylim(-0.2, len(aus))
    ax.set_xlabel("frame (in order of the inputs)" if t["input"].nunique() > 1 else "frame")
    import textwrap

    title = "\n".join(textwrap.wrap(str(title), 150))  # a vote of several networks is long
    ax.set_title(f"{title}\norange: AU present (decision); blue: score; grey: no face", fontsize=9)
    fig.tight_layout()
    save_figure(fig, out, dpi=90)
    return out
