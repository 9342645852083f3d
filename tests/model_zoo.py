"""Real trained runs of every run kind, and their exports, made once per test session.

What the model-file tests (``test_modelfile_checks.py``, ``test_modelfile_fuzz.py``) damage and
load: each kind trained by its own trainer on tiny synthetic data, as the other tests of each
kind train it, in about 20 s on 2 loaded cores (most of it importing torch and timm):

``lda``, ``svm``, ``vote``, ``lstm``
    HOG-sized (6084-d) codes of a 27 x 6-frame table, stored as ``hog``'s feature file, so
    ``featbench predict`` applies them with the real HOG encoder; AU01 and AU02.
``ridge``, ``svr``
    the same on 0-5 intensities.
``ft``
    ``timm:test_efficientnet`` fine-tuned (1 epoch, per-au, 48-px faces) on AU01 / AU12.
``transfer``
    stage 2 of a tiny registered CNN (``test-tiny-cnn``, :mod:`test_transfer`) on a small ABAW tree.

:func:`zoo` returns ``{"folders": {kind: run folder}, "exports": {kind: file}, "root": Path}``;
:func:`score` applies a loaded run to aligned synthetic faces through predict's own path.
"""

import json
from dataclasses import replace

import numpy as np

HOG_DIMS = 6084  # extract.registry: hog
KINDS = ("lda", "svm", "vote", "lstm", "ridge", "svr", "ft", "transfer")
_BUILT = {}


def _hog_codes(table, base, seed):
    """``base`` codes (n, k) padded with noise to HOG's dimensions."""
    noise = np.random.default_rng(seed).normal(size=(len(table), HOG_DIMS - base.shape[1]))
    return np.hstack([base, noise]).astype(np.float32)


def _codes_runs(root):
    from classify.ensemble import ensemble_run
    from classify.run import classify_run
    from featbench.core.workspace import Workspace
    from test_classify import make_codes, make_table, write_features
    from test_intensity import intensity_codes, intensity_table
    from test_lstm import FAST

    ws = Workspace(root / "ws")
    table = make_table(n_frames=6)
    write_features(ws, table, _hog_codes(table, make_codes(table), 1), model="hog",
                   regions=("full",), weights="none")
    kw = dict(table=table, model="hog", n_jobs=1, progress=False, aus="AU01,AU02")
    runs = {clf: classify_run(ws, "synth", clf=clf, **kw)["run"] for clf in ("lda", "svm")}
    runs["lstm"] = classify_run(ws, "synth", clf="lstm", lstm={**FAST, "epochs": 1, "hidden": 4},
                                **kw)["run"]
    runs["vote"] = ensemble_run(ws, "synth", members=[runs["svm"], runs["lda"]], name="pair")["run"]
    folders = {k: ws.models_dir("synth", r) for k, r in runs.items()}
    ws2 = Workspace(root / "ws-intensity")
    t2 = intensity_table(n_frames=6)
    write_features(ws2, t2, _hog_codes(t2, intensity_codes(t2), 2), model="hog",
                   regions=("full",), weights="none")
    for clf in ("ridge", "svr"):
        run = classify_run(ws2, "synth", table=t2, model="hog", clf=clf, progress=False,
                           aus="AU01,AU02")["run"]  # ridge / svr: the intensity task, their own
        folders[clf] = ws2.models_dir("synth", run)
    return folders


def _face_runs(root):
    import test_finetune as TF
    import test_transfer as TT
    from classify.finetune import FinetuneConfig, finetune_run
    from featbench.core.datasets.affwild2 import read_affwild2
    from featbench.core.workspace import Workspace

    ws = Workspace(root / "ws-ft")
    table = TF.make_table(n_frames=2)
    cache = TF.write_cache(root / "faces.h5", table)
    ft = finetune_run(ws, "synth", FinetuneConfig(**{**TF.FAST, "epochs": 1}), table=table,
                      aligned_path=cache, progress=False)
    abaw = read_affwild2(TT._abaw_tree(root / "abaw", n_videos=6, n_frames=4))
    abaw.dataset = "affwild2"
    ws3 = Workspace(root / "ws-transfer")
    tr = TT.run_stage2(ws3, abaw, replace(TT.SETTINGS, epochs=(1, 1)), stage1=None, progress=False)
    return {"ft": ws.models_dir("synth", ft["run"]),
            "transfer": ws3.models_dir("affwild2", tr["run"])}


