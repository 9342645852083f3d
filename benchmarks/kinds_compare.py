"""Compare the results of two workspaces file by file: what changed between two code trees.

    python benchmarks/kinds_compare.py BASE_WORKSPACE NEW_WORKSPACE [--dataset synth ...]

For each data set (default: every one under BASE/results): ``summary.csv`` row by row (the
``created`` and ``seconds`` columns are left out: they are when and how long), each run's CSV,
each predictions file (every dataset and attribute, arrays compared exactly) and, under
``WORKSPACE/predict/``, each ``featbench predict`` CSV byte by byte (the workspace's own path
in its ``input`` column aside). Prints one line per
difference and ``identical`` or the count at the end; exit status 1 when anything differs.
Made for ``benchmarks/kinds_check.sh`` (one run of every kind) and ``featbench run``'s quick
preset (issue 32: the one driver changes no result).
"""

import argparse
import csv
import sys
from pathlib import Path

import h5py
import numpy as np

IGNORED = {"created", "seconds"}


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def compare_summary(a, b, out):
    ra = {r["run"]: r for r in _rows(a)}
    rb = {r["run"]: r for r in _rows(b)}
    for run in sorted(set(ra) | set(rb)):
        if run not in ra or run not in rb:
            out.append(f"{b.name}: run {run} only in {'new' if run in rb else 'base'}")
            continue
        for col in sorted((set(ra[run]) | set(rb[run])) - IGNORED):
            va, vb = ra[run].get(col, ""), rb[run].get(col, "")
            if va != vb:
                out.append(f"{b}: {run} {col}: {va!r} -> {vb!r}")


def compare_h5(a, b, out):
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        for key in sorted(set(fa.attrs) | set(fb.attrs)):
            if key in IGNORED:
                continue
            va, vb = np.asarray(fa.attrs.get(key)), np.asarray(fb.attrs.get(key))
            if not np.array_equal(va, vb, equal_nan=va.dtype.kind == "f" and vb.dtype.kind == "f"):
                out.append(f"{b}: attribute {key}: {va!r} -> {vb!r}")
        names = set()
        fa.visit(names.add)
        fb.visit(names.add)
        for name in sorted(names):
            da, db = fa.get(name), fb.get(name)
            if not isinstance(da, h5py.Dataset) and not isinstance(db, h5py.Dataset):
                continue
            if da is None or db is None:
                out.append(f"{b}: /{name} only in {'new' if da is None else 'base'}")
            elif not np.array_equal(da[()], db[()], equal_nan=da.dtype.kind == "f"):
                out.append(f"{b}: /{name} differs")


def compare(base, new, datasets, out):
    for ds in datasets:
        ra, rb = base / "results" / ds, new / "results" / ds
        if (ra / "summary.csv").exists():
            compare_summary(ra / "summary.csv", rb / "summary.csv", out)
        for f in sorted(ra.glob("*.csv")):
            if f.name == "summary.csv":
                continue
            if not (rb / f.name).exists():
                out.append(f"{rb / f.name}: missing")
            elif f.read_bytes() != (rb / f.name).read_bytes():
                out.append(f"{rb / f.name}: differs")
        for f in sorted((ra / "predictions").glob("*.h5")):
            g = rb / "predictions" / f.name
            if not g.exists():
                out.append(f"{g}: missing")
            else:
                compare_h5(f, g, out)
    for f in sorted((base / "predict").glob("*.csv")):  # the input column names each workspace
        g = new / "predict" / f.name
        if not g.exists() or (f.read_bytes().replace(str(base.resolve()).encode(), b"WS")
                              != g.read_bytes().replace(str(new.resolve()).encode(), b"WS")):
            out.append(f"{g}: {'missing' if not g.exists() else 'differs'}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("base", type=Path)
    p.add_argument("new", type=Path)
    p.add_argument("--dataset", action="append", default=None)
    args = p.parse_args(argv)
    datasets = args.dataset or sorted(d.name for d in (args.base / "results").iterdir() if d.is_dir())
    out = []
    compare(args.base, args.new, datasets, out)
    for line in out:
        print(line)
    print(f"{len(out)} differences" if out else "identical")
    return 1 if out else 0


if __name__ == "__main__":
    sys.exit(main())
