"""Method A's fine-tuning numbers for one network, through ``featbench run`` with a preset of its own.

The paper (PROTOCOL.md) reports, for CNN-F on DISFA: fc6 codes + SVM 56.2 %, the fine-tuned
network 65.8 %, on regions with fc6 + fc7 re-initialised 68.5 %, SVM on the fine-tuned net's
fc6 codes 62.9 %, and the ensembles (1) 68.8 %, (2) + fine-tuned 71.1 %, (3) + regions 74.1 %.
This script runs the same comparison for one network (``--model``, default CNN-F) in a
workspace, through the pipeline's stages (data, align, extract, classify, finetune, ensemble,
report: exactly what ``featbench run --preset paper`` does for it):

- frozen codes + SVM of ``--model`` and of the ensemble's other members (``--members``, default
  the quick preset's networks), SVMs on regions for ``--region-members``;
- ``--model`` fine-tuned per AU on full faces (``--reinit fc``), per AU on regions
  (``--reinit fc6-fc7``), and as one multilabel network whose codes get an SVM (a per-AU run is
  12 networks, so it has no one set of codes);
- the ensembles ``fe``, ``fe+region``, ``fe+ft`` and ``fe+ft+region``.

It prints a markdown table (every number read from the runs' rows in ``summary.csv``, the
starting weights named) and writes it as CSV. The workspace's data set is generated when it
is missing (the embedded synthetic set: no network and no landmark model needed); a finished
run is kept on a rerun, so use one workspace per setting (the script refuses a workspace
whose fine-tuning runs used another input size, epochs or batch size).

    python benchmarks/paper_finetune.py --workspace /tmp/ws --input-size 64 --epochs 1
    python benchmarks/paper_finetune.py --workspace /tmp/ws-gpu --device cuda   # full size
    python benchmarks/paper_finetune.py --workspace /tmp/ws-mn --model tv:mobilenet_v2 \
        --model-weights IMAGENET1K_V1 --region-reinit fc    # a real pretrained network
"""

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

QUICK_MEMBERS = ("hog", "dlib_face", "alexnet")


def make_preset(args):
    """The :class:`featbench.app.pipeline.Preset` of this comparison."""
    from featbench.app.pipeline import Finetune, Preset

    common = {"epochs": args.epochs, "device": args.device, "batch_size": args.batch_size}
    if args.input_size:
        common["input_size"] = args.input_size
    fts = (Finetune(args.model, {**common, "reinit": "fc"}),
           Finetune(args.model, {**common, "region": "auto", "reinit": args.region_reinit}),
           Finetune(args.model, {**common, "head": "multilabel", "reinit": "fc"}, code_clfs=("svm",)))
    models = tuple(dict.fromkeys(tuple(args.members) + (args.model,)))
    return Preset("paper-finetune", models=models, region_models=tuple(args.region_members),
                  clfs=("svm",), region_clfs=("svm",),
                  pinned_weights=((args.model, args.model_weights),) if args.model_weights else (),
                  ensembles=("fe", "fe+region", "fe+ft", "fe+ft+region"),
                  missing_weights="random", finetunes=fts)


def check_workspace(ws, dataset, preset, weights):
    """Refuse fine-tuning runs of another setting (they would be kept as up to date)."""
    from classify.finetune import finetune_run_name
    from featbench.core.datasets import load_dataset

    models = ws.results_dir(dataset) / "models"
    if not models.is_dir():
        return
    table = load_dataset(dataset, workspace=ws, progress=False)
    for ft in preset.finetunes:
        settings = models / finetune_run_name(ft.config("random:0", "paper"), table) / "settings.json"
        if not settings.is_file():
            continue
        old = json.loads(settings.read_text())["config"]
        for key in ("input_size", "epochs", "batch_size"):
            if key in ft.settings and old.get(key) != ft.settings[key]:
                sys.exit(f"paper_finetune: {settings}: that run used {key} {old.get(key)}, not "
                         f"{ft.settings[key]}; use a fresh --workspace for another setting")


