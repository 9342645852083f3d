"""Aff-Wild2-scale classification in bounded memory: time and peak RSS of ``classify --clf svm``.

Writes a synthetic feature file of ``--frames`` (default 1,000,000) frames x ``--dims``
(default 512) codes, stored as float16 like ``featbench extract --dtype float16``, with the 12
Aff-Wild2 AUs labelled at Aff-Wild2-like prevalence (``PREVALENCE``: approximate shares of
positive frames in the ABAW3 training set; rare AU15/23/24, common AU25), spread over 547
"videos" split 70/30 into Train_Set / Validation_Set. Each AU shifts the codes along its own
random direction (weak, noisy: the classifiers have something to find, not a solved task).

Then it runs the SVM run of the protocol (``own``: test = the validation videos) in a child
process, exactly what ``featbench classify --clf svm --protocol own`` does, with
``FEATBENCH_MEMORY_GB`` set (default 1): codes larger than that stay in the HDF5 file, and
training sets over a worker's share are fitted out of core (SGD hinge). The parent samples
the resident memory of the child and its workers every 0.2 s; it reports the peak of their
sum, the wall time, and what the run's settings.json recorded.

    python benchmarks/large_scale.py                       # 1M x 512, budget 1 GB
    python benchmarks/large_scale.py --frames 200000 --dims 256 --workdir /tmp/ls

Synthetic codes: no real data set is involved; the F1 it prints says only that the pipeline
learned the planted directions, nothing about Aff-Wild2.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: approximate share of positive frames per AU in ABAW3's Aff-Wild2 training set
PREVALENCE = {"AU01": 0.12, "AU02": 0.05, "AU04": 0.16, "AU06": 0.27, "AU07": 0.39,
              "AU10": 0.35, "AU12": 0.24, "AU15": 0.03, "AU23": 0.03, "AU24": 0.03,
              "AU25": 0.61, "AU26": 0.09}
VIDEOS = 547
DATASET = "bigsynth"


def make_table(frames, seed=0):
    """A FrameTable of ``frames`` rows over 547 videos, labels drawn at ``PREVALENCE``."""
    import pandas as pd

    from featbench.core.frames import BASE_COLUMNS, FrameTable

    rng = np.random.default_rng(seed)
    video = np.sort(rng.integers(0, VIDEOS, frames))
    names = np.array([f"video{v:03d}" for v in range(VIDEOS)], dtype=object)
    split = np.where(np.arange(VIDEOS) < int(0.7 * VIDEOS), "train", "validation").astype(object)
    frame = np.zeros(frames, np.int64)
    starts = np.r_[0, np.flatnonzero(np.diff(video)) + 1]
    for a, b in zip(starts, np.r_[starts[1:], frames]):
        frame[a:b] = np.arange(b - a)
    df = pd.DataFrame({"subject": names[video], "video": names[video], "frame": frame,
                       "source": "", "source_index": frame, "landmark_file": "",
                       "split": split[video]})
    df = df[list(BASE_COLUMNS)]
    for au, p in PREVALENCE.items():
        # episodes, not independent frames: runs of ~50 frames on or off
        runs = rng.random(frames // 50 + 1) < p
        df[au] = np.repeat(runs, 50)[:frames].astype(np.int8)
    return FrameTable(DATASET, "/nonexistent", tuple(PREVALENCE), df)


def write_codes(ws, table, dims, seed=1, block=50_000):
    """Write the float16 feature file through the store's writer, block by block."""
    from extract.store import open_store

    rng = np.random.default_rng(seed)
    dirs = rng.normal(size=(len(PREVALENCE), dims)).astype(np.float32)
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    labels = table.labels(list(PREVALENCE)).astype(np.float32)
    path = ws.features_path(DATASET, "big")
    with open_store(path, keys=table.keys(), model="big", layer="synthetic", weights="random:0",
                    input_size=0, dims=dims, dtype="float16", overwrite=True) as w:
        for a in range(0, len(table), block):
            y = labels[a:a + block]
            x = rng.normal(size=(len(y), dims)).astype(np.float32) + 0.6 * (y @ dirs)
            w.write("full", a, x)
    return path


