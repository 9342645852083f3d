"""Jobs run anywhere, for every kind: Method B (stage 1's folds, stage 2) and the LSTM give the
one-process run on a local Dask cluster of 2 workers and on 2 torchrun ranks (CPU, gloo).

Fine-tuning's twins are in test_driver.py. Tolerance, as there: every job is seeded by its own
settings (seed, fold, unit), never by where it runs, so the same networks come out; what can
differ is float32 reduction order when another process splits a sum over another number of
threads, so tensors are compared to 1e-4 relative (1e-5 absolute) and the metrics the run's
tables keep exactly (the CSV's 4 digits). All slow: each starts a cluster or two processes.
"""

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")

from classify.learn.store import read_tensors  # noqa: E402
from featbench.core.modelfile import open_model  # noqa: E402
from featbench.core.workspace import Workspace  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread_as_torchrun")]


def _close(a, b, what):
    assert sorted(a) == sorted(b), what
    for k in a:
        np.testing.assert_allclose(np.asarray(a[k], np.float64), np.asarray(b[k], np.float64),
                                   rtol=1e-4, atol=1e-5, err_msg=f"{what}: {k}")


def _same_model(dir_a, dir_b):
    """Every tensor group of two run folders' models, to float32 rounding."""
    ma, mb = open_model(dir_a), open_model(dir_b)
    assert sorted(ma.groups) == sorted(mb.groups)
    for g in ma.groups:
        _close(ma.tensors(g), mb.tensors(g), g)
    return ma, mb


def _same_table(ws_a, ws_b, dataset, run):
    """The run's per-AU table (every metric, as the CSV keeps it) is the same."""
    a, b = (pd.read_csv(Workspace(w).run_csv(dataset, run)) for w in (ws_a, ws_b))
    pd.testing.assert_frame_equal(a, b)


def _torchrun(script, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    path = tmp_path / "job.py"
    path.write_text(f"import sys\nsys.path[:0] = [{str(REPO)!r}, {str(REPO / 'tests')!r}]\n"
                    "import torch\ntorch.set_num_threads(1)\n" + script)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                           str(path)], env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return sorted(line.split(None, 1)[1] for line in proc.stdout.splitlines()
                  if line.startswith("RESULT"))


@pytest.fixture
def dask_cluster():
    pytest.importorskip("distributed")
    from dask.distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster:
        yield cluster.scheduler_address


# --- Method B: stage 1's folds and final fit, stage 2 ----------------------------------------
def _transfer_inputs(root, ws):
    """test_transfer's expression tree and small ABAW set, their faces aligned in ``ws``."""
    from featbench.core.align import ensure_aligned
    from featbench.core.datasets.affwild2 import read_affwild2
    from test_transfer import _abaw_tree, _expr, _img, _write_png

    if not (root / "expr").is_dir():
        for cls, name in enumerate(("happy", "sad", "surprise")):
            for s in range(6):
                for k in range(2):
                    _write_png(root / "expr" / name / f"P{s:02d}_{name}_{k}.png", _img(cls, 10 * s + k))
        _abaw_tree(root / "abaw")
    expr = _expr(root / "expr", ws)
    au = read_affwild2(root / "abaw")
    au.dataset = "affwild2"
    ensure_aligned(au, ws, progress=False)
    return expr, au


def _transfer(ws, root, scheduler=None):
    from classify.transfer import transfer_run
    from test_transfer import SETTINGS

    expr, au = _transfer_inputs(root, ws)
    return transfer_run(ws, expr_table=expr, au_table=au, settings=replace(SETTINGS, folds=2),
                        control=False, progress=False, scheduler=scheduler)


def _same_transfer(one, other, ws_a, ws_b):
    """Stage 1: the folds' accuracies, epochs and confusion, the saved backbone; stage 2: the
    network (and backbone) groups, thresholds, the per-AU table."""
    s1a, s1b = one["stage1"], other["stage1"]
    for key in ("mean_accuracy", "confusion", "final_epochs"):
        assert s1a[key] == s1b[key], key
    assert ([(f["accuracy"], f["best_epoch"]) for f in s1a["folds"]]
            == [(f["accuracy"], f["best_epoch"]) for f in s1b["folds"]])
    _close(read_tensors(s1a["backbone_file"]), read_tensors(s1b["backbone_file"]), "stage-1 backbone")
    s2a, s2b = one["stage2"], other["stage2"]
    _same_model(ws_a.models_dir("affwild2", s2a["run"]), ws_b.models_dir("affwild2", s2b["run"]))
    np.testing.assert_allclose(list(s2a["thresholds"].values()), list(s2b["thresholds"].values()),
                               rtol=1e-4, atol=1e-5)
    _same_table(ws_a.root, ws_b.root, "affwild2", s2a["run"])


