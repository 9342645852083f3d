"""predict / export: a trained run applied to real pixels (scikit-image's astronaut photo).

Fast by default: footage reading, the vote with fixed scales, face tracking, loading a toy run
and reproducing its own test decisions, export and its version check. Marked slow (dlib on
real frames, ~2 min on 2 loaded cores): the fixture trains real HOG + SVM / LDA runs on jittered, aligned crops of the astronaut's face
(27 subjects x 6 frames, AU01 = brightened brows, AU25 = darkened mouth, other AUs random), then
the tests write videos and images of her with OpenCV and PIL and run ``featbench predict``.
"""

import json
import struct

import joblib
import numpy as np
import pandas as pd
import pytest

from featbench.app.cli import main
from featbench.core.identity import WeightsId
from featbench.core.workspace import Workspace

from test_classify import saved_model

#: the toy network's seeded-random weights: the identity in the codes keys of its runs
RANDOM0 = WeightsId.random(0)

AUS = ("AU01", "AU02", "AU04", "AU06", "AU12", "AU25")


# --- fixtures ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def astronaut():
    from skimage import data

    return data.astronaut()  # (512, 512, 3) RGB, one face


def _scene(img, shift=(0, 0), size=(640, 480)):
    """The astronaut scaled to 480 px on a grey 640 x 480 canvas, shifted by ``shift``."""
    import cv2

    w, h = size
    face = cv2.resize(img, (h, h), interpolation=cv2.INTER_AREA)
    canvas = np.full((h, w, 3), 90, np.uint8)
    x0 = (w - h) // 2 + shift[0]
    M = np.float32([[1, 0, x0], [0, 1, shift[1]]])
    return cv2.warpAffine(face, M, (w, h), dst=canvas, borderMode=cv2.BORDER_TRANSPARENT)


def _jitter(face, boxes, rng, labels):
    """A training face: brightness, noise, a pixel shift; AU01 brightens the brows, AU25 darkens the mouth."""
    import cv2

    out = face.astype(np.float32) * rng.uniform(0.85, 1.15) + rng.normal(0, 4, face.shape)
    (ux0, uy0, ux1, uy1), _, (lx0, ly0, lx1, ly1) = boxes
    if labels["AU01"]:
        out[uy0 + (uy1 - uy0) // 2:uy1, ux0:ux1] += 45
    if labels["AU25"]:
        out[ly0:ly0 + (ly1 - ly0) // 2, lx0:lx1] *= 0.5
    dx, dy = rng.integers(-2, 3, 2)
    out = cv2.warpAffine(np.clip(out, 0, 255).astype(np.uint8), np.float32([[1, 0, dx], [0, 1, dy]]),
                         out.shape[1::-1], borderMode=cv2.BORDER_REFLECT)
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory, astronaut):
    """A workspace with hog__full__svm, hog__full__lda and their vote, trained on astronaut crops."""
    from classify.run import classify_run
    from extract.encoders import create_encoder
    from extract.store import open_store
    from featbench.core import faces
    from featbench.core.align import alignment_settings
    from classify.ensemble import ensemble_run
    from featbench.core.frames import FrameTable, build_frames
    from featbench.core.splits import PAPER_SPLIT

    ws = Workspace(tmp_path_factory.mktemp("predict-ws"))
    lm = faces.detect_landmarks(astronaut)
    face, M = faces.align_face(astronaut, lm)
    boxes = faces.region_boxes(faces.transform_points(lm, M))
    rng = np.random.default_rng(0)
    rows, imgs = [], []
    for s in sorted(x for part in PAPER_SPLIT.values() for x in part):
        for f in range(6):
            labels = {au: int(rng.random() < 0.4) for au in AUS}
            rows.append({"subject": s, "video": f"LeftVideo{s}", "frame": f, "source": "",
                         "source_index": f, "landmark_file": "", "split": "", **labels})
            imgs.append(_jitter(face, boxes, rng, labels))
    table = FrameTable("synth", "/nonexistent", AUS, build_frames(rows, AUS))
    enc = create_encoder("hog")
    codes = enc(np.stack(imgs))
    settings = alignment_settings(table)
    prep = json.dumps({"aligned_settings": settings})
    with open_store(ws.features_path("synth", "hog"), keys=table.keys(), model="hog", layer="HOG",
                    weights=enc.weights_id, input_size=112, dims=codes.shape[1], overwrite=True,
                    extra_attrs={"dataset": "synth", "preprocessing": prep, "family": "hog"}) as w:
        w.write("full", 0, codes)
    for clf in ("svm", "lda"):
        classify_run(ws, "synth", table=table, model="hog", clf=clf, progress=False, n_jobs=1)
    ens = ensemble_run(ws, "synth", members=["hog__full__svm", "hog__full__lda"], name="pair")
    return {"ws": ws, "table": table, "codes": codes, "ensemble": ens["run"]}


def write_video(path, frames, fps=10, fourcc="MJPG"):
    import cv2

    h, w = frames[0].shape[:2]
    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (w, h))
    for f in frames:
        out.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    out.release()
    return path


