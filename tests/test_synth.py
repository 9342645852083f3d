"""featbench.core.synth: the embedded synthetic data sets, read back through the real readers."""

import hashlib

import numpy as np
import pytest

from featbench.core.aus import AFFWILD2_AUS, DISFA_AUS
from featbench.core.errors import UsageError
from featbench.core.synth import INFO_FILE, generate_dataset


def _hashes(root):
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def disfa_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "disfa"
    # SN001..SN005: SN005 uses the l0NNNN_lm.mat naming; 2 workers exercise the pool
    return generate_dataset(root, subjects=5, frames=12, seed=3, progress=False, workers=2)


def test_same_seed_same_bytes(disfa_root, tmp_path):
    again = generate_dataset(tmp_path / "again", subjects=5, frames=12, seed=3, progress=False, workers=1)
    assert _hashes(disfa_root) == _hashes(again)
    other = generate_dataset(tmp_path / "other", subjects=5, frames=12, seed=4, progress=False, workers=1)
    assert _hashes(other).keys() == _hashes(again).keys()
    assert _hashes(other) != _hashes(again)


def test_disfa_layout_files(disfa_root):
    labels = disfa_root / "ActionUnit_Labels" / "SN001"
    assert sorted(p.name for p in labels.iterdir()) == sorted(f"SN001_au{int(a[2:])}.txt" for a in DISFA_AUS)
    lines = (labels / "SN001_au12.txt").read_text().splitlines()
    assert len(lines) == 12 and lines[0].startswith("1,") and lines[-1].startswith("12,")
    assert (disfa_root / "Videos_LeftCamera" / "LeftVideoSN001_comp.avi").is_file()
    assert (disfa_root / "Video_RightCamera" / "RightVideoSN001_Comp.avi").is_file()
    lm = disfa_root / "Landmark_Points"
    assert (lm / "SN001" / "tmp_frame_lm" / "SN001_0000_lm.mat").is_file()
    assert (lm / "SN005" / "tmp_frame_lm" / "l00011_lm.mat").is_file()
    assert not list(disfa_root.parent.glob(".disfa.partial-*"))  # the temporary folder is gone


def test_disfa_round_trip_through_reader(disfa_root):
    import scipy.io

    from featbench.core.datasets import load_dataset, load_landmarks
    from featbench.core.landmarks import ibug66_to_68

    table = load_dataset("synth", root=disfa_root)
    assert table.subjects == ["SN001", "SN002", "SN003", "SN004", "SN005"]
    assert len(table) == 5 * 12 and table.has_intensity
    f = table.frames
    for subject in ("SN002", "SN005"):
        for au in DISFA_AUS:
            text = (disfa_root / "ActionUnit_Labels" / subject / f"{subject}_au{int(au[2:])}.txt").read_text()
            want = np.array([int(line.split(",")[1]) for line in text.splitlines()])
            got = f.loc[f.subject == subject].sort_values("frame")[f"{au}_int"].to_numpy()
            np.testing.assert_array_equal(got, want)
            np.testing.assert_array_equal(f.loc[f.subject == subject].sort_values("frame")[au], want >= 2)
    lms = load_landmarks(table)
    assert not np.isnan(lms).any()
    i = int(np.flatnonzero((f.subject == "SN003").to_numpy() & (f.frame == 7).to_numpy())[0])
    pts = scipy.io.loadmat(disfa_root / "Landmark_Points/SN003/tmp_frame_lm/SN003_0007_lm.mat")["pts"]
    assert pts.shape == (66, 2) and pts.dtype == np.float64
    np.testing.assert_allclose(lms[i], ibug66_to_68(pts), atol=1e-4)
    # landmarks are where the face is: inside the 320 x 256 frame, eyes above the mouth
    assert (lms[..., 0] > 0).all() and (lms[..., 0] < 320).all() and (lms[..., 1] < 256).all()
    assert (lms[:, 36:48, 1].mean(1) < lms[:, 48:60, 1].mean(1)).all()


def test_disfa_quirks_short_subject_and_missing_landmark(tmp_path):
    from featbench.core.datasets import load_dataset

    root = generate_dataset(tmp_path / "q", subjects=27, frames=4, progress=False, right_camera=False)
    table = load_dataset("synth", root=root)
    per = table.frames.groupby("subject").size()
    assert per["SN010"] == 3 and per["SN001"] == 4 and len(per) == 27
    assert table.skipped.get("frames without a landmark file") == 1
    assert not (root / "Video_RightCamera").exists()


def test_frames_look_like_faces(disfa_root):
    import cv2

    cap = cv2.VideoCapture(str(disfa_root / "Videos_LeftCamera" / "LeftVideoSN002_comp.avi"))
    frames = []
    while True:
        ok, img = cap.read()
        if not ok:
            break
        frames.append(img)
    assert len(frames) == 12 and frames[0].shape == (256, 320, 3)
    assert np.std(frames[0]) > 15 and np.abs(frames[0].astype(int) - frames[-1]).mean() > 0.5


