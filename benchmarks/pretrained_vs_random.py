"""What pretraining adds: one network with its published weights against the same network with
seeded random weights, linear-SVM mean F1 on full faces and on regions (each AU its region).

Each weights choice runs in its own workspace beside the others (data shared through a
symlink to the data set's folder, so alignment is done once), through the ordinary commands:
``featbench extract --region all`` then ``featbench classify --clf svm --region full|auto``.
The choices run in parallel processes. Prints one table, and writes it as CSV.

    python benchmarks/pretrained_vs_random.py --data /path/ws/data/synth --model tv:mobilenet_v2 \\
        --weights IMAGENET1K_V1 random:0 --out /tmp/pvr

The pretrained file must be in the cache (``featbench weights import`` / ``fetch``) and the
data set aligned (``featbench align``: the workspaces share its cache); the commands run
offline, so nothing is downloaded behind the measurement's back.
"""

import argparse
import csv
import os
import subprocess
import sys
import time
from pathlib import Path


def _one(data, model, weights, root, dataset):
    """Start extract + classify for one weights choice; return (workspace, Popen)."""
    ws = root / weights.replace(":", "-")
    (ws / "data").mkdir(parents=True, exist_ok=True)
    link = ws / "data" / dataset
    if not link.exists():
        link.symlink_to(Path(data).resolve())
    script = (f"import sys; from featbench.app.cli import main; ws={str(ws)!r}; m={model!r}; "
              f"a=['--offline', '--workspace', ws]; "
              f"sys.exit(main(a + ['extract', '--model', m, '--weights', {weights!r}, '--region', 'all', '--quiet']) "
              f"or main(a + ['classify', '--clf', 'svm', '--model', m, '--region', 'full', '--quiet']) "
              f"or main(a + ['classify', '--clf', 'svm', '--model', m, '--region', 'auto', '--quiet']))")
    log = open(ws / "log.txt", "w")
    return ws, subprocess.Popen([sys.executable, "-c", script], stdout=log, stderr=subprocess.STDOUT,
                                env=dict(os.environ, FEATBENCH_OFFLINE="1"))


def _rows(ws, dataset):
    with open(ws / "results" / dataset / "summary.csv") as fh:
        return list(csv.DictReader(fh))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="the data set's folder (e.g. a workspace's data/synth)")
    p.add_argument("--dataset", default="synth", help="its name (default: synth)")
    p.add_argument("--model", default="tv:mobilenet_v2")
    p.add_argument("--weights", nargs="+", default=["IMAGENET1K_V1", "random:0"])
    p.add_argument("--out", required=True, help="folder for the workspaces and the table")
    args = p.parse_args(argv)
    root = Path(args.out)
    t0 = time.perf_counter()
    jobs = [_one(args.data, args.model, w, root, args.dataset) for w in args.weights]
    for ws, proc in jobs:
        if proc.wait() != 0:
            sys.exit(f"{ws}: failed, see {ws / 'log.txt'}")
    table = []
    for (ws, _), w in zip(jobs, args.weights):
        for row in _rows(ws, args.dataset):
            table.append({"weights_arg": w, "identity": row.get("weights", ""),
                          "region": row["region"], "mean_f1": float(row["mean_f1"]),
                          "mean_accuracy": float(row["mean_accuracy"])})
    with open(root / "pretrained_vs_random.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows(table)
    print(f"{args.model}, linear SVM, {args.dataset} ({time.perf_counter() - t0:.0f} s)")
    for r in table:
        print(f"  {r['weights_arg']:<16} {r['region']:<5} mean F1 {r['mean_f1']:.3f}  "
              f"mean acc {r['mean_accuracy']:.3f}  [{r['identity'][:40]}]")
    print(f"table: {root / 'pretrained_vs_random.csv'}")


if __name__ == "__main__":
    main()
