"""Hardening (issue 11): every failure a user can cause ends in one line, nothing stale or mixed.

Each test reproduces one numbered defect of the issue through the real code: the CLI in a real
subprocess where the defect lives in a process (locks, signals), the library otherwise.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import DISFA_AU_NUMBERS, write_lm, write_video

REPO = Path(__file__).resolve().parents[1]


def featbench(*args, check=None, timeout=120, **kw):
    """Run ``python -m featbench ARGS`` from this worktree; return the CompletedProcess."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-m", "featbench", *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=timeout, **kw)
    if check is not None:
        assert proc.returncode == check, proc.stderr[-2000:]
    return proc


def _sigint_as_a_terminal_gives_it():
    """In the child: SIGINT back to its default. pytest started as a background job of a
    non-interactive shell (`pytest &`, CI runners) inherits SIGINT ignored, and the Ctrl-C
    tests would then send a signal the child never sees."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_featbench(*args):
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONWARNINGS": "ignore"}
    return subprocess.Popen([sys.executable, "-m", "featbench", *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_sigint_as_a_terminal_gives_it)


def assert_one_line_error(proc, *needles, status=2):
    """The error contract: exit ``status``, one line on stderr, no traceback."""
    err = proc.stderr.strip()
    assert proc.returncode == status, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert len(err.splitlines()) == 1, err
    for needle in needles:
        assert str(needle) in err, err
    return err


def make_disfa(root, *, subjects=("SN001",), frames=6, size=(48, 36), landmarks=True):
    """A DISFA tree: label files (AU1 cycles 0-5, AU25 always 2), left videos, landmarks."""
    for s, subj in enumerate(subjects):
        for k in DISFA_AU_NUMBERS:
            f = root / "ActionUnit_Labels" / subj / f"{subj}_au{k}.txt"
            f.parent.mkdir(parents=True, exist_ok=True)
            vals = [i % 6 if k == 1 else (2 if k == 25 else 0) for i in range(frames)]
            f.write_text("".join(f"{i + 1},{v}\n" for i, v in enumerate(vals)))
        write_video(root / "Videos_LeftCamera" / f"LeftVideo{subj}_comp.avi", frames, size=size,
                    seed=s)
        if landmarks:
            for i in range(frames):
                write_lm(root / "Landmark_Points" / subj / "tmp_frame_lm" / f"{subj}_{i:04d}_lm.mat",
                         i)
    return root


# --- 1. concurrent commands ---------------------------------------------------------------------


@pytest.mark.slow
def test_1_two_concurrent_aligns_both_succeed_and_the_cache_is_whole(tmp_path):
    """Two real processes align one fresh workspace at once: both exit 0, one cache, intact."""
    from featbench.core.align import AlignedFaces
    from featbench.core.datasets import load_dataset

    root = make_disfa(tmp_path / "DISFA", subjects=("SN001", "SN002"), frames=60)
    ws = tmp_path / "ws"
    procs = [start_featbench("--workspace", ws, "align", "--dataset", "disfa", "--root", root)
             for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0 and "Traceback" not in err, err
    table = load_dataset("disfa", root=root)
    with AlignedFaces(ws / "data" / "disfa" / "aligned" / "faces.h5") as af:
        np.testing.assert_array_equal(af.keys, table.keys())
        assert af.valid.all() and af.read([0, 119]).max() > 0


def test_1_a_held_lock_makes_align_wait_then_finish(tmp_path):
    """While another process holds the cache's lock, align says it waits and writes nothing."""
    from featbench.core.workspace import Workspace, file_lock

    root = make_disfa(tmp_path / "DISFA")
    ws = Workspace(tmp_path / "ws")
    cache = ws.aligned_path("disfa")
    with file_lock(cache):
        p = start_featbench("--workspace", ws.root, "align", "--dataset", "disfa", "--root", root)
        first = p.stderr.readline()  # blocks until it says it waits (or ends: EOF)
        assert "waiting for another featbench process" in first and str(cache) in first, first
        time.sleep(0.5)
        assert p.poll() is None
        assert not cache.exists() and not cache.with_name("faces.h5.partial").exists()
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    assert "up to date" not in out and cache.exists()


