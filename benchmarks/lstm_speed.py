"""Time ``featbench classify --clf lstm`` (the paper's settings) on 12 AUs of the embedded data.

Issue 15's target: 12 AUs on the embedded data's 2048-d codes train in under 3 minutes on a
2-core CPU. The frames, labels and split are the embedded synthetic DISFA set's (27 subjects x
240 frames, the paper's 12/6/9 split); the codes are a stored feature file of that workspace
(``featbench extract --model NAME``), by default projected to ``--dims`` (2048, ResNet-152's
code size) by a seeded Gaussian matrix so that a cheap extractor (hog) stands in for
ResNet-152's cost per frame: the LSTM's cost depends on the code size, not on where the codes
come from. The F1 printed is that of the projected codes, a by-product, not a result to quote.

Usage::

    python benchmarks/lstm_speed.py --workspace WS [--model hog] [--dims 2048] [--jobs N]
                                    [--epochs N] [--sequential]

``--sequential`` also times the same run with one worker (``--jobs 1``) and prints the ratio
measured in this run. Prints the wall seconds of each whole run (reading codes, 12 networks,
writing every output), the CPU seconds the training workers used (what the run costs on an
idle machine: CPU-s / cores, when the machine is shared with other work) and the epochs each
network ran (early stopping on validation F1).
"""

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def projected_workspace(ws, model, dims, tmp, *, name="bench"):
    """Return a Workspace in ``tmp`` whose ``name`` codes are ``model``'s, projected to ``dims``."""
    from extract.store import open_store, read_codes
    from featbench.core.workspace import Workspace

    keys, codes, attrs = read_codes(ws.features_path("synth", model), "full")
    codes = np.asarray(codes, dtype=np.float32)
    if dims and dims != codes.shape[1]:
        rng = np.random.default_rng(0)
        proj = rng.standard_normal((codes.shape[1], dims), dtype=np.float32) / np.sqrt(codes.shape[1])
        codes = codes @ proj
    out = Workspace(tmp)
    with open_store(out.features_path("synth", name), keys=keys, model=name, layer="proj",
                    weights=f"{model}@random-projection:0", input_size=0, dims=codes.shape[1],
                    overwrite=True) as w:
        w.write("full", 0, codes)
    return out, codes.shape[1]


def main(argv=None):
    from classify.run import classify_run
    from featbench.core.datasets import load_dataset
    from featbench.core.workspace import Workspace

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workspace", required=True, help="a workspace with the embedded data and codes")
    p.add_argument("--model", default="hog", help="stored codes to use (default: hog)")
    p.add_argument("--dims", type=int, default=2048, help="project the codes to this size (0: as stored)")
    p.add_argument("--jobs", type=int, default=None, help="networks trained at once (default: all cores)")
    p.add_argument("--epochs", type=int, default=None, help="default: the paper's (classify.lstm)")
    p.add_argument("--sequential", action="store_true", help="also time --jobs 1; print the ratio")
    args = p.parse_args(argv)

    ws = Workspace(args.workspace)
    table = load_dataset("synth", workspace=ws, progress=False)
    lstm = {"epochs": args.epochs} if args.epochs else None
    with tempfile.TemporaryDirectory(prefix="lstm-bench-") as tmp:
        bench_ws, dims = projected_workspace(ws, args.model, args.dims, tmp)
        runs = [("parallel", args.jobs)] + ([("sequential", 1)] if args.sequential else [])
        seconds = {}
        for name, jobs in runs:
            t0 = time.perf_counter()
            res = classify_run(bench_ws, "synth", model="bench", clf="lstm", table=table,
                               n_jobs=jobs, progress=False, lstm=lstm)
            seconds[name] = time.perf_counter() - t0
            settings = json.loads((res["models_dir"] / "settings.json").read_text())
            aus = settings["folds"][0]["aus"]
            epochs = [len(a.get("history", [])) for a in aus.values()]
            cpu = sum(a.get("cpu_seconds", 0) for a in aus.values())
            print(f"{name} (jobs={jobs or os.cpu_count()}): {len(aus)} AUs x {dims}-d codes "
                  f"({args.model} projected), {res['meta']['n_train']} training frames: "
                  f"{seconds[name]:.1f} s wall, {cpu:.1f} CPU-s in the training workers "
                  f"(/ {os.cpu_count()} cores = {cpu / (os.cpu_count() or 1):.1f} s); epochs per AU "
                  f"{epochs}; mean F1 {res['mean']['f1']:.3f}")
        if args.sequential:
            print(f"parallel / sequential time: {seconds['parallel'] / seconds['sequential']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
