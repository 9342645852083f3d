"""Hardening, second pass (issue 25): no output replaces an input, no wrong weights wear the
ImageNet label, no hang, no traceback.

One section per numbered defect of the issue; each test reproduces it through the real code
(the CLI in real processes where the defect lives between processes: locks, signals, kills) and
failed on the code before the fix.
"""

import contextlib
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
    from featbench.core.workspace import Workspace

    ws = Workspace(tmp_path_factory.mktemp("hog-ws"))
    return ws.root, hog_lda_run(ws)


def hog_lda_run(ws, **kw):
    """Train a ``hog`` LDA run (AU01, AU02) in ``ws`` on random HOG-sized codes where AU01
    shifts one dimension; ``kw`` goes to classify_run (``calibrate=...``). Returns its name."""
    from classify.run import classify_run
    from extract.store import open_store
    from test_classify import make_table

    table = make_table(n_frames=4)
    X = np.random.default_rng(0).random((len(table), 6084)).astype(np.float32)
    X[:, 0] += 3 * table.frames["AU01"].to_numpy()
    with open_store(ws.features_path("synth", "hog"), keys=table.keys(), model="hog", layer="HOG",
                    weights="none", input_size=112, dims=6084, overwrite=True) as w:
        w.write("full", 0, X)
    return classify_run(ws, "synth", table=table, model="hog", clf="lda", progress=False,
                        n_jobs=1, aus="AU01,AU02", **kw)["run"]


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


def test_1_export_replaces_its_own_file_but_not_a_users_nor_a_run_file(hog_run, tmp_path,
                                                                         capsys):
    ws, run = hog_run
    out = tmp_path / "m.safetensors"
    for _ in range(2):  # featbench's own export is replaced on a rerun
        assert cli(capsys, "--workspace", ws, "export", run, "--out", out).returncode == 0
    mine = tmp_path / "mine.bin"
    mine.write_text("mine")
    assert_one_line_error(cli(capsys, "--workspace", ws, "export", run, "--out", mine),
                          str(mine), "not written by featbench", "--force")
    manifest = ws / "results" / "synth" / "models" / run / "manifest.json"
    before = manifest.read_bytes()
    assert_one_line_error(cli(capsys, "--workspace", ws, "export", run, "--out", manifest,
                              "--force"), "--out is an input")
    assert manifest.read_bytes() == before and mine.read_text() == "mine"


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
    assert_one_line_error(proc, name, "another featbench process is making it")
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


# --- 3. wrong weights labelled ImageNet; unhashed files ---------------------------------------------
torch = pytest.importorskip("torch")

from test_weights import BLOB, DIGEST, FILE, NAME, _tiny, home  # noqa: E402,F401  (home: fixture)

TOFU_NAME, TOFU_FILE, TOFU_PATH = "test_tiny_tofu", "tiny-tofu.pth", "/models/tiny-tofu.pth"


def _state_bytes(seed):
    import io

    torch.manual_seed(seed)
    buf = io.BytesIO()
    torch.save(_tiny().state_dict(), buf)
    return buf.getvalue()


def _register_tofu():
    """A tiny network whose published file has no hash (as MatConvNet's .mat files)."""
    from extract.catalog import WeightsFile, register_file
    from extract.registry import IMAGENET_MEAN, IMAGENET_STD, BackboneSpec, list_specs, register

    if TOFU_NAME in {s.name for s in list_specs()}:
        return
    register(BackboneSpec(TOFU_NAME, "test-tofu", "torch", constructor=_tiny,
                          truncate=lambda m: m[:-1], code_layer="pool", dims=4, input_size=32,
                          mean=IMAGENET_MEAN, std=IMAGENET_STD, pretrained="catalog",
                          weights_file=TOFU_FILE))
    register_file(WeightsFile(model=TOFU_NAME, tag="", filename=TOFU_FILE,
                              urls=(f"https://weights.invalid{TOFU_PATH}",), licence="test fixture",
                              source="catalog", identity_name="imagenet"))


_register_tofu()