def _fits(path, frames, dims):
    import h5py

    if not path.is_file():
        return False
    with h5py.File(path, "r") as f:
        return (f["full"]["codes"].shape == (frames, dims)
                and int(f["full"].attrs.get("rows_done", 0)) == frames)


def child(workdir, frames, dims, jobs):
    """Build the table (cheap, seeded) and run the SVM classification; print JSON."""
    from classify.run import classify_run
    from featbench.core.workspace import Workspace

    ws = Workspace(workdir)
    table = make_table(frames)
    t0 = time.perf_counter()
    res = classify_run(ws, DATASET, model="big", clf="svm", protocol="own", table=table,
                       n_jobs=jobs, progress=False, tune_threshold=True)
    settings = json.loads((res["models_dir"] / "settings.json").read_text())
    print(json.dumps({"seconds": time.perf_counter() - t0, "mean_f1": res["mean"]["f1"],
                      "peak_rss_mb": settings["peak_rss_mb"], "solver": settings["solver"],
                      "codes_in_memory": settings["codes_in_memory"],
                      "n_train": settings["n_train"], "n_test": settings["n_test"]}))


def tree_rss(proc):
    import psutil

    total = 0
    try:
        for p in [proc] + proc.children(recursive=True):
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
    except psutil.Error:
        pass
    return total


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=1_000_000)
    ap.add_argument("--dims", type=int, default=512)
    ap.add_argument("--memory-gb", type=float, default=1.0, help="FEATBENCH_MEMORY_GB")
    ap.add_argument("--jobs", type=int, default=2, help="classifier worker processes")
    ap.add_argument("--workdir", default="/tmp/featbench-large-scale")
    ap.add_argument("--reuse", action="store_true",
                    help="keep a codes file of the same size from an earlier run (same seed)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child(args.workdir, args.frames, args.dims, args.jobs)

    import psutil

    from featbench.core.workspace import Workspace

    ws = Workspace(args.workdir)
    t0 = time.perf_counter()
    table = make_table(args.frames)
    path = ws.features_path(DATASET, "big")
    if not (args.reuse and _fits(path, args.frames, args.dims)):
        path = write_codes(ws, table, args.dims)
    write_s = time.perf_counter() - t0
    del table
    print(f"wrote {path} ({path.stat().st_size / 1e9:.2f} GB, {args.frames} x {args.dims} "
          f"float16) in {write_s:.0f} s", flush=True)
    env = dict(os.environ, FEATBENCH_MEMORY_GB=str(args.memory_gb),
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, __file__, "--child", "--frames", str(args.frames), "--dims",
           str(args.dims), "--jobs", str(args.jobs), "--workdir", args.workdir]
    t1 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)
    ps = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, tree_rss(ps))
        time.sleep(0.2)
    out = proc.stdout.read()
    wall = time.perf_counter() - t1
    if proc.returncode:
        print(out)
        return proc.returncode
    res = json.loads(out.strip().splitlines()[-1])
    print(f"classify --clf svm --protocol own --tune-threshold: {wall:.0f} s wall "
          f"({res['n_train']} training / {res['n_test']} test frames, budget "
          f"{args.memory_gb:g} GB, {args.jobs} workers)")
    print(f"peak RSS, process tree sampled every 0.2 s: {peak / (1 << 20):.0f} MB "
          f"(settings.json: main {res['peak_rss_mb']['main']:.0f} MB, largest worker "
          f"{res['peak_rss_mb']['worker_max']:.0f} MB)")
    print(f"solvers: {', '.join(res['solver'])}; codes in memory: {res['codes_in_memory']}; "
          f"mean F1 {res['mean_f1']:.3f} (synthetic codes)")
    print(json.dumps({"frames": args.frames, "dims": args.dims, "write_s": round(write_s, 1),
                      "classify_s": round(wall, 1), "peak_tree_rss_mb": round(peak / (1 << 20)),
                      **res}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
