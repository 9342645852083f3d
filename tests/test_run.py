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


def test_featbench_run_end_to_end_on_a_tiny_synth_set(tmp_path, monkeypatch, capsys):
    """Every real stage on 4 subjects x 12 frames, with a preset of two cheap networks; a rerun
    keeps what is done and redoes only what a newer feature file invalidates."""
    import dataclasses

    from featbench.synth import generate_dataset

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # no cached weights: random:0
    ws = Workspace(tmp_path)
    generate_dataset(ws.data_dir("synth"), subjects=4, frames=12, progress=False,
                     right_camera=False)
    tiny = dataclasses.replace(PRESETS["quick"], name="tiny", models=("hog", "alexnet"),
                               region_models=("hog",))
    out = run_pipeline(ws, preset=tiny)
    assert out["report"].exists() and (out["report"].parent / "report_mean_f1.png").exists()
    assert {"hog__full__svm", "alexnet__full__svm", "hog__auto__svm"} <= set(out["runs"])
    assert any(r.startswith("ensemble-fe__") for r in out["runs"]), out["failed"]
    text = out["report"].read_text()
    for run in plan_runs(tiny):  # every planned run is in the report: a result or its error
        assert "__".join(run) in text
    assert "random init, not pretrained" in text
    printed = capsys.readouterr().out
    for header in ("[1/6] data", "[2/6] align", "[3/6] extract", "[4/6] classify",
                   "[5/6] ensemble", "[6/6] report"):
        assert header in printed

    csvs = {r: ws.run_csv("synth", r).stat().st_mtime_ns for r in out["runs"] if "ensemble" not in r}
    codes = ws.features_path("synth", "alexnet").stat().st_mtime_ns
    run_pipeline(ws, preset=tiny, progress=False)
    assert ws.features_path("synth", "alexnet").stat().st_mtime_ns == codes
    assert {r: ws.run_csv("synth", r).stat().st_mtime_ns for r in csvs} == csvs  # all kept

    import os
    import time

    later = time.time() + 5
    os.utime(ws.features_path("synth", "hog"), (later, later))  # as if hog were re-extracted
    run_pipeline(ws, preset=tiny, progress=False)
    redone = {r for r, t in csvs.items() if ws.run_csv("synth", r).stat().st_mtime_ns != t}
    assert redone == {r for r in csvs if r.startswith("hog__")}
