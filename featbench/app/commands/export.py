"""``featbench export``: one self-contained model file of a run, for ``featbench predict --model``."""

from featbench.app.commands._common import workspace_of


def add_parser(subparsers):
    """Register ``featbench export``."""
    p = subparsers.add_parser(
        "export", help="write a run's classifiers, thresholds and network identity to one file",
        description="Write everything featbench predict needs to apply a run (per-AU classifiers "
                    "with their scalers and thresholds, the network's name and weights identity, "
                    "the alignment settings, the featbench and scikit-learn versions) to one "
                    "file, to share a trained model and apply it on another machine with "
                    "featbench predict --model FILE. The file is a pickle: load only files you "
                    "trust. A classify run's frozen network is named, not copied: the other "
                    "machine needs its weights (featbench weights). A fine-tuned (ft) or "
                    "transfer run's trained network is copied into the file (CNN-F: about "
                    "230 MB per network; a per-au run holds one per AU), and so is a "
                    "fine-tuned network whose codes a classify run reads.")
    p.add_argument("run", metavar="RUN",
                   help="the run to export (e.g. alexnet__full__svm), or 'best'")
    p.add_argument("--out", required=True, metavar="FILE",
                   help="the file to write (e.g. model.featbench)")
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
        path = export_run(model, args.out, workspace=ws)
    print(f"exported {model.describe()} ({len(model.aus)} AUs) -> {path}")
    return 0
