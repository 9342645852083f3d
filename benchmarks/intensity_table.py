"""AU intensity and person-specific calibration on the embedded data: the README's table.

On the embedded DISFA-layout set (``featbench data synth``: 27 subjects, the paper's 12/6/9
split, its 12 AUs), through the ordinary commands, for the codes of each network in
``--models`` (default HOG and dlib_face) and of a fine-tuned network (``--finetune``):

- ``featbench classify --task intensity --clf ridge --calibrate C`` for C in ``--calibrations``:
  mean ICC(3,1), Pearson r, MAE, and F1 of rounded predicted intensity >= 2;
- ``featbench classify --clf svm --calibrate C``: occurrence F1 with the same calibration;
- the fine-tuned network: ``featbench finetune --model M --task intensity`` (its own regression
  head, uncalibrated: a head on faces has no codes to calibrate), then ridge / SVM on its codes
  (``featbench extract --weights results/synth/models/<that run>/model.safetensors``) with each
  calibration, as for the frozen networks.

Missing steps (the data set, codes, runs) are made; finished ones are reused (the commands
themselves skip complete feature files; runs are rerun only with ``--rerun``). Prints a markdown
table and writes it to ``<workspace>/results/synth/intensity_table.md``::

    python benchmarks/intensity_table.py --workspace /tmp/ws
"""

import argparse
import csv
import sys
import time
from pathlib import Path

from featbench.app.cli import main as featbench

DATASET = "synth"
LABELS = {"none": "none", "median": "median code", "neutral": "neutral frame"}
#: the quick preset's fine-tuning of dlib_face (featbench.app.pipeline.QUICK_FT_SETTINGS), with
#: up to 10 epochs (the epoch chosen by validation ICC) instead of its 1
FT_ARGS = ("--head multilabel --reinit head --train-from fc --input-size 112 --optimizer adam "
           "--lr 1e-3 --batch-size 16 --epochs 10")


def _cli(ws, *argv):
    """Run one featbench command in this process; stop on failure with its status."""
    status = featbench(["--offline", "--workspace", str(ws), *argv])
    if status:
        sys.exit(f"featbench {' '.join(argv)}: exit status {status}")


def _summary(ws):
    path = Path(ws) / "results" / DATASET / "summary.csv"
    with open(path, newline="") as fh:
        return {r["run"]: r for r in csv.DictReader(fh)}


def _run_once(ws, run, rerun, *argv):
    """Run the command that makes ``run`` unless summary.csv has it (without an error)."""
    have = _summary(ws) if (Path(ws) / "results" / DATASET / "summary.csv").exists() else {}
    if rerun or run not in have or have[run].get("error"):
        _cli(ws, *argv, "--quiet")
    return run


def _cal_tag(cal):
    return {"none": "", "median": "__calmed", "neutral": "__calneu"}[cal]


def codes_rows(ws, model, calibrations, rerun, label=None):
    """Ridge (intensity) and SVM (occurrence) on ``model``'s codes, per calibration."""
    rows = []
    for cal in calibrations:
        tag = _cal_tag(cal)
        ri = _run_once(ws, f"{model.replace(':', '-')}__full__ridge{tag}", rerun, "classify",
                       "--task", "intensity", "--clf", "ridge", "--model", model, "--calibrate", cal)
        so = _run_once(ws, f"{model.replace(':', '-')}__full__svm{tag}", rerun, "classify",
                       "--clf", "svm", "--model", model, "--calibrate", cal)
        rows.append({"codes": label or model, "calibration": cal, "intensity run": ri,
                     "occurrence run": so})
    return rows


