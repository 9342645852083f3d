"""A model file is validated before it is trusted (issue 31, item 3).

Each damage a broken download, a careless edit or a hostile sender makes to a real export (or
run folder) of :mod:`model_zoo` is refused by ``featbench predict`` with ONE line that names the
file, exit status 2, before any frame of the input video is decoded and with no output
written; the model's own content never chooses an allocation.
"""

import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

import model_zoo as Z  # noqa: E402
from conftest import write_video  # noqa: E402
from featbench.app.cli import main  # noqa: E402
from featbench.core import footage  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    return Z.zoo(tmp_path_factory)


@pytest.fixture
def video(tmp_path, monkeypatch):
    """A real 8-frame video whose frames must not be decoded: reading them fails the test."""
    path = tmp_path / "clip.avi"
    write_video(path, 8, size=(64, 48))

    def decoded(*_, **__):
        raise AssertionError("the input was decoded before the model file was refused")

    monkeypatch.setattr(footage, "count_frames", decoded)
    monkeypatch.setattr(footage, "iter_frames", decoded)
    return path


def refused(capsys, path, video, *, run=None, workspace=None, needle=""):
    """``featbench predict VIDEO --model PATH`` (or ``--run RUN`` of ``workspace``): exit 2, one
    stderr line naming ``path``, no CSV."""
    out = video.parent / "out.csv"
    args = ["--model", str(path)] if run is None else ["--run", run]
    top = [] if workspace is None else ["--workspace", str(workspace)]
    assert main([*top, "predict", str(video), *args, "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(path) in err[0] and needle in err[0], err
    assert "Traceback" not in err[0] and not out.exists()
    return err[0]


# --- the damaged exports -------------------------------------------------------------------------
def _dims(tensors, manifest):
    """AU01's classifier and scaler on 12-d codes: its tensors cut to 12 of HOG's 6084 sides."""
    for name, (dtype, shape, data) in list(tensors.items()):
        if name.startswith("AU01/") and shape and shape[-1] == Z.HOG_DIMS:
            item = len(data) // int(np.prod(shape))
            new = shape[:-1] + [12]
            tensors[name] = [dtype, new, data[:int(np.prod(new)) * item]]


def _drop(tensors, manifest):
    del tensors["AU01/clf.coef_"]


def _carried(tensors, manifest):
    manifest["carried"] = {"finetuned:r sha256:" + "a" * 64: {"prefix": "carried.0/",
                                                            "name": "weights.safetensors"}}


def _fitted(tensors, manifest):
    manifest["settings"]["models"]["AU01"]["steps"][1]["fitted"]["decision_function"] = 1


def _method_array(tensors, manifest):
    tensors["AU01/clf.predict_"] = tensors["AU01/clf.intercept_"]


def _setter(*path, value):
    def edit(tensors, manifest):
        node = manifest
        for k in path[:-1]:
            node = node[k]
        node[path[-1]] = value
    return edit


def _flip(tensors, manifest):
    data = bytearray(tensors["AU01/clf.coef_"][2])
    data[5] ^= 0x40
    tensors["AU01/clf.coef_"][2] = bytes(data)


def _lstm_hidden(tensors, manifest):
    for unit in manifest["settings"]["units"].values():
        unit["hidden"] = 10 ** 6


def _vote_aus(tensors, manifest):
    """The vote on an AU its members have no classifier of (its scales made to fit)."""
    manifest["aus"].append("AU04")
    dtype, shape, data = tensors["vote/scales"]
    tensors["vote/scales"] = [dtype, [shape[0], 3], np.ones((shape[0], 3)).tobytes()]


CASES = {
    "missing tensor": ("svm", _drop, "lacks 'clf.coef_'"),
    "coefficients of another feature dimension": ("svm", _dims, "needs [d:full=6084]"),
    "carried entry without bytes": ("svm", _carried, "has no bytes"),
    "fitted attribute shadowing a method": ("svm", _fitted, "fitted attribute"),
    "array named as no attribute it has": ("svm", _method_array, "does not use"),
    "alignment size 10^6": ("svm", _setter("preprocessing", "alignment", "size", value=10 ** 6),
                            "alignment.size"),
    "input size 10^5": ("lda", _setter("preprocessing", "input_size", value=10 ** 5), "input_size"),
    "aus a string": ("svm", _setter("aus", value="AU01"), "aus: Input should be a valid list"),
    "task intensity on an svm run": ("svm", _setter("task", value="intensity"), "task 'intensity'"),
    "occurrence task on a ridge run": ("ridge", _setter("task", value="occurrence"), "ridge"),
    "group pointing at another AU's": ("svm", _setter("settings", "units", 0, "AU01", value="AU02"),
                                       "an AU reads only its own tensors"),
    "prefix pointing at another AU's": ("lda", _setter("tensors", "AU01", "prefix", value="AU02/"),
                                        "a group reads only its own tensors"),
    "unknown run kind": ("svm", _setter("kind", value="knn"), "kind 'knn'"),
    "LSTM of 10^6 hidden units": ("lstm", _lstm_hidden, "hidden"),
    "transfer head of 10^5 units": ("transfer", _setter("settings", "hidden", value=[10 ** 5, 8]),
                                    "settings.hidden"),
    "fine-tuned network at 10^5 px": ("ft", _setter("settings", "network", "input_size",
                                                    value=10 ** 5), "input_size"),
    "fine-tuned network of another architecture": ("ft", _setter("settings", "config", "model",
                                                                 value="cnn_f"), "does not fit"),
    "vote on an AU its members lack": ("vote", _vote_aus, "has no AU04"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_manifest_that_does_not_hold_together_is_one_line(zoo, video, tmp_path, capsys, case):
    kind, edit, needle = CASES[case]
    path = Z.edited(zoo["exports"][kind], tmp_path / "model.safetensors", edit)
    refused(capsys, path, video, needle=needle)


@pytest.mark.parametrize("how, needle", [
    ("half", "past the end of the file"), ("header", "its header claims"),
    ("eight bytes", "cut short"), ("empty", "an empty file")])
def test_a_cut_file_is_one_line(zoo, video, tmp_path, capsys, how, needle):
    data = zoo["exports"]["lstm"].read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    keep = {"half": len(data) // 2, "header": 8 + n // 2, "eight bytes": 8, "empty": 0}[how]
    path = tmp_path / "cut.safetensors"
    path.write_bytes(data[:keep])
    refused(capsys, path, video, needle=needle)


def _header(path, edit):
    """Rewrite the safetensors header of ``path`` with ``edit(header)`` (the data kept)."""
    data = path.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    edit(header)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + data[8 + n:])
    return path


def _first(header):
    return header[next(k for k in header if k != "__metadata__")]


@pytest.mark.parametrize("case, edit, needle", [
    ("offsets past the end", lambda h: _first(h)["data_offsets"].__setitem__(1, 10 ** 12),
     "needs"),
    ("huge shape", lambda h: _first(h).__setitem__("shape", [10 ** 9, 10 ** 9]), "needs 1000000"),
    ("unknown dtype", lambda h: _first(h).__setitem__("dtype", "BF16"), "unknown dtype 'BF16'"),
    ("overlapping tensors", lambda h: _first(h)["data_offsets"].__setitem__(0, 8), "needs"),
    ("header not JSON", None, "not JSON"),
])
def test_a_damaged_header_is_one_line_never_a_safetensors_traceback(zoo, video, tmp_path, capsys,
                                                                     case, edit, needle):
    path = tmp_path / "model.safetensors"
    shutil.copy(zoo["exports"]["svm"], path)
    if edit is None:
        data = bytearray(path.read_bytes())
        data[9:12] = b"\xff\xfe\x00"
        path.write_bytes(bytes(data))
    else:
        _header(path, edit)
    refused(capsys, path, video, needle=needle)


def test_tensors_are_checked_against_the_manifests_sha256(zoo, video, tmp_path, capsys):
    """A changed byte in an export's tensor data (its digest not remade) and in a run folder's
    tensor file: refused by their sha256, not used."""
    path = Z.edited(zoo["exports"]["svm"], tmp_path / "model.safetensors", _flip, fix_digests=False)
    refused(capsys, path, video, needle="do not match their sha256")
    ws, folder = _workspace_copy(zoo, "svm", tmp_path)
    data = bytearray((folder / "AU01.safetensors").read_bytes())
    data[-5] ^= 0x01
    (folder / "AU01.safetensors").write_bytes(bytes(data))
    refused(capsys, folder / "AU01.safetensors", video, workspace=ws, run=folder.name,
            needle="sha256")


def _workspace_copy(zoo, kind, tmp_path):
    """A workspace holding a copy of the zoo's run folder of ``kind``."""
    src = zoo["folders"][kind]
    ws = tmp_path / "ws"
    folder = ws / "results" / "synth" / "models" / src.name
    shutil.copytree(src, folder)
    return ws, folder


@pytest.mark.parametrize("entry", ["/etc/passwd", "../AU01.safetensors", "AU02.safetensors",
                                   "sub/AU01.safetensors"])
def test_a_run_folders_file_entries_stay_in_the_folder(zoo, video, tmp_path, capsys, entry):
    ws, folder = _workspace_copy(zoo, "svm", tmp_path)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["tensors"]["AU01"]["file"] = entry
    (folder / "manifest.json").write_text(json.dumps(manifest))
    msg = refused(capsys, folder / "manifest.json", video, workspace=ws, run=folder.name,
            needle="tensors.AU01.file")
    assert "/etc/passwd" not in msg or "not a plain name" in msg


def test_a_tensor_file_linked_out_of_the_folder_is_refused(zoo, video, tmp_path, capsys):
    ws, folder = _workspace_copy(zoo, "svm", tmp_path)
    outside = tmp_path / "elsewhere.safetensors"
    (folder / "AU01.safetensors").rename(outside)
    (folder / "AU01.safetensors").symlink_to(outside)
    refused(capsys, folder / "AU01.safetensors", video, workspace=ws, run=folder.name,
            needle="a link out of the run folder")


def test_a_format_version_given_as_a_string_says_so(zoo, video, tmp_path, capsys):
    path = Z.edited(zoo["exports"]["svm"], tmp_path / "model.safetensors",
                    _setter("format_version", value="2"))
    msg = refused(capsys, path, video, needle="format_version is '2' (a str), not a whole number")
    assert "reads format 2" not in msg


def test_an_export_without_data_digests_still_loads(zoo, tmp_path):
    """Exports written before ``data_sha256`` existed (format 2 too) load: checked by their
    headers and each kind's needs."""
    from featbench.apply.runmodel import load_model_file

    def drop(tensors, manifest):
        for entry in manifest["tensors"].values():
            entry.pop("data_sha256")

    path = Z.edited(zoo["exports"]["lda"], tmp_path / "old.safetensors", drop, fix_digests=False)
    scores, _ = Z.score(load_model_file(path))
    np.testing.assert_array_equal(scores, Z.score(load_model_file(zoo["exports"]["lda"]))[0])


def test_what_a_manifest_may_leave_out_takes_its_default(zoo, tmp_path):
    """No ``task``: an occurrence run (as before tasks existed), loaded and scored; no
    ``settings`` on a kind that needs them: one line, not a KeyError."""
    from featbench.apply.runmodel import load_model_file
    from featbench.core.errors import FeatbenchError

    path = Z.edited(zoo["exports"]["svm"], tmp_path / "m.safetensors",
                    lambda t, m: m.pop("task"))
    model = load_model_file(path)
    assert model.task.name == "occurrence" and Z.score(model)[0].shape == (12, 2)
    path = Z.edited(zoo["exports"]["svm"], tmp_path / "n.safetensors",
                    lambda t, m: m.pop("settings"))
    with pytest.raises(FeatbenchError, match="settings.models: Field required"):
        load_model_file(path)


def test_a_refused_file_exits_2_from_the_real_command(zoo, tmp_path):
    """The console command itself (a new process): exit 2, one line, no traceback."""
    data = zoo["exports"]["ft"].read_bytes()
    path = tmp_path / "cut.safetensors"
    path.write_bytes(data[:len(data) - 1000])
    write_video(tmp_path / "clip.avi", 4, size=(64, 48))
    proc = subprocess.run([sys.executable, "-m", "featbench", "predict", str(tmp_path / "clip.avi"),
                           "--model", str(path), "--out", str(tmp_path / "o.csv")],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin",
                               "FEATBENCH_OFFLINE": "1"})
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(err) == 1 and str(path) in err[0], proc.stderr
    assert "past the end of the file" in err[0] and not (tmp_path / "o.csv").exists()


def test_export_onto_a_feature_file_says_what_the_file_is(zoo, tmp_path, capsys):
    """``export --out`` onto featbench's own HDF5 feature file: refused, and said to be one
    (it used to say the file "was not written by featbench")."""
    ws = zoo["folders"]["svm"].parents[3]
    features = ws / "data" / "features" / "synth" / "hog.h5"
    before = features.read_bytes()
    assert main(["--workspace", str(ws), "export", zoo["folders"]["svm"].name, "--out",
                 str(features)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(features) in err[0] and "a featbench feature file" in err[0]
    assert "not written by featbench" not in err[0] and features.read_bytes() == before
