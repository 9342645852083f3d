"""Hardening, third pass (issue 31): reruns skip what is done, Ctrl-C is honoured, and the
crashes and messages of its item 6.

One section per numbered item of the issue; each test reproduces it through the real code (the
CLI in real processes where the defect lives between processes: signals) and failed on the code
before the fix. Item 3 (model-file validation) lives in tests/test_modelfile_fuzz.py; item 4
(each kind beats the all-positive baseline) in tests/test_baselines.py.
"""

import os
import subprocess
import sys

import pytest

import numpy as np

from test_harden import REPO, assert_one_line_error, make_disfa
from test_harden2 import cli, tmpfs
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


# --- 2. a person-calibrated run, a second face in one frame ---------------------------------------
def test_2_a_face_track_too_short_to_calibrate_is_written_empty_and_said(tmp_path, capsys):
    """predict --all-faces with a calibrated run: the second face, seen in one frame, has a track
    too short for a reference; LDA crashed on its nan codes (traceback, exit 1). Now its row has
    a face and empty AU columns, and the summary and sidecar say so."""
    import json

    import cv2
    import pandas as pd
    from skimage import data

    from featbench.core.workspace import Workspace
    from test_harden2 import hog_lda_run
    from test_predict import write_video as write_rgb_video

    ws = Workspace(tmp_path / "ws")
    run = hog_lda_run(ws, calibrate="median")
    face = cv2.resize(data.astronaut(), (300, 300), interpolation=cv2.INTER_AREA)
    frames = []
    for k in range(4):
        canvas = np.full((320, 760, 3), 90, np.uint8)
        canvas[10:310, 20 + 6 * k:320 + 6 * k] = face
        if k == 2:  # a passer-by, in one frame
            canvas[10:310, 440:740] = face
        frames.append(canvas)
    clip = write_rgb_video(tmp_path / "clip.avi", frames)
    out = tmp_path / "clip.csv"
    proc = cli(capsys, "--workspace", ws.root, "predict", clip, "--run", run, "--all-faces",
               "--out", out, "--quiet")
    assert proc.returncode == 0, proc
    df = pd.read_csv(out)
    assert len(df) == 5 and (df["success"] == 1).all()
    short = df[df["face_id"] == df["face_id"].max()]
    assert len(short) == 1 and short[["AU01_c", "AU01_p", "AU02_c"]].isna().all(axis=None)
    assert df[df["face_id"] == 0][["AU01_c", "AU01_p"]].notna().all(axis=None)
    assert "1 face track(s) too short to calibrate (1 face(s))" in proc.stdout, proc.stdout
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["uncalibrated_faces"] == 1 and len(sidecar["uncalibrated_tracks"]) == 1


# --- 5. Ctrl-C honoured at the next batch, every time ---------------------------------------------
def _sigint_when(proc, ready, timeout=180):
    """Wait until ``ready()`` (the work has started: a file grew), send SIGINT (as Ctrl-C, or
    ``timeout -s INT``, does) and wait for the exit; return (stderr, seconds from the signal to
    the exit). Fails if the process ends before ``ready()``."""
    import signal
    import time

    end = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            raise AssertionError(f"ended before it was stopped: {proc.communicate()[1][-2000:]}")
        assert time.monotonic() < end, "never ready"
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    t0 = time.monotonic()
    _, err = proc.communicate(timeout=120)
    return err, time.monotonic() - t0


def _grown(path, size):
    return lambda: path.exists() and path.stat().st_size > size


def _assert_interrupted(err, seconds, status):
    assert status == 130, err[-2000:]
    assert "Traceback" not in err and "Exception ignored" not in err, err[-3000:]
    assert "featbench: interrupted; what was written so far is kept and a rerun resumes" in err, err
    assert seconds < 60, seconds


def test_5_ctrl_c_stops_align_at_the_next_block_and_the_rerun_resumes(tmp_path):
    """Frames without landmark files: faces are detected (slow enough to be stopped midway)."""
    import h5py

    from test_harden import featbench, start_featbench

    root = make_disfa(tmp_path / "DISFA", subjects=("SN001", "SN002"), frames=160,
                      size=(320, 240), landmarks=False)
    ws = tmp_path / "ws"
    args = ("--workspace", ws, "align", "--dataset", "disfa", "--root", root)
    partial = ws / "data" / "disfa" / "aligned" / "faces.h5.partial"
    proc = start_featbench(*args)
    err, seconds = _sigint_when(proc, _grown(partial, 10 << 20))  # a block of faces written
    _assert_interrupted(err, seconds, proc.returncode)
    with h5py.File(partial, "r") as f:  # the blocks written before the stop are kept
        done = int(f["done"][:].sum())
    assert 128 <= done < 320, done
    proc = featbench(*args, check=0)  # the rerun resumes from the partial file and finishes
    assert not partial.exists() and "aligned 0 of 320 frames" in proc.stdout, proc.stdout


