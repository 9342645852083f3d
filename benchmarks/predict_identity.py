"""Do two versions of featbench write the same ``featbench predict`` CSVs? Byte for byte.

For refactors that must not change behaviour (issue 32: the apply layer split, the inference
module). Every kind of run is trained once, by ONE version of the code, in a small synthetic
workspace; then each version predicts the same inputs with the same runs, and the CSVs (and
the sidecars, timings and paths left out) are compared::

    git worktree add --detach /tmp/base BASE_COMMIT     # the old code beside the new
    # the runs, made once, by the old code
    PYTHONPATH=/tmp/base python benchmarks/predict_identity.py build --workspace /tmp/pi-ws
    # each version predicts
    PYTHONPATH=/tmp/base python benchmarks/predict_identity.py predict --workspace /tmp/pi-ws --out /tmp/pi-before
    PYTHONPATH=$PWD      python benchmarks/predict_identity.py predict --workspace /tmp/pi-ws --out /tmp/pi-after
    python benchmarks/predict_identity.py compare /tmp/pi-before /tmp/pi-after

Runs (all on the embedded synthetic data: pipeline checks, not detectors for real faces):
LDA and SVM on HOG codes, an LSTM on dlib_face codes, dlib_face fine-tuned (1 epoch, 112 px,
its last blocks, one multilabel head), a transfer run (tv:mobilenet_v3_small from random weights, on synth-expression ->
synth-affwild2), a ridge intensity run on HOG, the vote of LDA and SVM; predicted on one
synthetic test subject's video and a folder of three of its frames as images, plus the SVM
with the intensity run beside it (``--intensity-run``) and the fine-tuned run from its export
(``--model FILE``). Both versions must read the model files the old one wrote (a change of the
model format is not what this compares).
"""

import argparse
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

#: the fine-tuned run (its tags: multilabel head, re-initialised head, trained from blocks.10)
FT_RUN = "dlib_face__full__ft__ml-headonly-fromblocks10"
#: (name, predict arguments, data set): one CSV each
PREDICTIONS = (
    ("lda", ["--run", "hog__full__lda"], "synth"),
    ("svm", ["--run", "hog__full__svm"], "synth"),
    ("lstm", ["--run", "dlib_face__full__lstm__h16-e2"], "synth"),
    ("ft", ["--run", FT_RUN], "synth"),
    ("ft-export", ["--model", "{ws}/ft.safetensors"], "synth"),
    ("transfer", ["--run", "tv-mobilenet_v3_small__full__transfer"], "synth-affwild2"),
    ("intensity", ["--run", "hog__full__ridge"], "synth"),
    ("svm+intensity", ["--run", "hog__full__svm", "--intensity-run", "hog__full__ridge"], "synth"),
    ("vote", ["--run", "pair__full__vote"], "synth"),
)

#: sidecar entries that differ from one call to the next (time) or name this call's files
VOLATILE = ("seconds", "inputs", "model_file", "featbench_version")


def fb(ws, *args, once=False):
    """Run ``featbench --workspace ws ARGS`` in a subprocess (the PYTHONPATH given decides the code).

    ``once``: a step of :func:`build`, skipped when a previous build finished it (a marker in
    ``ws/.predict_identity``), so that a build stopped half way resumes.
    """
    cmd = [sys.executable, "-m", "featbench", "--workspace", str(ws), *map(str, args)]
    marker = Path(ws) / ".predict_identity" / hashlib.sha256(" ".join(cmd[5:]).encode()).hexdigest()
    if once and marker.exists():
        return
    print("+", " ".join(cmd[2:]), flush=True)
    subprocess.run(cmd, check=True, env={**os.environ, "FEATBENCH_OFFLINE": "1"})
    if once:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()


