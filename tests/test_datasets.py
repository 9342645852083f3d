"""The readers on tiny trees with the real layouts' quirks: exact counts, labels and skips."""

import json

import numpy as np
import pytest

from featbench.app.cli import main
from featbench.core.datasets import load_dataset, load_landmarks


def cli(capsys, *argv):
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


# DISFA ------------------------------------------------------------------------------------

def test_disfa_counts_labels_and_skips(disfa_tree):
    t = load_dataset("disfa", root=disfa_tree)
    assert t.subjects == ["SN001", "SN002", "SN010"]
    # SN010: 5 label frames but a 4-frame video -> 4 rows, one counted past the video's end
    assert len(t) == 6 + 6 + 4
    assert t.skipped == {"label frames past the end of the video": 1,
                         "frames without a landmark file": 1}
    assert t.notes == {"short_subjects": {"SN010": 5}}
    # AU01 intensities 0..5 per subject; present when >= 2
    assert t.positives()["AU01"] == 4 + 4 + 2
    assert t.positives()["AU25"] == 16
    assert t.positives()["AU02"] == 0
    sn1 = t.frames[t.frames.subject == "SN001"]
    assert sn1["AU01_int"].tolist() == [0, 1, 2, 3, 4, 5]
    assert sn1["AU01"].tolist() == [0, 0, 1, 1, 1, 1]
    assert sn1["frame"].tolist() == list(range(6))
    # the _Comp video of SN002 was matched case-insensitively
    assert t.frames[t.frames.subject == "SN002"]["source"].iloc[0].endswith("LeftVideoSN002_Comp.avi")


def test_disfa_threshold_flag(disfa_tree):
    t = load_dataset("disfa", root=disfa_tree, threshold=3)
    assert t.positives()["AU01"] == 3 + 3 + 1


def test_disfa_landmarks_both_naming_patterns_and_missing_frame(disfa_tree):
    t = load_dataset("disfa", root=disfa_tree)
    lm = load_landmarks(t)
    assert lm.shape == (16, 68, 2)
    rows = t.frames.reset_index(drop=True)
    i = rows.index[(rows.subject == "SN001") & (rows.frame == 2)][0]
    assert lm[i, 0, 0] == 2.0 and lm[i, 59, 1] == 61.0   # 66-pt file value = index + frame
    j = rows.index[(rows.subject == "SN002") & (rows.frame == 4)][0]   # l00004_lm.mat
    assert lm[j, 0, 0] == 4.0
    k = rows.index[(rows.subject == "SN002") & (rows.frame == 3)][0]   # the missing file
    assert np.isnan(lm[k]).all()


def test_disfa_cameras(disfa_tree):
    right = load_dataset("disfa", root=disfa_tree, camera="right")
    assert len(right) == 16
    assert (right.frames["landmark_file"] == "").all()  # DISFA's landmarks are the left camera's
    both = load_dataset("disfa", root=disfa_tree, camera="both")
    assert len(both) == 32
    assert both.frames["video"].nunique() == 6
    assert both.skipped["label frames past the end of the video"] == 2


# Aff-Wild2 --------------------------------------------------------------------------------

def test_affwild2_counts_labels_and_skips(abaw_tree):
    t = load_dataset("affwild2", root=abaw_tree)
    assert t.aus == ("AU01", "AU02", "AU04", "AU06", "AU07", "AU10",
                     "AU12", "AU15", "AU23", "AU24", "AU25", "AU26")
    assert len(t) == 6
    assert t.skipped == {"frames not annotated (-1)": 2,
                         "annotated frames without an image (no face)": 1}
    assert t.positives()["AU01"] == 2 and t.positives()["AU25"] == 3 and t.positives()["AU26"] == 2
    assert t.frames.groupby("split").size().to_dict() == {"train": 4, "validation": 2}
    v1 = t.frames[t.frames.video == "video1"]
    assert v1["frame"].tolist() == [0, 2]
    assert v1["source"].iloc[1].endswith("video1/00003.jpg")
    assert t.pre_aligned


# folder -----------------------------------------------------------------------------------

