"""Method B (featbench transfer): folds, the stage-1 -> stage-2 hand-over, validation-only
thresholds, -1 frames, bad expression folders, and the outputs' contracts — on tiny data."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from classify.task import OCCURRENCE  # noqa: E402
from classify.transfer import (StartWeights, TransferSettings, build_net, expression_folds,  # noqa: E402
                               run_stage1, run_stage2, stage2_rows)
from extract.weights import file_sha256  # noqa: E402
from featbench.app.cli import main  # noqa: E402
from featbench.core.datasets.expression import load_expression_set  # noqa: E402
from featbench.core.workspace import Workspace  # noqa: E402

TINY = "test-tiny-cnn"
REPO = Path(__file__).resolve().parents[1]


def _tiny_cnn():
    from torch import nn

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8),
                                          nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
                                          nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
            self.fc = nn.Linear(16, 10)

        def forward(self, x):
            return self.fc(self.features(x))

    return Tiny()


def _register_tiny():
    """A registry backbone small enough for tests (timm's tiny test models, in spirit)."""
    from extract.registry import BackboneSpec, IMAGENET_MEAN, IMAGENET_STD, _drop_fc, get_spec, register
    from featbench.core.errors import UsageError

    try:
        return get_spec(TINY)
    except UsageError:
        return register(BackboneSpec(TINY, "test", "torch", constructor=_tiny_cnn, truncate=_drop_fc,
                                     code_layer="pool", dims=16, input_size=32, mean=IMAGENET_MEAN,
                                     std=IMAGENET_STD, default_weights="random:0"))


SPEC = _register_tiny()
SETTINGS = TransferSettings(backbone=TINY, weights="random:0", input_size=32, folds=3, hidden=(8, 8),
                            epochs=(2, 2), lr=3e-3, batch_size=8, patience=None, device="cpu")


def _img(cls, k, size=32):
    """A face-sized picture whose class shows as a bright block in one place."""
    rng = np.random.default_rng(1000 * cls + k)
    im = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
    r, c = divmod(cls, 2)
    im[4 + 12 * r:14 + 12 * r, 4 + 12 * c:14 + 12 * c] = 230
    return im


def _write_png(path, im):
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), im)


@pytest.fixture
def expr_tree(tmp_path):
    """Class-named subfolders, 6 subjects x 3 classes x 2 images, subject = name prefix."""
    root = tmp_path / "expr"
    for cls, name in enumerate(("happy", "sad", "surprise")):
        for s in range(6):
            for k in range(2):
                _write_png(root / name / f"P{s:02d}_{name}_{k}.png", _img(cls, 10 * s + k))
    return root


