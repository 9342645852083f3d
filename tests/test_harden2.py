"""Hardening, second pass (issue 25): no output replaces an input, no wrong weights wear the
ImageNet label, no hang, no traceback.

One section per numbered defect of the issue; each test reproduces it through the real code
(the CLI in real processes where the defect lives between processes: locks, signals, kills) and
failed on the code before the fix.
"""

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import write_lm, write_video
from test_harden import assert_one_line_error, featbench, make_disfa, start_featbench

REPO = Path(__file__).resolve().parents[1]


# --- fixtures -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hog_run(tmp_path_factory):
    """A workspace with a real ``hog`` LDA run (AU01, AU02) trained on random HOG-sized codes.

    ``predict`` applies it to any footage: faces are detected, aligned and HOG-encoded for
    real; without a face a frame is a ``success = 0`` row. Returns ``(workspace root, run)``.
    """
    from classify.run import classify_run
    from extract.store import open_store
    from featbench.core.workspace import Workspace
    from test_classify import make_table

    ws = Workspace(tmp_path_factory.mktemp("hog-ws"))
    table = make_table(n_frames=4)
    X = np.random.default_rng(0).random((len(table), 6084)).astype(np.float32)
    X[:, 0] += 3 * table.frames["AU01"].to_numpy()
    with open_store(ws.features_path("synth", "hog"), keys=table.keys(), model="hog", layer="HOG",
                    weights="none", input_size=112, dims=6084, overwrite=True) as w:
        w.write("full", 0, X)
    res = classify_run(ws, "synth", table=table, model="hog", clf="lda", progress=False, n_jobs=1,
                       aus="AU01,AU02")
    return ws.root, res["run"]


def write_png(path, size=(80, 60), seed=0):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype(np.uint8)).save(path)
    return path


def cli(capsys, *argv):
    """Run the CLI in this process; return a CompletedProcess (status, stdout, stderr)."""
    from featbench.app.cli import main

    capsys.readouterr()
    try:
        status = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse
        status = exc.code
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(argv, status, out, err)


def predict_cli(hog_run, capsys, *args):
    ws, run = hog_run
    return cli(capsys, "--workspace", ws, "predict", *args, "--run", run, "--quiet")


# --- 1. an output replaces an input -----------------------------------------------------------------
@pytest.mark.parametrize("flag", ["--out", "--plot"])
def test_1_an_output_that_is_the_input_photo_is_refused_and_the_photo_kept(hog_run, tmp_path,
                                                                             capsys, flag):
    photo = write_png(tmp_path / "victim.png")
    before = photo.read_bytes()
    args = [photo, flag, photo] + (["--out", tmp_path / "o.csv"] if flag == "--plot" else [])
    assert_one_line_error(predict_cli(hog_run, capsys, *args), str(photo), f"{flag} is an input")
    assert photo.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["victim.png"]


def test_1_an_output_that_is_the_input_video_even_through_a_link_is_refused(hog_run, tmp_path, capsys):
    video = tmp_path / "clip.avi"
    write_video(video, 5)
    before = video.read_bytes()
    (tmp_path / "link.csv").symlink_to(video)
    for out in (video, tmp_path / "link.csv", tmp_path / "." / "clip.avi"):
        assert_one_line_error(predict_cli(hog_run, capsys, video, "--out", out), "is an input")
    assert video.read_bytes() == before


def test_1_a_glob_input_is_protected_file_by_file(hog_run, tmp_path, capsys):
    photo = write_png(tmp_path / "shots" / "a.png")
    before = photo.read_bytes()
    proc = predict_cli(hog_run, capsys, str(tmp_path / "shots" / "*.png"), "--out", photo)
    assert_one_line_error(proc, "--out is an input")
    assert photo.read_bytes() == before


def test_1_a_users_file_beside_is_not_replaced_without_force(hog_run, tmp_path, capsys):
    write_png(tmp_path / "shots" / "a.png")
    mine = tmp_path / "shots" / "labels.json"
    mine.write_text('{"mine": 1}\n')
    out = tmp_path / "shots" / "labels.csv"
    proc = predict_cli(hog_run, capsys, tmp_path / "shots", "--out", out)
    assert_one_line_error(proc, str(mine), "not written by featbench", "--force")
    assert mine.read_text() == '{"mine": 1}\n' and not out.exists()
    chart = write_png(tmp_path / "chart.png", seed=3)  # a user's own PNG
    proc = predict_cli(hog_run, capsys, tmp_path / "shots", "--out", tmp_path / "o.csv", "--plot", chart)
    assert_one_line_error(proc, str(chart), "not written by featbench")
    # featbench's own outputs are replaced on a rerun; --force replaces a user's file
    for _ in range(2):
        proc = predict_cli(hog_run, capsys, tmp_path / "shots", "--out", tmp_path / "o.csv", "--plot",
                           tmp_path / "o.png")
        assert proc.returncode == 0, proc.stderr
    proc = predict_cli(hog_run, capsys, tmp_path / "shots", "--out", out, "--force")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(mine.read_text())["run"] == hog_run[1]


