"""Time ``classify_run`` end to end on 12 AUs x 5,000 training frames x 4,096-d codes.

Issue 6's requirement: ``featbench classify --clf svm`` (with its C grid) finishes within
2 minutes on a 2-core machine. The codes are synthetic (DISFA-like positive rates, AUs coded
by a few latent factors plus noise, relu'd like fc6) and written through the extract store
into a temporary workspace; the frame table uses DISFA's 27 subject ids with the paper split,
so 12 training subjects hold 5,000 frames.

Usage::

    python benchmarks/classify_timing.py [--clf svm] [--no-balance] [--jobs N] [--dims 4096]

Prints the seconds of the whole run (reading codes, 12 AUs, writing every output).
"""

import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from featbench.core.aus import DISFA_AUS  # noqa: E402
from featbench.core.frames import FrameTable, build_frames  # noqa: E402
from featbench.core.splits import PAPER_SPLIT  # noqa: E402
from featbench.core.workspace import Workspace  # noqa: E402

#: positives per AU on DISFA / 130,814 frames (PROTOCOL.md), so balancing keeps realistic sizes
RATES = np.array([6506, 5644, 19933, 1150, 10327, 5473, 16851, 2682, 6588, 2941, 36247, 11533]) / 130814


def make_data(train_frames=5000, dims=4096, seed=0):
    """Return (table, codes float32 (n, dims)) with ``train_frames`` frames in the training split."""
    rng = np.random.default_rng(seed)
    per_subject = int(np.ceil(train_frames / len(PAPER_SPLIT["train"])))
    subjects = sorted(s for part in PAPER_SPLIT.values() for s in part)
    n = per_subject * len(subjects)
    latent = rng.normal(size=(n, 24))
    labels = np.zeros((n, len(DISFA_AUS)), dtype=np.int8)
    for j, rate in enumerate(RATES):
        drive = latent[:, 2 * j] + 0.6 * latent[:, 2 * j + 1] + rng.normal(scale=0.8, size=n)
        labels[:, j] = drive > np.quantile(drive, 1 - rate)
    codes = np.maximum(latent @ rng.normal(size=(24, dims)) / 4 + rng.normal(size=(n, dims)), 0)
    rows = []
    for i in range(n):
        s = subjects[i // per_subject]
        row = {"subject": s, "video": f"LeftVideo{s}", "frame": i % per_subject, "source": "",
               "source_index": i % per_subject, "landmark_file": "", "split": ""}
        row.update({au: int(labels[i, j]) for j, au in enumerate(DISFA_AUS)})
        rows.append(row)
    table = FrameTable("synth", "/nonexistent", DISFA_AUS, build_frames(rows, DISFA_AUS))
    return table, codes.astype(np.float32)


def main(argv=None):
    from classify.run import classify_run
    from extract.store import open_store

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clf", default="svm", choices=("svm", "lda"))
    p.add_argument("--no-balance", dest="balance", action="store_false")
    p.add_argument("--jobs", type=int, default=None)
    p.add_argument("--dims", type=int, default=4096)
    p.add_argument("--train-frames", type=int, default=5000)
    args = p.parse_args(argv)
    table, codes = make_data(args.train_frames, args.dims)
    with tempfile.TemporaryDirectory() as tmp:
        ws = Workspace(tmp)
        with open_store(ws.features_path("synth", "bench"), keys=table.keys(), model="bench",
                        layer="fc6", weights="random:0", input_size=224, dims=args.dims) as w:
            w.write("full", 0, codes)
        t0 = time.perf_counter()
        out = classify_run(ws, "synth", model="bench", clf=args.clf, balance=args.balance,
                           n_jobs=args.jobs, table=table, progress=False)
        seconds = time.perf_counter() - t0
    n_train = out["meta"]["n_train"]
    print(f"classify --clf {args.clf}{'' if args.balance else ' --no-balance'}: 12 AUs, {n_train} "
          f"training frames x {args.dims}-d, {os.cpu_count()} cores: {seconds:.1f} s "
          f"(mean F1 {out['mean']['f1']:.3f})")
    return seconds


if __name__ == "__main__":
    main()