def test_5_a_ctrl_c_that_lands_in_a_gc_callback_is_recorded_not_swallowed():
    """Python raises KeyboardInterrupt wherever the main thread is; inside a garbage-collection
    callback it is printed as 'Exception ignored' and lost (the issue's align ran on to exit 0).
    Under featbench's handler the signal is recorded there, and the next batch stops."""
    import gc
    import signal
    import time
    import weakref

    from featbench.core import interrupt

    class Thing:
        pass

    with interrupt.stop_at_next_batch():
        thing = Thing()
        weakref.finalize(thing, os.kill, os.getpid(), signal.SIGINT)
        del thing
        gc.collect()
        time.sleep(0.05)  # the handler has run by now: it recorded, it did not raise
        assert interrupt.requested()
        with pytest.raises(KeyboardInterrupt):
            list(interrupt.between(range(3)))
    assert not interrupt.requested() and signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.slow
def test_5_ctrl_c_stops_extract_and_finetune_at_a_batch_and_their_reruns_resume(tmp_path):
    import json

    from test_harden import featbench, start_featbench

    root = make_disfa(tmp_path / "DISFA", subjects=("SN001", "SN002", "SN003"), frames=200)
    ws = tmp_path / "ws"
    common = ("--workspace", ws, "--dataset", "disfa", "--root", root)
    featbench(*common[:2], "align", *common[2:], check=0)
    codes = ws / "data" / "features" / "disfa" / "dlib_face.h5"
    proc = start_featbench(*common[:2], "extract", "--model", "dlib_face", *common[2:])
    err, seconds = _sigint_when(proc, _grown(codes, 100_000))
    _assert_interrupted(err, seconds, proc.returncode)
    assert "already extracted" not in featbench(*common[:2], "extract", "--model", "dlib_face",
                                                *common[2:], check=0).stdout
    args = ("finetune", "--model", "timm:test_efficientnet", "--weights", "random:0",
            "--input-size", "32", "--aus", "AU01", "--epochs", "40", "--patience", "40",
            "--device", "cpu", "--quiet", *common[2:])
    run = "timm-test_efficientnet__full__ft__au1"
    ckpt = ws / "results" / "disfa" / "models" / f".{run}.partial" / "AU01" / "last.pt"
    proc = start_featbench(*common[:2], *args)
    err, seconds = _sigint_when(proc, ckpt.exists)
    _assert_interrupted(err, seconds, proc.returncode)
    assert ckpt.exists()  # the last finished epoch's checkpoint is kept
    featbench(*common[:2], *args, check=0, timeout=600)
    settings = json.loads((ws / "results" / "disfa" / "models" / run / "settings.json").read_text())
    assert '"resumed_from": 0' not in json.dumps(settings), settings  # it went on, not over


@pytest.mark.slow
def test_5_ctrl_c_stops_predict_at_the_next_batch_and_removes_its_unfinished_csv(tmp_path):
    import time

    from test_harden import start_featbench
    from test_harden2 import hog_lda_run
    from featbench.core.workspace import Workspace

    ws = Workspace(tmp_path / "ws")
    run = hog_lda_run(ws)
    clip = tmp_path / "long.avi"
    write_video(clip, 600, size=(320, 240), seed=3)
    out = tmp_path / "long.csv"
    proc = start_featbench("--workspace", ws.root, "predict", clip, "--run", run, "--out", out)
    t0 = time.monotonic()
    err, seconds = _sigint_when(proc, lambda: time.monotonic() - t0 > 8)
    assert proc.returncode == 130 and "Traceback" not in err, err[-2000:]
    assert "featbench: interrupted; nothing was kept (the unfinished CSV was removed)" in err, err
    assert seconds < 60 and not out.exists() and not out.with_suffix(".json").exists()


# --- 6. crashes and messages ------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("after", [0.05, 0.3])
def test_6_a_disk_filled_while_align_writes_is_one_line_not_a_segfault(tmp_path, after):
    """Another process fills the disk between align's free-space check and its next HDF5 write:
    a write that fails for space inside HDF5 crashed the process on exit (139)."""
    import shutil
    import subprocess
    import time

    from test_harden import featbench, start_featbench

    with tmpfs(tmp_path / "small", "128m") as where:
        root = make_disfa(tmp_path / "DISFA", subjects=("SN001", "SN002"), frames=300,
                          size=(320, 240))
        ws = where / "ws"
        partial = ws / "data" / "disfa" / "aligned" / "faces.h5.partial"
        args = ("--workspace", ws, "align", "--dataset", "disfa", "--root", root)
        proc = start_featbench(*args)
        while not (partial.exists() and partial.stat().st_size > 20 << 20):
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.02)
        (where / "filler").write_bytes(b"\0" * (shutil.disk_usage(where).free - (28 << 20)))
        time.sleep(after)
        with open(where / "filler2", "wb") as fh:
            fh.write(b"\0" * max(0, shutil.disk_usage(where).free - (100 << 10)))
        out, err = proc.communicate(timeout=120)
        assert_one_line_error(subprocess.CompletedProcess(args, proc.returncode, out, err),
                              "faces.h5: disk full")
        (where / "filler").unlink()
        (where / "filler2").unlink()
        featbench(*args, check=0)  # space freed: the rerun resumes and finishes
        assert not partial.exists() and (ws / "data" / "disfa" / "aligned" / "faces.h5").exists()


