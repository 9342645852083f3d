"""predict / export with runs whose trained network is the classifier: fine-tuned and transfer.

Tiny runs trained here (test_finetune's 48-px cued faces, test_transfer's tiny ABAW tree), then
applied through predict's own path (:func:`featbench.apply.pipeline.score_faces`: crops, the run's
network, its thresholds) to the faces each run scored as test frames: the decisions must be the
run's stored ones, the scores its stored scores; an exported file must give the same bit for bit.
"""

import json

import h5py
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from featbench.core.align import AlignedFaces  # noqa: E402
from classify.ensemble import read_predictions  # noqa: E402
from featbench.apply.encoders import open_encoders  # noqa: E402
from featbench.apply.pipeline import score_faces  # noqa: E402
from featbench.apply.runmodel import export_run, load_model_file, load_run  # noqa: E402
from featbench.core.workspace import Workspace  # noqa: E402
from test_finetune import FAST, make_table, one_thread, write_cache  # noqa: E402,F401


def _ft_runs(root, configs):
    from classify.finetune import FinetuneConfig, finetune_run

    table = make_table()
    cache = write_cache(root / "faces.h5", table)
    ws = Workspace(root / "ws")
    runs = {name: finetune_run(ws, "synth", FinetuneConfig(**{**FAST, **kw}), table=table,
                               aligned_path=cache, progress=False)["run"]
            for name, kw in configs.items()}
    return {"ws": ws, "table": table, "cache": cache, "runs": runs}


@pytest.fixture(scope="module")
def ft(tmp_path_factory):
    """Two fine-tuned runs on one workspace (multilabel full face; per-au on regions) and their vote."""
    from classify.ensemble import ensemble_run

    out = _ft_runs(tmp_path_factory.mktemp("ft-predict"), {
        "ml": dict(head="multilabel", epochs=1, input_size=40),  # faces resized 48 -> 40
        "regions": dict(region="auto", tune_threshold=True, epochs=1)})
    runs = out["runs"]
    runs["vote"] = ensemble_run(out["ws"], "synth", members=[runs["ml"], runs["regions"]],
                                name="ftpair")["run"]
    return out


def _test_faces(table, cache, pred):
    """The aligned faces and region boxes of the predictions file's frames, in its order."""
    where = {k: i for i, k in enumerate(table.keys().tolist())}
    rows = np.array([where[k] for k in pred["frames"].tolist()])
    with AlignedFaces(cache) as faces:
        return faces.read_faces(rows), faces.boxes[rows]


def _check_reproduces(model, ws, dataset, table, cache):
    pred = read_predictions(ws.predictions_path(dataset, model.run))
    images, boxes = _test_faces(table, cache, pred)
    scores, decisions = score_faces(model, open_encoders(model, device="cpu", workspace=ws),
                                    images, boxes)
    cols = [model.aus.index(a) for a in pred["aus"]]
    np.testing.assert_array_equal(decisions[:, cols], pred["decisions"])
    np.testing.assert_allclose(scores[:, cols], pred["scores"], rtol=1e-4, atol=1e-4)
    return scores, decisions


@pytest.mark.parametrize("which", ["ml", "regions", "vote"])
def test_finetuned_runs_reproduce_their_own_test_decisions(ft, which):
    run = ft["runs"][which]
    model = load_run(ft["ws"], "synth", run)
    assert model.clf == {"vote": "vote"}.get(which, "ft")
    _check_reproduces(model, ft["ws"], "synth", ft["table"], ft["cache"])
    if which == "regions":  # one network per AU, each on its region's crops
        assert sorted(r for rs in model.networks().values() for r in rs) == ["lower", "upper"]
        assert all(w.kind == "finetuned" and w.name.startswith(f"{run}/AU") for _, w in model.networks())


