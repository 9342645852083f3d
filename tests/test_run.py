"""featbench run: weights planning, fail-fast on missing pretrained files, and the stage flow."""

import pytest

from featbench.app.cli import main
from featbench.core.errors import UsageError, WeightsError
from featbench.app.pipeline import PRESETS, Finetune, plan_runs, resolve_weights, run_pipeline
from featbench.core.results import read_summary_rows
from featbench.core.workspace import Workspace


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
    assert {"hog", "dlib_face"} <= models
    assert {c for _, _, c in runs} == {"svm", "lda"}
    assert ("hog", "auto", "svm") in runs and ("dlib_face", "auto", "svm") in runs  # regions help
    assert PRESETS["quick"].ensembles == ("fe", "fe+region", "fe+ft", "fe+ft+region")
    (ft,) = PRESETS["quick"].finetunes  # one fine-tuned member: a network every machine has
    assert ft.model == "dlib_face" and ft.code_clfs == ("svm",) and ft.weights is None
    (ctl,) = PRESETS["quick"].with_controls().control_finetunes
    assert ctl.weights == "random:0" and ctl.config("dlib", "paper").weights == "random:0"


def test_paper_preset_fine_tunes_as_the_paper():
    """Per-AU CNN-F on the whole face (all FC re-initialised), on regions (fc6 + fc7), and SVM
    on the codes of a fine-tuned CNN-F; every ensemble of the paper."""
    paper = PRESETS["paper"]
    configs = [(ft.model, ft.config("imagenet", "paper"), ft.code_clfs) for ft in paper.finetunes]
    got = {(m, c.head, c.region, c.reinit, clfs) for m, c, clfs in configs}
    assert got == {("cnn_f", "per-au", "full", "fc", ()), ("cnn_f", "per-au", "auto", "fc6-fc7", ()),
                   ("cnn_f", "multilabel", "full", "fc", ("svm",))}
    assert all(c.weights == "imagenet" for _, c, _ in configs)
    assert paper.ensembles == ("fe", "fe+region", "fe+ft", "fe+ft+region")


def test_quick_leaves_out_cnns_without_pretrained_files_and_controls_bring_them_back(no_cache):
    from featbench.app.pipeline import left_out

    plan = resolve_weights(PRESETS["quick"])
    assert plan["alexnet"][0] is None and "alexnet-owt-7be5be79.pth not cached" in plan["alexnet"][1]
    assert set(left_out(plan)) == {"alexnet", "tv:mobilenet_v2"}
    assert {m for m, _, _ in plan_runs(PRESETS["quick"], plan)} == {"hog", "dlib_face"}
    assert plan["hog"][0] == "none" and plan["dlib_face"][0] == "dlib"
    controls = resolve_weights(PRESETS["quick"].with_controls())
    assert controls["alexnet"][0] == "random:0" and "not pretrained" in controls["alexnet"][1]
    assert not left_out(controls)


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

    from featbench.core.synth import generate_dataset

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # no cached weights: random:0
    ws = Workspace(tmp_path)
    generate_dataset(ws.data_dir("synth"), subjects=4, frames=12, progress=False,
                     right_camera=False)
    tiny = dataclasses.replace(PRESETS["quick"], name="tiny", models=("hog", "alexnet"),
                               region_models=("hog",), finetunes=(), control_finetunes=(),
                               clfs=("svm", "lda"), ensembles=("fe+region",))
    out = run_pipeline(ws, preset=tiny, controls=True)  # alexnet from random:0: a control
    assert out["report"].exists() and (out["report"].parent / "report_mean_f1.png").exists()
    assert {"hog__full__svm", "alexnet__full__svm", "hog__auto__svm"} <= set(out["runs"])
    assert any(r.startswith("ensemble-fe+region__") for r in out["runs"]), out["failed"]
    text = out["report"].read_text()
    for run in plan_runs(tiny):  # every planned run is in the report: a result or its error
        assert "__".join(run) in text
    assert "random init, not pretrained" in text
    summary = {r["run"]: r for r in read_summary_rows(ws.summary_csv("synth"))}
    assert "alexnet" not in summary["ensemble-fe+region__mixed__vote"]["members"]  # a control never votes
    printed = capsys.readouterr().out
    for header in ("[1/6] data", "[2/6] align", "[3/6] extract", "[4/6] classify",
                   "[5/6] ensemble", "[6/6] report"):
        assert header in printed

    csvs = {r: ws.run_csv("synth", r).stat().st_mtime_ns for r in out["runs"] if "ensemble" not in r}
    codes = ws.features_path("synth", "alexnet").stat().st_mtime_ns
    run_pipeline(ws, preset=tiny, controls=True, progress=False)
    assert ws.features_path("synth", "alexnet").stat().st_mtime_ns == codes
    assert {r: ws.run_csv("synth", r).stat().st_mtime_ns for r in csvs} == csvs  # all kept

    import os
    import time

    later = time.time() + 5
    os.utime(ws.features_path("synth", "hog"), (later, later))  # as if hog were re-extracted
    run_pipeline(ws, preset=tiny, controls=True, progress=False)
    redone = {r for r, t in csvs.items() if ws.run_csv("synth", r).stat().st_mtime_ns != t}
    assert redone == {r for r in csvs if r.startswith("hog__")}