class _Serve:
    """An HTTP server on 127.0.0.1 whose answers the test picks: ``ok`` (the bytes with their
    length), ``nolength-cut`` (half the bytes, no Content-Length: the end looks like the end),
    ``trickle`` (the length, then a byte a second), ``slow-headers`` (the status line a byte a
    second), ``silent`` (accepts, reads, never answers)."""

    def __init__(self):
        import socketserver
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        files, self.requests = {}, []

        class Handler(BaseHTTPRequestHandler):
            timeout = 30

            def do_GET(self):  # noqa: N802
                try:
                    self._answer()
                except OSError:  # the client gave up: what the test wants
                    self.close_connection = True

            def _answer(self):
                owner.requests.append(self.path)
                body, mode = files.get(self.path, (None, None))
                if body is None:
                    return self.send_error(404)
                if mode == "silent":
                    time.sleep(30)
                    return
                if mode == "slow-headers":
                    for c in b"HTTP/1.0 200 OK\r\n":
                        self.wfile.write(bytes([c]))
                        self.wfile.flush()
                        time.sleep(1)
                    return
                self.send_response(200)
                if not mode.startswith("nolength"):
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if mode == "trickle":
                    for c in body:
                        self.wfile.write(bytes([c]))
                        self.wfile.flush()
                        time.sleep(1)
                self.wfile.write(body[: len(body) // 2] if mode == "nolength-cut" else body)
                self.close_connection = True

            def log_message(self, *args):
                pass

        owner = self
        socketserver.TCPServer.allow_reuse_address = True
        self.files = files
        self.srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.srv.daemon_threads = True
        self.thread = threading.Thread(target=self.srv.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.srv.server_address[1]}"

    def close(self):
        self.srv.shutdown()
        self.srv.server_close()


@pytest.fixture
def serve(home, monkeypatch):
    s = _Serve()
    monkeypatch.setenv("FEATBENCH_WEIGHTS_MIRROR", s.url)
    yield s
    s.close()


def test_3_a_stand_in_under_the_published_name_is_refused_not_labelled_imagenet(home, capsys):
    from extract.registry import get_spec
    from extract.weights import load_network
    from featbench.core.errors import WeightsError

    home.mkdir(parents=True)
    (home / FILE).write_bytes(_state_bytes(7))  # loads fine: same network, other weights
    with pytest.raises(WeightsError, match="not test_tiny TEST1's published file") as err:
        load_network(get_spec(NAME), "imagenet")
    assert str(err.value).startswith(str(home / FILE)) and "--weights PATH" in str(err.value)
    net = load_network(get_spec(NAME), str(home / FILE))  # as a file of its own it loads
    assert net.weights_id.startswith("file sha256:")
    assert_one_line_error(cli(capsys, "weights", "verify"), "mismatch")


def test_3_an_unhashed_file_cut_short_without_a_length_is_refused(serve, home, capsys):
    serve.files[TOFU_PATH] = (_state_bytes(1), "nolength-cut")
    proc = cli(capsys, "weights", "fetch", TOFU_NAME, "--quiet")
    assert_one_line_error(proc, TOFU_FILE, "cut short")
    assert not home.exists() or not [p for p in home.iterdir() if not p.name.startswith(".")]


def test_3_an_unhashed_file_is_pinned_on_first_use_and_a_replacement_reported(serve, home,
                                                                              tmp_path, capsys):
    from extract.registry import get_spec
    from extract.weights import load_network
    from featbench.core.errors import WeightsError

    first = _state_bytes(1)
    serve.files[TOFU_PATH] = (first, "nolength")  # complete, no length: checked by structure
    net = load_network(get_spec(TOFU_NAME), "imagenet")
    import hashlib

    digest = hashlib.sha256(first).hexdigest()
    assert net.weights_id == f"imagenet sha256:{digest}"
    other = tmp_path / TOFU_FILE
    other.write_bytes(_state_bytes(2))
    assert_one_line_error(cli(capsys, "weights", "import", other, "--quiet"), "pinned on first use")
    assert (home / TOFU_FILE).read_bytes() == first
    (home / TOFU_FILE).write_bytes(other.read_bytes())  # replaced by hand
    assert_one_line_error(cli(capsys, "weights", "verify"), "mismatch", "replaced")
    with pytest.raises(WeightsError, match="replaced"):
        load_network(get_spec(TOFU_NAME), "imagenet")
    proc = cli(capsys, "weights", "import", other, "--quiet", "--force")  # on purpose: pinned anew
    assert proc.returncode == 0, proc.stderr
    assert load_network(get_spec(TOFU_NAME), "imagenet").weights_id.endswith(
        hashlib.sha256(other.read_bytes()).hexdigest())


# --- 5. hangs: a trickling mirror ------------------------------------------------------------------
@pytest.mark.parametrize("mode, env, needle", [
    ("trickle", {"FEATBENCH_CONNECT_TIMEOUT": "1"}, "stalled"),
    ("slow-headers", {"FEATBENCH_DOWNLOAD_TIMEOUT": "2"}, "not finished within 2 s"),
])
def test_5_a_trickling_mirror_is_given_up_in_bounded_time(serve, home, capsys, monkeypatch, mode,
                                                          env, needle):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    serve.files[f"/models/{FILE}"] = (BLOB, mode)
    t0 = time.monotonic()
    proc = cli(capsys, "weights", "fetch", NAME, "--quiet")
    assert time.monotonic() - t0 < 8
    assert_one_line_error(proc, FILE, needle)
    assert not home.exists() or [p.name for p in home.iterdir()] == []


def test_7_a_killed_downloads_leftover_is_removed_by_the_rerun_and_by_verify(serve, home, capsys):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    home.mkdir(parents=True)
    (home / f".{FILE}.tmp{dead}").write_bytes(b"")  # what kill -9 during a download left
    (home / f".other.pth.tmp{dead}").write_bytes(b"")
    proc = cli(capsys, "weights", "verify")
    assert proc.returncode == 0 and "leftover" in proc.stdout, proc
    assert [p.name for p in home.iterdir()] == []
    (home / f".{FILE}.tmp{dead}").write_bytes(b"")
    serve.files[f"/models/{FILE}"] = (BLOB, "ok")
    assert cli(capsys, "weights", "fetch", NAME, "--quiet").returncode == 0
    assert [p.name for p in home.iterdir()] == [FILE]


# --- 4. stale and short inputs -------------------------------------------------------------------
def test_4_classify_refuses_codes_of_a_replaced_video_as_extract_does(tmp_path, capsys):
    from extract.extractor import extract_features
    from featbench.core.align import align_dataset
    from featbench.core.datasets import load_dataset
    from featbench.core.workspace import Workspace

    root = make_disfa(tmp_path / "DISFA", subjects=("SN001", "SN002", "SN003"))
    ws = Workspace(tmp_path / "ws")
    extract_features(load_dataset("disfa", root=root), ws, "hog", progress=False)
    args = ["--workspace", ws.root, "classify", "--clf", "lda", "--model", "hog", "--dataset",
            "disfa", "--root", root, "--aus", "AU01", "--quiet"]
    assert cli(capsys, *args).returncode == 0  # fresh codes: classified
    video = root / "Videos_LeftCamera" / "LeftVideoSN002_comp.avi"
    write_video(video, 6, size=(48, 36), seed=7)  # another video, same frame count
    assert_one_line_error(cli(capsys, *args), str(ws.features_path("disfa", "hog")), "stale codes",
                          "featbench extract --model hog --dataset disfa --overwrite")
    align_dataset(load_dataset("disfa", root=root), ws.aligned_path("disfa"), progress=False)
    assert_one_line_error(cli(capsys, *args), "stale codes", "changed: SN002 pixels")


def test_4_predict_warns_when_a_video_is_shorter_than_its_container_says(hog_run, tmp_path,
                                                                         capsys):
    whole = tmp_path / "whole.avi"
    write_video(whole, 120, size=(64, 48))
    cut = tmp_path / "cut.avi"
    data = whole.read_bytes()
    cut.write_bytes(data[: len(data) * 3 // 10])  # a copy in progress: the header says 120
    proc = predict_cli(hog_run, capsys, cut, "--out", tmp_path / "cut.csv")
    assert proc.returncode == 0, proc.stderr
    warning = [ln for ln in proc.stderr.splitlines() if "warning" in ln]
    assert len(warning) == 1 and str(cut) in warning[0] and "of the 120 frames" in warning[0]
    side = json.loads((tmp_path / "cut.json").read_text())
    assert len(side["warnings"]) == 1 and "120 frames" in side["warnings"][0]
    proc = predict_cli(hog_run, capsys, whole, "--out", tmp_path / "whole.csv")
    assert "warning" not in proc.stderr and "warnings" not in json.loads(
        (tmp_path / "whole.json").read_text())


def test_4_a_subject_folder_that_is_a_symlink_loop_is_said_not_dropped(tmp_path, capsys):
    root = make_disfa(tmp_path / "DISFA", subjects=("SN001", "SN002"))
    labels = root / "ActionUnit_Labels"
    (labels / "SN005").symlink_to("SN006")
    (labels / "SN006").symlink_to("SN005")
    assert_one_line_error(cli(capsys, "data", "info", "--dataset", "disfa", "--root", root),
                          str(labels / "SN005"), "symbolic link loop")


# --- 5. hangs: huge numbers in files, a --scheduler that is not Dask -------------------------------
def test_5_one_huge_label_line_is_one_line_not_a_hang(tmp_path):
    root = make_disfa(tmp_path / "DISFA")
    label = root / "ActionUnit_Labels" / "SN001" / "SN001_au4.txt"
    label.write_text(label.read_text() + "99999999999999999999,3\n")
    proc = featbench("data", "info", "--dataset", "disfa", "--root", root, timeout=60)
    assert_one_line_error(proc, f"{label}:7: frame 99999999999999999999", "at most 10,000,000")


def test_5_a_huge_manifest_frame_is_one_line(tmp_path, capsys):
    from test_harden import _manifest

    root = _manifest(tmp_path, ["image,subject,frame,AU01", "a.png,S1,99999999999999999999,1",
                                "b.png,S1,2,0"])
    assert_one_line_error(cli(capsys, "data", "info", "--dataset", "folder", "--root", root),
                          "manifest.csv:2: frame 99999999999999999999 outside")


def _listener(kind):
    """A TCP server on 127.0.0.1 that is no Dask scheduler: ``http`` or ``silent``."""
    import socket
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    if kind == "http":
        srv = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        return srv.server_address[1], srv.shutdown
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)  # connections wait in the backlog: accepted by the kernel, never answered
    return sock.getsockname()[1], sock.close


@pytest.mark.parametrize("kind", ["notaurl", "refused", "http", "silent"])
def test_5_a_scheduler_that_is_not_dask_is_one_line_in_seconds(tmp_path, capsys, monkeypatch,
                                                               kind):
    import socket

    monkeypatch.setenv("FEATBENCH_CONNECT_TIMEOUT", "1")
    stop = None
    if kind == "notaurl":
        address = "notaurl"
    elif kind == "refused":
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            address = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    else:
        port, stop = _listener(kind)
        address = f"tcp://127.0.0.1:{port}"
    try:
        t0 = time.monotonic()
        proc = cli(capsys, "--workspace", tmp_path, "classify", "--clf", "lda", "--model", "hog",
                   "--scheduler", address)
        seconds = time.monotonic() - t0
    finally:
        if stop:
            stop()
    needle = {"notaurl": "not a Dask scheduler address", "refused": "no Dask scheduler answers",
              "http": "not a Dask scheduler", "silent": "not a Dask scheduler"}[kind]
    assert_one_line_error(proc, f"--scheduler {address}", needle)
    assert seconds < 10


# --- 6. crashes and tracebacks ----------------------------------------------------------------------
def test_6_empty_garbage_and_all_zero_landmark_files_are_counted_skips(tmp_path, capsys):
    import scipy.io

    root = make_disfa(tmp_path / "DISFA")
    lm = root / "Landmark_Points" / "SN001" / "tmp_frame_lm"
    scipy.io.savemat(str(lm / "SN001_0002_lm.mat"), {"pts": np.zeros((66, 2))})
    (lm / "SN001_0003_lm.mat").write_bytes(b"")
    (lm / "SN001_0004_lm.mat").write_bytes(b"garbage" * 40)
    for _ in range(2):  # and on every rerun
        proc = cli(capsys, "--workspace", tmp_path / "ws", "align", "--dataset", "disfa",
                   "--root", root, "--force")
        assert proc.returncode == 0 and "3 no landmarks" in proc.stdout, proc


@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs of 1 MB mounted for the test (root only); yields its folder, unmounted after."""
    with tmpfs(tmp_path / "small", "1m") as where:
        yield where


@contextlib.contextmanager
def tmpfs(where, size):
    """Mount a tmpfs of ``size`` (``1m``, ``128m``) at ``where`` for the block (root only; the
    test is skipped where it cannot be mounted)."""
    where.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                         capture_output=True, text=True)
    if res.returncode:
        pytest.skip(f"cannot mount a small file system here ({res.stderr.strip()})")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def _fill(folder, leave):
    """Fill the file system of ``folder`` until about ``leave`` bytes are free."""
    import shutil

    free = shutil.disk_usage(folder).free
    with open(folder / "filler", "wb") as fh:
        fh.write(b"\0" * max(0, free - leave))


def test_6_disk_full_while_aligning_is_one_line_and_the_rerun_finishes(tmp_path, small_disk,
                                                                       capsys):
    root = make_disfa(tmp_path / "DISFA", frames=30, size=(96, 72))
    ws = small_disk / "ws"
    proc = featbench("--workspace", ws, "align", "--dataset", "disfa", "--root", root)
    err = assert_one_line_error(proc, str(ws / "data" / "disfa" / "aligned" / "faces.h5"),
                                "disk full")
    assert ".tmp" not in err
    proc = cli(capsys, "--workspace", tmp_path / "ws", "align", "--dataset", "disfa", "--root",
               root)
    assert proc.returncode == 0, proc  # elsewhere: it finishes


def test_6_disk_full_while_extracting_is_one_line(tmp_path, small_disk, capsys):
    root = make_disfa(tmp_path / "DISFA", frames=60)
    ws = tmp_path / "ws"
    assert cli(capsys, "--workspace", ws, "align", "--dataset", "disfa", "--root",
               root).returncode == 0
    features = ws / "data" / "features"
    features.mkdir(parents=True)
    os.symlink(small_disk, features / "disfa")  # the codes go to the small disk
    proc = cli(capsys, "--workspace", ws, "extract", "--model", "hog", "--dataset", "disfa",
               "--root", root)
    assert_one_line_error(proc, "hog.h5", "disk full")


@pytest.mark.parametrize("what", ["--out", "--plot", "export"])
def test_6_disk_full_on_predicts_outputs_and_export_is_one_line_naming_the_file(
        hog_run, tmp_path, small_disk, capsys, what):
    ws, run = hog_run
    clip = tmp_path / "clip.avi"
    write_video(clip, 300, size=(64, 48))
    _fill(small_disk, 6000)
    target = small_disk / {"--out": "o.csv", "--plot": "o.png", "export": "m.featbench"}[what]
    if what == "export":
        proc = cli(capsys, "--workspace", ws, "export", run, "--out", target)
    else:
        args = ["--out", target] if what == "--out" else ["--out", tmp_path / "o.csv", "--plot",
                                                          target]
        proc = predict_cli(hog_run, capsys, clip, *args)
    err = assert_one_line_error(proc, str(target), "disk full")
    assert ".tmp" not in err
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler"]  # no 0-byte file left


@pytest.mark.parametrize("damage", ["json text", "attribute header", "random"])
def test_6_damaged_bytes_in_the_face_cache_rebuild_it_or_are_one_line(tmp_path, capsys, damage):
    """Bytes of faces.h5 overwritten where its attributes live (the JSON settings; the header of
    the ``skipped`` attribute: 'Error iterating over attributes') or at random."""
    root = make_disfa(tmp_path / "DISFA")
    ws = tmp_path / "ws"
    assert cli(capsys, "--workspace", ws, "align", "--dataset", "disfa", "--root",
               root).returncode == 0
    cache = ws / "data" / "disfa" / "aligned" / "faces.h5"
    data = bytearray(cache.read_bytes())
    if damage == "json text":
        at = data.find(b'"stable_points"')
        data[at:at + 4] = b"\x01\x02\x03\x04"
    elif damage == "attribute header":
        at = data.find(b"skipped\x00")
        data[at - 8:at] = b"\xff" * 8
    else:
        rng = np.random.default_rng(0)
        at = int(rng.integers(0, 6000))
        data[at:at + 300] = rng.integers(0, 256, 300, dtype=np.uint8).tobytes()
    assert at > 0
    cache.write_bytes(bytes(data))
    proc = cli(capsys, "--workspace", ws, "extract", "--model", "hog", "--dataset", "disfa",
               "--root", root)
    if proc.returncode:
        assert_one_line_error(proc, str(cache))
    else:  # the damaged cache was found out of date and rebuilt, then encoded
        assert (ws / "data" / "features" / "disfa" / "hog.h5").is_file()


def test_6_a_16000_pixel_png_is_refused_from_its_header(hog_run, tmp_path, capsys):
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    bomb = tmp_path / "huge.png"  # 69 bytes: a header that claims 16000 x 16000 pixels
    bomb.write_bytes(b"\x89PNG\r\n\x1a\n"
                     + chunk(b"IHDR", struct.pack(">IIBBBBB", 16000, 16000, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))
    proc = predict_cli(hog_run, capsys, bomb, "--out", tmp_path / "o.csv")
    assert_one_line_error(proc, str(bomb), "256 megapixels", "scale it down")


def test_6_transfer_checks_input_size_and_weights_before_any_data(tmp_path, capsys):
    ws = tmp_path / "ws"
    t0 = time.monotonic()
    proc = cli(capsys, "--workspace", ws, "transfer", "--backbone", "cnn_f", "--weights",
               "random:0", "--input-size", "64", "--quiet")
    assert_one_line_error(proc, "--input-size 64", "cnn_f cannot take 64-pixel faces")
    other = tmp_path / "other.pt"
    torch.save(_tiny().state_dict(), other)
    proc = cli(capsys, "--workspace", ws, "transfer", "--backbone", "cnn_f", "--weights", other,
               "--quiet")
    assert_one_line_error(proc, str(other), "does not fit cnn_f")
    assert time.monotonic() - t0 < 60 and not ws.exists()  # nothing read or synthesised


def test_6_an_export_with_a_header_and_an_empty_run_is_one_line(hog_run, tmp_path, capsys):
    import struct

    from featbench.core.modelfile import FORMAT, FORMAT_VERSION, META_KEY

    empty = tmp_path / "empty.safetensors"  # a valid export header, a manifest without its run
    header = json.dumps({"__metadata__": {META_KEY: json.dumps(
        {"format": FORMAT, "format_version": FORMAT_VERSION})}}).encode()
    header += b" " * (-len(header) % 8)
    empty.write_bytes(struct.pack("<Q", len(header)) + header)
    photo = write_png(tmp_path / "a.png")
    proc = cli(capsys, "predict", photo, "--model", empty, "--out", tmp_path / "o.csv")
    assert_one_line_error(proc, str(empty), "damaged featbench model file", "lacks run")


# --- 7. leftovers and messages ------------------------------------------------------------------------
def test_7_ffmpegs_own_lines_do_not_come_before_ours(hog_run, tmp_path):
    import cv2

    ok = tmp_path / "ok.mp4"
    w = cv2.VideoWriter(str(ok), cv2.VideoWriter_fourcc(*"mp4v"), 25, (64, 48))
    for _ in range(10):
        w.write(np.zeros((48, 64, 3), np.uint8))
    w.release()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(ok.read_bytes()[:40])  # no moov atom
    ws, run = hog_run
    proc = featbench("--workspace", ws, "predict", cut, "--run", run, "--out", tmp_path / "o.csv")
    err = assert_one_line_error(proc, str(cut))
    assert "moov" not in err


def test_7_ctrl_c_message_says_resume_only_where_a_rerun_resumes():
    from featbench.app.cli import build_parser

    parser = build_parser()
    notes = {c: getattr(parser.parse_args(argv), "interrupted", None) for c, argv in {
        "predict": ["predict", "x.mp4", "--run", "r"], "align": ["align"],
        "extract": ["extract", "--model", "hog"], "report": ["report"]}.items()}
    assert "rerun resumes" in notes["align"] and "rerun resumes" in notes["extract"]
    assert "rerun resumes" not in notes["predict"] and "nothing was kept" in notes["predict"]
    assert notes["report"] is None  # the general line: finished files kept, unfinished removed


def test_7_input_size_out_of_range_is_said_as_such(tmp_path, capsys):
    proc = cli(capsys, "--workspace", tmp_path, "finetune", "--model", "cnn_f", "--weights",
               "random:0", "--input-size", "100000")
    err = assert_one_line_error(proc, "--input-size 100000", "must be 16-1024")
    assert "too small" not in err


def test_7_best_whose_ensemble_lost_a_member_names_the_ensemble(tmp_path, capsys):
    import shutil

    from classify.ensemble import ensemble_run
    from classify.run import classify_run
    from featbench.core.workspace import Workspace
    from test_classify import make_codes, make_table, write_features

    ws = Workspace(tmp_path / "ws")
    table = make_table(n_frames=8)
    write_features(ws, table, make_codes(table), regions=("full",))
    runs = [classify_run(ws, "synth", table=table, model="toy", clf=c, n_jobs=1, progress=False,
                         aus="AU01,AU02")["run"] for c in ("svm", "lda")]
    ens = ensemble_run(ws, "synth", members=runs, name="pair")["run"]
    shutil.rmtree(ws.models_dir("synth", runs[0]))
    photo = write_png(tmp_path / "a.png")
    proc = cli(capsys, "--workspace", ws.root, "predict", photo, "--run", ens, "--out",
               tmp_path / "o.csv")
    assert_one_line_error(proc, f"ensemble {ens} votes with {runs[0]}", "no longer in",
                          "featbench ensemble")


def test_7_a_globs_default_output_is_named_after_its_fixed_part():
    from featbench.app.commands.predict import default_out

    assert str(default_out(["shots/face.*"])) == "face_aus.csv"
    assert str(default_out(["shots/face*.jpg"])) == "face_aus.csv"
    assert str(default_out(["shots/*.jpg"])) == "shots_aus.csv"
    assert str(default_out(["clip.mp4"])) == "clip_aus.csv"


def test_7_synth_force_keeps_a_file_a_user_added_inside_its_folder(tmp_path, capsys):
    root = tmp_path / "S"
    args = ["data", "synth", "--root", root, "--subjects", "3", "--frames", "4", "--force"]
    assert cli(capsys, *args).returncode == 0
    (root / "notes.txt").write_text("mine")
    assert_one_line_error(cli(capsys, *args), str(root), "notes.txt", "move them out first")
    assert (root / "notes.txt").read_text() == "mine"
    (root / "notes.txt").unlink()
    (root / "aligned").mkdir()  # featbench's own cache there is not a user's
    (root / "aligned" / "faces.h5").write_bytes(b"x")
    assert cli(capsys, *args).returncode == 0


# --- 8. memory of detection on large images ---------------------------------------------------------
def test_8_a_large_photo_is_detected_on_a_scaled_copy_landmarks_from_the_full_image():
    import cv2
    from skimage import data

    from featbench.core import faces as F

    img = data.astronaut()
    ref = F.detect_faces(img, all_faces=False)[0]
    k = 4000 / 512
    big = cv2.resize(img, (4000, 4000), interpolation=cv2.INTER_CUBIC)
    box, _, lm = F.detect_faces(big, all_faces=False)[0]
    assert max(abs(a - b * k) for a, b in zip(box, ref[0])) < 3 * k  # same face, full pixels
    assert np.abs(lm / k - ref[2]).max() < 3  # fitted on the full image


@pytest.mark.slow
def test_8_the_cnn_detector_on_a_12_megapixel_photo_stays_in_3_gb(tmp_path):
    """Under a 3 GB address-space limit (was 11.9 GB and 3 minutes before the scaled copy)."""
    code = f"""
import resource, sys
import numpy as np, cv2
from skimage import data
from featbench.core import faces as F
canvas = np.full((3000, 4000, 3), 90, np.uint8)
canvas[500:2500, 1000:3000] = cv2.resize(data.astronaut(), (2000, 2000))
resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
found = F.detect_faces(canvas, detector="cnn", all_faces=False)
print(len(found), found[0][0] if found else None)
"""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-1500:]
    n, box = proc.stdout.split(" ", 1)
    assert n == "1"