def test_6_damaged_landmark_files_are_named_by_data_info_and_align(tmp_path, capsys):
    """Empty or garbage landmark files were counted as 'no landmarks' and never named."""
    root = make_disfa(tmp_path / "DISFA")
    lm = root / "Landmark_Points" / "SN001" / "tmp_frame_lm"
    (lm / "SN001_0003_lm.mat").write_bytes(b"")
    (lm / "SN001_0004_lm.mat").write_bytes(b"garbage" * 40)
    common = ("--workspace", tmp_path / "ws")
    info = cli(capsys, *common, "data", "info", "--dataset", "disfa", "--root", root)
    assert info.returncode == 0, info
    damaged = [line for line in info.stdout.splitlines() if line.startswith("  damaged ")]
    assert len(damaged) == 2 and "SN001_0003_lm.mat" in damaged[0] and "SN001_0004" in damaged[1]
    proc = cli(capsys, *common, "align", "--dataset", "disfa", "--root", root)
    assert proc.returncode == 0 and "2 no landmarks" in proc.stdout, proc
    assert "2 landmark files unreadable" in proc.stdout and "SN001_0003_lm.mat" in proc.stdout


def test_6_workspace_and_offline_are_taken_after_the_subcommand_too(tmp_path, capsys):
    root = make_disfa(tmp_path / "DISFA")
    ws = tmp_path / "ws"
    proc = cli(capsys, "align", "--dataset", "disfa", "--root", root, "--workspace", ws,
               "--offline")
    assert proc.returncode == 0, proc
    assert (ws / "data" / "disfa" / "aligned" / "faces.h5").exists()
    proc = cli(capsys, "--workspace", tmp_path / "elsewhere", "data", "info", "--dataset", "disfa",
               "--root", root, "--workspace", ws)  # the later one wins, as users expect
    assert proc.returncode == 0 and not (tmp_path / "elsewhere").exists()


@pytest.mark.parametrize("args, needle", [
    (["classify", "--clf", "lda", "--no-balance", "--balance"], "--balance: not allowed with"),
    (["finetune", "--task", "intensity", "--tune-threshold"],
     "--tune-threshold: not for --task intensity"),
    (["finetune", "--model", "dlib_face", "--input-size", "100000"],
     "--input-size 100000: must be 16-1024"),
])
def test_6_contradictory_or_impossible_flags_are_one_line(tmp_path, capsys, args, needle):
    proc = cli(capsys, "--workspace", tmp_path / "ws", *args)
    assert_one_line_error(proc, needle)
    assert not (tmp_path / "ws" / "data").exists()  # refused before any data is read


def test_6_no_empty_lock_file_stays_behind(tmp_path, capsys):
    root = make_disfa(tmp_path / "DISFA", subjects=("SN001", "SN002", "SN003"))
    ws = tmp_path / "ws"
    common = ("--workspace", ws, "--dataset", "disfa", "--root", root)
    assert cli(capsys, *common[:2], "extract", "--model", "hog", *common[2:]).returncode == 0
    assert cli(capsys, *common[:2], "classify", "--clf", "lda", "--aus", "AU01", "--quiet",
               *common[2:]).returncode == 0
    assert sorted(p.name for p in ws.rglob("*.lock")) == []


def test_a_reader_that_goes_away_ends_the_output_quietly():
    """`featbench models | head -1`: stdout closed by its reader is the end of the output, not a
    BrokenPipeError traceback (exit 141, as other pipe writers: 128 + SIGPIPE)."""
    proc = subprocess.Popen([sys.executable, "-m", "featbench", "models"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(REPO)})
    proc.stdout.close()  # before the command prints: its first write meets a closed pipe
    err = proc.stderr.read().decode()
    proc.wait(timeout=120)
    assert proc.returncode == 141 and err == "", err


def test_the_space_reserved_for_writes_is_given_back_when_the_file_is_done(tmp_path):
    """reserve_space allocates blocks ahead of HDF5's writes; trim_h5 gives the unused ones
    back (it compared HDF5's size of the file with the file's, which are the same, and kept
    them: every feature file carried about 8 MB of nothing)."""
    import h5py

    from featbench.core.workspace import FREE_MARGIN_BYTES, reserve_space, trim_h5

    path = tmp_path / "codes.h5"
    with h5py.File(path, "w") as f:
        d = f.create_dataset("x", (0, 1000), maxshape=(None, 1000), dtype="f4", chunks=(8, 1000))
        for i in range(4):
            reserve_space(f, 8 * 1000 * 4, "writing codes")
            d.resize(8 * (i + 1), axis=0)
            d[8 * i:] = i
    assert os.path.getsize(path) > FREE_MARGIN_BYTES  # the reservation is the file's
    trim_h5(path)
    assert os.path.getsize(path) < 4 * 8 * 1000 * 4 + (64 << 10)  # the data and its metadata
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f["x"][::8, 0], [0, 1, 2, 3])