@pytest.mark.slow
def test_featbench_run_with_a_fine_tuned_member(tmp_path, monkeypatch):
    """A preset's fine-tuning run, the SVM on its network's codes, and the fe+ft ensembles that
    vote them in place of the weakest frozen member; a rerun keeps all of it."""
    import dataclasses
    import json

    import numpy as np

    from classify.ensemble import read_predictions, validation_f1
    from featbench.core.synth import generate_dataset

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # only what ships: dlib's network
    ws = Workspace(tmp_path)
    generate_dataset(ws.data_dir("synth"), subjects=4, frames=12, progress=False,
                     right_camera=False)
    ft = Finetune("dlib_face", {"head": "multilabel", "reinit": "head", "train_from": "fc",
                                "input_size": 112, "epochs": 1, "batch_size": 8}, code_clfs=("svm",))
    tiny = dataclasses.replace(PRESETS["quick"], name="tiny", models=("hog",), region_models=("hog",),
                               clfs=("svm",), region_clfs=("svm",), finetunes=(ft,))
    out = run_pipeline(ws, preset=tiny, progress=False)
    ft_run = next((r for r in out["runs"] if r.startswith("dlib_face__full__ft__ml")), None)
    assert ft_run is not None, out["failed"]
    ft_runs = {ft_run, "dlib_face-ft__full__svm"}
    assert ft_runs <= set(out["runs"]), out["failed"]
    assert {"ensemble-fe+ft__full__vote", "ensemble-fe+ft+region__mixed__vote"} <= set(out["runs"])
    pred = read_predictions(ws.predictions_path("synth", "ensemble-fe+ft__full__vote"))
    # hog, the one frozen member, is the weakest when it has validation scores (these 4
    # subjects may leave it none: then it stays, as only AlexNet is replaced without scores)
    frozen = {"hog__full__svm"} if np.isnan(validation_f1(ws, "synth", "hog__full__svm")) else set()
    assert set(json.loads(pred["members"])) == ft_runs | frozen
    pred = read_predictions(ws.predictions_path("synth", "ensemble-fe+ft+region__mixed__vote"))
    assert set(json.loads(pred["members"])) == ft_runs | frozen | {"hog__auto__svm"}
    summary = {r["run"]: r for r in read_summary_rows(ws.summary_csv("synth"))}
    assert summary["dlib_face-ft__full__svm"]["weights"].startswith(f"finetuned:{ft_run} sha256:")
    kept = {r: ws.run_csv("synth", r).stat().st_mtime_ns for r in ft_runs}
    run_pipeline(ws, preset=tiny, progress=False)
    assert {r: ws.run_csv("synth", r).stat().st_mtime_ns for r in ft_runs} == kept
    # another setting of the same run (its name does not change) retrains it, and its codes
    other = dataclasses.replace(ft, settings={**ft.settings, "lr": 0.02})
    out = run_pipeline(ws, preset=dataclasses.replace(tiny, finetunes=(other,)), progress=False)
    assert all(ws.run_csv("synth", r).stat().st_mtime_ns != kept[r] for r in ft_runs), (out["failed"], {r: ws.run_csv("synth", r).stat().st_mtime_ns - kept[r] for r in ft_runs})
    settings = json.loads((ws.models_dir("synth", ft_run)
                           / "settings.json").read_text())
    assert settings["config"]["lr"] == 0.02


def test_one_failure_path_records_every_affected_run_and_the_others_go_on(tmp_path, capsys):
    """A non-featbench error (a torch error in one network) fails that step's runs, with the
    error's type and the run's protocol in summary.csv; the next steps still run; a fatal
    step's error stops the run."""
    from featbench.app.pipeline import Step, _Context, _run_stage
    from featbench.core.results import read_summary

    ctx = _Context(Workspace(tmp_path), "synth", None, PRESETS["quick"], "kfold:3", "kfold3",
                   wplan={"alexnet": ("random:0", "")}, progress=True)
    ran = []

    def broken():
        raise RuntimeError("CUDA error: device-side assert triggered")

    meta = ctx.run_meta("alexnet", "full", "svm")
    steps = [Step("alexnet", broken, records=(("alexnet__full__svm__kfold3", meta),),
                  error_prefix="extract alexnet: "),
             Step("alexnet__full__svm__kfold3", lambda: ran.append(1), produces=("alexnet__full__svm__kfold3",)),
             Step("cnn_f", lambda: ran.append(2) or "done", produces=("cnn_f__full__svm__kfold3",))]
    _run_stage(ctx, 1, "extract", lambda c: ("", steps))
    assert ran == [2] and ctx.done == ["cnn_f__full__svm__kfold3"]
    assert ctx.failed == [("alexnet__full__svm__kfold3", "RuntimeError: CUDA error: device-side assert triggered")]
    row = read_summary(ctx.workspace, "synth").set_index("run").loc["alexnet__full__svm__kfold3"]
    assert row["error"] == "extract alexnet: RuntimeError: CUDA error: device-side assert triggered"
    assert row["protocol"] == "kfold:3" and row["weights"] == "random:0"
    assert "- alexnet: failed: RuntimeError" in capsys.readouterr().out
    with pytest.raises(RuntimeError):
        _run_stage(ctx, 2, "data", lambda c: ("", [Step("synth", broken, fatal=True)]))


