"""featbench run: weights planning, fail-fast on missing pretrained files, and the stage flow."""

import pytest

from featbench.cli import main
from featbench.errors import UsageError, WeightsError
from featbench.pipeline import PRESETS, plan_runs, resolve_weights, run_pipeline
from featbench.workspace import Workspace


@pytest.fixture
def no_cache(tmp_path, monkeypatch):
    """An empty torch hub: no pretrained weights cached."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    import torch

    monkeypatch.setattr(torch.hub, "_hub_dir", None, raising=False)
    return tmp_path


def test_quick_covers_every_stage_kind():
    runs = plan_runs(PRESETS["quick"])
    models = {m for m, _, _ in runs}
    assert {"hog", "dlib_face", "alexnet", "cnn_f"} <= models
    assert {c for _, _, c in runs} == {"svm", "lda"}
    assert ("hog", "auto", "svm") in runs and ("alexnet", "auto", "svm") in runs
    assert PRESETS["quick"].ensembles == ("fe", "fe+region")


def test_quick_falls_back_to_random_weights_and_says_so(no_cache):
    plan = resolve_weights(PRESETS["quick"])
    assert plan["alexnet"][0] == "random:0" and "not pretrained" in plan["alexnet"][1]
    assert plan["hog"][0] == "none" and plan["dlib_face"][0] == "dlib"


def test_paper_names_missing_weight_files_before_work(no_cache, capsys):
    with pytest.raises(WeightsError, match="alexnet-owt-7be5be79.pth.*resnet152-394f9c45.pth"):
        resolve_weights(PRESETS["paper"])
    plan = resolve_weights(PRESETS["paper"], "random:0")
    assert all(w in ("random:0",) for w, _ in plan.values())
    status = main(["--workspace", str(no_cache), "run", "--preset", "paper"])
    assert status == 2
    assert "--weights random:0" in capsys.readouterr().err
    assert not (no_cache / "data").exists()  # nothing started


def test_unknown_preset(tmp_path):
    with pytest.raises(UsageError, match="did you mean 'quick'"):
        run_pipeline(Workspace(tmp_path), preset="quik")


# the stage flow, with stand-ins for the data, align, extract and classify stages -----------
class _Table:
    dataset = "synth"
    aus = ("AU01", "AU12")
    subjects = ("SN003", "SN004")

    def __init__(self):
        import pandas as pd

        self.frames = pd.DataFrame({"subject": ["SN003"] * 10 + ["SN004"] * 10})

    def labelled_mask(self):
        import numpy as np

        return np.ones(20, bool)


@pytest.fixture
def fake_stages(no_cache, monkeypatch):
    import sys
    import types

    import numpy as np

    import classify.run
    import featbench.align
    import featbench.datasets
    from featbench.ensemble import write_predictions
    from featbench.frames import KEY_DTYPE
    from featbench.results import write_run

    calls = {"extract": [], "classify": []}
    ws = Workspace(no_cache / "ws")

    def extract_features(table, workspace, model, *, region, weights, progress=True):
        calls["extract"].append((model, region, weights))
        path = workspace.features_path("synth", model)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"")
        return path

    def classify_run(workspace, dataset, *, model, clf, region, protocol, table, progress=True):
        calls["classify"].append((model, region, clf))
        run = f"{model}__{region}__{clf}"
        rng = np.random.default_rng(len(calls["classify"]))
        labels = np.array([[1, 0], [0, 1]] * 10, np.int8)
        scores = labels * 2.0 - 1 + rng.standard_normal(labels.shape)
        keys = np.zeros(20, KEY_DTYPE)
        keys["frame"] = np.arange(20)
        write_predictions(workspace.predictions_path(dataset, run), frames=keys, labels=labels,
                          scores=scores, decisions=scores > 0, fold=np.zeros(20), aus=_Table.aus,
                          thresholds=np.zeros(2), run=run, model=model, region=region, clf=clf,
                          weights="random:0")
        rows = [{"au": a, "f1": 0.5, "accuracy": 0.5, "precision": 0.5, "recall": 0.5,
                 "support": 10, "threshold": 0.0} for a in _Table.aus]
        write_run(workspace, dataset, run, rows,
                  meta={"model": model, "region": region, "clf": clf, "weights": "random:0"})
        return {"run": run, "mean": {"f1": 0.5}}

    monkeypatch.setattr(featbench.datasets, "load_dataset", lambda *a, **k: _Table())
    monkeypatch.setattr(featbench.align, "ensure_aligned", lambda *a, **k: ws.aligned_path("synth"))
    monkeypatch.setitem(sys.modules, "extract.extractor",
                        types.SimpleNamespace(extract_features=extract_features))
    monkeypatch.setattr(classify.run, "classify_run", classify_run)
    return ws, calls


def test_pipeline_runs_every_stage_then_skips_what_is_done(fake_stages, capsys):
    ws, calls = fake_stages
    out = run_pipeline(ws)
    printed = capsys.readouterr().out
    for header in ("[1/6] data", "[2/6] align", "[3/6] extract", "[4/6] classify",
                   "[5/6] ensemble", "[6/6] report"):
        assert header in printed
    assert "random init, not pretrained" in printed
    assert ("alexnet", "all", "random:0") in calls["extract"]
    assert len(calls["classify"]) == len(plan_runs(PRESETS["quick"]))
    assert "ensemble-fe__full__vote" in out["runs"]
    assert "ensemble-fe+region__mixed__vote" in out["runs"]
    assert out["failed"] == [] and out["report"].exists()
    assert (out["report"].parent / "report_mean_f1.png").exists()

    calls["classify"].clear()
    run_pipeline(ws, progress=False)
    assert calls["classify"] == []  # every run newer than its features: kept
    import os
    import time

    later = time.time() + 5
    os.utime(ws.features_path("synth", "hog"), (later, later))  # re-extracted hog
    run_pipeline(ws, progress=False)
    assert sorted(calls["classify"]) == sorted(r for r in plan_runs(PRESETS["quick"])
                                               if r[0] == "hog")


@pytest.mark.slow
def test_featbench_run_end_to_end_on_a_tiny_synth_set(tmp_path, monkeypatch, capsys):
    """Every real stage on 4 subjects x 12 frames, with a preset of two cheap networks."""
    import dataclasses

    from featbench.synth import generate_dataset

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # no cached weights: random:0
    ws = Workspace(tmp_path)
    generate_dataset(ws.data_dir("synth"), subjects=4, frames=12, progress=False,
                     right_camera=False)
    tiny = dataclasses.replace(PRESETS["quick"], name="tiny", models=("hog", "alexnet"),
                               region_models=("hog",))
    out = run_pipeline(ws, preset=tiny, progress=False)
    assert out["report"].exists() and (out["report"].parent / "report_mean_f1.png").exists()
    assert {"hog__full__svm", "alexnet__full__svm", "hog__auto__svm"} <= set(out["runs"])
    assert any(r.startswith("ensemble-fe__") for r in out["runs"]), out["failed"]
    text = out["report"].read_text()
    for run in plan_runs(tiny):  # every planned run is in the report: a result or its error
        assert "__".join(run) in text
    assert "random init, not pretrained" in text
