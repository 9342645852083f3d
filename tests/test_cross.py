"""Cross-data-set evaluation (issue 33): joined data sets X+Y, the cross / within protocols on
the same test frames, and the report's "trained on X, tested on Y" table, on two embedded
domains (codes classifiers and a fine-tuned network)."""

import json

import h5py
import numpy as np
import pandas as pd
import pytest

from featbench.app.cli import main
from featbench.core.aus import BP4D_AUS, DISFA_AUS
from featbench.core.datasets import load_dataset
from featbench.core.errors import UsageError
from featbench.core.splits import make_splits
from featbench.core.synth import generate_dataset
from featbench.core.workspace import Workspace
from test_bp4d import bp4d_tree  # noqa: F401  (the tiny BP4D tree, a fixture)

SHARED = ("AU01", "AU02", "AU04", "AU06", "AU12", "AU15", "AU17")


def cli(capsys, *argv):
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_disfa_and_bp4d_join_on_their_seven_shared_aus(disfa_tree, bp4d_tree):  # noqa: F811
    t = load_dataset("disfa+bp4d", root=f"{disfa_tree},{bp4d_tree}")
    assert t.aus == SHARED == tuple(a for a in DISFA_AUS if a in BP4D_AUS)
    assert t.dataset == "disfa+bp4d" and t.has_intensity
    d, b = load_dataset("disfa", root=disfa_tree), load_dataset("bp4d", root=bp4d_tree)
    assert len(t) == len(d) + len(b)
    assert t.subjects == sorted([f"bp4d/{s}" for s in b.subjects] + [f"disfa/{s}" for s in d.subjects])
    # every label is the one its own reader gives
    for name, part in (("disfa", d), ("bp4d", b)):
        rows = t.frames[t.frames.subject.str.startswith(name + "/")].reset_index(drop=True)
        np.testing.assert_array_equal(rows[list(SHARED)].to_numpy(), part.frames[list(SHARED)].to_numpy())
    assert t.skipped["bp4d: labelled frames without an image"] == 1
    assert t.notes["joined"] == ["disfa", "bp4d"]
    assert "AU25" not in t.frames.columns and "AU14_int" not in t.frames.columns


def test_cross_and_within_splits(disfa_tree, bp4d_tree):  # noqa: F811
    t = load_dataset("disfa+bp4d", root=f"{disfa_tree},{bp4d_tree}")
    b = load_dataset("bp4d", root=bp4d_tree)
    cross, within = make_splits(t, "cross"), make_splits(t, "within")
    own = make_splits(b)                                   # BP4D's 3 folds
    assert len(cross) == len(within) == len(own) == 3
    for c, w, o in zip(cross, within, own):
        assert c.test == w.test == tuple(f"bp4d/{s}" for s in o.test)   # the same test frames
        assert all(s.startswith("disfa/") for s in c.train + c.validation)  # choices from X only
        assert set(c.train) | set(c.validation) == {f"disfa/{s}" for s in ("SN001", "SN002", "SN010")}
        assert w.train == tuple(f"bp4d/{s}" for s in o.train)
    with pytest.raises(UsageError, match="joined data set"):
        make_splits(t, "paper")
    with pytest.raises(UsageError, match="X\\+Y"):
        make_splits(b, "cross")


def test_joined_names_and_roots_are_checked(tmp_path, capsys):
    for name, needle in (("synth+synth", "joined with itself"), ("synth+nope", "unknown data set"),
                         ("a+b+c", "exactly two")):
        rc, _, err = cli(capsys, "data", "info", "--dataset", name, "--root", "x,y")
        assert rc == 2 and needle in err and len(err.strip().splitlines()) == 1, err
    rc, _, err = cli(capsys, "data", "info", "--dataset", "synth+synth-b", "--root", str(tmp_path))
    assert rc == 2 and "DIR_X,DIR_Y" in err