def test_1_a_busy_file_refused_without_waiting_names_it(tmp_path):
    from featbench.core.errors import BusyError
    from featbench.core.workspace import file_lock

    target = tmp_path / "x.h5"
    with file_lock(target):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            try:
                with file_lock(target, wait=False):
                    os.write(w, b"got")
            except BusyError as exc:
                os.write(w, str(exc).encode())
            os._exit(0)
        os.waitpid(pid, 0)
        msg = os.read(r, 1000).decode()
    assert msg.startswith(f"{target}: another featbench process is writing it")


# --- 3. Ctrl-C ------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("command", ["align", "extract"])
def test_3_ctrl_c_during_alignment_exits_130_and_keeps_the_partial_file(tmp_path, command):
    """SIGINT while frames are being aligned (align, and extract's alignment stage): exit 130,
    no traceback, the line that says what was kept (after the line that acknowledges the
    Ctrl-C as it arrives: it stops at the next batch)."""
    # no landmarks: every frame goes through dlib's detector in two threads (the slow path)
    root = make_disfa(tmp_path / "DISFA", frames=2500, size=(96, 72), landmarks=False)
    ws = tmp_path / "ws"
    args = ["--workspace", ws, command, "--dataset", "disfa", "--root", root]
    if command == "extract":
        args += ["--model", "hog", "--quiet"]
    p = start_featbench(*args)
    partial = ws / "data" / "disfa" / "aligned" / "faces.h5.partial"
    deadline = time.time() + 60
    while time.time() < deadline and p.poll() is None and not partial.exists():
        time.sleep(0.05)
    time.sleep(0.3)
    assert p.poll() is None, "alignment finished before it could be interrupted"
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130 and "Traceback" not in err, err[-2000:]
    lines = err.strip().splitlines()
    assert lines[0].startswith("featbench: stopping after the current batch"), err
    assert lines[-1].startswith("featbench: interrupted; what was written so far is kept"), err
    assert len(lines) == 2, err
    assert partial.exists() and not partial.with_name("faces.h5").exists()


# --- 6. a damaged summary.csv ---------------------------------------------------------------------


def _summary_ws(tmp_path):
    """A workspace with a two-run summary.csv written by the real writer."""
    from featbench.core.results import write_run
    from featbench.core.workspace import Workspace

    ws = Workspace(tmp_path / "ws")
    for k, model in enumerate(("alexnet", "hog")):
        rows = [{"au": au, "f1": 0.5 + 0.1 * k + 0.01 * j, "accuracy": 0.7, "precision": 0.6,
                 "recall": 0.5, "support": 10, "threshold": 0.0}
                for j, au in enumerate(("AU01", "AU02"))]
        write_run(ws, "synth", f"{model}__full__svm", rows,
                  meta={"model": model, "region": "full", "clf": "svm"})
    return ws, ws.summary_csv("synth")


@pytest.mark.parametrize("damage, needle", [
    (lambda t: t + "@@garbage line without commas\n", ":4: 1 fields"),
    (lambda t: t.split("\n", 1)[1], ":1: the header must start with run,model"),
    (lambda t: t.rstrip("\n") + ",extra,fields\n", ":3: "),
    (lambda t: t.replace("0.5000", "zero point five", 1), "is not a number"),
])
def test_6_damaged_summary_is_one_line_naming_file_and_line(tmp_path, damage, needle):
    from featbench.core.errors import StoreError
    from featbench.core.results import read_summary, upsert_summary

    ws, path = _summary_ws(tmp_path)
    path.write_text(damage(path.read_text()))
    before = path.read_bytes()
    with pytest.raises(StoreError, match=needle) as exc:
        read_summary(ws, "synth")
    assert str(exc.value).startswith(str(path))
    # a new run refuses to rewrite it (the garbage would be kept as a row): nothing is lost
    with pytest.raises(StoreError):
        upsert_summary(ws, "synth", {"run": "x__full__lda", "model": "x", "region": "full",
                                     "clf": "lda", "mean_f1": 0.1, "mean_accuracy": 0.2})
    assert path.read_bytes() == before
    assert_one_line_error(featbench("--workspace", ws.root, "report"), str(path), needle)


def test_6_a_sound_summary_reads_as_numbers(tmp_path):
    from featbench.core.results import read_summary

    ws, _ = _summary_ws(tmp_path)
    df = read_summary(ws, "synth")
    assert list(df["run"]) == ["alexnet__full__svm", "hog__full__svm"]
    np.testing.assert_allclose(df["f1_AU02"], [0.51, 0.61])
    assert df["mean_f1"].dtype.kind == "f"


