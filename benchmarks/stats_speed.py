"""What the statistics cost a run: intervals of every run and the report's paired tests.

Times, best of ``--repeat`` rounds, what ``featbench run`` / ``featbench report`` add for the
statistics of a whole quick run (14 runs x 12 AUs, 9 test subjects x 240 frames,
``--resamples`` 1,000):

- ``intervals``: each run's subject-level bootstrap intervals of F1, accuracy, precision,
  recall and AUC (per AU and mean) from its predictions file (reading it included);
- ``tests``: the report's paired comparisons: every run against the top one (the ranking's
  *vs top*) and the paper's claims (``featbench.app.claims``), permutation test and paired
  bootstrap each;

then the peak memory (tracemalloc) of one run's intervals at 1x and 4x the resamples, which
should grow with resamples x (subjects + reported values) only, and ``unit_s`` of
``benchmarks/calibrate.py`` run just after in a fresh process (``--no-calibrate`` skips it), so
the times can be read in calibration units.

    python benchmarks/stats_speed.py [--workspace WS] [--resamples 1000] [--repeat 3]

Without ``--workspace`` it builds, in a temporary folder, 14 simulated runs with the quick run's
names and sizes (the statistics see only the predictions files, so their content matters to
the time only through their size); with it, it times that workspace's runs, writing nothing.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import tracemalloc

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

#: the quick run's 14 runs (README), for the simulated workspace
QUICK_RUNS = ("hog__full__svm", "hog__full__lda", "hog__auto__svm", "hog__auto__lda",
              "dlib_face__full__svm", "dlib_face__full__lda", "dlib_face__auto__svm",
              "dlib_face__auto__lda", "dlib_face__full__ft__ml-headonly-fromfc",
              "dlib_face-ft__full__svm", "ensemble-fe__full__vote",
              "ensemble-fe+region__mixed__vote", "ensemble-fe+ft__full__vote",
              "ensemble-fe+ft+region__mixed__vote")
AUS = ("AU01", "AU02", "AU04", "AU05", "AU06", "AU09", "AU12", "AU15", "AU17", "AU20", "AU25",
       "AU26")


def simulated_workspace(root, *, subjects=9, frames=240, seed=0):
    """Write the 14 runs' predictions files and summary rows (one shared label set)."""
    import numpy as np

    from featbench.core.frames import KEY_DTYPE
    from featbench.core.metrics import au_metrics
    from featbench.core.results import write_predictions, write_run
    from featbench.core.workspace import Workspace

    ws = Workspace(root)
    rng = np.random.default_rng(seed)
    n, k = subjects * frames, len(AUS)
    keys = np.zeros(n, KEY_DTYPE)
    keys["subject"] = np.repeat([f"SN{i:03d}".encode() for i in range(subjects)], frames)
    keys["frame"] = np.tile(np.arange(frames), subjects)
    labels = (rng.uniform(size=(n, k)) < rng.uniform(0.03, 0.3, k)).astype(np.int8)
    members = "hog__full__svm,dlib_face__full__svm"
    for i, run in enumerate(QUICK_RUNS):
        scores = (1 + i / 10) * labels + rng.normal(0, 1, (n, k))
        dec = (scores > 1).astype(np.int8)
        write_predictions(ws.predictions_path("synth", run), frames=keys, labels=labels,
                          scores=scores, decisions=dec, fold=np.zeros(n), aus=AUS,
                          thresholds=np.ones(k), run=run)
        rows = [{"au": au, **{m: v for m, v in au_metrics(labels[:, a], dec[:, a]).items()
                              if m != "frames"}, "threshold": 1.0} for a, au in enumerate(AUS)]
        model, region, clf = run.split("__")[:3]
        write_run(ws, "synth", run, rows, meta={"model": model, "region": region, "clf": clf,
                                                 "weights": "none", "protocol": "paper",
                                                 "members": members if clf == "vote" else ""})
    return ws


def time_once(ws, settings):
    """(intervals s, tests s, comparisons) for the runs of ``ws``, nothing written."""
    from featbench.app.claims import check_claims
    from featbench.app.comparisons import Comparer, ties_with_top
    from featbench.core.results import read_summary_rows, run_intervals

    rows = [r for r in read_summary_rows(ws.summary_csv("synth")) if not r.get("error")]
    cpu = time.process_time()
    t = time.perf_counter()
    for r in rows:
        run_intervals(ws.predictions_path("synth", r["run"]), clf=r["clf"], settings=settings)
    intervals = time.perf_counter() - t
    t = time.perf_counter()
    comparer = Comparer(ws, "synth", settings)
    ranked = sorted(rows, key=lambda r: -float(r["mean_f1"]))
    ties = ties_with_top(comparer, [r["run"] for r in ranked])
    claims = check_claims([{"run": r["run"], "mean_f1": float(r["mean_f1"]),
                            "weights": r.get("weights", ""), "members": r.get("members", "")}
                           for r in rows], comparer=comparer)
    tests = time.perf_counter() - t
    return intervals, tests, len(ties) + len(claims), len(rows), time.process_time() - cpu


def peak_memory(ws, run, settings):
    """Peak bytes allocated by one run's intervals (tracemalloc)."""
    from featbench.core.results import run_intervals

    tracemalloc.start()
    run_intervals(ws.predictions_path("synth", run), clf="svm", settings=settings)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workspace", default=None, help="a workspace with runs (default: simulated)")
    p.add_argument("--resamples", type=int, default=1000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--no-calibrate", action="store_true")
    args = p.parse_args()

    from featbench.core.results import read_summary_rows
    from featbench.core.stats import check_settings
    from featbench.core.workspace import Workspace

    settings = check_settings(None, args.resamples)
    with tempfile.TemporaryDirectory() as tmp:
        ws = Workspace(args.workspace) if args.workspace else simulated_workspace(tmp)
        time_once(ws, settings)  # warm-up: imports, first allocations
        rounds = [time_once(ws, settings) for _ in range(args.repeat)]
        first = read_summary_rows(ws.summary_csv("synth"))[0]["run"]
        mem = [peak_memory(ws, first, check_settings(None, r))
               for r in (args.resamples, 4 * args.resamples)]
    best = min(rounds, key=lambda r: r[0] + r[1])
    out = {"runs": best[3], "comparisons": best[2], "resamples": args.resamples,
           "intervals_s": round(best[0], 3), "tests_s": round(best[1], 3),
           "total_s": round(best[0] + best[1], 3), "cpu_s": round(best[4], 3),
           "peak_mb": {str(args.resamples): round(mem[0] / 2**20, 1),
                       str(4 * args.resamples): round(mem[1] / 2**20, 1)}}
    if not args.no_calibrate:
        cal = subprocess.run([sys.executable, os.path.join(HERE, "calibrate.py")],
                             capture_output=True, text=True, check=True)
        out["unit_s"] = json.loads(cal.stdout.strip().splitlines()[-1])["unit_s"]
        out["total_units"] = round(out["total_s"] / out["unit_s"], 2)
    print(f"{out['runs']} runs: intervals {out['intervals_s']} s, {out['comparisons']} paired "
          f"comparisons {out['tests_s']} s, {out['cpu_s']} CPU s in all ({args.resamples} "
          f"resamples); peak memory of one "
          f"run's intervals {out['peak_mb']} MB"
          + (f"; {out['total_units']} calibration units (unit_s {out['unit_s']})"
             if "unit_s" in out else ""))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
