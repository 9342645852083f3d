"""featbench's model format: manifest + safetensors, one-file exports, pickles refused unopened."""

import json
import pathlib
import pickle

import numpy as np
import pytest

from featbench.core import modelfile as M


def _manifest(run="hog__auto__lda", **kw):
    base = dict(run=run, kind="lda", aus=["AU01", "AU02"],
                folds=[{"name": "paper", "thresholds": {"AU01": 0.25, "AU02": -1.5}}],
                weights="none", preprocessing={"model": "hog", "regions": {"AU01": "upper"}},
                training_data={"dataset": "synth", "synthetic": True})
    base.update(kw)
    return M.create_manifest(**base)


def _tensors(seed=0):
    rng = np.random.default_rng(seed)
    return {"fold0": {"coef": rng.normal(size=(3, 5)), "mask": np.array([True, False, True]),
                      "n": np.int64(7), "empty": np.zeros((0, 4), np.float32)},
            "AU01": {"weight": rng.normal(size=(4,)).astype(np.float32)}}


def test_folder_round_trip_reads_each_group_alone(tmp_path):
    t = _tensors()
    M.write_model(tmp_path / "run", _manifest(), {"fold0": t["fold0"], "AU01": lambda: t["AU01"]})
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        "AU01.safetensors", "fold0.safetensors", "manifest.json"]
    model = M.open_model(tmp_path / "run")
    man = model.manifest
    assert (man["format"], man["format_version"], man["kind"], man["task"]) == (
        M.FORMAT, M.FORMAT_VERSION, "lda", "occurrence")
    assert man["folds"][0]["thresholds"] == {"AU01": 0.25, "AU02": -1.5}
    assert man["training_data"] == {"dataset": "synth", "synthetic": True}
    assert sorted(model.groups) == ["AU01", "fold0"]
    group = model.tensors("fold0")
    assert sorted(group.keys()) == ["coef", "empty", "mask", "n"]
    for name, value in t["fold0"].items():
        got = group[name]
        assert got.dtype == np.asarray(value).dtype and np.array_equal(got, value)
    # the sha256 in the manifest is the file's
    import hashlib
    digest = hashlib.sha256((tmp_path / "run" / "AU01.safetensors").read_bytes()).hexdigest()
    assert man["tensors"]["AU01"]["sha256"] == digest
    with pytest.raises(M.StoreError, match="has no tensors 'nope'"):
        model.tensors("nope")


def test_export_is_one_safetensors_file_with_the_same_content(tmp_path):
    from safetensors import safe_open

    M.write_model(tmp_path / "a", _manifest(), _tensors(1))
    M.write_model(tmp_path / "b", _manifest("x__full__svm", kind="svm"), {"g": {"w": np.ones(3)}})
    M.write_model(tmp_path / "vote", _manifest("e__mixed__vote", kind="vote", members=["a", "b"]),
                  {"vote": {"scales": np.full((2, 2), 0.5)}})
    (tmp_path / "w.pt").write_bytes(b"weights file bytes")
    out = M.export_model(tmp_path / "vote", tmp_path / "m.safetensors",
                         carry={"finetuned:r sha256:ab": tmp_path / "w.pt"})
    assert M.sniff(out) == "export"
    with safe_open(str(out), framework="numpy") as f:  # any safetensors reader opens it
        assert "members.0/fold0/coef" in f.keys() and M.META_KEY in f.metadata()
    e = M.open_model(out)
    assert e.is_export and e.manifest["run"] == "e__mixed__vote"
    a, b = e.members()
    assert (a.manifest["run"], b.manifest["run"]) == ("hog__auto__lda", "x__full__svm")
    assert np.array_equal(a.tensors("fold0")["coef"], _tensors(1)["fold0"]["coef"])
    assert sorted(a.tensors("fold0").keys()) == ["coef", "empty", "mask", "n"]
    assert np.array_equal(e.tensors("vote")["scales"], np.full((2, 2), 0.5))
    assert a.manifest["tensors"]["AU01"]["sha256"] == M.read_manifest(tmp_path / "a")["tensors"]["AU01"]["sha256"]
    assert e.carried("finetuned:r sha256:ab") == ("w.pt", b"weights file bytes")
    assert e.carried("other") is None


def test_export_half_stores_float16_and_keeps_the_rest(tmp_path):
    M.write_model(tmp_path / "run", _manifest(), _tensors(2))
    full = M.export_model(tmp_path / "run", tmp_path / "full.safetensors")
    half = M.export_model(tmp_path / "run", tmp_path / "half.safetensors", half=True)
    h = M.open_model(half)
    assert h.manifest["exported"]["half"] is True
    g = h.tensors("fold0")
    assert g["coef"].dtype == np.float16 and g["empty"].dtype == np.float16
    assert g["mask"].dtype == np.bool_ and g["n"].dtype == np.int64
    assert np.allclose(g["coef"], _tensors(2)["fold0"]["coef"], atol=1e-2)
    assert h.manifest["folds"] == M.open_model(full).manifest["folds"]  # thresholds exact
    assert half.stat().st_size < full.stat().st_size


class _Payload:
    """A pickle that creates a marker file when unpickled: what a crafted model file does."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


@pytest.mark.parametrize("how", ["pickle", "joblib", "torch"])
def test_a_crafted_file_is_refused_without_running_it(tmp_path, how):
    marker, path = tmp_path / "ran", tmp_path / f"evil.{how}"
    if how == "pickle":
        path.write_bytes(pickle.dumps(_Payload(marker)))
    elif how == "joblib":
        import joblib

        joblib.dump(_Payload(marker), path, compress=3)
    else:
        import torch

        torch.save({"state": _Payload(marker)}, path)
    assert not marker.exists()
    with pytest.raises(M.ModelFormatError) as exc:
        M.open_model(path)
    msg = str(exc.value)
    assert str(path) in msg and "featbench export RUN --out" in msg and "\n" not in msg
    assert not marker.exists()


def test_unknown_files_old_folders_and_other_versions_are_refused(tmp_path):
    (tmp_path / "junk.bin").write_bytes(b"not a model at all")
    with pytest.raises(M.ModelFormatError, match="unknown format"):
        M.sniff(tmp_path / "junk.bin")
    # a safetensors file without featbench's manifest is not an export
    from safetensors.numpy import save_file
    save_file({"w": np.ones(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(M.ModelFormatError, match="not a featbench model file"):
        M.open_model(tmp_path / "plain.safetensors")
    old = tmp_path / "old_run"
    old.mkdir()
    (old / "AU01.joblib").write_bytes(b"\x80\x04junk")
    with pytest.raises(M.ModelFormatError, match="train the run again"):
        M.open_model(old)
    M.write_model(tmp_path / "new", _manifest(), {})
    man = json.loads((tmp_path / "new" / M.MANIFEST).read_text())
    (tmp_path / "new" / M.MANIFEST).write_text(json.dumps(dict(man, format_version=99)))
    with pytest.raises(M.ModelFormatError, match="upgrade featbench"):
        M.read_manifest(tmp_path / "new")
    with pytest.raises(M.StoreError, match="does not exist"):
        M.open_model(tmp_path / "missing.safetensors")


def test_manifest_is_checked(tmp_path):
    with pytest.raises(ValueError, match="needs kind"):
        _manifest(kind="")
    with pytest.raises(TypeError):
        _manifest(settings={"bad": object()})
    with pytest.raises(ValueError, match="no '/'"):
        M.write_model(tmp_path / "run", _manifest(), {"g": {"a/b": np.ones(1)}})