# --- 7. data synth --force ------------------------------------------------------------------------


def test_7_synth_force_refuses_a_folder_it_did_not_make(tmp_path):
    own = tmp_path / "mine"
    own.mkdir()
    (own / "manifest.csv").write_text("image,subject,AU01\na.png,S1,1\n")
    (own / "a.png").write_bytes(b"not really")
    (own / "notes.txt").write_text("my notes")
    proc = featbench("data", "synth", "--root", own, "--force", "--subjects", "3", "--frames", "8")
    assert_one_line_error(proc, str(own), "not made by featbench data synth")
    assert sorted(p.name for p in own.iterdir()) == ["a.png", "manifest.csv", "notes.txt"]


# --- 2. changed inputs invalidate what depends on them -------------------------------------------


def _extract_hog(root, ws, **kw):
    from extract.extractor import extract_features
    from featbench.core.datasets import load_dataset

    table = load_dataset("disfa", root=root)
    return extract_features(table, ws, "hog", progress=False, report=True, **kw)


def _codes(path):
    from extract.store import read_codes

    return read_codes(path)[1]


def test_2_a_replaced_video_rebuilds_the_cache_and_refuses_the_stale_codes(tmp_path):
    from featbench.core.align import align_dataset
    from featbench.core.datasets import load_dataset
    from featbench.core.errors import StoreError
    from featbench.core.workspace import Workspace

    root = make_disfa(tmp_path / "DISFA", subjects=("SN001", "SN002"))
    ws = Workspace(tmp_path / "ws")
    old = _codes(_extract_hog(root, ws).path)
    video = root / "Videos_LeftCamera" / "LeftVideoSN002_comp.avi"
    st = video.stat()
    write_video(video, 6, size=(48, 36), seed=7)  # another video, same frame count
    os.utime(video, ns=(st.st_atime_ns, st.st_mtime_ns))  # even with the old time stamp
    rep = align_dataset(load_dataset("disfa", root=root), ws.aligned_path("disfa"), progress=False)
    assert rep.built and rep.changed == ["SN002 pixels"], rep.changed
    assert "changed: SN002 pixels" in rep.summary()
    with pytest.raises(StoreError, match="other aligned faces.*changed: SN002 pixels"):
        _extract_hog(root, ws)
    new = _codes(_extract_hog(root, ws, overwrite=True).path)
    assert np.allclose(new[:6], old[:6]) and not np.allclose(new[6:], old[6:])


def test_2_an_edited_landmark_file_rebuilds_the_cache(tmp_path):
    from featbench.core.align import AlignedFaces, align_dataset
    from featbench.core.datasets import load_dataset
    from featbench.core.workspace import Workspace

    root = make_disfa(tmp_path / "DISFA")
    ws = Workspace(tmp_path / "ws")
    path = ws.aligned_path("disfa")
    align_dataset(load_dataset("disfa", root=root), path, progress=False)
    with AlignedFaces(path) as af:
        before = af.read([2])
    write_lm(root / "Landmark_Points" / "SN001" / "tmp_frame_lm" / "SN001_0002_lm.mat", 20)
    rep = align_dataset(load_dataset("disfa", root=root), path, progress=False)
    assert rep.built and rep.changed == ["SN001 landmarks"]
    with AlignedFaces(path) as af:
        assert not np.array_equal(af.read([2]), before)  # the face moved with its landmarks


# --- 4. disk full ---------------------------------------------------------------------------------


def _enospc(*a, **k):
    import errno

    raise OSError(errno.ENOSPC, "No space left on device")


def test_4_disk_full_while_creating_codes_is_one_line_and_the_rerun_finishes(tmp_path, monkeypatch):
    import h5py

    from featbench.core.errors import StoreError
    from featbench.core.workspace import Workspace

    root = make_disfa(tmp_path / "DISFA")
    clean = _codes(_extract_hog(root, Workspace(tmp_path / "clean")).path)
    ws = Workspace(tmp_path / "ws")
    real = h5py.Group.create_dataset

    def create(self, name, *a, **k):
        return _enospc() if name == "codes" else real(self, name, *a, **k)

    monkeypatch.setattr(h5py.Group, "create_dataset", create)
    with pytest.raises(StoreError, match="disk full .* rerun: it resumes") as exc:
        _extract_hog(root, ws)
    assert str(exc.value).startswith(str(ws.features_path("disfa", "hog")))
    monkeypatch.undo()
    rep = _extract_hog(root, ws)
    assert rep.computed == {"full": 6}
    np.testing.assert_array_equal(_codes(rep.path), clean)
    assert not list(rep.path.parent.glob(".*tmp*"))


