"""BP4D-Spontaneous (issue 33): the reader on tiny trees with its quirks, the 3-fold protocol,
damaged trees (one line, exit 2, never a traceback), and the synthetic BP4D layout read back."""

import csv

import numpy as np
import pytest

from featbench.app.cli import main
from featbench.core.aus import BP4D_AUS, BP4D_INTENSITY_AUS
from featbench.core.datasets import load_dataset
from featbench.core.errors import LabelFileError, LayoutError, UsageError
from featbench.core.frames import FrameTable, build_frames
from featbench.core.splits import BP4D_PARTS, make_splits, protocol_aus

#: AU_OCC columns of the tiny tree: every protocol AU, two it ignores (5, 27)
OCC_AUS = (1, 2, 4, 5, 6, 7, 10, 12, 14, 15, 17, 23, 24, 27)


def _image(path):
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((16, 16, 3), 100, np.uint8))


def _occ(root, subject, task, rows):
    """Write AU_OCC/<subject>_<task>.csv: ``rows`` = [(frame, {au number: value})]."""
    f = root / "AUCoding" / "AU_OCC" / f"{subject}_{task}.csv"
    f.parent.mkdir(parents=True, exist_ok=True)
    lines = [",".join(["0"] + [str(k) for k in OCC_AUS])]
    lines += [",".join([str(frame)] + [str(vals.get(k, 0)) for k in OCC_AUS]) for frame, vals in rows]
    f.write_text("\n".join(lines) + "\n")
    return f


@pytest.fixture
def bp4d_tree(tmp_path):
    """Three subjects, one per part, with BP4D's quirks.

    - F001 T1: frames 10-14 coded, images 8-15 (coding starts late, padded names 0008.jpg);
      AU01 = 1 on 11, 12; AU02 = 9 (not coded) on 13; AU27 (ignored) 9 throughout;
      AU12 intensities 0, 1, 2, 9, 4 in AU_INT
    - F001 T2: frames 1-3 coded, image 2 missing (a task folder with a missing frame)
    - M011 T1: frames 1-4 coded, images unpadded (1.jpg); frame 4 all 9 (not coded at all)
    - F007 T1: frames 5-7 coded; F007 T3: images but no label file
    - M007: images only, no label file at all (a subject without labels)
    """
    root = tmp_path / "BP4D"
    img = root / "2D+3D"
    _occ(root, "F001", "T1", [(f, {1: int(f in (11, 12)), 2: 9 if f == 13 else 0, 27: 9})
                              for f in range(10, 15)])
    for f in range(8, 16):
        _image(img / "F001" / "T1" / f"{f:04d}.jpg")
    intens = root / "AUCoding" / "AU_INT" / "AU12" / "F001_T1_AU12.csv"
    intens.parent.mkdir(parents=True)
    intens.write_text("10,0\n11,1\n12,2\n13,9\n14,4\n")
    _occ(root, "F001", "T2", [(f, {4: 1}) for f in (1, 2, 3)])
    for f in (1, 3):
        _image(img / "F001" / "T2" / f"{f:04d}.jpg")
    _occ(root, "M011", "T1", [(1, {24: 1}), (2, {}), (3, {}),
                              (4, {k: 9 for k in OCC_AUS})])
    for f in range(1, 5):
        _image(img / "M011" / "T1" / f"{f}.jpg")
    _occ(root, "F007", "T1", [(f, {14: 1}) for f in (5, 6, 7)])
    for f in (5, 6, 7):
        _image(img / "F007" / "T1" / f"{f:04d}.jpg")
    _image(img / "F007" / "T3" / "0001.jpg")
    _image(img / "M007" / "T1" / "0001.jpg")
    return root


def cli(capsys, *argv):
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def _row(t, subject, task, frame):
    f = t.frames
    sel = f[(f.subject == subject) & (f.video == f"{subject}_{task}") & (f.frame == frame)]
    assert len(sel) == 1
    return sel.iloc[0]


# reader -----------------------------------------------------------------------------------

