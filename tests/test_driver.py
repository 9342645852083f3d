"""The one driver (classify/driver.py, classify/learn/pool.py): a task and a kind registered in
Python are trained from the command line and applied by ``featbench predict``; every run is named
by one rule; a fine-tuning run's jobs give the same networks on a Dask cluster and on torchrun's
ranks as in one process (slow).

Toy task: test_learn's ``Margin`` (squared hinge, thresholds halfway between the class means);
toy kind: test_kinds' nearest-class-mean estimator (``centroid``).
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")

from classify.basekinds import estimator_kind  # noqa: E402
from classify.kinds import register_kind, unregister_kind  # noqa: E402
from classify.task import register_task, unregister_task  # noqa: E402
from featbench.app.cli import main  # noqa: E402
from featbench.core.modelfile import open_model  # noqa: E402
from featbench.core.results import read_summary  # noqa: E402
from featbench.core.workspace import Workspace  # noqa: E402
from test_finetune import FAST, make_table, one_thread, write_cache  # noqa: E402,F401
from test_kinds import _centroid_spec, _hog_workspace  # noqa: E402
from test_learn import AUS, Margin, _aligned_photo, _predict_cli as _predict  # noqa: E402
from test_predict_nets import photo  # noqa: E402,F401

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def toys():
    """The toy task and the toy kind, each registered by one line (the kind learns any task)."""
    task = register_task(Margin())
    register_kind(estimator_kind(_centroid_spec(), tasks=None))
    yield task
    unregister_kind("centroid")
    unregister_task(task.name)


def test_a_toy_task_and_kind_train_from_classify_and_predict_decides_with_them(toys, photo, tmp_path,
                                                                                 monkeypatch):
    from extract.encoders import create_encoder
    from featbench.core import faces

    ws, table = _hog_workspace(tmp_path)
    monkeypatch.setattr("featbench.app.commands.classify.load_table", lambda args, **kw: table)
    assert main(["--workspace", str(ws.root), "classify", "--clf", "centroid", "--task", "margin",
                 "--model", "hog", "--aus", "AU01,AU04", "--jobs", "1", "--quiet"]) == 0
    run = "hog__full__centroid__au1+4-margin"  # the task is a tag: it is not the kind's own
    summary = read_summary(ws, "synth").set_index("run")
    assert summary.loc[run, "task"] == "margin" and summary.loc[run, "clf"] == "centroid"
    model = open_model(ws.models_dir("synth", run))
    assert model.manifest["task"] == "margin" and model.manifest["kind"] == "centroid"
    row = _predict(ws, run, photo[0], tmp_path / "p.csv")
    face, _ = faces.align_face(photo[1], faces.detect_landmarks(photo[1]))
    code = create_encoder("hog")(face[None])
    from classify.kinds import load_scorer

    scorer = load_scorer(model)
    assert scorer.task.name == "margin"  # the loaded run decides with its Task
    for au in ("AU01", "AU04"):
        est, thr = scorer.folds[0][au]
        s = float(est.decision_function(code)[0])
        assert row[f"{au}_p"] == pytest.approx(s, rel=1e-6, abs=1e-9)
        assert row[f"{au}_c"] == int(toys.decide(np.array([s]), thr)[0])


def test_a_toy_task_trains_from_finetune_and_predict_decides_with_its_thresholds(toys, photo, tmp_path,
                                                                                  monkeypatch):
    from classify.finetune import load_unit
    from classify.infer import score_batches
    from featbench.core.facesource import FaceInput

    table = make_table()
    cache = write_cache(tmp_path / "faces.h5", table)
    ws = Workspace(tmp_path / "ws")
    monkeypatch.setattr("featbench.app.commands.finetune.load_table", lambda args, **kw: table)
    monkeypatch.setattr("classify.finetune.ensure_aligned", lambda *a, **kw: cache)
    args = ["--model", FAST["model"], "--weights", "random:0", "--input-size", str(FAST["input_size"]),
            "--epochs", "1", "--batch-size", "16", "--optimizer", "adam", "--lr", "3e-3",
            "--aus", "AU01,AU12", "--device", "cpu", "--head", "multilabel", "--quiet"]
    assert main(["--workspace", str(ws.root), "finetune", "--task", "margin", *args]) == 0
    run = "timm-test_efficientnet__full__ft__ml-au1+12-margin"
    assert open_model(ws.models_dir("synth", run)).manifest["task"] == "margin"
    row = _predict(ws, run, photo[0], tmp_path / "p.csv")
    net, settings = load_unit(ws.models_dir("synth", run))
    images, boxes = _aligned_photo(photo[1], FAST["input_size"])
    crops = FaceInput.from_json(settings["face_input"]["model"]).crops(images, boxes)
    s = score_batches(net, [torch.from_numpy(crops)], device="cpu")[0]
    thresholds = open_model(ws.models_dir("synth", run)).manifest["folds"][0]["thresholds"]
    decided = toys.decide(s, np.array([thresholds[a] for a in AUS]))
    for j, au in enumerate(AUS):
        assert row[f"{au}_p"] == pytest.approx(float(s[j]), rel=1e-5, abs=1e-6)
        assert row[f"{au}_c"] == decided[j]


def test_an_unknown_task_is_one_line_naming_the_registered_ones(tmp_path, capsys):
    assert main(["--workspace", str(tmp_path), "classify", "--clf", "svm", "--task", "margn"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown task 'margn'" in err


def test_one_rule_names_every_kind_of_run():
    """The names runs had before the one driver, from the one naming function."""
    from classify.plan import run_key
    from classify.run import classify_run_key
    from test_classify import make_table as codes_table

    table = codes_table()
    assert str(classify_run_key(table, model="hog", region="full", clf="ridge")) == "hog__full__ridge"
    assert str(classify_run_key(table, model="hog", region="full", clf="ridge", balance=True,
                                calibrate="median")) == "hog__full__ridge__bal-calmed"
    assert str(classify_run_key(table, model="hog", clf="svm", balance=False, region="auto",
                                tune_threshold=True)) == "hog__auto__svm__thr-nobal"
    assert str(classify_run_key(table, model="hog", region="full", clf="lstm", options={"epochs": 3},
                                task="intensity")) == "hog__full__lstm__e3-intensity"
    assert str(run_key("m", "full", "ft", variant=("ml",), protocol="kfold:3", seed=1,
                       after=("x",), task_tag="intensity")) == "m__full__ft__ml-kfold3-s1-x-intensity"


# --- the same networks wherever the jobs run -----------------------------------------------------
def _ft_config():
    from classify.finetune import FinetuneConfig

    return FinetuneConfig(**{**FAST, "epochs": 2, "protocol": "kfold:2"})


def _tensors(models_dir):
    model = open_model(models_dir)
    return {g: {k: np.asarray(v) for k, v in model.tensors(g).items()} for g in model.groups}


def _same_run(a, b):
    """Per-AU networks equal to float32 rounding, and the same F1 per AU."""
    ta, tb = _tensors(a["models_dir"]), _tensors(b["models_dir"])
    assert sorted(ta) == sorted(tb) and len(ta) == 4  # 2 AUs x 2 folds
    for g in ta:
        for k in ta[g]:
            np.testing.assert_allclose(ta[g][k], tb[g][k], rtol=1e-4, atol=1e-5, err_msg=f"{g}/{k}")
    f1 = [np.round([float(r["f1"]) for r in x["rows"]], 4) for x in (a, b)]  # a CSV keeps 4 digits
    np.testing.assert_array_equal(f1[0], f1[1])


@pytest.fixture(scope="module")
def ft_faces(tmp_path_factory):
    root = tmp_path_factory.mktemp("driver")
    table = make_table()
    return table, write_cache(root / "faces.h5", table)


@pytest.mark.slow
def test_finetune_on_a_local_dask_cluster_gives_the_one_process_networks(ft_faces, tmp_path):
    pytest.importorskip("distributed")
    from dask.distributed import LocalCluster

    from classify.finetune import finetune_run

    table, cache = ft_faces
    one = finetune_run(Workspace(tmp_path / "one"), "synth", _ft_config(), table=table,
                       aligned_path=cache, progress=False)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster:
        dask = finetune_run(Workspace(tmp_path / "dask"), "synth", _ft_config(), table=table,
                            aligned_path=cache, progress=False, scheduler=cluster.scheduler_address)
    _same_run(one, dask)
    settings = open_model(dask["models_dir"]).manifest["settings"]["units"]
    assert len(settings) == 4


TORCHRUN_SCRIPT = """
import sys
sys.path[:0] = [{repo!r}, {tests!r}]
import torch
torch.set_num_threads(1)
from classify.finetune import FinetuneConfig, finetune_run
from featbench.core.workspace import Workspace
from test_finetune import FAST, make_table
out = finetune_run(Workspace({ws!r}), "synth", FinetuneConfig(**{{**FAST, "epochs": 2, "protocol": "kfold:2"}}),
                   table=make_table(), aligned_path={cache!r}, progress=False)
print("RESULT", "none" if out is None else out["run"])
"""


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread_as_torchrun")
def test_finetune_on_two_torchrun_ranks_gives_the_one_process_networks(ft_faces, tmp_path):
    from classify.finetune import finetune_run

    table, cache = ft_faces
    one = finetune_run(Workspace(tmp_path / "one"), "synth", _ft_config(), table=table,
                       aligned_path=cache, progress=False)
    script = tmp_path / "ft.py"
    script.write_text(TORCHRUN_SCRIPT.format(repo=str(REPO), tests=str(REPO / "tests"),
                                             ws=str(tmp_path / "ranks"), cache=str(cache)))
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                           str(script)], env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    said = sorted(line.split()[1] for line in proc.stdout.splitlines() if line.startswith("RESULT"))
    assert said == sorted([one["run"], "none"])  # rank 0 wrote the run, rank 1 trained its share
    ws = Workspace(tmp_path / "ranks")
    ranks = {"models_dir": ws.models_dir("synth", one["run"]),
             "rows": pd.read_csv(ws.run_csv("synth", one["run"])).iloc[:-1].to_dict("records")}
    _same_run(one, ranks)