def test_folder_manifest(tmp_path):
    import cv2

    for name in ("a.png", "b.png", "c.png"):
        cv2.imwrite(str(tmp_path / name), np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "manifest.csv").write_text(
        "image,subject,AU1,au02,AU12,expression\n"
        "a.png,p1,1,0,,smile\n"
        "b.png,p1,0,1,1,neutral\n"
        "missing.png,p2,1,1,1,smile\n"
        "c.png,p2,0,0,0,scream\n")
    t = load_dataset("folder", root=tmp_path)
    assert t.aus == ("AU01", "AU02", "AU12")
    assert len(t) == 3 and t.skipped == {"images missing": 1}
    assert t.frames["AU12"].tolist() == [-1, 1, 0]
    assert t.frames["expression"].tolist() == ["smile", "neutral", "scream"]
    assert t.positives() == {"AU01": 1, "AU02": 1, "AU12": 1}


# data info --------------------------------------------------------------------------------

def test_data_info_json(disfa_tree, capsys):
    rc, out, err = cli(capsys, "data", "info", "--dataset", "disfa", "--root", str(disfa_tree), "--json")
    assert rc == 0, err
    info = json.loads(out)
    assert info["subjects"] == ["SN001", "SN002", "SN010"]
    assert info["frames"] == 16
    assert info["positives"]["AU01"] == 10
    assert info["skipped"]["label frames past the end of the video"] == 1


def test_data_info_table(abaw_tree, capsys):
    rc, out, _ = cli(capsys, "data", "info", "--dataset", "affwild2", "--root", str(abaw_tree))
    assert rc == 0
    assert "frames not annotated (-1)" in out and "6 with labels" in out


# bad input: exit 2, one line naming the problem, no traceback ------------------------------

def _bad(capsys, *argv):
    rc, out, err = cli(capsys, *argv)
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("featbench: error: "), err
    assert "Traceback" not in err
    return lines[0]


def test_missing_root(tmp_path, capsys):
    msg = _bad(capsys, "data", "info", "--dataset", "disfa", "--root", str(tmp_path / "nope"))
    assert "nope" in msg and "does not exist" in msg


def test_wrong_layout(abaw_tree, capsys):
    msg = _bad(capsys, "data", "info", "--dataset", "disfa", "--root", str(abaw_tree))
    assert "not a DISFA folder" in msg and "ActionUnit_Labels" in msg


@pytest.mark.parametrize("line,expected", [("3,x", "non-numeric"), ("3,7", "outside 0-5"),
                                           ("3", "expected 'frame,intensity'")])
def test_malformed_disfa_label_file(disfa_tree, capsys, line, expected):
    f = disfa_tree / "ActionUnit_Labels" / "SN002" / "SN002_au4.txt"
    lines = f.read_text().splitlines()
    lines[2] = line
    f.write_text("\n".join(lines) + "\n")
    msg = _bad(capsys, "data", "info", "--dataset", "disfa", "--root", str(disfa_tree))
    assert "SN002_au4.txt:3" in msg and expected in msg


def test_malformed_abaw_label_file(abaw_tree, capsys):
    f = abaw_tree / "AU_Detection_Challenge" / "Train_Set" / "video2_left.txt"
    f.write_text(f.read_text().replace("0,0,0,0,0,0,0,0,0,0,0,0", "0,0,0,0,0,2,0,0,0,0,0,0"))
    msg = _bad(capsys, "data", "info", "--dataset", "affwild2", "--root", str(abaw_tree))
    assert "video2_left.txt:3" in msg and "0, 1 or -1" in msg


def test_unknown_dataset(capsys):
    msg = _bad(capsys, "data", "info", "--dataset", "disfaa")
    assert "unknown data set 'disfaa'" in msg and "did you mean 'disfa'" in msg


def test_folder_bad_value(tmp_path, capsys):
    import cv2

    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "manifest.csv").write_text("image,subject,AU1\na.png,p1,yes\n")
    msg = _bad(capsys, "data", "info", "--dataset", "folder", "--root", str(tmp_path))
    assert "manifest.csv:2" in msg and "AU1" in msg


def test_reading_a_missing_synthetic_set_writes_nothing(tmp_path):
    """Data are generated only when asked (the CLI asks); a library read never writes."""
    from featbench.core.errors import DataError
    from featbench.core.workspace import Workspace

    with pytest.raises(DataError, match="does not exist"):
        load_dataset("synth", workspace=Workspace(tmp_path), progress=False)
    assert not any(tmp_path.iterdir())