def test_reader_counts_labels_and_skips(bp4d_tree):
    t = load_dataset("bp4d", root=bp4d_tree)
    assert t.aus == BP4D_AUS and t.has_intensity and t.landmark_points == 0 and not t.pre_aligned
    assert t.subjects == ["F001", "F007", "M011"]
    # F001 T1: 5 coded frames with images (8, 9, 15 have images but no labels: not rows);
    # F001 T2: 3 coded, one without its image; M011 4; F007 3
    assert len(t) == 5 + 2 + 4 + 3
    assert t.skipped == {"labelled frames without an image": 1,
                         "task folders without a label file (frames not read)": 2}
    assert t.notes == {"subjects_without_labels": ["M007"]}
    assert sorted(t.frames.loc[t.frames.video == "F001_T1", "frame"]) == [10, 11, 12, 13, 14]
    assert _row(t, "F001", "T1", 11)["AU01"] == 1 and _row(t, "F001", "T1", 10)["AU01"] == 0
    assert _row(t, "F001", "T1", 12)["source"].endswith("F001/T1/0012.jpg")
    assert _row(t, "M011", "T1", 3)["source"].endswith("M011/T1/3.jpg")
    assert _row(t, "M011", "T1", 1)["AU24"] == 1 and t.positives()["AU14"] == 3


def test_nine_is_masked_never_a_negative(bp4d_tree):
    t = load_dataset("bp4d", root=bp4d_tree)
    assert _row(t, "F001", "T1", 13)["AU02"] == -1
    assert _row(t, "F001", "T1", 12)["AU02"] == 0
    uncoded = _row(t, "M011", "T1", 4)
    assert all(uncoded[au] == -1 for au in BP4D_AUS)
    # a frame coded for no AU is in the table but among no split's labelled frames
    assert t.labelled_mask().sum() == len(t) - 1
    assert t.summary()["frames"] == len(t) - 1


def test_intensities_from_the_fera_files(bp4d_tree):
    t = load_dataset("bp4d", root=bp4d_tree)
    got = [int(_row(t, "F001", "T1", f)["AU12_int"]) for f in range(10, 15)]
    assert got == [0, 1, 2, -1, 4]             # 9 in an intensity file: unknown
    assert (t.frames.loc[t.frames.video != "F001_T1", "AU12_int"] == -1).all()
    assert (t.frames["AU01_int"] == -1).all()  # BP4D gives no AU01 intensity
    assert set(BP4D_INTENSITY_AUS) <= set(t.aus)


@pytest.mark.parametrize("damage, needle", [
    (lambda r: (r / "AUCoding/AU_OCC/F001_T1.csv").write_text("0,1,2\n10,1,2\n"), "F001_T1.csv:2"),
    (lambda r: (r / "AUCoding/AU_OCC/F001_T1.csv").write_text("0,1,2\n10,1\n"), "F001_T1.csv:2"),
    (lambda r: (r / "AUCoding/AU_OCC/F001_T1.csv").write_text("0,1,2\n10,1,0\n10,0,0\n"), "twice"),
    (lambda r: (r / "AUCoding/AU_OCC/F001_T1.csv").write_text("0,1,2\n1e,0,0\n"), "F001_T1.csv:2"),
    (lambda r: (r / "AUCoding/AU_OCC/F001_T1.csv").write_text(""), "empty label file"),
    (lambda r: (r / "AUCoding/AU_OCC/F001_T1.csv").write_bytes(b"0,1\n10,\xff\n"), "not UTF-8"),
    (lambda r: (r / "AUCoding/AU_INT/AU12/F001_T1_AU12.csv").write_text("10,7\n"), "AU12.csv:1"),
    (lambda r: (r / "AUCoding/AU_OCC/F001_T1.csv").write_text("0,one\n10,1\n"), "not an AU number"),
])
def test_damaged_label_file_is_one_line(bp4d_tree, capsys, damage, needle):
    damage(bp4d_tree)
    rc, out, err = cli(capsys, "data", "info", "--dataset", "bp4d", "--root", bp4d_tree)
    assert rc == 2 and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and needle in err, err