def test_align_detects_faces_of_videos_without_landmarks(tmp_path):
    """A joined DISFA-layout (landmarks) + BP4D-layout (none) set: the first set is aligned from
    its landmark files, the second by detection; DISFA's right camera is detected too."""
    from featbench.core.align import align_dataset

    a = generate_dataset(tmp_path / "a", subjects=3, frames=4, progress=False, workers=1)
    b = generate_dataset(tmp_path / "b", layout="bp4d", subjects=3, frames=4, progress=False,
                         workers=1)
    t = load_dataset("synth+bp4d", root=f"{a},{b}")
    rep = align_dataset(t, tmp_path / "faces.h5", progress=False)
    assert rep.skipped["no landmarks"] == 0
    assert rep.aligned >= len(t) - 0.25 * (t.frames.subject.str.startswith("bp4d/")).sum()
    right = load_dataset("synth", root=a, camera="right")
    rep = align_dataset(right, tmp_path / "right.h5", progress=False)
    assert rep.skipped["no landmarks"] == 0 and rep.aligned >= 0.75 * len(right)


@pytest.fixture(scope="module")
def domains(tmp_path_factory):
    """Two small embedded sets, one per renderer domain, in a workspace."""
    ws = tmp_path_factory.mktemp("cross")
    kw = dict(subjects=6, frames=30, progress=False, right_camera=False, workers=1)
    generate_dataset(ws / "data" / "synth", domain="a", **kw)
    generate_dataset(ws / "data" / "synth-b", domain="b", **kw)
    return ws


def _f1_from_predictions(path):
    """Mean over AUs of F1 from the predictions' decisions and labels, by hand (nan-free AUs)."""
    with h5py.File(path) as f:
        labels, dec = f["labels"][:], f["decisions"][:]
        keys = f["frames"][:]
    f1s = []
    for j in range(labels.shape[1]):
        tp = fp = fn = 0
        for y, d in zip(labels[:, j], dec[:, j]):
            if y < 0:
                continue
            tp += y == 1 and d == 1
            fp += y == 0 and d == 1
            fn += y == 1 and d == 0
        if tp + fn:
            f1s.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(f1s)), keys