def test_affwild2_layout(tmp_path):
    from featbench.core.datasets import load_dataset

    root = generate_dataset(tmp_path / "aw", layout="affwild2", subjects=8, frames=40, seed=1,
                            progress=False)
    ann = root / "AU_Detection_Challenge"
    files = sorted(ann.rglob("*.txt"))
    names = {p.stem for p in files}
    assert {"video6_left", "video6_right"} <= names and "video1" in names
    assert {p.parent.name for p in files} == {"Train_Set", "Validation_Set"}
    lines = files[0].read_text().splitlines()
    assert lines[0] == ",".join(f"AU{int(a[2:])}" for a in AFFWILD2_AUS) and len(lines) == 41
    values = np.array([[int(v) for v in line.split(",")] for p in files
                       for line in p.read_text().splitlines()[1:]])
    assert set(np.unique(values)) == {-1, 0, 1}
    img = next((root / "cropped_aligned").rglob("00001.jpg"), None) or next((root / "cropped_aligned").rglob("*.jpg"))
    import cv2

    assert cv2.imread(str(img)).shape == (112, 112, 3)
    table = load_dataset("synth-affwild2", root=root)
    assert table.aus == AFFWILD2_AUS and table.pre_aligned
    assert table.skipped.get("frames not annotated (-1)", 0) > 0
    assert table.skipped.get("annotated frames without an image (no face)", 0) > 0
    assert len(table) + sum(table.skipped.values()) == 8 * 40


def test_expression_layout(tmp_path):
    import csv

    from featbench.core.datasets import load_dataset
    from featbench.core.synth._layouts import EXPRESSIONS, VIEWS

    root = generate_dataset(tmp_path / "ex", layout="expression", subjects=3, progress=False)
    with open(root / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["image", "subject", "view", "expression"]
    assert len(rows) == 3 * len(EXPRESSIONS) * len(VIEWS)
    assert {r["expression"] for r in rows} == set(EXPRESSIONS) and {r["view"] for r in rows} == set(VIEWS)
    assert rows[0]["image"] == f"images/S001/S001_neutral_{next(iter(VIEWS))}.png"
    assert all((root / r["image"]).is_file() for r in rows)
    table = load_dataset("synth-expression", root=root)
    assert len(table) == len(rows) and set(table.frames["expression"]) == set(EXPRESSIONS)


@pytest.mark.parametrize("kw", [dict(subjects=2), dict(subjects=65), dict(layout="disfaa"),
                                dict(frames=0), dict(seed=-1), dict(subjects=3.5)])
def test_bad_arguments(tmp_path, kw):
    with pytest.raises(UsageError):
        generate_dataset(tmp_path / "x", progress=False, **kw)
    assert not (tmp_path / "x").exists()


def test_existing_root_refused_then_replaced(disfa_root, tmp_path):
    root = tmp_path / "r"
    root.mkdir()
    (root / "keep.txt").write_text("mine")
    with pytest.raises(UsageError, match="already exists"):
        generate_dataset(root, subjects=3, frames=4, progress=False)
    assert (root / "keep.txt").read_text() == "mine"
    # overwrite replaces only a folder the generator made (issue 11.7): its info file says so
    with pytest.raises(UsageError, match="not made by featbench data synth"):
        generate_dataset(root, subjects=3, frames=4, progress=False, overwrite=True)
    assert (root / "keep.txt").read_text() == "mine"
    (root / INFO_FILE).write_text("{}")
    generate_dataset(root, subjects=3, frames=4, progress=False, overwrite=True)
    assert not (root / "keep.txt").exists() and (root / "ActionUnit_Labels" / "SN003").is_dir()


def test_interrupted_generation_leaves_nothing(tmp_path, monkeypatch):
    from featbench.core.synth import _layouts

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(_layouts, "write_disfa_subject", boom)
    with pytest.raises(KeyboardInterrupt):
        generate_dataset(tmp_path / "i", subjects=3, frames=4, progress=False, workers=1)
    assert list(tmp_path.iterdir()) == []


def test_contact_sheet(disfa_root, tmp_path):
    import cv2

    from featbench.core.datasets import load_dataset
    from featbench.core.synth import contact_sheet

    table = load_dataset("synth", root=disfa_root)
    out = contact_sheet(table, tmp_path / "sheet.png", n=7, seed=1)
    img = cv2.imread(str(out))
    assert img is not None and img.shape[0] > 100 and img.shape[1] >= 3 * 200


@pytest.mark.slow
def test_base_rates_follow_disfa(tmp_path):
    """On a medium set, the AUs' positive shares keep DISFA's order within a tolerance."""
    from featbench.core.synth._face import AU_INDEX
    from featbench.core.synth._timeline import (DISFA_FRAMES, DISFA_POSITIVES, au_timeline, event_phases,
                                           intensity_labels)

    rng = np.random.default_rng(0)
    labels = []
    for _ in range(10):
        phase = event_phases(rng)
        labels += [intensity_labels(au_timeline(rng, 120, index=i, phase=phase)) for i in range(27)]
    pos = (np.concatenate(labels) >= 2).mean(0)
    for au, n in DISFA_POSITIVES.items():
        want = n / DISFA_FRAMES
        assert 0.5 * want < pos[AU_INDEX[au]] < 1.7 * want, au
    got = {au: pos[AU_INDEX[au]] for au in DISFA_POSITIVES}
    assert max(got, key=got.get) == "AU25" and min(got, key=got.get) in ("AU05", "AU15", "AU20")
