"""``featbench export``: one self-contained model file of a run, for ``featbench predict --model``."""

from featbench.app.commands._common import workspace_of


def add_parser(subparsers):
    """Register ``featbench export``."""
    p = subparsers.add_parser(
        "export", help="write a trained run to one model file (safetensors, safe to share)",
        description="Write everything featbench predict needs to apply a run to ONE file: the "
                    "run's manifest (run, kind, AUs, thresholds, weights identity, preprocessing "
                    "and alignment settings, training data set, featbench version) and its "
                    "tensors (classifiers and scalers as arrays, trained networks), as a "
                    ".safetensors file that holds no code: loading it never runs anything, so "
                    "it is safe to send and to receive. Apply it on another machine with "
                    "featbench predict --model FILE. A classify run's frozen network is named, "
                    "not copied: the other machine needs its weights (featbench weights). A "
                    "fine-tuned (ft) or transfer run's trained network is in the file (CNN-F: "
                    "about 230 MB per network, half with --half; a per-au run holds one per AU), "
                    "and so is a fine-tuned network whose codes a classify run reads.")
    p.add_argument("run", metavar="RUN",
                   help="the run to export (e.g. alexnet__full__svm), or 'best'")
    p.add_argument("--out", required=True, metavar="FILE",
                   help="the file to write (e.g. model.safetensors)")
    p.add_argument("--half", action="store_true",
                   help="store floating tensors as float16: half the size; scores change in the "
                        "last digits, so a score within float16's precision of its threshold "
                        "may flip its decision (thresholds stay exact)")
    p.add_argument("--dataset", default="synth", metavar="NAME",
                   help="the data set the run was trained on (default: synth)")
    p.add_argument("--force", action="store_true",
                   help="replace an existing --out file that is not a featbench model file")
    p.set_defaults(func=_run)


def _run(args):
    from featbench.apply.runmodel import export_run, load_run
    from featbench.core.workspace import check_outputs, output_lock, writing

    ws = workspace_of(args)
    model = load_run(ws, args.dataset, args.run)
    inputs = [p for p in ws.results_dir(args.dataset).rglob("*") if p.is_file()]
    check_outputs({"--out": args.out}, inputs=inputs, force=args.force, command="export")
    with output_lock([args.out]), writing(args.out, "exporting the run"):
        path = export_run(model, args.out, workspace=ws, half=args.half)
    size = path.stat().st_size / 1e6
    data = model.info.get("training_data") or {}
    trained = (f", trained on {data['dataset']} ({'synthetic' if data.get('synthetic') else 'real'})"
               if data.get("dataset") else "")
    print(f"exported {model.describe()} ({len(model.aus)} AUs{', float16' if args.half else ''}"
          f"{trained}, {size:.1f} MB) -> {path}")
    return 0