def test_missing_folders_are_one_line(bp4d_tree, tmp_path, capsys):
    import shutil

    rc, _, err = cli(capsys, "data", "info", "--dataset", "bp4d", "--root", tmp_path / "nowhere")
    assert rc == 2 and "does not exist" in err
    shutil.rmtree(bp4d_tree / "2D+3D")
    with pytest.raises(LayoutError, match="no folder of BP4D images"):
        load_dataset("bp4d", root=bp4d_tree)
    (bp4d_tree / "2D+3D").mkdir()
    (bp4d_tree / "2D+3D" / "F001.zip").write_bytes(b"PK")
    rc, _, err = cli(capsys, "data", "info", "--dataset", "bp4d", "--root", bp4d_tree)
    assert rc == 2 and "extract them" in err and len(err.strip().splitlines()) == 1
    shutil.rmtree(bp4d_tree / "AUCoding")
    rc, _, err = cli(capsys, "data", "info", "--dataset", "bp4d", "--root", bp4d_tree)
    assert rc == 2 and "AUCoding/AU_OCC" in err and "Traceback" not in err


def test_subject_without_labels_and_task_without_images(bp4d_tree):
    import shutil

    # F001's labels gone: F001 becomes a subject without labels, its frames are not read
    for p in (bp4d_tree / "AUCoding" / "AU_OCC").glob("F001_*.csv"):
        p.unlink()
    # M011's task folder gone: its label file has no images
    shutil.rmtree(bp4d_tree / "2D+3D" / "M011" / "T1")
    t = load_dataset("bp4d", root=bp4d_tree)
    assert t.subjects == ["F007"]
    assert t.notes == {"subjects_without_labels": ["F001", "M007"]}
    assert t.skipped["label files without an image folder (frames left out)"] == 1


def test_label_file_lacking_a_protocol_au(bp4d_tree):
    f = bp4d_tree / "AUCoding" / "AU_OCC" / "F007_T1.csv"
    f.write_text("0,1,2\n5,1,0\n6,0,0\n7,0,9\n")
    t = load_dataset("bp4d", root=bp4d_tree)
    rows = t.frames[t.frames.video == "F007_T1"].sort_values("frame")
    assert rows["AU01"].tolist() == [1, 0, 0] and rows["AU02"].tolist() == [0, 0, -1]
    assert (rows["AU14"] == -1).all()   # no AU14 column: unlabelled, not negative
    assert t.skipped["label files lacking an AU column (AU left unlabelled)"] == 1


# protocol ---------------------------------------------------------------------------------

def _table(subjects, aus=BP4D_AUS):
    rows = [{"subject": s, "video": s, "frame": i, "source": "", "source_index": -1,
             "landmark_file": "", "split": "", **{a: i % 2 for a in aus}}
            for s in subjects for i in range(2)]
    return FrameTable("bp4d", ".", aus, build_frames(rows, aus))


def test_bp4d_three_folds_are_the_literature_parts():
    ids = sorted(s for part in BP4D_PARTS for s in part)
    assert len(ids) == 41 and len(set(ids)) == 41
    splits = make_splits(_table(ids))                 # the default protocol ("paper")
    assert make_splits(_table(ids), "literature") == splits
    assert [sp.name for sp in splits] == ["bp4d-fold1", "bp4d-fold2", "bp4d-fold3"]
    # ME-GraphAU's numbering: fold 1 tests part 3, fold 2 part 2, fold 3 part 1
    assert [set(sp.test) for sp in splits] == [set(BP4D_PARTS[2]), set(BP4D_PARTS[1]),
                                               set(BP4D_PARTS[0])]
    for sp in splits:
        assert len(sp.validation) == 3
        assert set(sp.train) | set(sp.validation) == set(ids) - set(sp.test)
        assert not set(sp.train) & set(sp.validation)
    assert protocol_aus(_table(ids), "paper") == list(BP4D_AUS)
    assert protocol_aus(_table(ids), "literature") == list(BP4D_AUS)
    assert make_splits(_table(ids), "kfold:3", seed=1) != splits   # other protocols still apply


def test_bp4d_subset_keeps_parts_and_refuses_an_empty_one():
    splits = make_splits(_table(["F001", "M007", "M011", "F003", "F007"]))
    assert [sp.test for sp in splits] == [("F007",), ("F003", "M011"), ("F001", "M007")]
    assert all(len(sp.validation) == 1 for sp in splits)
    with pytest.raises(UsageError, match="part 3"):
        make_splits(_table(["F001", "M011"]))