def test_4_disk_full_mid_file_resumes_to_the_same_codes(tmp_path, monkeypatch):
    import h5py

    from featbench.core.errors import StoreError
    from featbench.core.workspace import Workspace

    root = make_disfa(tmp_path / "DISFA", subjects=("SN001", "SN002"))
    clean = _codes(_extract_hog(root, Workspace(tmp_path / "clean")).path)
    ws = Workspace(tmp_path / "ws")
    real, calls = h5py.Dataset.__setitem__, []

    def setitem(self, key, value):
        if self.name.endswith("/codes"):
            calls.append(key)
            if len(calls) == 2:
                _enospc()
        return real(self, key, value)

    monkeypatch.setattr(h5py.Dataset, "__setitem__", setitem)
    with pytest.raises(StoreError, match="disk full"):
        _extract_hog(root, ws, batch_size=4)
    monkeypatch.undo()
    rep = _extract_hog(root, ws, batch_size=4)
    assert rep.computed == {"full": 8}  # the first batch of 4 was kept
    np.testing.assert_array_equal(_codes(rep.path), clean)


# --- 5. damaged feature files ---------------------------------------------------------------------


def _damaged(tmp_path, damage):
    import h5py

    from featbench.core.workspace import Workspace

    root = make_disfa(tmp_path / "DISFA")
    ws = Workspace(tmp_path / "ws")
    path = _extract_hog(root, ws).path
    if callable(damage):
        with h5py.File(path, "r+") as f:
            damage(f)
    return root, ws, path


def _flip(path, offset, n=16):
    with open(path, "r+b") as fh:
        fh.seek(offset)
        data = fh.read(n)
        fh.seek(offset)
        # not 0xFF: Fletcher's sums cannot tell 0x0000 from 0xFFFF, and codes hold zeros
        fh.write(bytes(b ^ 0x5A for b in data))


def test_5_deleted_frames_is_one_line_in_classify_and_extract(tmp_path, capsys):
    from featbench.core.errors import StoreError

    root, ws, path = _damaged(tmp_path, lambda f: f.__delitem__("frames"))
    with pytest.raises(StoreError, match="no /frames"):
        _codes(path)
    for cmd in (["extract", "--model", "hog"], ["classify", "--clf", "lda", "--model", "hog"]):
        assert_cli_error(["--workspace", ws.root, *cmd, "--dataset", "disfa", "--root", root],
                         capsys, str(path))


def test_5_deleted_codes_are_extracted_again(tmp_path):
    root, ws, path = _damaged(tmp_path, lambda f: f["full"].__delitem__("codes"))
    rep = _extract_hog(root, ws)
    assert rep.computed == {"full": 6} and _codes(path).shape[0] == 6


def test_5_flipped_bytes_in_the_codes_fail_their_checksum(tmp_path):
    import h5py

    from featbench.core.errors import StoreError

    root, ws, path = _damaged(tmp_path, None)
    with h5py.File(path, "r") as f:
        assert f["full/codes"].fletcher32
        offset = f["full/codes"].id.get_chunk_info(0).byte_offset
    _flip(path, offset + 100, 4)
    with pytest.raises(StoreError, match="checksum .* does not match") as exc:
        _codes(path)
    assert str(exc.value).startswith(str(path))


@pytest.mark.parametrize("offset", [0, 100, 700, 1500, 2400])
def test_5_flipped_bytes_in_the_header_are_one_line(tmp_path, capsys, offset):
    from featbench.core.errors import StoreError

    root, ws, path = _damaged(tmp_path, None)
    _flip(path, offset)
    with pytest.raises(StoreError) as exc:
        _codes(path)
    assert str(exc.value).startswith(str(path)) and "\n" not in str(exc.value)
    status, err = run_cli(["--workspace", ws.root, "extract", "--model", "hog", "--dataset",
                           "disfa", "--root", root], capsys)
    if status:  # some flips leave the file usable: then extract finds it complete
        assert_one_line_error(subprocess.CompletedProcess([], status, "", err), str(path))