def test_without_controls_a_left_out_cnn_is_said_once_and_in_the_report(tmp_path, monkeypatch,
                                                                          capsys):
    """No pretrained file for alexnet, no --controls: one line says it is left out and how to
    get it; no alexnet run exists; the report's claims section says what it would add."""
    import dataclasses

    from featbench.core.synth import generate_dataset

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    ws = Workspace(tmp_path)
    generate_dataset(ws.data_dir("synth"), subjects=4, frames=12, progress=False,
                     right_camera=False)
    tiny = dataclasses.replace(PRESETS["quick"], name="tiny", models=("hog", "alexnet"),
                               region_models=("hog",), clfs=("svm",), region_clfs=("svm",),
                               finetunes=(), control_finetunes=(), ensembles=("fe+region",))
    out = run_pipeline(ws, preset=tiny, progress=False)
    printed = [ln for ln in capsys.readouterr().out.splitlines() if "left out" in ln]
    assert len(printed) == 1 and "alexnet" in printed[0] and "--controls" in printed[0]
    assert out["left_out"].keys() == {"alexnet"} and "alexnet" not in out["weights"]
    assert not any(r.startswith("alexnet") for r in read_summary_rows(ws.summary_csv("synth"))
                   for r in [r["run"]])
    text = out["report"].read_text()
    assert "alexnet" in text.split("## The paper's claims on this data")[1]


def test_a_weights_file_named_random_is_not_random_init(tmp_path):
    plan = resolve_weights(PRESETS["quick"], str(tmp_path / "random_init_ft.pth"))
    assert plan["alexnet"][1] == ""
    assert resolve_weights(PRESETS["quick"], "random:3")["alexnet"][1] == "random init, not pretrained"


def test_pinned_weights_override_the_rule_for_their_network(no_cache):
    """A preset can pin one network's weights (benchmarks/paper_finetune.py --model-weights);
    the others keep the preset's rule, and a random pin is labelled as random init."""
    import dataclasses

    pinned = dataclasses.replace(PRESETS["quick"], pinned_weights=(("alexnet", "IMAGENET1K_V1"),
                                                                   ("tv:mobilenet_v2", "random:3")))
    plan = resolve_weights(pinned)
    assert plan["alexnet"] == ("IMAGENET1K_V1", "")
    assert plan["tv:mobilenet_v2"] == ("random:3", "random init, not pretrained")
    assert plan["dlib_face"][0] == "dlib" and plan["hog"][0] == "none"


def test_a_host_that_failed_is_not_tried_again_for_the_next_file(no_cache, monkeypatch):
    """Without internet every attempt waits for its timeout: the quick preset's second ImageNet
    file from the same host is left out without a second attempt."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from featbench.app.pipeline import left_out

    hits = []

    class Refuse(BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            self.send_error(503)

        def log_message(self, *args):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Refuse)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.delenv("FEATBENCH_OFFLINE", raising=False)
        monkeypatch.setenv("FEATBENCH_WEIGHTS_MIRROR", f"http://127.0.0.1:{srv.server_address[1]}/")
        plan = resolve_weights(PRESETS["quick"])
    finally:
        srv.shutdown()
        srv.server_close()
    assert set(left_out(plan)) == {"alexnet", "tv:mobilenet_v2"}
    assert len({h.rsplit("/", 1)[-1] for h in hits}) == 1  # one file tried, the other not


def test_a_rerun_after_realignment_extracts_the_stale_codes_again(tmp_path, capsys):
    """featbench run on a workspace whose faces were realigned since its codes were made (a
    landmark file changed) renews those codes and says so, instead of failing the runs."""
    import dataclasses
    import os

    from featbench.core.synth import generate_dataset

    ws = Workspace(tmp_path)
    generate_dataset(ws.data_dir("synth"), subjects=4, frames=12, progress=False,
                     right_camera=False)
    tiny = dataclasses.replace(PRESETS["quick"], name="tiny", models=("hog",), region_models=(),
                               clfs=("lda",), region_clfs=(), finetunes=(), control_finetunes=(),
                               ensembles=())
    assert run_pipeline(ws, preset=tiny, protocol="kfold:2", progress=False)["failed"] == []
    lm = next((ws.data_dir("synth") / "Landmark_Points").rglob("*.mat"))
    os.utime(lm, ns=(lm.stat().st_atime_ns, lm.stat().st_mtime_ns + 10**9))
    capsys.readouterr()
    out = run_pipeline(ws, preset=tiny, protocol="kfold:2", progress=True)
    assert out["failed"] == []
    said = capsys.readouterr().out
    assert "stale" in said and "extracting them again" in said
