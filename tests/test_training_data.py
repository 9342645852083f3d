"""A run trained on synthetic faces says so where it is applied: predict's line, sidecar, export."""

import json

import numpy as np
import pytest

from featbench.app.cli import main
from featbench.core.datasets import load_dataset, training_data
from featbench.core.workspace import Workspace
from test_classify import SUBJECTS, make_codes, make_table, write_features

AUS = "AU01,AU02,AU04,AU12"
HOG_DIMS = 6084  # extract.registry: hog


def _folder_set(root, n_frames=6):
    """A ``folder`` data set as a user makes one: images and manifest.csv (the paper's subjects)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    lines = ["image,subject,AU01,AU02,AU04,AU12"]
    for s in SUBJECTS:
        for f in range(n_frames):
            name = f"{s}_{f}.png"
            Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(root / name)
            lines.append(f"{name},{s}," + ",".join(str(int(rng.random() < 0.4)) for _ in range(4)))
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    return root


def _hog_run(ws, dataset, table):
    """An LDA run on codes stored as HOG's (predict opens the HOG encoder for it)."""
    from classify.run import classify_run

    codes = make_codes(table) if dataset == "synth" else np.random.default_rng(1).normal(
        size=(len(table), 12)).astype(np.float32)
    # HOG's 6084 dimensions (a run of other codes is refused as not HOG's), the rest noise
    noise = np.random.default_rng(2).normal(size=(len(table), HOG_DIMS - codes.shape[1]))
    codes = np.hstack([codes, noise.astype(np.float32)])
    table.dataset = dataset
    write_features(ws, table, codes, model="hog", regions=("full",), weights="none")
    ws_path = ws.features_path(dataset, "hog")
    if dataset != "synth":  # write_features writes under synth: move it to the data set's folder
        ws_path.parent.mkdir(parents=True, exist_ok=True)
        ws.features_path("synth", "hog").rename(ws_path)
    return classify_run(ws, dataset, table=table, model="hog", clf="lda", n_jobs=1,
                        progress=False, aus=AUS)["run"]


@pytest.fixture
def blank(tmp_path):
    from PIL import Image

    Image.new("RGB", (40, 30)).save(tmp_path / "blank.png")  # no face: a success = 0 row
    return tmp_path / "blank.png"


def test_the_data_sets_kind():
    assert training_data("synth") == {"dataset": "synth", "synthetic": True, "kind": "synthetic"}
    assert training_data("synth-affwild2")["synthetic"]
    assert training_data("disfa", root="/nonexistent")["kind"] == "real"


def test_predict_with_a_synth_trained_run_says_so_and_another_data_set_does_not(tmp_path, blank,
                                                                               capsys):
    ws = Workspace(tmp_path / "ws")
    synth_run = _hog_run(ws, "synth", make_table(n_frames=8))
    (tmp_path / "photos").mkdir()
    folder = _folder_set(tmp_path / "photos")
    table = load_dataset("folder", root=folder)
    folder_run = _hog_run(ws, "folder", table)

    out = tmp_path / "synth.csv"
    assert main(["--workspace", str(ws.root), "predict", str(blank), "--run", synth_run,
                 "--out", str(out), "--quiet"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "synthetic faces" in err[0] and "not a detector for real footage" in err[0]
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["training_data"] == {"dataset": "synth", "synthetic": True, "kind": "synthetic"}

    out = tmp_path / "folder.csv"
    assert main(["--workspace", str(ws.root), "predict", str(blank), "--run", folder_run,
                 "--dataset", "folder", "--out", str(out), "--quiet"]) == 0
    assert "synthetic" not in capsys.readouterr().err
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["training_data"] == {"dataset": "folder", "synthetic": False, "kind": "real"}


def test_export_carries_the_training_data_and_predict_from_it_warns(tmp_path, blank, capsys):
    ws = Workspace(tmp_path / "ws")
    run = _hog_run(ws, "synth", make_table(n_frames=8))
    model_file = tmp_path / "m.featbench"
    assert main(["--workspace", str(ws.root), "export", run, "--out", str(model_file)]) == 0
    assert "trained on synth (synthetic)" in capsys.readouterr().out
    out = tmp_path / "p.csv"
    assert main(["predict", str(blank), "--model", str(model_file), "--out", str(out),
                 "--quiet"]) == 0
    assert "synthetic faces" in capsys.readouterr().err
    assert json.loads(out.with_suffix(".json").read_text())["training_data"]["synthetic"] is True