@pytest.mark.slow
def test_a_cnn_f_run_at_a_small_input_reproduces_its_test_decisions(tmp_path):
    """CNN-F (fc6 rebuilt for 48-px faces), multilabel, from random:0: 13 s on 2 loaded cores."""
    out = _ft_runs(tmp_path, {"cnnf": dict(model="cnn_f", head="multilabel", epochs=1, lr=1e-4)})
    model = load_run(out["ws"], "synth", out["runs"]["cnnf"])
    assert model.info["input_size"] == 48
    _check_reproduces(model, out["ws"], "synth", out["table"], out["cache"])


def test_the_quick_presets_fine_tuned_dlib_face_is_applied_and_reproduces_its_test(tmp_path):
    """dlib_face fine-tuned as the quick preset does (its fc and a new head, from dlib's
    weights): its saved model carries the mean image its weights brought. The model file's check
    rebuilt it on PyTorch's meta device with that mean on the CPU, and every `featbench predict`
    of the quick run's fine-tuned run ended in "does not fit the network its manifest describes"
    (exit 2). Tiny: 48-px faces resized to 112, one epoch."""
    from featbench.app.pipeline import QUICK_FT_SETTINGS

    settings = {**QUICK_FT_SETTINGS, "epochs": 1}
    out = _ft_runs(tmp_path, {"dlib": dict(model="dlib_face", weights="dlib", **settings)})
    model = load_run(out["ws"], "synth", out["runs"]["dlib"])
    _check_reproduces(model, out["ws"], "synth", out["table"], out["cache"])


def test_an_exported_ft_vote_is_bit_identical_and_carries_its_networks(ft, tmp_path):
    import shutil

    ws = Workspace(tmp_path / "ws")
    shutil.copytree(ft["ws"].root / "results", ws.root / "results")
    model = load_run(ws, "synth", ft["runs"]["vote"])
    pred = read_predictions(ws.predictions_path("synth", model.run))
    images, boxes = _test_faces(ft["table"], ft["cache"], pred)
    here = score_faces(model, open_encoders(model, device="cpu"), images, boxes)
    path = export_run(model, tmp_path / "ft.featbench")
    shutil.rmtree(ws.root)  # the file needs no workspace: the networks travel inside it
    loaded = load_model_file(path)
    there = score_faces(loaded, open_encoders(loaded, device="cpu"), images, boxes)
    np.testing.assert_array_equal(here[0], there[0])
    np.testing.assert_array_equal(here[1], there[1])
    assert "from random:0 — **random init, not pretrained**" in loaded.describe()


