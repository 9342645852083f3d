"""Shared fixtures: tiny data-set trees with the real layouts' quirks, built per test."""

import numpy as np
import pytest


def write_video(path, n_frames, size=(32, 24), seed=0):
    """Write an MJPG .avi of ``n_frames`` random frames (the readers only count frames)."""
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25, size)
    rng = np.random.RandomState(seed)
    for _ in range(n_frames):
        w.write(rng.randint(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    w.release()


def write_lm(path, frame_value):
    import scipy.io

    path.parent.mkdir(parents=True, exist_ok=True)
    pts = np.tile(np.arange(66, dtype=np.float64)[:, None], (1, 2)) + frame_value
    scipy.io.savemat(str(path), {"pts": pts})


DISFA_AU_NUMBERS = (1, 2, 4, 5, 6, 9, 12, 15, 17, 20, 25, 26)


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """No test touches the internet: featbench (and CLI subprocesses) start offline; the
    download tests clear FEATBENCH_OFFLINE and serve files from 127.0.0.1 through the mirror."""
    monkeypatch.setenv("FEATBENCH_OFFLINE", "1")
    monkeypatch.delenv("FEATBENCH_WEIGHTS_MIRROR", raising=False)



@pytest.fixture
def one_thread_as_torchrun(monkeypatch):
    """One compute thread in a test's one-process runs too, for tests that compare them with
    torchrun's ranks: torchrun starts each rank with OMP_NUM_THREADS=1, while fit picks its
    count by the machine's load (featbench.core.threads), and another count sums in another
    order; over a few epochs those roundings grow past any tolerance."""
    monkeypatch.setenv("FEATBENCH_THREADS", "1")

@pytest.fixture
def disfa_tree(tmp_path):
    """A 3-subject DISFA tree with every quirk of the real one.

    - SN001: 6 frames, `_comp` video, SN001_NNNN_lm.mat landmarks, AU01 intensities 0..5
    - SN002: 6 frames, `_Comp` video (case differs), l0NNNN_lm.mat landmarks, landmark of frame 3 missing
    - SN010: 5 frames (one fewer: a short subject), its video has only 4 frames
    - right camera videos for all, `Video_RightCamera` folder name as distributed
    """
    root = tmp_path / "DISFA"
    spec = {"SN001": (6, "_comp", 6), "SN002": (6, "_Comp", 6), "SN010": (5, "_comp", 4)}
    for subj, (n, comp, n_video) in spec.items():
        for k in DISFA_AU_NUMBERS:
            f = root / "ActionUnit_Labels" / subj / f"{subj}_au{k}.txt"
            f.parent.mkdir(parents=True, exist_ok=True)
            if k == 1:
                vals = [i % 6 for i in range(n)]          # 0 1 2 3 4 5
            elif k == 25:
                vals = [2] * n                          # always present
            else:
                vals = [0] * n
            f.write_text("".join(f"{i + 1},{v}\n" for i, v in enumerate(vals)))
        write_video(root / "Videos_LeftCamera" / f"LeftVideo{subj}{comp}.avi", n_video)
        write_video(root / "Video_RightCamera" / f"RightVideo{subj}_Comp.avi", n_video, seed=1)
        lm_dir = root / "Landmark_Points" / subj / "tmp_frame_lm"
        for i in range(n):
            if subj == "SN002" and i == 3:
                continue
            name = f"l0{i:04d}_lm.mat" if subj == "SN002" else f"{subj}_{i:04d}_lm.mat"
            write_lm(lm_dir / name, i)
    return root


@pytest.fixture
def abaw_tree(tmp_path):
    """A tiny ABAW3 AU tree: header, -1 frames, an annotated frame without image, two splits."""
    root = tmp_path / "AffWild2"
    header = "AU1,AU2,AU4,AU6,AU7,AU10,AU12,AU15,AU23,AU24,AU25,AU26"
    videos = {
        ("Train_Set", "video1"): ["1,0,0,0,0,0,1,0,0,0,1,0", "-1,-1,-1,-1,-1,-1,-1,-1,-1,-1,-1,-1",
                                  "0,0,1,0,0,0,0,0,0,0,0,0", "1,1,0,0,0,0,0,0,0,0,0,0"],
        ("Train_Set", "video2_left"): ["0,0,0,1,1,0,1,0,0,0,1,1", "0,0,0,0,0,0,0,0,0,0,0,0"],
        ("Validation_Set", "video3"): ["0,0,0,0,0,0,0,0,0,0,1,1", "1,0,0,0,0,0,0,0,0,0,0,0",
                                       "-1,-1,-1,-1,-1,-1,-1,-1,-1,-1,-1,-1"],
    }
    import cv2

    for (split, video), lines in videos.items():
        f = root / "AU_Detection_Challenge" / split / f"{video}.txt"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(header + "\n" + "\n".join(lines) + "\n")
        img_dir = root / "cropped_aligned" / video
        img_dir.mkdir(parents=True, exist_ok=True)
        for i in range(len(lines)):
            if video == "video1" and i == 3:
                continue  # annotated, but no face was found: no image
            cv2.imwrite(str(img_dir / f"{i + 1:05d}.jpg"), np.full((16, 16, 3), 128, np.uint8))
    return root