def test_4_disk_full_on_results_leaves_no_temp_folder_and_no_orphan_predictions(tmp_path,
                                                                              monkeypatch):
    """ENOSPC while the run's models are saved: one line, no .tmp folder, no predictions file."""
    from classify.run import classify_run
    from featbench.core import modelfile
    from featbench.core.errors import StoreError
    from featbench.core.workspace import Workspace
    from test_classify import make_codes, make_table, write_features

    ws = Workspace(tmp_path)
    table = make_table(n_frames=12)
    write_features(ws, table, make_codes(table), regions=("full",))
    monkeypatch.setattr(modelfile, "_write_safetensors", _enospc)  # the models' tensors
    with pytest.raises(StoreError, match="disk full .* while writing the results of toy__full__lda"):
        classify_run(ws, "synth", table=table, model="toy", clf="lda", progress=False, n_jobs=1)
    results = ws.results_dir("synth")
    assert not ws.predictions_path("synth", "toy__full__lda").exists()
    assert not [p for p in results.rglob("*") if ".tmp" in p.name]
    assert not ws.models_dir("synth", "toy__full__lda").exists()


# --- 8. tracebacks instead of one line ------------------------------------------------------------


def run_cli(argv, capsys):
    """Run the CLI in this process; return (status, stderr). Tracebacks fail the test."""
    from featbench.app.cli import main

    try:
        status = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse
        status = exc.code
    return status, capsys.readouterr().err


def assert_cli_error(argv, capsys, *needles):
    status, err = run_cli(argv, capsys)
    proc = subprocess.CompletedProcess(argv, status, "", err)
    return assert_one_line_error(proc, *needles)


def _manifest(tmp_path, lines, images=("a.png", "b.png")):
    import cv2

    root = tmp_path / "F"
    root.mkdir(exist_ok=True)
    for name in images:
        cv2.imwrite(str(root / name), np.full((8, 8, 3), 100, np.uint8))
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    return root


def test_8_non_utf8_label_file_and_manifest_name_file_and_line(tmp_path, capsys):
    root = make_disfa(tmp_path / "DISFA")
    label = root / "ActionUnit_Labels" / "SN001" / "SN001_au4.txt"
    label.write_bytes(b"1,0\n2,0\n3,\xe9\n")
    assert_cli_error(["data", "info", "--dataset", "disfa", "--root", root], capsys,
                     f"{label}:3: not UTF-8")
    folder = _manifest(tmp_path, ["image,subject,AU01", "a.png,S1,1"])
    (folder / "manifest.csv").write_bytes(b"image,subject,AU01\na.png,J\xfcrgen,1\n")
    assert_cli_error(["data", "info", "--dataset", "folder", "--root", folder], capsys,
                     "manifest.csv:2: not UTF-8")


def test_8_symlink_loops_name_the_file(tmp_path, capsys):
    root = make_disfa(tmp_path / "DISFA")
    label = root / "ActionUnit_Labels" / "SN001" / "SN001_au4.txt"
    label.unlink()
    label.symlink_to(label.name)  # points at itself
    assert_cli_error(["data", "info", "--dataset", "disfa", "--root", root], capsys,
                     str(label), "symbolic link loop")


def test_8_landmark_file_holding_nan_is_a_counted_skip(tmp_path):
    import scipy.io

    from featbench.core.align import align_dataset
    from featbench.core.datasets import load_dataset

    root = make_disfa(tmp_path / "DISFA")
    pts = np.tile(np.arange(66, dtype=np.float64)[:, None], (1, 2))
    pts[3] = np.nan  # a jaw point: not one the alignment is fitted to
    scipy.io.savemat(str(root / "Landmark_Points" / "SN001" / "tmp_frame_lm" / "SN001_0001_lm.mat"),
                     {"pts": pts})
    rep = align_dataset(load_dataset("disfa", root=root), tmp_path / "faces.h5", progress=False)
    assert rep.aligned == 5 and rep.skipped["no landmarks"] == 1


