"""Nothing featbench reads from a file a user could be sent runs code: no pickle anywhere.

A model file, a run folder, an export, a training checkpoint or a weights file is exactly what
researchers e-mail to each other. featbench reads them as JSON + safetensors
(:mod:`featbench.core.modelfile`) or, for PyTorch state dicts, with ``torch.load(...,
weights_only=True)``. The walk below fails on any unpickling call left in the code; the other
tests hand featbench crafted files whose payload would create a marker file, and check that it
never appears.
"""

import ast
import json
import pathlib
import pickle
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("featbench", "extract", "classify")
#: modules whose ``load`` / ``loads`` unpickle
PICKLERS = {"pickle", "cPickle", "_pickle", "joblib", "dill", "cloudpickle", "shelve"}


def _kw(call, name):
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_true(node):
    return isinstance(node, ast.Constant) and node.value is True


def unpickling_calls(tree):
    """Return ``(line, text)`` of each call in ``tree`` that can unpickle a file's content.

    ``pickle.load(s)`` / ``joblib.load`` (and their ``from ... import load`` forms), any
    ``torch.load`` without ``weights_only=True``, ``numpy.load(..., allow_pickle=True)``,
    ``pandas.read_pickle`` and ``torch.jit.load``.
    """
    aliases = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in PICKLERS | {"torch"}:
            for a in node.names:
                aliases[a.asname or a.name] = f"{node.module}.{a.name}"
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = ast.unparse(node.func)
        name = aliases.get(name, name)
        head, _, attr = name.rpartition(".")
        bad = ((head.split(".")[0] in PICKLERS and attr in ("load", "loads", "open", "Unpickler"))
               or (name in ("torch.load", "torch.serialization.load")
                   and not _is_true(_kw(node, "weights_only")))
               or (attr == "load" and head in ("np", "numpy") and _is_true(_kw(node, "allow_pickle")))
               or name.endswith("read_pickle") or name in ("torch.jit.load",))
        if bad:
            found.append((node.lineno, ast.unparse(node)[:120]))
    return found


def test_no_unpickling_call_is_left_in_the_code():
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            found += [f"{path.relative_to(ROOT)}:{line}: {text}" for line, text in unpickling_calls(tree)]
    assert found == [], "a file a user is sent must never be unpickled:\n" + "\n".join(found)


@pytest.mark.parametrize("code, bad", [
    ("import joblib\njoblib.load(p)", True),
    ("from joblib import load\nload(p)", True),
    ("import pickle\npickle.loads(b)", True),
    ("import torch\ntorch.load(p, map_location='cpu')", True),
    ("import torch\ntorch.load(p, weights_only=False)", True),
    ("import torch\ntorch.load(p, weights_only=True)", False),
    ("import numpy as np\nnp.load(p, allow_pickle=True)", True),
    ("import numpy as np\nnp.load(p, mmap_mode='r')", False),
    ("import pandas as pd\npd.read_pickle(p)", True),
    ("import joblib\njoblib.dump(x, p)", False),
    ("import json\njson.loads(t)", False),
])
def test_the_walk_finds_what_it_must(code, bad):
    assert bool(unpickling_calls(ast.parse(code))) is bad


class _Payload:
    """Unpickling this creates ``marker``: the proof that a file ran code."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def test_a_crafted_training_checkpoint_runs_nothing(tmp_path):
    """A crafted ``last.pt`` in a run's checkpoint folder is refused with one line, unrun."""
    import torch

    from classify.training import CHECKPOINT, load_checkpoint
    from featbench.core.errors import UsageError

    marker = tmp_path / "ran"
    torch.save({"identity": {"a": 1}, "model": _Payload(marker)}, tmp_path / CHECKPOINT)
    with pytest.raises(UsageError, match="cannot read this checkpoint"):
        load_checkpoint(tmp_path, {"a": 1})
    assert not marker.exists()


def test_a_crafted_weights_file_runs_nothing(tmp_path):
    """``--weights PATH`` (extract, predict) reads a state dict with weights_only=True."""
    import torch

    from extract.weights import read_state_dict
    from featbench.core.errors import WeightsError

    marker = tmp_path / "ran"
    torch.save({"fc.weight": _Payload(marker)}, tmp_path / "w.pt")
    with pytest.raises(WeightsError):
        read_state_dict(tmp_path / "w.pt")
    assert not marker.exists()


@pytest.mark.parametrize("name", ["AU01.joblib", "model.pt", "manifest.json"])
def test_a_crafted_file_in_a_run_folder_runs_nothing(tmp_path, name):
    """featbench 0.1's pickles (AU01.joblib, transfer's model.pt), or a manifest pointing at
    one, in a workspace run folder: loading the run refuses it and runs nothing."""
    import joblib

    from featbench.apply.runmodel import load_run
    from featbench.core.errors import FeatbenchError
    from featbench.core.workspace import Workspace

    ws = Workspace(tmp_path)
    folder = ws.models_dir("synth", "hog__full__svm")
    folder.mkdir(parents=True)
    marker = tmp_path / "ran"
    if name == "manifest.json":  # a manifest whose tensor file is a pickle
        (folder / "AU01.safetensors").write_bytes(pickle.dumps(_Payload(marker)))
        (folder / name).write_text(json.dumps({
            "format": "featbench-model", "format_version": 2, "run": "hog__full__svm", "kind": "svm",
            "aus": ["AU01"], "folds": [{"name": "paper", "thresholds": {"AU01": 0.0}}],
            "weights": "none", "preprocessing": {"model": "hog"}, "task": "occurrence",
            "training_data": {"dataset": "synth", "synthetic": True},
            "settings": {"models": {"AU01": {"pipeline": True, "steps": [
                {"step": "clf", "class": "LinearSVC", "params": {}, "fitted": {}}]}},
                         "units": [{"AU01": "AU01"}]},
            "tensors": {"AU01": {"file": "AU01.safetensors", "sha256": ""}}}))
    else:
        joblib.dump(_Payload(marker), folder / name)
    with pytest.raises(FeatbenchError) as exc:
        load_run(ws, "synth", "hog__full__svm")
    assert "\n" not in str(exc.value) and str(folder) in str(exc.value)
    assert not marker.exists()