# synthetic BP4D ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def synth_bp4d(tmp_path_factory):
    from featbench.core.synth import generate_dataset

    root = tmp_path_factory.mktemp("sb") / "bp4d"
    return generate_dataset(root, layout="bp4d", subjects=4, frames=4, seed=2, progress=False,
                            workers=1)


def test_synth_bp4d_read_back_through_the_reader(synth_bp4d):
    t = load_dataset("bp4d", root=synth_bp4d)
    # ids dealt from the three parts in turn: F001 (1), M011 (2), F007 (3), M007 (1)
    assert t.subjects == ["F001", "F007", "M007", "M011"]
    assert t.frames["video"].nunique() == 4 * 8
    # every label equals the file's own cell (read here with the csv module), 9 -> -1
    occ = synth_bp4d / "AUCoding" / "AU_OCC"
    n_rows = 0
    for path in sorted(occ.glob("*.csv")):
        subject, task = path.stem.split("_")
        with open(path) as fh:
            rows = list(csv.reader(fh))
        col = {f"AU{int(h):02d}": j for j, h in enumerate(rows[0]) if j}
        for cells in rows[1:]:
            sel = t.frames[(t.frames.video == path.stem) & (t.frames.frame == int(cells[0]))]
            if sel.empty:   # the quirk: a labelled frame without its image
                assert (subject, task) == ("M011", "T2")
                continue
            n_rows += 1
            for au in BP4D_AUS:
                v = int(cells[col[au]])
                assert sel.iloc[0][au] == (-1 if v == 9 else v), (path.name, cells[0], au)
    assert n_rows == len(t) and t.skipped == {"labelled frames without an image": 2}
    assert len(t) == 4 * 8 * 4 - 2
    # coding starts after a few uncoded images: frame numbers are BP4D's own, from 3
    assert t.frames["frame"].min() == 3
    assert t.has_intensity and (t.frames["AU06_int"] >= 0).any()
    assert set(t.frames.loc[t.frames.AU06_int >= 2, "AU06"]) <= {1}


def test_intensity_runs_score_the_aus_bp4d_codes_intensity_for(synth_bp4d):
    from classify.task import get_task
    from classify.plan import resolve_aus

    t = load_dataset("bp4d", root=synth_bp4d)
    intensity = get_task("intensity")
    # the 5 AUs with FERA 2015 intensity files, found in the table, not taken from a constant
    coded = [au for au in t.aus if (t.frames[f"{au}_int"] >= 0).any()]
    assert coded == list(BP4D_INTENSITY_AUS)
    assert resolve_aus(t, "paper", task=intensity) == coded
    assert resolve_aus(t, "paper") == list(BP4D_AUS)            # occurrence keeps all 12
    assert resolve_aus(t, "paper", "AU12,AU06", task=intensity) == ["AU12", "AU06"]
    with pytest.raises(UsageError, match=r"no intensity labels for AU01 \(it has them for AU06"):
        resolve_aus(t, "paper", "AU01,AU06", task=intensity)


def test_synth_bp4d_cli_default_root_and_name(tmp_path, capsys):
    rc, out, _ = cli(capsys, "--workspace", tmp_path, "data", "synth", "--layout", "bp4d",
                     "--subjects", "3", "--frames", "4")
    assert rc == 0 and "--dataset synth-bp4d" in out
    assert (tmp_path / "data" / "synth-bp4d" / "AUCoding" / "AU_OCC" / "F001_T8.csv").is_file()
    t = load_dataset("synth-bp4d", workspace=__import__("featbench.core.workspace",
                                                         fromlist=["Workspace"]).Workspace(tmp_path))
    assert t.dataset == "synth-bp4d" and t.subjects == ["F001", "F007", "M011"]
    assert [sp.test for sp in make_splits(t)] == [("F007",), ("M011",), ("F001",)]
    rc, _, err = cli(capsys, "data", "synth", "--layout", "bp4d", "--subjects", "42",
                     "--root", tmp_path / "x")
    assert rc == 2 and "--subjects 42" in err


# the protocol end to end on the synthetic BP4D layout ----------------------------------------