def _abaw_tree(root, n_videos=6, n_frames=10):
    """A small ABAW3 tree: AU1 shows as a bright top, AU12 as a bright bottom; some -1 rows."""
    ann = root / "AU_Detection_Challenge"
    for v in range(n_videos):
        split = "Validation_Set" if v % 3 == 0 else "Train_Set"
        name = f"video{v + 1}"
        lines = ["AU1,AU12"]
        for f in range(n_frames):
            a, b = int((f + v) % 3 == 0), int((f + 2 * v) % 4 < 2)
            lines.append("-1,-1" if f == n_frames - 1 else f"{a},{b}")
            im = np.random.default_rng(100 * v + f).integers(0, 50, (32, 32, 3), dtype=np.uint8)
            if a:
                im[:10] = 220
            if b:
                im[-10:] = 220
            _write_png(root / "cropped_aligned" / name / f"{f + 1:05d}.jpg", im)
        (ann / split).mkdir(parents=True, exist_ok=True)
        (ann / split / f"{name}.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture
def abaw(tmp_path):
    from featbench.core.datasets.affwild2 import read_affwild2

    table = read_affwild2(_abaw_tree(tmp_path / "abaw"))
    table.dataset = "affwild2"
    return table


def _expr(root, ws):
    return load_expression_set("subfolders", root=root, workspace=ws, pre_aligned=True, progress=False)


# --- stage 1 ---------------------------------------------------------------------------------------
def test_folds_are_subject_disjoint_and_test_every_subject_once(expr_tree, tmp_path):
    table = _expr(expr_tree, Workspace(tmp_path))
    assert table.notes["classes"] == ["happy", "sad", "surprise"]
    folds = expression_folds(table, 3, seed=0)
    tested = [s for f in folds for s in f.test]
    assert sorted(tested) == table.subjects and len(tested) == len(set(tested))
    for f in folds:
        parts = [set(f.train), set(f.validation), set(f.test)]
        assert all(parts) and not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
        assert set().union(*parts) == set(table.subjects)


def test_stage2_starts_from_the_stage1_backbone_with_a_fresh_mlp(expr_tree, tmp_path):
    ws = Workspace(tmp_path / "ws")
    s1 = run_stage1(ws, _expr(expr_tree, ws), SETTINGS, progress=False)
    assert len(s1["folds"]) == 3 and np.isfinite(s1["mean_accuracy"])
    assert np.asarray(s1["confusion"]).sum() == 36  # every image tested once, in its subject's fold
    from classify.learn.store import read_tensors

    saved = read_tensors(s1["backbone_file"])
    start = StartWeights(SPEC, s1["backbone_file"])
    net, _ = build_net(SPEC, start, (8, 8, 2), input_size=32, seed=0)
    own = net.backbone.state_dict()
    assert set(saved) == {f"features.{k}" for k in _tiny_cnn().features.state_dict()}
    for key, value in saved.items():
        assert torch.equal(own[key], value), key
    # the MLP is fresh: the same as from the untrained backbone, not stage 1's classifier
    ctrl, _ = build_net(SPEC, StartWeights(SPEC, "random:0"), (8, 8, 2), input_size=32, seed=0)
    for a, b in zip(net.head.state_dict().values(), ctrl.head.state_dict().values()):
        assert torch.equal(a, b)
    assert not torch.equal(own["features.0.weight"], ctrl.backbone.state_dict()["features.0.weight"])
    # the saved backbone is also a featbench extract --weights PATH file
    from extract.encoders import create_encoder

    enc = create_encoder(SPEC, weights=s1["backbone_file"])
    assert enc.weights_id.startswith(f"finetuned:{TINY}__full__expr sha256:")
    assert enc(np.zeros((2, 32, 32, 3), np.uint8)).shape == (2, 16)


def test_a_finished_stage1_keeps_no_checkpoints_and_is_reused_until_its_data_changes(expr_tree, tmp_path):
    """Stage 1's per-fold last.pt (network + optimiser) served only a resume: gone once stage1.json
    is written. A rerun with the same settings and data reuses the result and backbone as they
    are; a changed backbone file, or other data, trains again."""
    ws = Workspace(tmp_path / "ws")
    table = _expr(expr_tree, ws)
    first = run_stage1(ws, table, SETTINGS, progress=False)
    out = Path(first["backbone_file"]).parent
    assert (out / "stage1.json").is_file() and not (out / "checkpoints").exists()
    stamp = (out / "backbone.safetensors").stat().st_mtime_ns
    again = run_stage1(ws, table, SETTINGS, progress=False)
    assert (out / "backbone.safetensors").stat().st_mtime_ns == stamp  # not trained again
    assert again["folds"] == first["folds"] and again["backbone_sha256"] == first["backbone_sha256"]
    with open(out / "backbone.safetensors", "ab") as f:  # not the file stage 1 wrote
        f.write(b"\0")
    third = run_stage1(ws, table, SETTINGS, progress=False)
    assert (out / "backbone.safetensors").stat().st_mtime_ns != stamp
    assert third["backbone_sha256"] == file_sha256(out / "backbone.safetensors")
    for cls, name in enumerate(("happy", "sad", "surprise")):  # a seventh subject
        _write_png(expr_tree / name / f"P06_{name}_0.png", _img(cls, 60))
    fourth = run_stage1(ws, _expr(expr_tree, ws), SETTINGS, progress=False)
    assert fourth["images"] == first["images"] + 3


# --- stage 2 ---------------------------------------------------------------------------------------
def test_unannotated_frames_are_never_trained_on(abaw, tmp_path):
    from featbench.core.align import AlignedFaces, ensure_aligned

    assert abaw.skipped["frames not annotated (-1)"] == 6  # the reader dropped the all -1 rows
    frames = abaw.frames.copy()
    frames.loc[0, ["AU01", "AU12"]] = -1  # one more, as a reader of another layout might keep it
    abaw.frames = frames
    faces = AlignedFaces(ensure_aligned(abaw, Workspace(tmp_path), progress=False))
    _, rows = stage2_rows(abaw, faces, ["AU01", "AU12"], "own")
    used = np.concatenate(list(rows.values()))
    assert 0 not in used and len(used) == len(abaw) - 1
    # a -1 label of one AU adds neither loss nor gradient
    logits = torch.zeros(2, 2, requires_grad=True)
    loss = OCCURRENCE.loss(logits, torch.tensor([[1.0, -1.0], [0.0, 1.0]]))
    loss.backward()
    assert logits.grad[0, 1] == 0 and logits.grad[0, 0] != 0
    assert torch.isclose(loss, OCCURRENCE.loss(torch.tensor([[0.0, 9.0], [0.0, 0.0]]),
                                               torch.tensor([[1.0, -1.0], [0.0, 1.0]])))


def _stage2(table, ws):
    return run_stage2(ws, table, SETTINGS, stage1=None, progress=False)


def test_thresholds_are_chosen_on_validation_frames_only(tmp_path):
    """Poisoning the test labels changes the test F1 but not one threshold; poisoning the
    validation labels does change them."""
    from featbench.core.datasets.affwild2 import read_affwild2

    root = _abaw_tree(tmp_path / "abaw")
    runs = {}
    for poison in ("none", "test", "validation"):
        table = read_affwild2(root)
        table.dataset = "affwild2"
        from featbench.core.splits import make_splits

        split = make_splits(table, "own", seed=0)[0]
        if poison != "none":
            m = split.mask(table, poison)
            frames = table.frames.copy()
            frames.loc[m, ["AU01", "AU12"]] = 1 - frames.loc[m, ["AU01", "AU12"]]
            table.frames = frames
        runs[poison] = _stage2(table, Workspace(tmp_path / f"ws-{poison}"))
    clean, test_p, val_p = runs["none"], runs["test"], runs["validation"]
    assert clean["thresholds"] == test_p["thresholds"]
    assert [r["f1"] for r in clean["per_au"]] != [r["f1"] for r in test_p["per_au"]]
    assert clean["thresholds"] != val_p["thresholds"]


def test_cli_outputs_follow_the_contracts(expr_tree, tmp_path, capsys):
    from classify.ensemble import read_predictions
    from featbench.core.results import read_run, read_summary

    _abaw_tree(tmp_path / "abaw")
    ws = tmp_path / "ws"
    argv = ["--workspace", str(ws), "transfer", "--backbone", TINY, "--weights", "random:3",
            "--input-size", "32", "--expr-root", str(expr_tree), "--expr-aligned", "--folds", "3",
            "--dataset", "affwild2", "--root", str(tmp_path / "abaw"), "--epochs", "2,2",
            "--hidden", "8,8", "--batch-size", "8", "--lr", "3e-3", "--device", "cpu", "--quiet"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "fold accuracy" in out and "random init, not pretrained" in out
    assert "at 0.5" in out and "tuned" in out and "stage 2 - control" in out
    w = Workspace(ws)
    run, control = f"{TINY}__full__transfer", f"{TINY}__full__transfer__nostage1"
    csv = read_run(w, "affwild2", run)
    assert list(csv["au"]) == ["AU01", "AU12", "mean"]
    assert {"f1", "threshold", "f1_05", "auc"} <= set(csv.columns)
    summary = read_summary(w, "affwild2").set_index("run")
    assert summary.loc[run, "clf"] == "transfer" and summary.loc[control, "clf"] == "transfer"
    assert summary.loc[run, "weights"].startswith(f"finetuned:{TINY}__full__expr sha256:")
    assert summary.loc[control, "weights"] == "random:3"
    pred = read_predictions(w.predictions_path("affwild2", run))
    assert pred["aus"] == ["AU01", "AU12"] and pred["scores"].shape[1] == 2
    np.testing.assert_array_equal(pred["decisions"], (pred["scores"] > pred["thresholds"]).astype(np.int8))
    mdir = w.models_dir("affwild2", run)
    settings = json.loads((mdir / "settings.json").read_text())
    assert settings["stage1"]["run"] == f"{TINY}__full__expr"
    assert (mdir / "model.log.csv").is_file() and (mdir / "model.png").is_file()
    s1dir = w.models_dir("expr-subfolders", f"{TINY}__full__expr")
    assert {"folds.csv", "confusion.csv", "backbone.safetensors", "stage1.json", "fold1.log.csv"} <= {
        p.name for p in s1dir.iterdir()}
    # the model file alone reproduces the test decisions
    from classify.infer import score_batches
    from classify.transfer import load_model
    from featbench.core.align import AlignedFaces
    from featbench.core.facesource import FaceInput, FaceSource

    net, state = load_model(mdir)
    assert np.allclose(state["thresholds"], pred["thresholds"])
    faces = AlignedFaces(w.aligned_path("affwild2"))
    where = {bytes(k["subject"]) + b"/" + str(int(k["frame"])).encode(): i for i, k in enumerate(faces.keys)}
    rows = [where[bytes(k["subject"]) + b"/" + str(int(k["frame"])).encode()] for k in pred["frames"]]
    source = FaceSource(faces, FaceInput.from_json(state["face_input"]["model"]))
    logits = score_batches(net, (torch.from_numpy(f) for _, _, f in source.batches(rows, 64)),
                           device="cpu")
    np.testing.assert_array_equal((logits > np.asarray(state["logit_thresholds"])).astype(np.int8),
                                  pred["decisions"])


@pytest.mark.parametrize("case, message", [
    ("empty", "no class folders with images"),
    ("one", "only one expression class ('happy')"),
    ("broken", "P01_sad_0.png: image does not decode"),
])
def test_a_wrong_expression_folder_is_one_line_exit_2(tmp_path, capsys, case, message):
    root = tmp_path / "expr"
    root.mkdir()
    (root / "notes.txt").write_text("no classes here")
    classes = {"empty": (), "one": ("happy",), "broken": ("happy", "sad")}[case]
    for cls, name in enumerate(classes):
        for s in range(2):
            _write_png(root / name / f"P{s:02d}_{name}_0.png", _img(cls, s))
    if case == "broken":
        (root / "sad" / "P01_sad_0.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    status = main(["--workspace", str(tmp_path / "ws"), "transfer", "--backbone", TINY,
                   "--expr-root", str(root), "--stage", "1", "--quiet"])
    err = capsys.readouterr().err
    assert status == 2 and "Traceback" not in err
    assert err.count("\n") == 1 and err.startswith("featbench: error: ") and message in err
    assert str(root) in err


def test_manifest_layout_reads_classes_from_the_data(tmp_path):
    root = tmp_path / "m"
    rows = ["image,subject,expression,view"]
    for cls, name in enumerate(("anger", "joy")):
        for s in range(3):
            _write_png(root / "img" / f"{name}{s}.png", _img(cls, s))
            rows.append(f"img/{name}{s}.png,S{s},{name},front")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    table = load_expression_set("manifest", root=root, progress=False)
    assert table.notes["classes"] == ["anger", "joy"] and len(table) == 6
    assert table.subjects == ["S0", "S1", "S2"] and "view" in table.frames.columns


@pytest.mark.slow
def test_end_to_end_on_the_embedded_sets(tmp_path):
    """featbench data synth (expression + affwild2 layouts) -> featbench transfer, a registry
    backbone with seeded random weights, in a subprocess as a user runs it."""
    env = dict(os.environ, PYTHONPATH=str(REPO), TORCH_HOME=str(tmp_path / "torch"))
    ws = str(tmp_path / "ws")

    def fb(*args):
        return subprocess.run([sys.executable, "-m", "featbench", "--workspace", ws, *args], env=env,
                              capture_output=True, text=True, timeout=1200)

    for layout, name, n in (("expression", "synth-expression", 6), ("affwild2", "synth-affwild2", 8)):
        r = fb("data", "synth", "--layout", layout, "--subjects", str(n), "--frames",
               "1" if layout == "expression" else "24")
        assert r.returncode == 0, r.stderr
    r = fb("transfer", "--backbone", "tv:mobilenet_v3_small", "--input-size", "48", "--folds", "3",
           "--epochs", "1,1", "--hidden", "32,16", "--quiet")
    assert r.returncode == 0, r.stderr
    assert "random init, not pretrained" in r.stderr + r.stdout
    assert "mean F1" in r.stdout
    r = fb("extract", "--model", "tv:mobilenet_v3_small", "--dataset", "synth-affwild2", "--weights",
           str(Path(ws) / "results/synth-affwild2/models/tv-mobilenet_v3_small__full__transfer/backbone.safetensors"))
    assert r.returncode == 0, r.stderr


def test_a_rerun_resumes_from_the_last_epoch_and_scores_the_same(abaw, tmp_path):
    ws = Workspace(tmp_path / "ws")
    first = _stage2(abaw, ws)
    again = _stage2(abaw, ws)
    assert first["resumed_from"] == 0 and again["resumed_from"] == SETTINGS.epochs[1]
    assert again["thresholds"] == first["thresholds"] and again["f1"] == first["f1"]


@pytest.mark.gpu
def test_stage2_trains_on_cuda_with_amp(abaw, tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    from dataclasses import replace

    out = run_stage2(Workspace(tmp_path), abaw, replace(SETTINGS, device="cuda"), progress=False)
    assert out["device"].startswith("cuda") and out["precision"] in ("bfloat16", "float16")
    assert Path(out["predictions"]).is_file() and out["best_epoch"] >= 1


def test_a_set_without_its_own_split_trains_on_the_paper_split(tmp_path):
    """DISFA-style AU sets (no Train_Set / Validation_Set) take the 12/6/9 protocol."""
    from featbench.core.datasets.folder import read_folder

    root = tmp_path / "own"
    rows = ["image,subject,AU01,AU12"]
    for s in range(6):
        for f in range(6):
            a, b = int(f % 2 == 0), int(f % 3 == 0)
            im = np.random.default_rng(10 * s + f).integers(0, 50, (32, 32, 3), dtype=np.uint8)
            im[:10] = 220 if a else im[:10]
            _write_png(root / f"S{s}_{f}.png", im)
            rows.append(f"S{s}_{f}.png,S{s},{a},{b}")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    table = read_folder(root)
    table.pre_aligned = True  # the crops are faces already
    out = run_stage2(Workspace(tmp_path / "ws"), table, SETTINGS, stage1=None, progress=False)
    assert out["protocol"] == "paper"
    assert sum(out["frames"].values()) == 36 and len(out["split"]["test"]) >= 1
    assert not set(out["split"]["train"]) & set(out["split"]["test"])


@pytest.mark.parametrize("rule, rel, subject", [
    ("prefix:_", "happy/S07_happy_1.png", "S07"),
    ("prefix:-", "happy/a-b_c.png", "a"),
    (r"regex:(\d{3})_\d\d_", "smile/001_01_01_051_05.png", "001"),
    ("dir", "happy/P3/img.png", "P3"),
])
def test_subject_rules(tmp_path, rule, rel, subject):
    from featbench.core.datasets.expression import subject_of

    assert subject_of(tmp_path / rel, rule, tmp_path) == subject


def test_a_subject_rule_that_finds_nothing_names_the_file(tmp_path):
    from featbench.core.datasets.expression import subject_of
    from featbench.core.errors import DataError, UsageError

    with pytest.raises(DataError, match="nounderscore.png"):
        subject_of(tmp_path / "happy" / "nounderscore.png", "prefix:_", tmp_path)
    with pytest.raises(UsageError, match="unknown --subject-rule"):
        subject_of(tmp_path / "happy" / "x_y.png", "suffix", tmp_path)


def test_run_names_tell_the_control_and_non_default_settings_apart():
    from dataclasses import replace

    from classify.transfer import stage1_run, stage2_run

    assert str(stage2_run(SETTINGS)) == f"{TINY}__full__transfer"
    assert str(stage2_run(SETTINGS, control=True)) == f"{TINY}__full__transfer__nostage1"
    assert str(stage2_run(replace(SETTINGS, pos_weight="none", seed=2))) == f"{TINY}__full__transfer__pwnone-s2"
    assert str(stage1_run(SETTINGS)) == f"{TINY}__full__expr"
