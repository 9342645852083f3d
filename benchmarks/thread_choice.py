"""A training epoch with featbench's own thread choice against OMP_NUM_THREADS=1, alone and beside
a busy process.

featbench chooses torch's intra-op threads itself (:mod:`featbench.core.threads`: the cores
free now, less its reader threads), so nobody has to set ``OMP_NUM_THREADS``. This checks that
the choice is no slower than the manual setting the README used to advise: each measurement is
a fresh process that trains a randomly initialised torchvision ResNet-18 (``--model``) on
``--size``-pixel faces through featbench's training loop (:func:`classify.training.fit`), the
batches read ahead by featbench's reader thread (:func:`featbench.core._background.read_ahead`,
with :mod:`featbench.core.facesource`'s augmentation), and reports the best epoch time of ``--epochs``. "Busy" starts one spinning
process per core beside it for the measurement. The two settings alternate, ``--repeat``
rounds, best of each.

    python benchmarks/thread_choice.py [--model resnet18] [--size 64] [--steps 12] [--repeat 2]

Prints a table and, per condition, the tool's time over the manual one (<= 1: no slower).
"""

import argparse
import json
import os
import subprocess
import sys
import time

CHILD = r"""
import json, sys, time
import numpy as np, torch, torchvision
from classify.training import TrainConfig, fit
from featbench.core._background import read_ahead
from featbench.core.facesource import augment, draw_augmentation, reader_threads

model_name, size, steps, batch, epochs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
torch.manual_seed(0)
body = getattr(torchvision.models, model_name)(num_classes=12)

class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.body = body

    def forward(self, x):  # uint8 NHWC faces, as featbench's networks take them
        return self.body(x.permute(0, 3, 1, 2).float().div(255.0))

faces = np.random.default_rng(0).integers(0, 256, (steps * batch, size, size, 3), dtype=np.uint8)
labels = torch.from_numpy((np.random.default_rng(1).random((steps * batch, 12)) < 0.3).astype(np.float32))

def batches(epoch, rng):
    aug = draw_augmentation(rng, len(faces), size)
    def read(a):
        sub = {k: v[a:a + batch] for k, v in aug.items()}
        return torch.from_numpy(augment(faces[a:a + batch], sub)), labels[a:a + batch]
    return read_ahead(read, range(0, len(faces), batch), threads=reader_threads())

def loss(net, b):
    return torch.nn.functional.binary_cross_entropy_with_logits(net(b[0]), b[1])

res = fit(Net(), train_batches=batches, step_loss=loss, evaluate=lambda m: {"val_score": 0.0},
          config=TrainConfig(epochs=epochs, patience=None, device="cpu"), progress=False)
print(json.dumps({"epoch_s": min(r["seconds"] for r in res.history),
                  "threads": torch.get_num_threads()}))
"""

SPIN = "import time\nt = time.time() + 3600\nwhile time.time() < t: pass"


def _measure(args, manual):
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "FEATBENCH_THREADS")}
    if manual:
        env["OMP_NUM_THREADS"] = "1"
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = here + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    out = subprocess.run([sys.executable, "-c", CHILD, args.model, str(args.size), str(args.steps),
                          str(args.batch_size), str(args.epochs)],
                         env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _busy(n):
    return [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(n)]


def run(args):
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    rows = {}
    for cond in ("alone", "busy"):
        spinners = _busy(cores) if cond == "busy" else []
        try:
            time.sleep(1.0 if spinners else 0.0)
            for _ in range(args.repeat):
                for manual in (False, True):
                    got = _measure(args, manual)
                    key = (cond, "OMP_NUM_THREADS=1" if manual else "featbench's choice")
                    best = rows.get(key)
                    if best is None or got["epoch_s"] < best["epoch_s"]:
                        rows[key] = got
        finally:
            for p in spinners:
                p.kill()
                p.wait()
    return cores, rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet18", help="a torchvision model name (default: resnet18)")
    ap.add_argument("--size", type=int, default=64, help="face side in pixels (default: 64)")
    ap.add_argument("--steps", type=int, default=12, help="batches per epoch (default: 12)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=2, help="epochs per process, best one kept (default: 2)")
    ap.add_argument("--repeat", type=int, default=2, help="alternating rounds (default: 2)")
    args = ap.parse_args(argv)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    cores, rows = run(args)
    print(f"{args.model}, {args.steps} batches of {args.batch_size} x {args.size} px per epoch, "
          f"{cores} cores, load average at start {load:.1f}; best epoch of {args.epochs} x "
          f"{args.repeat} rounds")
    print(f"{'condition':<8} {'setting':<20} {'threads':>7} {'epoch s':>8}")
    for (cond, setting), r in rows.items():
        print(f"{cond:<8} {setting:<20} {r['threads']:>7} {r['epoch_s']:>8.2f}")
    for cond in ("alone", "busy"):
        ratio = rows[(cond, "featbench's choice")]["epoch_s"] / rows[(cond, "OMP_NUM_THREADS=1")]["epoch_s"]
        print(f"{cond}: featbench's choice / OMP_NUM_THREADS=1 = {ratio:.2f} "
              f"({'no slower' if ratio <= 1.05 else 'slower'})")


if __name__ == "__main__":
    main()