def test_an_svm_on_a_fine_tuned_networks_codes_finds_its_weights_and_exports_them(ft, tmp_path):
    """The paper's 'SVM on fc6 codes of the fine-tuned net': codes of extract --weights model.pt."""
    import shutil

    from classify.run import classify_run
    from extract.encoders import create_encoder
    from extract.extractor import extract_aligned
    from featbench.core.errors import WeightsError

    ws = Workspace(tmp_path / "ws")
    shutil.copytree(ft["ws"].root / "results", ws.root / "results")
    weights = ws.models_dir("synth", ft["runs"]["ml"]) / "model.safetensors"
    enc = create_encoder("timm:test_efficientnet", weights=str(weights))
    extract_aligned(ft["cache"], ws.features_path("synth", "timm:test_efficientnet-ft"), enc,
                    progress=False, dataset="synth")
    run = classify_run(ws, "synth", table=ft["table"], model="timm:test_efficientnet-ft", clf="svm",
                       aus=["AU01", "AU12"], progress=False, n_jobs=1)["run"]
    model = load_run(ws, "synth", run)
    [(net, wid)] = model.networks()
    assert (wid.kind, wid.name) == ("finetuned", ft["runs"]["ml"]) and wid.sha256
    assert model.input_size_for((net, wid)) == 40
    _check_reproduces(model, ws, "synth", ft["table"], ft["cache"])
    with pytest.raises(WeightsError, match="not in this workspace"):
        open_encoders(model, device="cpu")  # without the workspace, the file is not found
    path = export_run(model, tmp_path / "svm.featbench", workspace=ws)
    shutil.rmtree(ws.root)
    loaded = load_model_file(path)
    pred = read_predictions(ft["ws"].predictions_path("synth", ft["runs"]["ml"]))
    images, boxes = _test_faces(ft["table"], ft["cache"], pred)
    np.testing.assert_array_equal(
        score_faces(loaded, open_encoders(loaded, device="cpu"), images, boxes)[1],
        score_faces(model, {k: enc for k in model.networks()}, images, boxes)[1])


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    import cv2
    from skimage import data

    img = data.astronaut()
    path = tmp_path_factory.mktemp("photo") / "astronaut.png"
    cv2.imwrite(str(path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    return path, img


def _same_as_by_hand(df, model, img, ws):
    """predict's row == the run applied here to the face aligned by hand at the run's size."""
    from featbench.core import faces

    assert len(df) == 1 and df["success"].iloc[0] == 1
    size = int(model.alignment.get("size") or faces.CANONICAL_SIZE)
    lm = faces.detect_landmarks(img)
    face, M = faces.align_face(img, lm, size=size)
    boxes = faces.region_boxes(faces.transform_points(lm, M), image_size=size)
    s, d = score_faces(model, open_encoders(model, device="cpu", workspace=ws), face[None], boxes[None])
    for j, au in enumerate(model.aus):
        assert df[f"{au}_c"].iloc[0] == d[0, j]
        assert df[f"{au}_p"].iloc[0] == pytest.approx(float(s[0, j]), rel=1e-5, abs=1e-6)


def test_predict_applies_an_ft_run_to_a_photo_and_its_export_gives_the_same_csv(ft, photo, tmp_path):
    """The astronaut photo through predict: detect, align, crop, the run's network, its thresholds;
    then export + predict --model (CLI) on the same photo: the same CSV, bit for bit."""
    import pandas as pd

    from featbench.app.cli import main
    from featbench.apply.predict import predict

    run, ws = ft["runs"]["ml"], ft["ws"]
    out = tmp_path / "p.csv"
    df = predict(photo[0], run=run, workspace=ws, out=out, progress=False, device="cpu")
    _same_as_by_hand(df, load_run(ws, "synth", run), photo[1], ws)
    side = json.loads(out.with_suffix(".json").read_text())
    net = side["networks"][0]
    assert net["random_init"] is True and net["start_weights"] == "random:0"
    assert net["weights"].startswith(f"finetuned:{run}/model sha256:")
    file, out2 = tmp_path / "ml.featbench", tmp_path / "m.csv"
    assert main(["--workspace", str(ws.root), "export", run, "--out", str(file)]) == 0
    assert main(["predict", str(photo[0]), "--model", str(file), "--out", str(out2), "--device", "cpu",
                 "--quiet"]) == 0
    a, b = pd.read_csv(out), pd.read_csv(out2)
    pd.testing.assert_frame_equal(a.drop(columns="input"), b.drop(columns="input"))


APPLY_ALONE = """
import sys
import numpy as np
from featbench.apply.encoders import open_encoders
from featbench.apply.pipeline import score_faces
from featbench.apply.runmodel import load_run
from featbench.core.align import AlignedFaces
from featbench.core.workspace import Workspace
model = load_run(Workspace({ws!r}), "synth", {run!r})
with AlignedFaces({cache!r}) as faces:
    scores, _ = score_faces(model, open_encoders(model, device="cpu"), faces.read_faces(np.arange(4)),
                            faces.boxes[:4])
assert np.isfinite(scores).all()
training = ("classify.learn", "classify.training", "classify.finetune", "classify.transfer",
            "classify.lstm", "classify.codemethods", "classify.driver", "classify.run")
print(sorted(m for m in sys.modules if m in training or m.startswith(tuple(t + "." for t in training))))
"""


def test_applying_a_finetuned_run_imports_no_training_module(ft):
    """Loading an ft run (the model check, its networks rebuilt) and scoring faces with it runs
    on the inference side alone (classify/loaders.py, classify/ft_net.py), in a fresh process."""
    import subprocess
    import sys

    code = APPLY_ALONE.format(ws=str(ft["ws"].root), run=ft["runs"]["regions"], cache=str(ft["cache"]))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"


# --- transfer ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def transfer(tmp_path_factory):
    from test_transfer import SETTINGS, _abaw_tree

    from classify.transfer import run_stage2
    from featbench.core.datasets.affwild2 import read_affwild2

    root = tmp_path_factory.mktemp("transfer-predict")
    table = read_affwild2(_abaw_tree(root / "abaw"))
    table.dataset = "affwild2"
    ws = Workspace(root / "ws")
    out = run_stage2(ws, table, SETTINGS, stage1=None, progress=False)
    return {"ws": ws, "table": table, "run": out["run"], "cache": ws.aligned_path("affwild2")}


def test_a_transfer_run_reproduces_its_test_decisions_and_exports(transfer, tmp_path):
    ws, run = transfer["ws"], transfer["run"]
    model = load_run(ws, "affwild2", run)
    assert model.clf == "transfer" and model.alignment.get("size")
    here = _check_reproduces(model, ws, "affwild2", transfer["table"], transfer["cache"])
    with h5py.File(ws.predictions_path("affwild2", run), "r") as f:
        assert f.attrs["scores_are"] == "probabilities"
    assert np.nanmin(here[0]) >= 0 and np.nanmax(here[0]) <= 1  # probabilities, as stored
    loaded = load_model_file(export_run(model, tmp_path / "t.featbench"))
    pred = read_predictions(ws.predictions_path("affwild2", run))
    images, boxes = _test_faces(transfer["table"], transfer["cache"], pred)
    there = score_faces(loaded, open_encoders(loaded, device="cpu"), images, boxes)
    np.testing.assert_array_equal(here[0], there[0])
    np.testing.assert_array_equal(here[1], there[1])


def test_predict_applies_a_transfer_run_to_a_photo(transfer, photo):
    from featbench.apply.predict import predict

    ws, run = transfer["ws"], transfer["run"]
    df = predict(photo[0], run=run, workspace=ws, dataset="affwild2", progress=False, device="cpu")
    model = load_run(ws, "affwild2", run)
    _same_as_by_hand(df, model, photo[1], ws)
    p = df[[f"{a}_p" for a in model.aus]].to_numpy()
    assert ((p > 0) & (p < 1)).all()  # probabilities, as the run stores its scores


def test_a_transfer_run_without_its_network_is_one_line_exit_2(transfer, tmp_path, capsys):
    import shutil

    from featbench.app.cli import main

    ws = Workspace(tmp_path / "ws")
    shutil.copytree(transfer["ws"].root / "results", ws.root / "results")
    (ws.models_dir("affwild2", transfer["run"]) / "model.safetensors").unlink()
    photo = tmp_path / "x.png"
    photo.write_bytes(b"")
    status = main(["--workspace", str(ws.root), "predict", str(photo), "--run", transfer["run"],
                   "--dataset", "affwild2", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1
    assert "model.safetensors" in err[0] and "train the run again" in err[0]


@pytest.mark.gpu
def test_an_ft_run_trained_on_cuda_is_applied_on_cuda_as_it_scored_its_test(tmp_path):
    """On CUDA predict runs the network in the run's own mixed precision: the same decisions."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    out = _ft_runs(tmp_path, {"ml": dict(head="multilabel", epochs=1, input_size=40, device="cuda")})
    model = load_run(out["ws"], "synth", out["runs"]["ml"])
    pred = read_predictions(out["ws"].predictions_path("synth", model.run))
    images, boxes = _test_faces(out["table"], out["cache"], pred)
    encoders = open_encoders(model, device="cuda")
    assert all(e.device == "cuda" and e._dtype is not None for e in encoders.values())
    scores, decisions = score_faces(model, encoders, images, boxes, batch_size=2 * FAST["batch_size"])
    cols = [model.aus.index(a) for a in pred["aus"]]
    np.testing.assert_array_equal(decisions[:, cols], pred["decisions"])
    np.testing.assert_allclose(scores[:, cols], pred["scores"], rtol=1e-3, atol=1e-3)