def test_cross_run_on_two_domains_side_by_side(domains, capsys):
    ws = ["--workspace", domains]
    data = ["--dataset", "synth+synth-b"]
    assert cli(capsys, *ws, "align", *data)[0] == 0
    assert cli(capsys, *ws, "extract", "--model", "hog", *data)[0] == 0
    for protocol in ("within", "cross"):
        rc, out, err = cli(capsys, *ws, "classify", "--clf", "svm", "--model", "hog", *data,
                           "--protocol", protocol)
        assert rc == 0, err
    rc, out, err = cli(capsys, *ws, "report", *data)
    assert rc == 0, err
    res = Workspace(domains).results_dir("synth+synth-b")
    f1 = {}
    for protocol in ("within", "cross"):
        f1[protocol], keys = _f1_from_predictions(res / "predictions" / f"hog__full__svm__{protocol}.h5")
        assert {s.decode().split("/")[0] for s in keys["subject"]} == {"synth-b"}
        f1[f"{protocol}_keys"] = keys
    np.testing.assert_array_equal(f1["within_keys"], f1["cross_keys"])   # the same test frames
    settings = json.loads((res / "models" / "hog__full__svm__cross" / "settings.json").read_text())
    fold = settings["folds"][0]
    assert all(s.startswith("synth/") for s in fold["train"] + fold["validation"])
    for protocol, trained in (("cross", "synth"), ("within", "synth-b")):  # never the joined set
        manifest = json.loads((res / "models" / f"hog__full__svm__{protocol}" / "manifest.json")
                              .read_text())
        assert manifest["training_data"]["dataset"] == trained
    summary = pd.read_csv(res / "summary.csv").set_index("run")
    assert summary.loc["hog__full__svm__cross", "protocol"] == "cross"
    for protocol in ("within", "cross"):
        assert summary.loc[f"hog__full__svm__{protocol}", "mean_f1"] == pytest.approx(f1[protocol], abs=1e-3)
    report = (res / "report.md").read_text()
    assert "## Across data sets: trained on synth, tested on synth-b" in report
    row = next(line for line in report.splitlines() if line.startswith("| `hog` | full | svm"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    # each cell is the point estimate, then its subject-bootstrap interval (the statistics)
    assert cells[3].split(" [")[0] == f"{f1['within'] * 100:.1f}" and " [" in cells[3]
    assert cells[4].split(" [")[0] == f"{f1['cross'] * 100:.1f}" and " [" in cells[4]
    # cross - within, paired over synth-b's test subjects: the point estimate is the difference
    # of the two runs' F1, inside its interval; the verdict follows the Holm-adjusted p
    diff, interval = cells[5].split(" [")
    assert diff == f"{(f1['cross'] - f1['within']) * 100:.1f}"
    lo, hi = (float(v) for v in interval.rstrip("]").split(", "))
    assert lo <= float(diff) <= hi
    p = float(cells[6])
    assert 0 < p <= 1
    assert cells[7] == ("not decided" if p >= 0.05 else "drop" if float(diff) < 0 else "gain")


def test_cross_fine_tuned_network(domains, capsys):
    """A fine-tuned network under both protocols: trained on the other domain's faces, scored on
    the same test frames, paired in the report."""
    ws = ["--workspace", domains]
    ft = ["finetune", "--dataset", "synth+synth-b", "--model", "tv:mobilenet_v3_small",
          "--weights", "random:0", "--input-size", "48", "--epochs", "1", "--aus", "AU04,AU25",
          "--quiet"]
    for protocol in ("within", "cross"):
        rc, out, err = cli(capsys, *ws, *ft, "--protocol", protocol)
        assert rc == 0, err
    assert cli(capsys, *ws, "report", "--dataset", "synth+synth-b")[0] == 0
    res = Workspace(domains).results_dir("synth+synth-b")
    summary = pd.read_csv(res / "summary.csv")
    runs = set(summary.run)
    assert {"tv-mobilenet_v3_small__full__ft__within-au4+25",
            "tv-mobilenet_v3_small__full__ft__cross-au4+25"} <= runs
    report = (res / "report.md").read_text()
    assert "| `tv:mobilenet_v3_small` | full | ft |" in report


def test_run_on_a_joined_set_does_within_then_cross(monkeypatch, tmp_path):
    """``featbench run --dataset X+Y`` runs the preset under within, then cross (the report
    pairs them); a named protocol runs alone. (The pipeline itself is tested elsewhere.)"""
    import featbench.app.pipeline as pipeline

    calls = []

    def record(workspace, **kw):
        calls.append((kw["dataset"], kw["protocol"]))
        return {"runs": [], "failed": [], "elapsed": 0.0, "report": "r.md"}

    monkeypatch.setattr(pipeline, "run_pipeline", record)
    assert main(["--workspace", str(tmp_path), "run", "--dataset", "synth+synth-b", "--quiet"]) == 0
    assert calls == [("synth+synth-b", "within"), ("synth+synth-b", "cross")]
    calls.clear()
    assert main(["--workspace", str(tmp_path), "run", "--dataset", "synth+synth-b", "--protocol",
                 "cross", "--quiet"]) == 0
    assert main(["--workspace", str(tmp_path), "run", "--dataset", "synth", "--quiet"]) == 0
    assert calls == [("synth+synth-b", "cross"), ("synth", None)]


def test_a_paired_drop_over_fewer_aus_than_the_columns_says_so():
    import numpy as np

    from featbench.app.report_cross import _drop_cells

    def pct(v):
        return f"{v * 100:+.1f}"

    within, cross = {"mean_f1": 0.171}, {"mean_f1": 0.338}
    over_all = {"diff": np.array([0.2, 0.134, 0.167]), "lo": np.full(3, 0.1),
                "hi": np.full(3, 0.2), "p_adj": 0.5}
    over_one = {"diff": np.array([0.141, np.nan, 0.141]), "lo": np.full(3, 0.1),
                "hi": np.full(3, 0.2), "p_adj": 0.5}
    assert "AUs both score" not in _drop_cells(cross, within, over_all, pct, 0.05)[0]
    assert _drop_cells(cross, within, over_one, pct, 0.05)[0].endswith("(over the 1 AUs both score)")