def finetune_rows(ws, model, calibrations, rerun, args):
    """A network fine-tuned for intensity: its own head, then ridge / SVM on its codes."""
    runs = _summary(ws) if (Path(ws) / "results" / DATASET / "summary.csv").exists() else {}
    mine = sorted((r["created"], name) for name, r in runs.items()
                  if r.get("clf") == "ft" and r.get("task") == "intensity"
                  and r.get("model") == model and not r.get("error"))
    if rerun or not mine:
        _cli(ws, "finetune", "--model", model, "--task", "intensity", *args.ft_args.split(),
             "--quiet")
        mine = sorted((r["created"], name) for name, r in _summary(ws).items()
                      if r.get("clf") == "ft" and r.get("task") == "intensity"
                      and r.get("model") == model and not r.get("error"))
    ft = mine[-1][1]
    rows = [{"codes": f"{model} fine-tuned for intensity (its own head)", "calibration": "none",
             "intensity run": ft, "occurrence run": ""}]
    codes = f"{model}-ft"
    if rerun or not (Path(ws) / "data" / "features" / DATASET / f"{codes}.h5").exists():
        weights = Path(ws) / "results" / DATASET / "models" / ft / "model.safetensors"
        _cli(ws, "extract", "--model", model, "--weights", str(weights), "--name", codes,
             "--quiet", *(["--overwrite"] if rerun else []))
    return rows + codes_rows(ws, codes, calibrations, rerun,
                             label=f"{model} fine-tuned for intensity (its codes)")


def _setting(ws, run):
    """One line: the data set, the split and the AUs the runs were scored on."""
    import json

    settings = json.loads((Path(ws) / "results" / DATASET / "models" / run / "settings.json").read_text())
    fold = settings["folds"][0]
    parts = "/".join(str(len(fold[p])) for p in ("train", "validation", "test"))
    return (f"`{DATASET}` ({settings['protocol']} protocol: {parts} train/validation/test subjects), "
            f"{len(settings['aus'])} AUs, scored on the test subjects' frames.")


def _num(v, digits=3):
    try:
        v = float(v)
    except (TypeError, ValueError):
        return "—"
    return "—" if v != v else f"{v:.{digits}f}"


def table(ws, rows):
    """The markdown table of ``rows`` from the workspace's summary.csv."""
    summary = _summary(ws)
    out = ["| codes | calibration | mean ICC | mean r | mean MAE | F1 (intensity >= 2) | "
           "occurrence F1 (SVM) |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        i = summary.get(r["intensity run"], {})
        o = summary.get(r["occurrence run"], {})
        out.append(f"| {r['codes']} | {LABELS[r['calibration']]} | {_num(i.get('mean_icc'))} | "
                   f"{_num(i.get('mean_pearson'))} | {_num(i.get('mean_mae'))} | "
                   f"{_num(i.get('mean_f1'))} | {_num(o.get('mean_f1'))} |")
    return "\n".join(out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workspace", required=True, help="workspace (made and filled as needed)")
    p.add_argument("--models", default="hog,dlib_face", help="frozen networks (default: hog,dlib_face)")
    p.add_argument("--calibrations", default="none,median,neutral",
                   help="calibrations to compare (default: none,median,neutral)")
    p.add_argument("--finetune", default="dlib_face", metavar="MODEL",
                   help="network fine-tuned for intensity ('' for none; default: dlib_face)")
    p.add_argument("--ft-args", default=FT_ARGS,
                   help=f"the finetune flags (default: the quick preset's, 10 epochs: {FT_ARGS!r})")
    p.add_argument("--rerun", action="store_true", help="rerun runs that exist already")
    args = p.parse_args(argv)
    ws, t0 = Path(args.workspace), time.perf_counter()
    cals = [c for c in args.calibrations.split(",") if c]
    if not (ws / "data" / DATASET).exists():
        _cli(ws, "data", "synth")
    rows = []
    for model in [m for m in args.models.split(",") if m]:
        _cli(ws, "extract", "--model", model, "--quiet")
        rows += codes_rows(ws, model, cals, args.rerun)
    if args.finetune:
        rows += finetune_rows(ws, args.finetune, cals, args.rerun, args)
    text = f"{_setting(ws, rows[0]['intensity run'])}\n\n{table(ws, rows)}\n"
    out = ws / "results" / DATASET / "intensity_table.md"
    out.write_text(text)
    print(text + f"table: {out} ({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