def test_align_extract_classify_on_synth_bp4d(synth_bp4d, tmp_path, capsys):
    """``--dataset bp4d --root`` through align, extract and classify: the 12 AUs, 3 folds; every
    test frame is scored by the fold that holds its subject out; 9s are never negatives."""
    import h5py
    import pandas as pd

    ws = ["--workspace", tmp_path]
    data = ["--dataset", "bp4d", "--root", synth_bp4d]
    assert cli(capsys, *ws, "align", *data)[0] == 0
    assert cli(capsys, *ws, "extract", "--model", "hog", *data)[0] == 0
    rc, out, err = cli(capsys, *ws, "classify", "--clf", "svm", "--model", "hog", *data)
    assert rc == 0, err
    table = pd.read_csv(tmp_path / "results" / "bp4d" / "hog__full__svm.csv")
    assert table["au"].tolist() == list(BP4D_AUS) + ["mean"]
    t = load_dataset("bp4d", root=synth_bp4d)
    splits = make_splits(t)
    with h5py.File(tmp_path / "results" / "bp4d" / "predictions" / "hog__full__svm.h5") as f:
        subjects = [s.decode() for s in f["frames"]["subject"]]
        fold, labels = f["fold"][:], f["labels"][:]
    assert sorted(set(fold)) == [0, 1, 2]
    for s, k in zip(subjects, fold):
        assert s in splits[k].test
    # a label that is 9 in the file is -1 in the predictions, and support counts only 1s
    assert (labels == -1).any()
    support = table.set_index("au")["support"]
    for j, au in enumerate(BP4D_AUS):
        assert support[au] == int((labels[:, j] == 1).sum())


@pytest.mark.slow
def test_featbench_run_on_synth_bp4d(tmp_path):
    """The whole quick protocol on BP4D's layout: ``featbench run --dataset bp4d --root DIR``."""
    import subprocess
    import sys

    import pandas as pd

    from featbench.core.synth import generate_dataset

    root = generate_dataset(tmp_path / "b", layout="bp4d", subjects=6, frames=6, progress=False)
    proc = subprocess.run([sys.executable, "-m", "featbench", "--workspace", tmp_path / "ws",
                           "run", "--dataset", "bp4d", "--root", root, "--quiet"],
                          capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "0 failed" in proc.stdout, proc.stdout
    summary = pd.read_csv(tmp_path / "ws" / "results" / "bp4d" / "summary.csv")
    assert {"hog__full__svm", "dlib_face__auto__svm", "ensemble-fe__full__vote"} <= set(summary.run)
    assert set(summary.protocol) == {"paper"}
    assert [c for c in summary.columns if c.startswith("f1_AU")] == [f"f1_{a}" for a in BP4D_AUS]


def test_a_picture_never_replaces_a_frame_of_the_data_set(synth_bp4d, tmp_path, capsys):
    """`data show` and `align --show` on a set of images: --out onto one of its frames is one
    line and exit 2 with the frame untouched (before: overwritten, exit 0); a name that is no
    PNG is one line (before: an OpenCV traceback); their own picture is replaced on a rerun and a
    user's own PNG is not."""
    from PIL import Image

    frame = next(p for p in sorted(synth_bp4d.rglob("*.jpg")))
    before = frame.read_bytes()
    ws = tmp_path / "ws"
    common = ("--workspace", ws, "--dataset", "bp4d", "--root", synth_bp4d)
    for cmd in (("data", "show"), ("align", "--show")):
        for out, says in ((frame, "ending in .png"), (tmp_path / "sheet.txt", "ending in .png")):
            rc, _, err = cli(capsys, *common[:2], *cmd, *common[2:], "--out", out)
            assert rc == 2 and says in err and len(err.strip().splitlines()) == 1, err
    png_frame = tmp_path / "frames" / frame.with_suffix(".png").name
    png_frame.parent.mkdir()
    Image.open(frame).save(png_frame)
    mine = png_frame.read_bytes()
    rc, _, err = cli(capsys, *common[:2], "data", "show", *common[2:], "--out", png_frame)
    assert rc == 2 and "not written by featbench" in err
    assert frame.read_bytes() == before and png_frame.read_bytes() == mine
    for cmd in (("data", "show"), ("align", "--show")):  # twice each: the rerun replaces its own
        for _ in range(2):
            rc, _, err = cli(capsys, *common[:2], *cmd, *common[2:], "--n", "2")
            assert rc == 0, err