def build(ws):
    """Train every run predict is compared on (a build stopped half way resumes)."""
    ws = Path(ws)
    steps = [
        ("data", "synth", "--subjects", 27, "--frames", 40),
        ("align",),
        ("extract", "--model", "hog", "--quiet"),
        ("extract", "--model", "dlib_face", "--quiet"),
        ("classify", "--model", "hog", "--clf", "lda", "--quiet"),
        ("classify", "--model", "hog", "--clf", "svm", "--quiet"),
        ("classify", "--model", "hog", "--clf", "ridge", "--task", "intensity", "--quiet"),
        ("classify", "--model", "dlib_face", "--clf", "lstm", "--epochs", 2, "--hidden", 16,
         "--quiet"),
        ("finetune", "--model", "dlib_face", "--epochs", 1, "--input-size", 112, "--head",
         "multilabel", "--reinit", "head", "--train-from", "blocks.10", "--quiet"),
        ("ensemble", "--members", "hog__full__lda,hog__full__svm", "--name", "pair"),
        ("export", FT_RUN, "--out", ws / "ft.safetensors"),
        ("data", "synth", "--layout", "expression", "--subjects", 6, "--frames", 1),
        ("data", "synth", "--layout", "affwild2", "--subjects", 8, "--frames", 24),
        ("transfer", "--backbone", "tv:mobilenet_v3_small", "--weights", "random:1",
         "--input-size", 48, "--folds", 3, "--epochs", "1,1", "--hidden", "32,16", "--no-control",
         "--quiet"),
    ]
    for step in steps:
        fb(ws, *step, once=True)
    _inputs(ws)


def _inputs(ws):
    """The last test subject's video, and three of its frames as images in a folder."""
    import cv2

    video = sorted((Path(ws) / "data/synth/Videos_LeftCamera").glob("*.avi"))[-1]
    folder = Path(ws) / "inputs/images"
    folder.mkdir(parents=True, exist_ok=True)
    cap = cv2.VideoCapture(str(video))
    for k in range(3):
        ok, bgr = cap.read()
        assert ok, video
        cv2.imwrite(str(folder / f"frame{k}.png"), bgr)
    cap.release()
    (Path(ws) / "inputs/video.txt").write_text(str(video))


def predict(ws, out):
    """Every prediction of :data:`PREDICTIONS` into ``out`` (``<name>.csv`` + ``<name>.json``)."""
    ws, out = Path(ws), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    video = (ws / "inputs/video.txt").read_text()
    for name, args, dataset in PREDICTIONS:
        args = [a.format(ws=ws) for a in args]
        fb(ws, "predict", video, ws / "inputs/images", *args, "--dataset", dataset,
           "--out", out / f"{name}.csv", "--device", "cpu", "--quiet", "--force")


def compare(a, b):
    """cmp every CSV of ``a`` with ``b``'s; sidecars compared without :data:`VOLATILE`."""
    a, b = Path(a), Path(b)
    same = True
    for name, _, _ in PREDICTIONS:
        csv = (a / f"{name}.csv").read_bytes() == (b / f"{name}.csv").read_bytes()
        ja, jb = (json.loads((d / f"{name}.json").read_text()) for d in (a, b))
        side = {k: v for k, v in ja.items() if k not in VOLATILE} == \
            {k: v for k, v in jb.items() if k not in VOLATILE}
        rows = (a / f"{name}.csv").read_text().count("\n") - 1
        print(f"{name:15s} csv {'identical' if csv else 'DIFFERS'} ({rows} rows), sidecar "
              f"{'identical' if side else 'DIFFERS'}")
        same &= csv and side
    print("all identical" if same else "DIFFERENCES")
    return 0 if same else 1


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("build", "predict"):
        p = sub.add_parser(name)
        p.add_argument("--workspace", required=True)
        if name == "predict":
            p.add_argument("--out", required=True)
    c = sub.add_parser("compare")
    c.add_argument("a")
    c.add_argument("b")
    args = ap.parse_args(argv)
    if args.cmd == "build":
        return build(args.workspace) or 0
    if args.cmd == "predict":
        return predict(args.workspace, args.out) or 0
    return compare(args.a, args.b)


if __name__ == "__main__":
    sys.exit(main())
