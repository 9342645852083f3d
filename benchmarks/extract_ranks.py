"""Extraction frames/s with 1 process and with N torchrun ranks, on the same workspace, in one run.

For each of ``--rounds`` rounds, deletes the model's feature file (and shards) and runs

    python -m featbench --workspace WS extract --model M --weights W --quiet
    python -m torch.distributed.run --standalone --nproc-per-node N -m featbench ... (same)

reporting, per setting, the best encoding rate from featbench's summary line (frames encoded /
seconds spent encoding; for torchrun the slowest rank's seconds) and the wall time of the whole
command (imports, process start-up and the join included). The aligned-face cache must exist
(``featbench align``); a small set keeps this short:

    featbench --workspace /tmp/ws data synth --subjects 4 --frames 120
    featbench --workspace /tmp/ws align
    python benchmarks/extract_ranks.py --workspace /tmp/ws --model dlib_face --ranks 2
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _clean(ws, dataset, model):
    feat = Path(ws) / "data" / "features" / dataset
    (feat / f"{model}.h5").unlink(missing_ok=True)
    shutil.rmtree(feat / f"{model}.shards", ignore_errors=True)


def _run(cmd):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    t = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if r.returncode:
        sys.exit(f"failed: {' '.join(cmd)}\n{r.stderr[-2000:]}")
    m = re.search(r"(\d+) computed at ([\d.]+) frames/s", r.stdout)
    return int(m.group(1)), float(m.group(2)), wall


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workspace", required=True)
    ap.add_argument("--dataset", default="synth")
    ap.add_argument("--model", default="dlib_face")
    ap.add_argument("--weights", default=None)
    ap.add_argument("--region", default="full")
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=1)
    args = ap.parse_args(argv)
    tail = ["-m", "featbench", "--workspace", args.workspace, "extract", "--model", args.model,
            "--dataset", args.dataset, "--region", args.region, "--quiet"]
    if args.weights:
        tail += ["--weights", args.weights]
    single = [sys.executable] + tail
    ranked = [sys.executable, "-m", "torch.distributed.run", "--standalone",
              "--nproc-per-node", str(args.ranks)] + tail
    best = {}
    for _ in range(args.rounds):
        for name, cmd in (("1 process", single), (f"{args.ranks} ranks", ranked)):
            _clean(args.workspace, args.dataset, args.model)
            n, fps, wall = _run(cmd)
            old = best.get(name)
            if old is None or fps > old[1]:
                best[name] = (n, fps, wall)
    load = os.getloadavg()[0]
    base = best["1 process"]
    for name, (n, fps, wall) in best.items():
        print(f"{args.model} [{args.region}] {name}: {fps:.1f} frames/s encoding "
              f"({fps / base[1]:.2f}x), {n} frames in {wall:.1f} s wall ({n / wall:.1f} frames/s "
              f"with start-up)")
    print(f"{os.cpu_count()} CPUs, load average {load:.1f} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
