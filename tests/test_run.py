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
    assert ("hog", "auto", "svm") in runs and ("cnn_f", "auto", "svm") in runs
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
