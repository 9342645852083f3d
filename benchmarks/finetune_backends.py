"""Time one fine-tuning run's jobs in one process, on a local Dask cluster and on torchrun ranks.

    python benchmarks/finetune_backends.py [--workers 2] [--epochs 2]

The run: tests/test_finetune.py's 48-px synthetic faces (4 subjects per part, AU01 and AU12
drawn), ``timm:test_efficientnet`` from ``random:0``, ``--protocol kfold:2``: 2 AUs x 2 folds =
4 networks, each one job of the one loop (classify/learn/pool.py). Prints the wall time of each
backend and whether its networks equal the one-process ones (to 1e-4). Needs
``pip install 'featbench[dask]'``. A toy: on a machine that other jobs load, say so beside the
numbers.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

SCRIPT = """
import sys, time
sys.path[:0] = [{repo!r}, {tests!r}]
from classify.finetune import FinetuneConfig, finetune_run
from featbench.core.workspace import Workspace
from test_finetune import FAST, make_table
t0 = time.perf_counter()
out = finetune_run(Workspace({ws!r}), "synth", FinetuneConfig(**{config!r}), table=make_table(),
                   aligned_path={cache!r}, progress=False)
if out is not None:
    print("SECONDS", round(time.perf_counter() - t0, 1))
"""


def _tensors(models_dir):
    import numpy as np

    from featbench.core.modelfile import open_model

    model = open_model(models_dir)
    return {g: {k: np.asarray(v) for k, v in model.tensors(g).items()} for g in model.groups}


def _same(a, b):
    import numpy as np

    ta, tb = _tensors(a), _tensors(b)
    return sorted(ta) == sorted(tb) and all(
        np.allclose(ta[g][k], tb[g][k], rtol=1e-4, atol=1e-5) for g in ta for k in ta[g])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, default=2, help="Dask workers and torchrun ranks")
    p.add_argument("--epochs", type=int, default=2)
    args = p.parse_args(argv)
    from classify.finetune import FinetuneConfig, finetune_run
    from featbench.core.workspace import Workspace
    from test_finetune import FAST, make_table, write_cache

    config = {**FAST, "epochs": args.epochs, "protocol": "kfold:2"}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        table = make_table()
        cache = write_cache(tmp / "faces.h5", table)
        times, dirs = {}, {}
        t0 = time.perf_counter()
        one = finetune_run(Workspace(tmp / "one"), "synth", FinetuneConfig(**config), table=table,
                           aligned_path=cache, progress=False)
        times["one process"], dirs["one process"] = time.perf_counter() - t0, one["models_dir"]
        from dask.distributed import LocalCluster

        with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                          dashboard_address=None) as cluster:
            t0 = time.perf_counter()
            out = finetune_run(Workspace(tmp / "dask"), "synth", FinetuneConfig(**config),
                               table=table, aligned_path=cache, progress=False,
                               scheduler=cluster.scheduler_address)
            times[f"dask, {args.workers} workers"] = time.perf_counter() - t0
            dirs[f"dask, {args.workers} workers"] = out["models_dir"]
        script = tmp / "ft.py"
        script.write_text(SCRIPT.format(repo=str(REPO), tests=str(REPO / "tests"), config=config,
                                        ws=str(tmp / "ranks"), cache=str(cache)))
        env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node",
                               str(args.workers), str(script)], env=env, capture_output=True,
                              text=True)
        if proc.returncode:
            sys.exit(proc.stderr[-2000:])
        key = f"torchrun, {args.workers} ranks"
        times[key], dirs[key] = time.perf_counter() - t0, Workspace(tmp / "ranks").models_dir(
            "synth", one["run"])
        for name, seconds in times.items():
            same = "" if name == "one process" else (
                ", networks equal to one process" if _same(dirs["one process"], dirs[name])
                else ", NETWORKS DIFFER")
            print(f"{name}: {seconds:.1f} s wall{same}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