def test_transfer_on_a_local_dask_cluster_gives_the_one_process_run(tmp_path, dask_cluster):
    one_ws, dask_ws = Workspace(tmp_path / "one"), Workspace(tmp_path / "dask")
    one = _transfer(one_ws, tmp_path / "data")
    dask = _transfer(dask_ws, tmp_path / "data", scheduler=dask_cluster)
    assert len(one["stage1"]["folds"]) == 2
    _same_transfer(one, dask, one_ws, dask_ws)


TRANSFER_SCRIPT = """
from pathlib import Path
from featbench.core.workspace import Workspace
from test_backends import _transfer
out = _transfer(Workspace({ws!r}), Path({root!r}))
print("RESULT", "none" if out is None else json.dumps(out, default=str))
"""


def test_transfer_on_two_torchrun_ranks_gives_the_one_process_run(tmp_path):
    one_ws, ranks_ws = Workspace(tmp_path / "one"), Workspace(tmp_path / "ranks")
    one = _transfer(one_ws, tmp_path / "data")
    _transfer_inputs(tmp_path / "data", ranks_ws)  # faces aligned once, before the ranks start
    said = _torchrun("import json\n" + TRANSFER_SCRIPT.format(ws=str(ranks_ws.root),
                                                               root=str(tmp_path / "data")), tmp_path)
    assert len(said) == 2 and said.count("none") == 1  # rank 0 wrote both stages, rank 1 its share
    _same_transfer(one, json.loads(next(s for s in said if s != "none")), one_ws, ranks_ws)


# --- the LSTM over codes ----------------------------------------------------------------------
LSTM_OPTIONS = dict(hidden=8, lr=0.005, weight_noise=0.1, epochs=3, batch=8, patience=None,
                    device="cpu")


def _lstm_table(ws=None):
    """test_lstm's temporal toy (AU01 follows a cue in time); its codes written into ``ws``."""
    from test_classify import write_features
    from test_lstm import temporal_table

    table, X = temporal_table(n_frames=40)
    if ws is not None:
        write_features(ws, table, X, regions=("full",))
    return table


def _lstm(ws, n_jobs=1, scheduler=None):
    """Two per-AU LSTMs on the toy's codes (written in ``ws`` before)."""
    from classify.run import classify_run

    table = _lstm_table()
    return classify_run(ws, "synth", model="toy", clf="lstm", lstm=LSTM_OPTIONS, table=table,
                        aus=["AU01", "AU02"], n_jobs=n_jobs, progress=False, scheduler=scheduler)


def test_the_lstm_on_local_workers_and_a_dask_cluster_gives_the_one_process_run(tmp_path,
                                                                                  dask_cluster):
    _lstm_table(Workspace(tmp_path / "one"))
    one = _lstm(Workspace(tmp_path / "one"))
    for name, kw in (("pool", dict(n_jobs=2)), ("dask", dict(scheduler=dask_cluster))):
        _lstm_table(Workspace(tmp_path / name))
        other = _lstm(Workspace(tmp_path / name), **kw)
        ma, _ = _same_model(one["models_dir"], other["models_dir"])
        assert sorted(ma.groups) == ["AU01", "AU02"]
        _same_table(tmp_path / "one", tmp_path / name, "synth", one["run"])


LSTM_SCRIPT = """
from featbench.core.workspace import Workspace
from test_backends import _lstm
out = _lstm(Workspace({ws!r}))
print("RESULT", "none" if out is None else out["run"])
"""


def test_the_lstm_on_two_torchrun_ranks_gives_the_one_process_run(tmp_path):
    _lstm_table(Workspace(tmp_path / "one"))
    _lstm_table(Workspace(tmp_path / "ranks"))  # the codes written once, before the ranks start
    one = _lstm(Workspace(tmp_path / "one"))
    said = _torchrun(LSTM_SCRIPT.format(ws=str(tmp_path / "ranks")), tmp_path)
    assert said == sorted([one["run"], "none"])
    ranks = Workspace(tmp_path / "ranks")
    _same_model(one["models_dir"], ranks.models_dir("synth", one["run"]))
    _same_table(tmp_path / "one", tmp_path / "ranks", "synth", one["run"])