def table_rows(ws, dataset, preset, out):
    """The comparison's rows, each read from the run's ``summary.csv`` row."""
    from classify.finetune import finetune_run_name
    from featbench.core.datasets import load_dataset
    from featbench.core.identity import RunKey
    from featbench.core.results import read_summary_rows

    summary = {r["run"]: r for r in read_summary_rows(ws.summary_csv(dataset))}
    table = load_dataset(dataset, workspace=ws, progress=False)
    full, region, ml = (finetune_run_name(ft.config("random:0", "paper"), table) for ft in preset.finetunes)
    m = RunKey(preset.finetunes[0].model, "full", "ft").model  # the file-name form (tv-..., timm-...)
    want = [("frozen codes + SVM", f"{m}__full__svm"),
            ("fine-tuned, per AU, --reinit fc", full),
            (f"fine-tuned on regions, per AU, --reinit {preset.finetunes[1].settings['reinit']}", region),
            ("fine-tuned, multilabel, --reinit fc (its codes below)", ml),
            ("SVM on the fine-tuned network's codes", f"{m}-ft__full__svm")]
    for e in preset.ensembles:  # an ensemble is "full" when every member is, else "mixed"
        names = [str(RunKey(f"ensemble-{e}", region, "vote")) for region in ("full", "mixed")]
        want.append((f"ensemble {e}", next((n for n in names if n in summary and not
                                            summary[n].get("error")), names["region" in e])))
    rows = []
    for what, run in want:
        r = summary.get(run, {})
        f1 = r.get("mean_f1", "")
        rows.append({"what": what, "run": run,
                     "mean_f1": f"{100 * float(f1):.1f}" if f1 not in ("", None) else "",
                     "input_px": (out["ft_sizes"].get(run, "") if "__ft" in run else ""),
                     "weights": r.get("weights", ""), "error": r.get("error", "" if r else "no run")})
    return rows


def markdown(rows, header):
    cols = ("what", "run", "mean_f1", "input_px", "weights", "error")
    lines = [header, "", "| " + " | ".join(cols) + " |", "|" + " --- |" * len(cols)]
    lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workspace", required=True, help="workspace (its data set is generated when missing)")
    p.add_argument("--dataset", default="synth", help="data set (default: synth, the embedded one)")
    p.add_argument("--model", default="cnn_f", help="the network compared (default: cnn_f, the paper's)")
    p.add_argument("--weights", default=None,
                   help="starting weights of every CNN (default: imagenet where cached, else random:0, "
                        "said in the table)")
    p.add_argument("--model-weights", default=None,
                   help="starting weights of --model alone (e.g. IMAGENET1K_V1 for tv:mobilenet_v2 "
                        "when that is the file here); the others follow --weights")
    p.add_argument("--members", nargs="*", default=list(QUICK_MEMBERS),
                   help="the ensembles' other frozen-code networks (default: hog dlib_face alexnet)")
    p.add_argument("--region-members", nargs="*", default=["hog", "alexnet"],
                   help="networks with region-based SVMs (default: hog alexnet)")
    p.add_argument("--region-reinit", default="fc6-fc7", choices=("fc", "fc6-fc7", "head"),
                   help="--reinit of the region runs (default: fc6-fc7, the paper's; fc for networks "
                        "without fc6 and fc7, such as tv:mobilenet_v2)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="where everything runs (cpu hides CUDA from extraction too)")
    p.add_argument("--input-size", type=int, default=None,
                   help="face side of the fine-tuned networks (default: the network's own, 224)")
    p.add_argument("--epochs", type=int, default=10, help="fine-tuning epochs at most (default: 10)")
    p.add_argument("--batch-size", type=int, default=32, help="fine-tuning batch (default: 32)")
    p.add_argument("--out", default=None, help="CSV path (default: WS/results/DS/paper_finetune.csv)")
    args = p.parse_args(argv)
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # extraction's auto device too
    from featbench.app.pipeline import run_pipeline
    from featbench.core.workspace import Workspace

    ws = Workspace(args.workspace)
    preset = make_preset(args)
    check_workspace(ws, args.dataset, preset, args.weights)
    t0 = time.perf_counter()
    res = run_pipeline(ws, preset=preset, dataset=args.dataset, weights=args.weights)
    sizes = {}
    for run_dir in (ws.results_dir(args.dataset) / "models").glob("*__ft*"):
        try:
            sizes[run_dir.name] = json.loads((run_dir / "settings.json").read_text())["input_size"]
        except (OSError, ValueError, KeyError):
            pass
    rows = table_rows(ws, args.dataset, preset, {"ft_sizes": sizes})
    import torch

    device = "cuda" if args.device != "cpu" and torch.cuda.is_available() else "cpu"
    header = (f"paper_finetune: {args.model} on {args.dataset}, fine-tuned {args.epochs} epochs at "
              f"{args.input_size or 'its own'} px, batch {args.batch_size}, on {device} "
              f"({torch.cuda.get_device_name(0) if device == 'cuda' else f'{os.cpu_count()} CPU cores'}); "
              f"{(time.perf_counter() - t0) / 60:.1f} min; weights: "
              + ", ".join(f"{m}={w}" for m, w in res["weights"].items()))
    print("\n" + markdown(rows, header))
    out = Path(args.out or ws.results_dir(args.dataset) / "paper_finetune.csv")
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]) + ["setting"])
        w.writeheader()
        w.writerows({**r, "setting": header} for r in rows)
    print(f"\ntable: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