@pytest.fixture(scope="module")
def clip(tmp_path_factory, astronaut):
    """8 frames: shifts, a blank frame (3), the face covered (5), a grayscale frame (6)."""
    import cv2

    frames = [_scene(astronaut, (dx, dy)) for dx, dy in
              ((0, 0), (12, 0), (-10, 6), (0, 0), (20, -8), (0, 0), (-6, 4), (8, 8))]
    frames[2] = np.zeros_like(frames[2])  # frame 3: blanked
    covered = frames[4].copy()
    covered[60:300, 160:480] = 30  # frame 5: the face covered
    frames[4] = covered
    grey = cv2.cvtColor(frames[5], cv2.COLOR_RGB2GRAY)
    frames[5] = np.repeat(grey[..., None], 3, axis=2)  # frame 6: grayscale
    path = write_video(tmp_path_factory.mktemp("clip") / "clip.avi", frames)
    return {"path": path, "faceless": {3, 5}, "n": len(frames)}


def _predict(trained, inputs, **kw):
    from featbench.apply.predict import predict

    kw.setdefault("run", "hog__full__svm")
    return predict(inputs, workspace=trained["ws"], progress=False, **kw)


# --- the run reproduced -------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("run", ["hog__full__svm", "hog__full__lda", "pair__full__vote"])
def test_loaded_run_reproduces_its_own_test_decisions(trained, run):
    """RunModel.score on the run's own test codes == the scores and decisions the run stored."""
    from classify.ensemble import read_predictions
    from featbench.apply.runmodel import load_run

    ws, table = trained["ws"], trained["table"]
    model = load_run(ws, "synth", run)
    pred = read_predictions(ws.predictions_path("synth", run))
    where = {k: i for i, k in enumerate(table.keys().tolist())}
    rows = np.array([where[k] for k in pred["frames"].tolist()])
    scores, decisions, _ = model.score({("hog", WeightsId("none"), "full"): trained["codes"][rows]})
    cols = [model.aus.index(a) for a in pred["aus"]]
    np.testing.assert_array_equal(decisions[:, cols], pred["decisions"])
    np.testing.assert_allclose(scores[:, cols], pred["scores"], rtol=1e-6, atol=1e-6)


@pytest.mark.slow
def test_video_one_row_per_frame_faceless_rows_empty(trained, clip, tmp_path):
    out = tmp_path / "clip.csv"
    status = main(["--workspace", str(trained["ws"].root), "predict", str(clip["path"]),
                   "--run", "hog__full__svm", "--out", str(out), "--plot", str(tmp_path / "t.png"),
                   "--quiet"])
    assert status == 0
    df = pd.read_csv(out)
    assert list(df.columns[:5]) == ["frame", "face_id", "timestamp", "confidence", "success"]
    assert [c for c in df.columns if c.endswith("_c")] == [f"{a}_c" for a in AUS]
    assert [c for c in df.columns if c.endswith("_p")] == [f"{a}_p" for a in AUS]
    assert df.columns[-1] == "input"
    assert list(df["frame"]) == list(range(1, clip["n"] + 1))
    assert set(df.loc[df["success"] == 0, "frame"]) == clip["faceless"]
    faceless = df["success"] == 0
    assert df.loc[faceless, [f"{a}_c" for a in AUS] + [f"{a}_p" for a in AUS]].isna().all().all()
    assert df.loc[~faceless, [f"{a}_c" for a in AUS]].notna().all().all()
    np.testing.assert_allclose(df["timestamp"], (df["frame"] - 1) / 10, atol=1e-6)
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["run"] == "hog__full__svm" and side["networks"][0]["weights"] == "none"
    assert side["frames"] == clip["n"] and side["with_face"] == clip["n"] - 2
    assert (tmp_path / "t.png").stat().st_size > 5000


@pytest.mark.slow
def test_au_columns_equal_the_runs_classifiers_on_the_same_codes(trained, clip):
    """Hand-checked: detect, align, HOG-encode each frame here, apply the saved models."""
    import cv2

    from extract.encoders import create_encoder
    from featbench.core import faces

    df = _predict(trained, clip["path"])
    ws = trained["ws"]
    folder = ws.models_dir("synth", "hog__full__svm")
    settings = json.loads((folder / "settings.json").read_text())
    entries = settings["folds"][0]["aus"]
    enc = create_encoder("hog")
    cap = cv2.VideoCapture(str(clip["path"]))
    for k in range(clip["n"]):
        ok, bgr = cap.read()
        row = df.iloc[k]
        lm = faces.detect_landmarks(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        assert (lm is None) == (row["success"] == 0)
        if lm is None:
            continue
        face, _ = faces.align_face(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), lm)
        code = enc(face[None])
        for au in AUS:
            if "threshold" not in entries[au]:
                assert pd.isna(row[f"{au}_p"])
                continue
            pipe = saved_model(folder, au)
            score = pipe.decision_function(code)[0]
            assert row[f"{au}_p"] == pytest.approx(score, rel=1e-6, abs=1e-9)
            assert row[f"{au}_c"] == int(score > entries[au]["threshold"])
    cap.release()