def test_8_manifest_row_with_only_an_image_names_its_line(tmp_path, capsys):
    root = _manifest(tmp_path, ["image,subject,AU01", "a.png,S1,1", "b.png"])
    assert_cli_error(["data", "info", "--dataset", "folder", "--root", root], capsys,
                     "manifest.csv:3: 1 fields, the header has 3")


def test_8_a_data_set_without_frames_is_one_line(tmp_path, capsys):
    root = make_disfa(tmp_path / "DISFA")
    for f in (root / "ActionUnit_Labels" / "SN001").iterdir():
        f.write_text("")
    assert_cli_error(["--workspace", tmp_path / "ws", "align", "--dataset", "disfa", "--root", root],
                     capsys, str(root), "no frames")


def test_8_workspace_that_is_a_file_or_read_only(tmp_path, capsys, monkeypatch):
    root = make_disfa(tmp_path / "DISFA")
    afile = tmp_path / "ws.txt"
    afile.write_text("x")
    assert_cli_error(["--workspace", afile, "align", "--dataset", "disfa", "--root", root], capsys,
                     str(afile), "must be a folder")
    # results/ is a file inside the workspace: the OS says ENOTDIR, featbench one line
    ws = tmp_path / "ws"
    (ws / "data").mkdir(parents=True)
    (ws / "data" / "disfa").write_text("in the way")
    assert_cli_error(["--workspace", ws, "align", "--dataset", "disfa", "--root", root], capsys,
                     "not a folder")
    # a read-only workspace: (root ignores permission bits, so the OS answer is injected)
    import errno
    from pathlib import Path

    def mkdir(self, *a, **k):
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    monkeypatch.setattr(Path, "mkdir", mkdir)
    assert_cli_error(["--workspace", tmp_path / "ro", "align", "--dataset", "disfa", "--root", root],
                     capsys, str(tmp_path / "ro"), "permission denied")


def test_8_pickled_whole_model_as_weights_is_one_line(tmp_path):
    import torch

    from extract.weights import read_state_dict
    from featbench.core.errors import WeightsError

    path = tmp_path / "whole.pt"
    torch.save(torch.nn.Linear(2, 2), path)
    with pytest.raises(WeightsError, match="a pickled whole model, not a state dict") as exc:
        read_state_dict(path)
    assert str(exc.value).startswith(str(path)) and "\n" not in str(exc.value)


# --- 9. bad labels accepted silently --------------------------------------------------------------


def test_9_fractional_manifest_label_is_refused(tmp_path, capsys):
    root = _manifest(tmp_path, ["image,subject,AU01", "a.png,S1,1", "b.png,S1,0.7"])
    assert_cli_error(["data", "info", "--dataset", "folder", "--root", root], capsys,
                     "manifest.csv:3: AU01 must be 0, 1 or empty, got '0.7'")


@pytest.mark.parametrize("second", ["a.png,S1,1", "a.png,S1,0", "./a.png,S2,1"])
def test_9_one_image_listed_twice_is_refused(tmp_path, capsys, second):
    root = _manifest(tmp_path, ["image,subject,AU01", "a.png,S1,1", "b.png,S1,0", second])
    assert_cli_error(["data", "info", "--dataset", "folder", "--root", root], capsys,
                     "manifest.csv:4: image", "already listed on line 2")


def test_9_conflicting_disfa_lines_and_empty_label_files(tmp_path, capsys):
    from featbench.core.datasets import load_dataset

    root = make_disfa(tmp_path / "DISFA")
    (root / "ActionUnit_Labels" / "SN001" / "SN001_au9.txt").write_text("")
    t = load_dataset("disfa", root=root)
    assert t.skipped == {"label files empty (AU left unlabelled)": 1}
    assert (t.frames["AU09"] == -1).all()
    label = root / "ActionUnit_Labels" / "SN001" / "SN001_au4.txt"
    label.write_text(label.read_text() + "2,3\n")
    assert_cli_error(["data", "info", "--dataset", "disfa", "--root", root], capsys,
                     f"{label}:7: frame 2 labelled twice, 0 and 3")


# --- 10. messages that mislead or run long --------------------------------------------------------


def test_10_one_stray_label_line_is_one_frame_past_the_end(tmp_path):
    from featbench.core.datasets import load_dataset

    root = make_disfa(tmp_path / "DISFA")
    label = root / "ActionUnit_Labels" / "SN001" / "SN001_au4.txt"
    label.write_text(label.read_text() + "486,1\n")
    t = load_dataset("disfa", root=root)
    assert t.skipped == {"label frames past the end of the video": 1} and len(t) == 6


