"""The quick run's time in calibration units: is featbench's first run slower than it was?

Machines differ several-fold, so seconds alone say little. This runs ``benchmarks/calibrate.py``
(three fixed workloads that stand for featbench's stages; ``unit_s`` is their sum), then
``featbench run`` (the quick preset) from an empty workspace in a fresh process, then the
yardstick again, and prints the run's wall time, its stage times and the total in units
(wall / mean ``unit_s``). The budget is 300 units (about 10 minutes on a slow 2-core machine).

    python benchmarks/quick_run_units.py [--workspace DIR] [--keep] [-- extra featbench run flags]

Run it on a quiet machine: other work inflates the run more than the yardstick.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
BUDGET_UNITS = 300
_STAGES = re.compile(r"featbench run --preset \S+: .*?\(([^)]*)\)\s*$", re.M)


def calibrate():
    """``unit_s`` and its parts from ``benchmarks/calibrate.py`` in a fresh process."""
    out = subprocess.run([sys.executable, os.path.join(HERE, "calibrate.py")], capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def quick_run(workspace, extra):
    """Run ``featbench run`` in ``workspace``; return (wall seconds, {stage: s}, output)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "featbench", "--workspace", str(workspace), "run",
                          *extra], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if out.returncode:
        sys.exit(f"featbench run failed ({out.returncode}):\n{out.stderr[-3000:]}")
    stages = {}
    found = _STAGES.findall(out.stdout)
    for part in (found[-1].split(", ") if found else []):
        name, _, secs = part.rpartition(" ")
        stages[name] = float(secs.rstrip("s"))
    return wall, stages, out.stdout


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workspace", default=None, help="empty folder to run in (default: a temp one)")
    ap.add_argument("--keep", action="store_true", help="keep the temp workspace")
    ap.add_argument("extra", nargs="*", help="more featbench run flags, after --")
    args = ap.parse_args(argv)
    ws = args.workspace or tempfile.mkdtemp(prefix="featbench-quick-")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    before = calibrate()
    wall, stages, _ = quick_run(ws, args.extra)
    after = calibrate()
    unit = (before["unit_s"] + after["unit_s"]) / 2
    result = {"wall_s": round(wall, 1), "unit_s_before": before["unit_s"],
              "unit_s_after": after["unit_s"], "units": round(wall / unit, 1),
              "budget_units": BUDGET_UNITS, "stages_s": stages,
              "stage_units": {k: round(v / unit, 1) for k, v in stages.items()},
              "load_average_at_start": round(load, 2), "workspace": ws}
    print(json.dumps(result, indent=1))
    print(f"quick run: {wall:.0f} s = {wall / unit:.0f} units (unit_s {unit:.2f}; budget "
          f"{BUDGET_UNITS} units): {'within' if wall / unit <= BUDGET_UNITS else 'OVER'} budget")
    if not args.workspace and not args.keep:
        shutil.rmtree(ws, ignore_errors=True)


if __name__ == "__main__":
    main()