@pytest.mark.slow
def test_the_run_sees_what_it_was_trained_to_see(trained, astronaut, tmp_path):
    """Brows brightened / mouth darkened on real frames turn AU01 / AU25 on, as in training."""
    from featbench.core import faces

    lm = faces.detect_landmarks(astronaut)
    face, M = faces.align_face(astronaut, lm)
    boxes = faces.region_boxes(faces.transform_points(lm, M))
    inv = np.linalg.inv(np.vstack([M, [0, 0, 1]]))[:2]
    import cv2

    plain = astronaut.copy()
    mask_u = np.zeros(face.shape[:2], np.uint8)
    ux0, uy0, ux1, uy1 = boxes[0]
    mask_u[uy0 + (uy1 - uy0) // 2:uy1, ux0:ux1] = 1
    mask_l = np.zeros(face.shape[:2], np.uint8)
    lx0, ly0, lx1, ly1 = boxes[2]
    mask_l[ly0:ly0 + (ly1 - ly0) // 2, lx0:lx1] = 1
    h, w = astronaut.shape[:2]
    up = cv2.warpAffine(mask_u, inv, (w, h)).astype(bool)
    low = cv2.warpAffine(mask_l, inv, (w, h)).astype(bool)
    both = astronaut.astype(np.float32)
    both[up] += 45
    both[low] *= 0.5
    both = np.clip(both, 0, 255).astype(np.uint8)
    from PIL import Image

    Image.fromarray(plain).save(tmp_path / "a_plain.png")
    Image.fromarray(both).save(tmp_path / "b_both.png")
    df = _predict(trained, tmp_path)
    assert list(df["success"]) == [1, 1]
    assert df["AU01_p"].iloc[1] > df["AU01_p"].iloc[0]
    assert df["AU25_p"].iloc[1] > df["AU25_p"].iloc[0]


@pytest.mark.slow
def test_export_reproduces_the_workspace_run_bit_for_bit(trained, clip, tmp_path):
    for run in ("hog__full__svm", trained["ensemble"]):
        path = tmp_path / f"{run}.featbench"
        assert main(["--workspace", str(trained["ws"].root), "export", run, "--out", str(path)]) == 0
        a = _predict(trained, clip["path"], run=run)
        b = _predict(trained, clip["path"], run=None, model_file=path)
        pd.testing.assert_frame_equal(a, b, check_exact=True)


@pytest.mark.slow
def test_best_picks_the_highest_mean_f1(trained):
    from featbench.core.results import read_summary
    from featbench.apply.runmodel import resolve_run

    s = read_summary(trained["ws"], "synth")
    assert resolve_run(trained["ws"], "synth", "best") == s.sort_values("mean_f1").iloc[-1]["run"]


# --- footage -------------------------------------------------------------------------------------
@pytest.mark.slow
def test_images_rgba_grey_16bit_exif_odd_sizes_folder_and_glob(trained, astronaut, tmp_path):
    from PIL import Image

    folder = tmp_path / "shots"
    folder.mkdir()
    odd = Image.fromarray(astronaut).resize((333, 357))
    rgba = Image.fromarray(astronaut).convert("RGBA")
    rgba.putalpha(255)
    rgba.save(folder / "1_rgba.png")
    Image.fromarray(astronaut).convert("L").save(folder / "2_grey.png")
    grey16 = (np.asarray(Image.fromarray(astronaut).convert("L"), np.uint16) * 257)
    Image.fromarray(grey16).save(folder / "3_grey16.png")
    odd.save(folder / "4_odd.jpg")
    rotated = Image.fromarray(astronaut).rotate(90, expand=True)  # sideways: dlib finds no face
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation 6: shown after a 90 degree clockwise turn -> upright
    rotated.save(folder / "5_exif.jpg", exif=exif)
    df = _predict(trained, folder)
    assert list(df["frame"]) == [1, 2, 3, 4, 5]
    assert list(df["success"]) == [1, 1, 1, 1, 1], df[["input", "success"]]
    globbed = _predict(trained, str(folder / "*.jpg"))
    assert [p.rsplit("/", 1)[-1] for p in globbed["input"]] == ["4_odd.jpg", "5_exif.jpg"]


def _rotate_mp4(path, degrees=90):
    """Set the display matrix of an mp4's video track (what a phone writes for portrait video)."""
    data = bytearray(path.read_bytes())
    at = data.find(b"tkhd")
    assert at > 0
    version = data[at + 4]
    matrix = at + 4 + (52 if version == 1 else 40)
    one, minus = 0x00010000, 0xFFFF0000
    a, b, c, d = {90: (0, one, minus, 0), 270: (0, minus, one, 0)}[degrees]
    data[matrix:matrix + 8] = struct.pack(">2I", a, b)  # matrix: a b u / c d v / x y w
    data[matrix + 12:matrix + 20] = struct.pack(">2I", c, d)
    path.write_bytes(bytes(data))


@pytest.mark.slow
def test_rotated_phone_video_is_read_upright(trained, astronaut, tmp_path):
    import cv2

    upright = _scene(astronaut)[:, 80:560]  # 480 x 480 -> portrait after padding
    upright = cv2.copyMakeBorder(upright, 0, 0, 0, 0, cv2.BORDER_CONSTANT)
    stored = np.ascontiguousarray(np.rot90(upright, k=1))  # stored sideways, as a phone does
    path = write_video(tmp_path / "phone.mp4", [stored] * 3, fourcc="mp4v")
    plain = _predict(trained, path)
    _rotate_mp4(path, 90)
    fixed = _predict(trained, path)
    from featbench.core.footage import video_info

    if video_info(path)[0] == 0:
        pytest.skip("this OpenCV cannot read mp4 files")
    assert plain["success"].sum() == 0  # sideways: no frontal face
    assert list(fixed["success"]) == [1, 1, 1]


@pytest.mark.slow
def test_all_faces_gives_each_face_a_stable_id(trained, astronaut, tmp_path):
    import cv2

    small = cv2.resize(astronaut, (300, 300), interpolation=cv2.INTER_AREA)
    frames = []
    for k in range(4):
        canvas = np.full((320, 760, 3), 90, np.uint8)
        canvas[10:310, 20 + 6 * k:320 + 6 * k] = small
        canvas[10:310, 440 - 6 * k:740 - 6 * k] = small
        frames.append(canvas)
    path = write_video(tmp_path / "two.avi", frames)
    df = _predict(trained, path, all_faces=True)
    assert len(df) == 8 and (df["success"] == 1).all()
    first = df[df["frame"] == 1].sort_values("face_id")
    assert list(first["face_id"]) == [0, 1]
    # a face_id stays on its face: the left face's box moves right, the right one's left
    left_id = df[df["frame"] == 1].set_index("face_id")
    for k in range(2, 5):
        f = df[df["frame"] == k]
        assert sorted(f["face_id"]) == [0, 1]
    largest = _predict(trained, path)
    assert len(largest) == 4 and (largest["face_id"] == 0).all()
    assert len(left_id) == 2


@pytest.mark.slow
def test_video_without_a_face_is_all_success_zero(trained, tmp_path):
    rng = np.random.default_rng(0)
    path = write_video(tmp_path / "empty.avi", [rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)
                                                for _ in range(5)])
    df = _predict(trained, path, out=tmp_path / "e.csv", plot=tmp_path / "e.png")
    assert len(df) == 5 and (df["success"] == 0).all()
    assert "0 with a face" in df.attrs["summary"]
    assert (tmp_path / "e.png").exists() and len(pd.read_csv(tmp_path / "e.csv")) == 5


# --- bad input: exit 2, one line ---------------------------------------------------------------------
@pytest.mark.slow
def test_corrupt_video_unknown_run_and_missing_weights_exit_2(trained, tmp_path, capsys,
                                                              monkeypatch):
    ws = str(trained["ws"].root)
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    out = tmp_path / "keep.csv"
    out.write_text("precious\n")
    assert main(["--workspace", ws, "predict", str(bad), "--run", "hog__full__svm",
                 "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()  # a file featbench did not write: kept
    assert len(err) == 1 and str(out) in err[0] and "--force" in err[0]
    assert main(["--workspace", ws, "predict", str(bad), "--run", "hog__full__svm",
                 "--out", str(out), "--force", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(bad) in err[0]
    assert out.read_text() == "precious\n"  # a failed run replaces nothing, even with --force

    assert main(["--workspace", ws, "predict", str(bad), "--run", "hog__full__svn"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "hog__full__svn" in err[0] and "hog__full__svm" in err[0]

    # a run whose codes came from pretrained AlexNet, with no AlexNet weights on this machine:
    # test_a_run_whose_network_weights_are_not_here_is_one_line (a copy of a HOG run with its
    # manifest edited to say alexnet is now refused earlier, as a damaged or edited manifest)


def test_a_run_whose_network_weights_are_not_here_is_one_line(tmp_path, capsys, monkeypatch):
    """An LDA on 4,096-d codes of ImageNet AlexNet (written as extraction would write them),
    applied on a machine without AlexNet's file: one line naming the run and the weights, exit
    2, before any frame is read, nothing written."""
    from PIL import Image

    from classify.run import classify_run
    from test_classify import make_table, write_features

    ws = Workspace(tmp_path / "ws")
    table = make_table()
    codes = np.random.default_rng(0).normal(size=(len(table), 4096)).astype(np.float32)
    write_features(ws, table, codes, model="alexnet", regions=("full",), weights="imagenet")
    run = classify_run(ws, "synth", table=table, model="alexnet", clf="lda", n_jobs=1,
                       progress=False, aus="AU01,AU12")["run"]
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))
    Image.new("RGB", (64, 48)).save(tmp_path / "still.png")
    assert main(["--workspace", str(ws.root), "--offline", "predict", str(tmp_path / "still.png"),
                 "--run", run, "--out", str(tmp_path / "x.csv")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and run in err[0] and "'imagenet'" in err[0], err
    assert not (tmp_path / "x.csv").exists()


# --- fast: no face detection -------------------------------------------------------------------------
@pytest.fixture
def toy(tmp_path):
    """A workspace with toy__full__svm, toy__full__lda and their vote on 12-d synthetic codes."""
    from classify.ensemble import ensemble_run
    from classify.run import classify_run
    from test_classify import make_codes, make_table, write_features

    ws = Workspace(tmp_path / "ws")
    table = make_table(n_frames=8)
    codes = make_codes(table)
    write_features(ws, table, codes, regions=("full",))
    for clf in ("svm", "lda"):
        classify_run(ws, "synth", table=table, model="toy", clf=clf, n_jobs=1, progress=False,
                     aus="AU01,AU02,AU04,AU12")
    ens = ensemble_run(ws, "synth", members=["toy__full__svm__au1+2+4+12",
                                             "toy__full__lda__au1+2+4+12"], name="pair")
    return {"ws": ws, "table": table, "codes": codes, "ensemble": ens["run"]}


@pytest.mark.parametrize("which", ["toy__full__svm__au1+2+4+12", "toy__full__lda__au1+2+4+12",
                                   "ensemble"])
def test_toy_run_and_its_export_reproduce_the_runs_test_decisions(toy, which, tmp_path):
    from classify.ensemble import read_predictions
    from featbench.apply.runmodel import export_run, load_model_file, load_run

    ws, table = toy["ws"], toy["table"]
    run = toy["ensemble"] if which == "ensemble" else which
    model = load_run(ws, "synth", run)
    pred = read_predictions(ws.predictions_path("synth", run))
    where = {k: i for i, k in enumerate(table.keys().tolist())}
    rows = np.array([where[k] for k in pred["frames"].tolist()])
    codes = {("toy", RANDOM0, "full"): toy["codes"][rows]}
    scores, decisions, _ = model.score(codes)
    np.testing.assert_array_equal(decisions, pred["decisions"])
    np.testing.assert_allclose(scores, pred["scores"], rtol=1e-6, atol=1e-6)
    again = load_model_file(export_run(model, tmp_path / "m.featbench")).score(codes)
    np.testing.assert_array_equal(again[0], scores)
    np.testing.assert_array_equal(again[1], decisions)


def test_export_half_stores_float16_and_scores_within_its_precision(toy, tmp_path, capsys):
    """``featbench export --half``: float16 tensors, about half the file, thresholds exact, scores
    within float16's precision of the full-precision export's."""
    from featbench.apply.runmodel import load_model_file
    from featbench.core.modelfile import open_model

    run, ws = "toy__full__lda__au1+2+4+12", str(toy["ws"].root)
    full, half = tmp_path / "full.safetensors", tmp_path / "half.safetensors"
    assert main(["--workspace", ws, "export", run, "--out", str(full)]) == 0
    assert main(["--workspace", ws, "export", run, "--out", str(half), "--half"]) == 0
    assert "float16" in capsys.readouterr().out
    mf = open_model(half)
    assert {str(mf.tensors(g)["clf.coef_"].dtype) for g in mf.groups} == {"float16"}
    assert mf.manifest["folds"] == open_model(full).manifest["folds"]
    def data_bytes(path):  # the tensors: the file less its 8-byte length and JSON header
        return path.stat().st_size - 8 - struct.unpack("<Q", path.read_bytes()[:8])[0]

    assert data_bytes(half) < 0.5 * data_bytes(full)  # float64 / float32 arrays -> float16
    codes = {("toy", RANDOM0, "full"): toy["codes"]}
    a, b = load_model_file(full).score(codes), load_model_file(half).score(codes)
    np.testing.assert_allclose(b[0], a[0], rtol=1e-2, atol=1e-2)
    assert (a[1] != b[1]).mean() < 0.05  # only scores within float16's precision of a threshold


def test_a_loaded_run_is_a_scorer_whose_identities_stay_objects(toy, tmp_path):
    """Every kind loads into the declared Scorer; its run, weights, task and kind are the typed
    objects (parsed once from the manifest), strings again only in the files predict writes."""
    from classify.infer import AUClassifier, Scorer
    from classify.kinds import get_kind
    from classify.task import get_task
    from featbench.apply.runmodel import export_run, load_model_file, load_run
    from featbench.core.identity import RunKey

    svm = "toy__full__svm__au1+2+4+12"
    for name in (svm, toy["ensemble"]):
        model = load_run(toy["ws"], "synth", name)
        for m in (model, load_model_file(export_run(model, tmp_path / f"{name}.fb"))):
            assert isinstance(m, Scorer)
            assert m.run == RunKey.parse(name) and str(m.run) == name
            assert m.kind is get_kind(m.run.clf) and m.clf == m.run.clf
            assert m.task is get_task("occurrence")
            assert list(m.networks()) == [("toy", RANDOM0)]  # the identity, not its string
            assert all(isinstance(clf, AUClassifier) for s in [m] + m.members
                       for fold in s.folds for clf, _ in fold.values())
    vote = load_run(toy["ws"], "synth", toy["ensemble"])
    assert vote.weights is None and [str(m.run) for m in vote.members] == [
        svm, "toy__full__lda__au1+2+4+12"]
    assert load_run(toy["ws"], "synth", svm).weights == RANDOM0


def test_weights_identity_carries_its_tag():
    """What predict asks of a pretrained identity: its tag, and the identity without it (an
    identity stored before tags were recorded matches the file loaded now)."""
    tagged = WeightsId.parse("imagenet:IMAGENET1K_V2 sha256:ab12")
    assert (tagged.base, tagged.tag) == ("imagenet", "IMAGENET1K_V2")
    assert tagged.untagged() == WeightsId.parse("imagenet sha256:ab12") != tagged
    assert str(tagged.untagged()) == "imagenet sha256:ab12" and str(tagged) == "imagenet:IMAGENET1K_V2 sha256:ab12"
    assert WeightsId.parse("imagenet").tag == ""
    assert WeightsId.parse("timm:resnet50.a1_in1k").tag == "resnet50.a1_in1k"
    for other in ("random:3", "none", "file sha256:ab", "finetuned:cnn_f__full__ft sha256:ab"):
        wid = WeightsId.parse(other)
        assert wid.tag == "" and wid.untagged() == wid


def test_model_file_checks(toy, tmp_path):
    from safetensors.numpy import load_file, save_file

    from featbench.apply.runmodel import export_run, load_model_file, load_run
    from featbench.core.modelfile import META_KEY, ModelFormatError, open_model

    path = export_run(load_run(toy["ws"], "synth", "toy__full__svm__au1+2+4+12"), tmp_path / "m.fb")
    manifest = open_model(path).manifest
    save_file(load_file(str(path)), str(path), metadata={META_KEY: json.dumps(dict(manifest, format_version=99))})
    with pytest.raises(ModelFormatError, match="format 99.*upgrade featbench"):
        load_model_file(path)
    (tmp_path / "junk.fb").write_bytes(b"not a pickle")
    with pytest.raises(ModelFormatError, match="not a featbench model file"):
        load_model_file(tmp_path / "junk.fb")


@pytest.mark.parametrize("how", ["pickle", "joblib", "torch"])
def test_predict_refuses_a_crafted_model_file_without_running_it(toy, tmp_path, capsys, how):
    """A model file someone sent that is a pickle (featbench 0.1's export was one): exit 2, one
    line saying how to re-export, and the code it carries never runs."""
    import pickle

    from test_modelfile import _Payload

    marker, path = tmp_path / "ran", tmp_path / "model.featbench"
    if how == "pickle":
        path.write_bytes(pickle.dumps({"format": "featbench-model", "run": _Payload(marker)}))
    elif how == "joblib":
        joblib.dump({"format": "featbench-model", "run": _Payload(marker)}, path, compress=3)
    else:
        import torch

        torch.save({"state_dict": _Payload(marker)}, path)
    out = tmp_path / "out.csv"
    from PIL import Image

    Image.new("RGB", (40, 30)).save(tmp_path / "a.png")  # an input: inputs and outputs are checked first
    assert main(["--workspace", str(toy["ws"].root), "predict", str(tmp_path), "--model", str(path),
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(path) in err[0] and "featbench export RUN --out" in err[0]
    assert not marker.exists() and not out.exists()


def test_unknown_run_names_the_closest_and_exits_2(toy, tmp_path, capsys):
    from PIL import Image

    Image.new("RGB", (40, 30)).save(tmp_path / "a.png")
    assert main(["--workspace", str(toy["ws"].root), "predict", str(tmp_path / "a.png"),
                 "--run", "toy__full__svn__au1+2+4+12", "--out", str(tmp_path / "a.csv")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "toy__full__svm__au1+2+4+12" in err[0]
    assert not (tmp_path / "a.csv").exists()


def test_best_is_the_highest_mean_f1(toy):
    from featbench.core.results import read_summary
    from featbench.apply.runmodel import resolve_run

    s = read_summary(toy["ws"], "synth")
    assert resolve_run(toy["ws"], "synth", "best") == s.sort_values("mean_f1").iloc[-1]["run"]


def test_vote_with_fixed_scales_equals_the_vote_on_the_frames_they_came_from():
    from classify.vote import majority_vote, score_scales

    rng = np.random.default_rng(0)
    s = rng.normal(size=(4, 50, 3)) * np.array([1.0, 5.0, 0.2, 2.0])[:, None, None]
    d = (s > 0).astype(np.int8)
    t = np.zeros((4, 3))
    full = majority_vote(d, s, t)
    part = majority_vote(d[:, :7], s[:, :7], t, scales=score_scales(s))
    np.testing.assert_array_equal(part[0], full[0][:7])
    np.testing.assert_array_equal(part[1], full[1][:7])
    assert not np.array_equal(majority_vote(d[:, :7], s[:, :7], t)[1], full[1][:7])


def test_tracker_keeps_ids_on_moving_boxes():
    from featbench.core.footage import Frame
    from featbench.apply.faces import Face, FrameFaces, Tracker

    tr = Tracker()
    ids = []
    for k in range(4):
        left, right = (10 + 5 * k, 10, 110 + 5 * k, 110), (300 - 5 * k, 10, 400 - 5 * k, 110)
        faces = [Face(right, 1.0, None, None), Face(left, 1.0, None, None)]
        if k % 2:
            faces.reverse()  # the detector's order changes; the ids must not
        item = FrameFaces(Frame("v.avi", k + 1, 0.0, None), faces)
        tr.assign(item)
        ids.append({f.box[0] < 200: f.face_id for f in item.faces})
    assert all(i == ids[0] for i in ids) and sorted(ids[0].values()) == [0, 1]
    item = FrameFaces(Frame("other.avi", 1, 0.0, None), [Face((0, 0, 5, 5), 1.0, None, None)])
    tr.assign(item)
    assert item.faces[0].face_id == 0  # a new video starts over


def test_read_image_rgba_grey_16bit_exif(tmp_path):
    from PIL import Image

    from featbench.core.footage import read_image

    rgba = np.zeros((20, 30, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:10, :, 3] = 255  # top half opaque red, bottom transparent -> white
    Image.fromarray(rgba).save(tmp_path / "a.png")
    img = read_image(tmp_path / "a.png")
    assert img.shape == (20, 30, 3) and img.dtype == np.uint8
    assert tuple(img[0, 0]) == (200, 0, 0) and tuple(img[-1, -1]) == (255, 255, 255)
    Image.fromarray(np.full((7, 9), 77, np.uint8)).save(tmp_path / "g.png")
    assert read_image(tmp_path / "g.png").shape == (7, 9, 3)
    Image.fromarray(np.full((7, 9), 65535, np.uint16)).save(tmp_path / "g16.png")
    assert read_image(tmp_path / "g16.png").max() == 255
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.zeros((10, 40, 3), np.uint8)).save(tmp_path / "r.jpg", exif=exif)
    assert read_image(tmp_path / "r.jpg").shape == (40, 10, 3)  # turned upright
    (tmp_path / "bad.png").write_bytes(b"nope")
    from featbench.core.errors import DataError

    with pytest.raises(DataError, match="bad.png"):
        read_image(tmp_path / "bad.png")


def test_sources_frames_and_timestamps(tmp_path):
    from PIL import Image

    from featbench.core.errors import DataError, UsageError
    from featbench.core.footage import iter_frames, list_sources

    rng = np.random.default_rng(0)
    write_video(tmp_path / "v.avi", [rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)
                                     for _ in range(5)], fps=20)
    for name in ("b.png", "a.jpg"):
        Image.new("RGB", (8, 6)).save(tmp_path / name)
    srcs = list_sources([tmp_path])
    assert [s.kind for s in srcs] == ["images", "video"]
    frames = list(iter_frames(srcs))
    assert [(f.source.rsplit("/", 1)[-1], f.frame) for f in frames] == \
        [("a.jpg", 1), ("b.png", 2)] + [("v.avi", k) for k in range(1, 6)]
    np.testing.assert_allclose([f.timestamp for f in frames[2:]], np.arange(5) / 20)
    assert len(list_sources([str(tmp_path / "*.png")])[0].paths) == 1
    with pytest.raises(UsageError, match="matches no file"):
        list_sources([str(tmp_path / "*.gif")])
    with pytest.raises(DataError, match="no such file"):
        list_sources([tmp_path / "missing.mp4"])
    (tmp_path / "broken.avi").write_bytes(b"RIFF" + bytes(300))
    with pytest.raises(DataError, match="broken.avi"):
        list(iter_frames(list_sources([tmp_path / "broken.avi"])))


@pytest.mark.slow  # trains an LSTM: ~40 s with torch imported cold on 2 loaded cores
def test_lstm_run_streamed_in_batches_equals_its_whole_sequence_test_scores(tmp_path):
    """The LSTM's state is carried across batches: chunked scoring == the run's own test scores."""
    from classify.run import classify_run
    from classify.ensemble import read_predictions
    from featbench.apply.runmodel import export_run, load_model_file, load_run
    from test_classify import write_features
    from test_lstm import FAST, temporal_table

    ws = Workspace(tmp_path / "ws")
    table, X = temporal_table(n_frames=40)
    write_features(ws, table, X, regions=("full",))
    res = classify_run(ws, "synth", table=table, model="toy", clf="lstm", lstm={**FAST, "epochs": 2},
                       progress=False, n_jobs=1, aus=["AU01"])
    pred = read_predictions(res["predictions"])
    where = {k: i for i, k in enumerate(table.keys().tolist())}
    rows = np.array([where[k] for k in pred["frames"].tolist()])
    tracks = [((s, "v"), int(f)) for s, f in zip(pred["frames"]["subject"], pred["frames"]["frame"])]
    for model in (load_run(ws, "synth", res["run"]),
                  load_model_file(export_run(load_run(ws, "synth", res["run"]), tmp_path / "l.fb"))):
        model.reset()
        got = [model.score({("toy", RANDOM0, "full"): X[rows[a:a + 7]]}, tracks=tracks[a:a + 7])
               for a in range(0, len(rows), 7)]  # 7 frames a batch: sequences span batches
        scores = np.concatenate([g[0] for g in got])
        np.testing.assert_allclose(scores, pred["scores"], atol=1e-5)
        np.testing.assert_array_equal(np.concatenate([g[1] for g in got]), pred["decisions"])
    # a gap in the frame numbers starts a new sequence: the state is not carried over it
    model.reset()
    first = model.score({("toy", RANDOM0, "full"): X[rows[5:6]]}, tracks=[(("a", "v"), 50)])[0]
    model.reset()
    model.score({("toy", RANDOM0, "full"): X[rows[:5]]}, tracks=[(("a", "v"), k) for k in range(5)])
    again = model.score({("toy", RANDOM0, "full"): X[rows[5:6]]}, tracks=[(("a", "v"), 50)])[0]
    np.testing.assert_array_equal(first, again)


@pytest.mark.slow  # trains an LSTM: ~11 s on 2 loaded cores
def test_a_bidirectional_lstm_scores_whole_tracks_within_its_window(tmp_path):
    """Bidirectional: each window's tracks scored whole == the run's own whole-sequence test scores
    when a window holds a whole sequence; predict's batches close every ``window`` frames."""
    from classify.run import classify_run
    from classify.ensemble import read_predictions
    from featbench.apply.runmodel import BIDIRECTIONAL_WINDOW, export_run, load_model_file, load_run
    from test_classify import write_features
    from test_lstm import FAST, temporal_table

    ws = Workspace(tmp_path / "ws")
    table, X = temporal_table(n_frames=24)
    write_features(ws, table, X, regions=("full",))
    res = classify_run(ws, "synth", table=table, model="toy", clf="lstm", progress=False, n_jobs=1,
                       lstm={**FAST, "epochs": 1, "bidirectional": True}, aus=["AU01"])
    pred = read_predictions(res["predictions"])
    where = {k: i for i, k in enumerate(table.keys().tolist())}
    rows = np.array([where[k] for k in pred["frames"].tolist()])
    tracks = [((s, "v"), int(f)) for s, f in zip(pred["frames"]["subject"], pred["frames"]["frame"])]
    key = ("toy", RANDOM0, "full")
    model = load_run(ws, "synth", res["run"])
    assert model.window() == BIDIRECTIONAL_WINDOW
    for m in (model, load_model_file(export_run(model, tmp_path / "b.fb"))):
        scores, decisions, _ = m.score({key: X[rows]}, tracks=tracks)
        np.testing.assert_allclose(scores, pred["scores"], atol=1e-5)
        np.testing.assert_array_equal(decisions, pred["decisions"])
    # looking ahead: a sequence cut in two scores differently from the whole one at the cut
    first = [i for i, t in enumerate(tracks) if t[0] == tracks[0][0]]
    cut = model.score({key: X[rows[first[:10]]]}, tracks=[tracks[i] for i in first[:10]])[0]
    assert not np.allclose(cut[9], scores[first[9]], atol=1e-6)
    model.set_window(3)  # --window
    assert model.window() == 3


def test_batches_close_every_window_frames_for_a_bidirectional_run_else_every_batch_of_faces():
    from types import SimpleNamespace

    from featbench.apply.pipeline import batches

    items = [SimpleNamespace(faces=[0] * (k % 2)) for k in range(7)]  # faces on odd frames
    assert [len(b) for b in batches(iter(items), batch_size=2, window=3)] == [3, 3, 1]
    assert [len(b) for b in batches(iter(items), batch_size=2)] == [4, 3]
    assert [len(b) for b in batches(iter([]), batch_size=2)] == []


def test_predict_never_writes_over_a_model_file(toy, tmp_path, capsys):
    """``--out`` onto the model file being read is an input (refused even with --force); onto
    another exported model it is featbench's file but no predict output (refused without
    --force). Before, both were replaced by a CSV without a word."""
    from PIL import Image

    ws = str(toy["ws"].root)
    model, other = tmp_path / "m.featbench", tmp_path / "other.featbench"
    for path in (model, other):
        assert main(["--workspace", ws, "export", "toy__full__svm__au1+2+4+12", "--out", str(path)]) == 0
    before = model.read_bytes()
    Image.new("RGB", (40, 30)).save(tmp_path / "a.png")
    for argv, says in ((["--out", str(model), "--force"], "is an input of this predict"),
                       (["--out", str(other)], "is a featbench model file, not a predict output"),
                       (["--out", str(tmp_path / "a.csv"), "--plot", str(other)], "--plot")):
        assert main(["--workspace", ws, "predict", str(tmp_path / "a.png"), "--model", str(model),
                     *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and says in err[0], err
    assert model.read_bytes() == before and other.read_bytes() == before
    assert not (tmp_path / "a.csv").exists()


def test_a_fine_tuned_networks_file_is_found_by_its_hash_or_as_the_only_candidate(tmp_path):
    import hashlib

    from featbench.apply.runmodel import finetuned_file
    from featbench.core.identity import WeightsId

    ws = Workspace(tmp_path)
    folder = tmp_path / "results" / "synth" / "models" / "cnn__full__ft"
    folder.mkdir(parents=True)
    a, b = folder / "model.safetensors", folder / "fold2.safetensors"
    a.write_bytes(b"network a")
    digest = hashlib.sha256(b"network a").hexdigest()
    assert finetuned_file(ws, WeightsId.parse(f"finetuned:cnn__full__ft sha256:{digest}")) == a
    assert finetuned_file(ws, WeightsId.parse("finetuned:cnn__full__ft")) == a  # the one file
    assert finetuned_file(ws, WeightsId.parse("finetuned:cnn__*")) is None  # a name, no pattern
    b.write_bytes(b"network b")
    assert finetuned_file(ws, WeightsId.parse(f"finetuned:cnn__full__ft sha256:{digest}")) == a
    assert finetuned_file(ws, WeightsId.parse("finetuned:cnn__full__ft")) is None  # which one?


def test_best_is_the_top_ranked_run_not_a_repeated_splits_rerun(tmp_path):
    from featbench.apply.runmodel import resolve_run
    from featbench.core.results import upsert_summary

    ws = Workspace(tmp_path)
    for run, f1, protocol in (("hog__full__svm", 0.50, "paper"),
                              ("hog__full__lda__kfold3", 0.55, "kfold:3"),
                              ("hog__full__lda__kfold3r2", 0.60, "kfold:3:r2"),
                              ("hog__full__svm__kfold3r1", 0.70, "kfold:3:r1")):
        upsert_summary(ws, "synth", {"run": run, "model": "hog", "region": "full",
                                     "clf": run.split("__")[2], "protocol": protocol,
                                     "mean_f1": f1})
    # the repeats are left out of the report's ranking, and so of "best"
    assert resolve_run(ws, "synth", "best") == "hog__full__lda__kfold3"