def test_1_out_and_plot_on_one_file_or_a_folder_are_refused(hog_run, tmp_path, capsys):
    photo = write_png(tmp_path / "a.png")
    same = tmp_path / "x.csv"
    assert_one_line_error(predict_cli(hog_run, capsys, photo, "--out", same, "--plot", same),
                          "the same file")
    assert_one_line_error(predict_cli(hog_run, capsys, photo, "--out", tmp_path), "is a folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]


# --- 2. shared temp files and concurrent runs -----------------------------------------------------
def _wait_for(path, proc, seconds=20):
    deadline = time.time() + seconds
    while time.time() < deadline and proc.poll() is None and not path.exists():
        time.sleep(0.02)


@pytest.mark.slow
def test_2_two_predicts_with_one_out_the_second_is_refused_the_first_whole(hog_run, tmp_path):
    ws, run = hog_run
    clips = [tmp_path / "a.avi", tmp_path / "b.avi"]
    write_video(clips[0], 400, size=(320, 240), seed=1)
    write_video(clips[1], 30, size=(320, 240), seed=2)
    same = tmp_path / "same.csv"
    first = start_featbench("--workspace", ws, "predict", clips[0], "--run", run, "--out", same,
                            "--quiet")
    _wait_for(tmp_path / ".same.csv.lock", first)
    second = featbench("--workspace", ws, "predict", clips[1], "--run", run, "--out", same,
                       "--quiet")
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert_one_line_error(second, str(same), "another featbench process is writing it")
    import pandas as pd

    rows = pd.read_csv(same)
    assert len(rows) == 400 and set(rows["input"]) == {str(clips[0])}
    assert json.loads(same.with_suffix(".json").read_text())["inputs"] == [str(clips[0])]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.avi", "b.avi", "same.csv", "same.json"]


def hold_lock(path):
    """Start a process that holds ``flock`` on ``path`` (as a running featbench does) until killed."""
    code = ("import fcntl, sys, time; fh = open(sys.argv[1], 'a'); fcntl.flock(fh, fcntl.LOCK_EX); "
            "print('held', flush=True); time.sleep(600)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE,
                              text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_2_a_second_identical_finetune_is_refused_at_the_start(tmp_path, capsys):
    """While another process makes a run, a finetune of the same run stops at once."""
    root = make_disfa(tmp_path / "DISFA", subjects=("SN001", "SN002", "SN003"))
    ws = tmp_path / "ws"
    run_dir = ws / "results" / "disfa" / "models"
    run_dir.mkdir(parents=True)
    name = "timm-test_efficientnet__full__ft__au1"
    holder = hold_lock(run_dir / f".{name}.lock")  # what the first process holds start to end
    try:
        t0 = time.time()
        proc = cli(capsys, "--workspace", ws, "finetune", "--dataset", "disfa", "--root", root,
                   "--model", "timm:test_efficientnet", "--weights", "random:0",
                   "--input-size", "48", "--aus", "AU01", "--epochs", "1", "--device", "cpu")
        seconds = time.time() - t0
    finally:
        holder.kill()
        holder.wait()
    assert_one_line_error(proc, name, "another featbench process is making the run")
    assert seconds < 30 and not (ws / "data" / "disfa").exists()  # nothing aligned, nothing trained
    assert sorted(p.name for p in run_dir.iterdir()) == [f".{name}.lock"]


def test_2_temp_names_are_unique_and_a_dead_writers_leftovers_are_removed(tmp_path):
    from featbench.core.workspace import atomic_path, stale_temps, temp_sibling

    target = tmp_path / "x.bin"
    names = {temp_sibling(target).name for _ in range(50)}
    assert len(names) == 50 and all(n.startswith(".x.bin.tmp") for n in names)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    mine = temp_sibling(target)
    mine.write_bytes(b"")  # this process still writes it: never removed
    leftover = tmp_path / f".x.bin.tmp{dead}"  # what a killed download left (old name)
    leftover.write_bytes(b"")
    assert stale_temps(tmp_path) == [leftover]
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"done")
    assert not leftover.exists() and mine.exists() and target.read_bytes() == b"done"


@pytest.mark.slow
def test_2_sigterm_removes_the_unfinished_csv(hog_run, tmp_path):
    ws, run = hog_run
    clip = tmp_path / "a.avi"
    write_video(clip, 2000, size=(320, 240))
    out = tmp_path / "o.csv"
    p = start_featbench("--workspace", ws, "predict", clip, "--run", run, "--out", out, "--quiet")
    deadline = time.time() + 60
    while time.time() < deadline and not any(".tmp" in q.name for q in tmp_path.iterdir()):
        time.sleep(0.05)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 143 and "Traceback" not in err, err
    assert sorted(q.name for q in tmp_path.iterdir()) == ["a.avi"]
