"""The report from a small hand-made summary.csv (+ a predictions file for the baseline)."""

import numpy as np
import pytest

from featbench.app.cli import main
from classify.ensemble import write_predictions
from featbench.core.errors import MissingRunError
from featbench.core.frames import KEY_DTYPE
from featbench.app.report import CHART_MEAN, CHART_PER_AU, describe_weights, make_report
from featbench.core.results import record_failure, write_run
from featbench.core.workspace import Workspace

AUS = ["AU01", "AU12", "AU25"]
RUNS = {  # run: (weights, per-AU F1)
    "alexnet__full__svm": ("random:0", [0.30, 0.50, 0.70]),
    "alexnet__full__lda": ("random:0", [0.25, 0.45, 0.72]),
    "hog__full__svm": ("none", [0.40, 0.60, 0.80]),
    "vgg_face__auto__svm": ("imagenet", [0.50, 0.70, 0.90]),
    "ensemble-fe__full__vote": ("alexnet=random:0; hog=none", [0.45, 0.65, 0.85]),
}


@pytest.fixture
def ws(tmp_path):
    ws = Workspace(tmp_path)
    for run, (weights, f1s) in RUNS.items():
        model, region, clf = run.split("__")
        rows = [{"au": a, "f1": f, "accuracy": 0.8, "precision": f, "recall": f, "support": 10,
                 "threshold": 0.0, "auc": 0.7} for a, f in zip(AUS, f1s)]
        meta = {"model": model, "region": region, "clf": clf, "weights": weights,
                "protocol": "paper"}
        if clf == "vote":
            meta["members"] = "alexnet__full__svm,hog__full__svm"
        write_run(ws, "synth", run, rows, meta=meta)
    record_failure(ws, "synth", "resnet152__full__svm", "WeightsError: resnet152-394f9c45.pth "
                   "not cached", meta={"model": "resnet152", "region": "full", "clf": "svm"})
    keys = np.zeros(8, dtype=KEY_DTYPE)
    keys["frame"] = np.arange(8)
    labels = np.array([[1, 0, 1]] * 2 + [[0, 0, 1]] * 2 + [[0, 1, 0]] * 4, dtype=np.int8)
    write_predictions(ws.predictions_path("synth", "hog__full__svm"), frames=keys, labels=labels,
                      scores=np.zeros((8, 3)), decisions=np.zeros((8, 3)), fold=np.zeros(8),
                      aus=AUS, thresholds=np.zeros(3), run="hog__full__svm")
    return ws


def test_report_lists_every_run_and_flags_random_weights(ws):
    path = make_report(ws, "synth")
    text = path.read_text()
    for run in RUNS:
        assert f"`{run}`" in text
    assert "resnet152__full__svm" in text and "not cached" in text  # failed run with its error
    assert "featbench classify --clf svm --model resnet152 --region full" in text
    assert text.count("random init, not pretrained") >= 3
    table = text.split("## Runs by mean F1")[1].split("![")[0]
    order = [run for run in RUNS if f"`{run}`" in table]
    assert table.index("vgg_face__auto__svm") < table.index("ensemble-fe") < table.index(
        "hog__full__svm") < table.index("alexnet__full__svm")
    assert len(order) == len(RUNS)
    # all-positive baseline: p = 0.25, 0.5, 0.5 -> 2p/(1+p) = 40.0, 66.7, 66.7 (mean 57.8);
    # saying present at random at the base rate: F1 = p = 25, 50, 50 (mean 41.7)
    assert "| *all-positive baseline* | 40 | 67 | 67 | 57.8 |" in text
    assert "| *random at the base rate* | 25 | 50 | 50 | 41.7 |" in text
    for chart in (CHART_MEAN, CHART_PER_AU):
        png = path.parent / chart
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
        assert f"]({chart})" in text


def test_describe_weights():
    assert "random init, not pretrained" in describe_weights("random:3")
    assert describe_weights("imagenet") == "imagenet (pretrained)"
    assert "random init" in describe_weights("a=random:0; b=imagenet")
    assert "random" not in describe_weights("a=imagenet; b=none")
    assert describe_weights("sha256:" + "ab" * 32).startswith("file sha256:abab")


def test_cli_report_prints_path_and_top_rows(ws, capsys):
    assert main(["--workspace", str(ws.root), "report"]) == 0
    out = capsys.readouterr().out
    assert "vgg_face__auto__svm" in out and "report.md" in out


def test_report_without_runs_is_exit_2(tmp_path, capsys):
    assert main(["--workspace", str(tmp_path), "report"]) == 2
    assert "no results yet" in capsys.readouterr().err
    with pytest.raises(MissingRunError):
        make_report(Workspace(tmp_path), "synth")


def test_report_takes_a_run_of_a_subset_of_aus(ws):
    # a run on fewer AUs (classify --aus AU01) leaves the others' summary cells empty: the table
    # and the per-AU chart show them as missing instead of failing on the empty cell
    rows = [{"au": "AU01", "f1": 0.55, "accuracy": 0.8, "precision": 0.5, "recall": 0.6,
             "support": 10, "threshold": 0.0, "auc": 0.7}]
    write_run(ws, "synth", "hog__full__lda__au1", rows,
              meta={"model": "hog", "region": "full", "clf": "lda", "weights": "none"})
    text = make_report(ws, "synth").read_text()
    line = next(t for t in text.splitlines() if t.startswith("| `hog__full__lda__au1`"))
    assert line.split("|")[2:5] == [" 55 ", " — ", " — "]  # per-AU cells in whole points
    assert (ws.results_dir("synth") / CHART_PER_AU).stat().st_size > 5000