def zoo(tmp_path_factory):
    """The session's runs and exports (trained on the first call)."""
    if not _BUILT:
        from featbench.apply.runmodel import export_run, load_run

        root = tmp_path_factory.mktemp("zoo")
        folders = {**_codes_runs(root), **_face_runs(root)}
        exports = {}
        for kind, folder in folders.items():
            ws = folder.parents[3]
            from featbench.core.workspace import Workspace

            model = load_run(Workspace(ws), folder.parents[1].name, folder.name)
            exports[kind] = export_run(model, root / f"{kind}.safetensors")
        _BUILT.update(folders=folders, exports=exports, root=root)
        (root / "zoo.json").write_text(json.dumps({k: {kk: str(vv) for kk, vv in v.items()}
                                                   for k, v in _BUILT.items() if k != "root"}))
    return _BUILT


def faces(model, n=12, seed=0):
    """``n`` aligned synthetic faces at the run's alignment size and their region boxes."""
    from featbench.core import faces as F

    size = int(model.alignment.get("size") or F.CANONICAL_SIZE)
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    boxes = np.repeat(F.region_boxes(F.template(size), image_size=size).astype(np.int16)[None], n, 0)
    return images, boxes


def score(model, n=12):
    """Scores and decisions of ``n`` faces, one track, through predict's encoders and scorer."""
    from featbench.apply.encoders import open_encoders
    from featbench.apply.pipeline import score_faces

    encoders = open_encoders(model, device="cpu")
    images, boxes = faces(model, n)
    tracks = [(("track", 0), i) for i in range(n)]
    model.reset()
    return score_faces(model, encoders, images, boxes, tracks)


# --- reading and rewriting an export as a hostile (or careless) user would -----------------------
def read_export(path):
    """``(tensors, manifest)`` of an export: ``{name: [dtype, shape, bytes]}`` in file order."""
    import struct

    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    meta = header.pop("__metadata__")
    tensors = {k: [v["dtype"], list(v["shape"]), raw[8 + n + v["data_offsets"][0]:
                                                     8 + n + v["data_offsets"][1]]]
               for k, v in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0])}
    return tensors, json.loads(meta["featbench.manifest"])


def write_export(path, tensors, manifest, *, fix_digests=True):
    """Write ``tensors`` (see :func:`read_export`) and ``manifest`` as a well-formed safetensors
    file; ``fix_digests``: each group's ``data_sha256`` made to match its bytes again, so that
    only the defect a test made is there."""
    import struct

    if fix_digests:
        _fix_digests(manifest, tensors, "")
    header, at = {"__metadata__": {"featbench.manifest": json.dumps(manifest)}}, 0
    for name, (dtype, shape, data) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [at, at + len(data)]}
        at += len(data)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"".join(t[2] for t in tensors.values()))
    return path


def _fix_digests(manifest, tensors, prefix):
    import hashlib

    for group, entry in (manifest.get("tensors") or {}).items():
        if isinstance(entry, dict) and entry.get("data_sha256"):
            start = f"{prefix}{group}/"
            h = hashlib.sha256()
            for name, t in tensors.items():
                if name.startswith(start) and "/" not in name[len(start):]:
                    h.update(t[2])
            entry["data_sha256"] = h.hexdigest()
    for i, m in enumerate(manifest.get("members") or []):
        if isinstance(m, dict) and "tensors" in m:
            _fix_digests(m, tensors, f"{prefix}members.{i}/")


def edited(src, dst, edit, *, fix_digests=True):
    """A copy of export ``src`` at ``dst`` with ``edit(tensors, manifest)`` applied."""
    tensors, manifest = read_export(src)
    edit(tensors, manifest)
    return write_export(dst, tensors, manifest, fix_digests=fix_digests)