def test_10_opencv_warnings_do_not_precede_our_line(tmp_path):
    root = make_disfa(tmp_path / "DISFA")
    (root / "Videos_LeftCamera" / "LeftVideoSN001_comp.avi").write_bytes(b"not a video" * 100)
    proc = featbench("--workspace", tmp_path / "ws", "align", "--dataset", "disfa", "--root", root)
    assert "WARN" not in proc.stderr
    assert_one_line_error(proc, "LeftVideoSN001_comp.avi")


def test_10_flags_out_of_range_are_one_line(tmp_path, capsys):
    assert_cli_error(["extract", "--model", "hog", "--region", "nose"], capsys,
                     "argument --region", "see featbench extract --help")
    assert_cli_error(["--workspace", tmp_path, "classify", "--clf", "lda", "--jobs", "0"], capsys,
                     "--jobs 0")
    assert_cli_error(["--workspace", tmp_path, "align", "--show", "--n", "100000"], capsys,
                     "--n must be 1-64")
    assert not (tmp_path / "data").exists()  # refused before anything was made


def test_10_mean_f1_counts_only_defined_aus():
    from classify.run import format_result

    rows = [{"au": "AU01", "f1": 0.5}, {"au": "AU02", "f1": float("nan")},
            {"au": "AU04", "f1": 0.7}]
    text = format_result({"run": "r", "dataset": "d", "rows": rows, "notes": [],
                          "mean": {"au": "mean", "f1": 0.6}, "seconds": 1, "csv": "r.csv",
                          "meta": {"protocol": "paper", "n_train": 1, "n_test": 1}})
    assert "mean F1 0.600 over 2 AUs (1 nan, left out)" in text


def test_10_folder_root_may_name_the_manifest(tmp_path):
    from featbench.core.datasets import load_dataset

    root = _manifest(tmp_path, ["image,subject,AU01", "a.png,S1,1", "b.png,S1,0"])
    assert len(load_dataset("folder", root=root / "manifest.csv")) == 2


# --- the error contract across the CLI ------------------------------------------------------------
def _huge_label(tmp_path):
    root = make_disfa(tmp_path / "DISFA")
    label = root / "ActionUnit_Labels" / "SN001" / "SN001_au4.txt"
    label.write_text(label.read_text() + "99999999999999999999,3\n")
    return root


def _looped(tmp_path):
    root = make_disfa(tmp_path / "DISFA")
    (root / "ActionUnit_Labels" / "SN005").symlink_to("SN005")
    return root


def _empty_model(tmp_path):
    import json
    import struct

    from featbench.core.modelfile import FORMAT, FORMAT_VERSION, META_KEY

    path = tmp_path / "empty.safetensors"  # a valid export header, a manifest without its run
    header = json.dumps({"__metadata__": {META_KEY: json.dumps(
        {"format": FORMAT, "format_version": FORMAT_VERSION})}}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header)
    return path


_BROKEN_INPUTS = {"{hugelabel}": _huge_label, "{looped}": _looped, "{emptymodel}": _empty_model}




