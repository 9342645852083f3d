"""Hardening, third pass (issue 31): reruns skip what is done, Ctrl-C is honoured, and the
crashes and messages of its item 6.

One section per numbered item of the issue; each test reproduces it through the real code (the
CLI in real processes where the defect lives between processes: signals) and failed on the code
before the fix. Item 3 (model-file validation) lives in tests/test_modelfile_fuzz.py; item 4
(each kind beats the all-positive baseline) in tests/test_baselines.py.
"""

import os

import numpy as np

from test_harden import assert_one_line_error, make_disfa
from test_harden2 import cli
from conftest import write_video


def _drop_landmarks(root, subject="SN002", frame=3):
    """Delete one frame's landmark file: that frame has no face, as DISFA has many."""
    path = root / "Landmark_Points" / subject / "tmp_frame_lm" / f"{subject}_{frame:04d}_lm.mat"
    path.unlink()
    return path


# --- 1. a frame without landmarks must not make complete codes look stale ------------------------
def test_1_codes_of_a_set_with_a_faceless_frame_are_fresh_until_a_video_changes(tmp_path, capsys):
    from extract.extractor import extract_features
    from extract.store import read_codes, stale_codes
    from featbench.core.align import align_dataset
    from featbench.core.datasets import load_dataset
    from featbench.core.workspace import Workspace

    root = make_disfa(tmp_path / "DISFA", subjects=("SN001", "SN002", "SN003"))
    _drop_landmarks(root)
    ws = Workspace(tmp_path / "ws")
    table = load_dataset("disfa", root=root)
    path = extract_features(table, ws, "hog", progress=False)
    assert len(read_codes(path)[0]) == len(table) - 1  # the faceless frame is not encoded
    assert stale_codes(path, table, ws.aligned_path("disfa")) is None
    args = ["--workspace", ws.root, "classify", "--clf", "lda", "--model", "hog", "--dataset",
            "disfa", "--root", root, "--aus", "AU01", "--quiet"]
    assert cli(capsys, *args).returncode == 0  # fresh codes: classified
    write_video(root / "Videos_LeftCamera" / "LeftVideoSN003_comp.avi", 6, size=(48, 36), seed=7)
    table = load_dataset("disfa", root=root)
    assert "SN003 pixels" in stale_codes(path, table, ws.aligned_path("disfa"))
    # classify refuses them, as extract does (it trained on the old codes and exited 0)
    assert_one_line_error(cli(capsys, *args), str(path), "stale codes", "changed: SN003 pixels",
                          "featbench extract --model hog --dataset disfa --overwrite")
    align_dataset(table, ws.aligned_path("disfa"), progress=False)
    assert_one_line_error(cli(capsys, *args), "stale codes", "changed: SN003 pixels")


def test_1_codes_missing_a_frame_that_has_a_face_now_are_stale(tmp_path):
    """Frame by frame: landmarks added for a frame that had none give it a face; codes made
    before encode one frame fewer than the cache holds now."""
    import shutil

    from extract.extractor import extract_features
    from extract.store import stale_codes
    from featbench.core.align import align_dataset
    from featbench.core.datasets import load_dataset
    from featbench.core.workspace import Workspace

    root = make_disfa(tmp_path / "DISFA", subjects=("SN001", "SN002"))
    lm = _drop_landmarks(root)
    keep = tmp_path / "kept.mat"
    ws = Workspace(tmp_path / "ws")
    path = extract_features(load_dataset("disfa", root=root), ws, "hog", progress=False)
    shutil.copyfile(lm.with_name("SN002_0002_lm.mat"), keep)
    shutil.copyfile(keep, lm)  # the frame has landmarks now
    table = load_dataset("disfa", root=root)
    align_dataset(table, ws.aligned_path("disfa"), progress=False)
    assert "SN002 landmarks" in stale_codes(path, table, ws.aligned_path("disfa"))


def test_1_a_finished_workspace_reruns_featbench_run_without_extracting(tmp_path, capsys):
    import dataclasses
    import time

    from featbench.app.pipeline import PRESETS, run_pipeline
    from featbench.core.synth import generate_dataset
    from featbench.core.workspace import Workspace

    ws = Workspace(tmp_path)
    generate_dataset(ws.data_dir("synth"), subjects=4, frames=12, progress=False,
                     right_camera=False)
    lm = sorted((ws.data_dir("synth") / "Landmark_Points").rglob("*.mat"))[5]
    lm.unlink()  # one labelled frame without landmarks, as the embedded set of 27 has
    tiny = dataclasses.replace(PRESETS["quick"], name="tiny", models=("hog",), region_models=(),
                               clfs=("lda",), region_clfs=(), finetunes=(), control_finetunes=(),
                               ensembles=())
    assert run_pipeline(ws, preset=tiny, protocol="kfold:2", progress=False)["failed"] == []
    features = ws.features_path("synth", "hog")
    before = features.stat().st_mtime_ns
    capsys.readouterr()
    t0 = time.perf_counter()
    out = run_pipeline(ws, preset=tiny, protocol="kfold:2", progress=True)
    assert out["failed"] == [] and time.perf_counter() - t0 < 60
    said = capsys.readouterr().out
    assert "stale" not in said and "already extracted" in said, said
    assert features.stat().st_mtime_ns == before  # not rewritten