@pytest.mark.parametrize("argv, needle", [
    (["data", "synth", "--subjects", "0"], "subjects"),
    (["data", "info", "--dataset", "disfa", "--root", "{missing}"], "{missing}"),
    (["data", "show", "--dataset", "disfaa"], "did you mean 'disfa'"),
    (["models", "--bogus"], "unrecognized arguments"),
    (["align", "--dataset", "disfa", "--root", "{missing}"], "{missing}"),
    (["extract", "--model", "resnet125"], "did you mean"),
    (["extract", "--model", "hog", "--batch-size", "x"], "--batch-size"),
    (["bench"], "WHAT"),
    (["classify", "--clf", "knn"], "knn"),
    (["classify", "--clf", "svm", "--model", "hog"], "no codes"),
    (["finetune", "--model", "nope"], ""),
    (["transfer", "--backbone", "nope"], ""),
    (["ensemble", "--members", "a__full__svm,b__full__svm"], "a__full__svm"),
    (["report"], "summary.csv"),
    (["run", "--preset", "slow"], "slow"),
    (["predict", "{missing}", "--run", "x__full__svm"], ""),
    (["export", "x__full__svm", "--out", "{tmp}/m.fbm"], "x__full__svm"),
    (["--workspace", "{file}", "report"], "must be a folder"),
    # issue 25: outputs over inputs, bounded numbers, a --scheduler that is not Dask, sizes
    (["predict", "{file}", "--run", "x__full__svm", "--out", "{file}"], "--out is an input"),
    (["predict", "{file}", "--run", "x__full__svm", "--out", "{tmp}"], "--out is a folder"),
    (["predict", "{file}", "--run", "x__full__svm", "--out", "{tmp}/a.csv", "--plot",
      "{tmp}/a.csv"], "the same file"),
    (["predict", "{file}", "--model", "{emptymodel}", "--out", "{tmp}/o.csv"],
     "damaged featbench model file"),
    (["data", "info", "--dataset", "disfa", "--root", "{hugelabel}"], "at most 10,000,000"),
    (["data", "info", "--dataset", "disfa", "--root", "{looped}"], "symbolic link loop"),
    (["classify", "--clf", "lda", "--scheduler", "notaurl"], "not a Dask scheduler address"),
    (["transfer", "--backbone", "cnn_f", "--weights", "random:0", "--input-size", "64"],
     "cannot take 64-pixel faces"),
    (["finetune", "--model", "cnn_f", "--weights", "random:0", "--input-size", "100000"],
     "must be 16-1024"),
])
def test_every_command_with_broken_input_is_one_line_exit_2(tmp_path, capsys, argv, needle):
    afile = tmp_path / "file.txt"
    afile.write_text("x")
    subs = {"{missing}": str(tmp_path / "missing"), "{tmp}": str(tmp_path), "{file}": str(afile)}
    for key, make in _BROKEN_INPUTS.items():  # made only for the cases that name them
        if any(key in a for a in argv):
            subs[key] = str(make(tmp_path))

    def sub(text):
        for k, v in subs.items():
            text = text.replace(k, v)
        return text

    argv = [sub(a) for a in argv]
    if argv[0] != "--workspace":
        argv = ["--workspace", str(tmp_path / "ws")] + argv
    assert_cli_error(argv, capsys, sub(needle))


# --- 11. runs on another intensity threshold ------------------------------------------------------


def test_11_threshold_3_runs_are_named_apart_and_say_their_threshold(tmp_path):
    from classify.run import classify_run
    from featbench.core.results import read_summary
    from featbench.core.workspace import Workspace
    from test_classify import make_codes, make_table, write_features

    ws = Workspace(tmp_path)
    table = make_table(n_frames=12)
    write_features(ws, table, make_codes(table), regions=("full",))
    names = []
    for thr in (2, 3):
        table.label_threshold = thr
        res = classify_run(ws, "synth", table=table, model="toy", clf="lda", progress=False,
                           n_jobs=1)
        names.append(res["run"])
    assert names == ["toy__full__lda", "toy__full__lda__i3"]
    summary = read_summary(ws, "synth").set_index("run")
    assert summary.loc[names, "label_threshold"].tolist() == [2, 3]


def test_11_the_disfa_reader_records_its_threshold(tmp_path):
    from featbench.core.datasets import load_dataset

    root = make_disfa(tmp_path / "DISFA")
    t = load_dataset("disfa", root=root, threshold=3)
    assert t.label_threshold == 3 and t.subset(np.ones(len(t), bool)).label_threshold == 3
    assert t.frames["AU01"].tolist() == [0, 0, 0, 1, 1, 1]


def test_10_a_permission_error_is_not_called_damage(tmp_path, monkeypatch):
    """h5py's text for a file without read permission: said as such, not 'not readable HDF5'."""
    from featbench.core import align
    from featbench.core.errors import StoreError

    path = tmp_path / "faces.h5"
    path.write_bytes(b"x")

    def denied(p, mode):  # what h5py raises there (root ignores the permission bits)
        raise OSError(f"Unable to synchronously open file (unable to open file: name = '{p}', "
                      "errno = 13, error message = 'Permission denied', flags = 0, o_flags = 0)")

    monkeypatch.setattr(align, "_h5", denied)
    with pytest.raises(StoreError, match="permission denied") as exc:
        align.AlignedFaces(path)
    assert str(exc.value).startswith(str(path)) and "not a readable" not in str(exc.value)
