"""``featbench transfer``: Method B's two-stage expression -> AU transfer (``classify.transfer``)."""

from featbench.app.commands._common import workspace_of

DESCRIPTION = """\
Method B, two stages:
  stage 1  a backbone + one linear layer learns the expression classes of a posed-expression
           set, with K-fold subject-independent cross-validation (accuracy per fold, mean ± std,
           confusion matrix); then it is trained on every subject and saved;
  stage 2  that backbone + a two-hidden-layer MLP learns AU occurrence (per-AU binary
           cross-entropy) on the AU set's training split; epoch and per-AU thresholds are
           chosen on validation subjects; the test split (Aff-Wild2: its Validation_Set) is
           scored at 0.5 and at the tuned thresholds;
  control  stage 2 again from the backbone's starting weights (run tag nostage1).
Writes results/<ds>/<backbone>__full__transfer.csv, its summary.csv row (clf transfer),
predictions, models, settings and per-epoch logs and curves of both stages.
"""

EPILOG = """\
examples (embedded synthetic sets, made on first use):
  featbench transfer                    # resnet50 if its file is here, else dlib_face (shipped)
  featbench transfer --backbone tv:mobilenet_v2 --input-size 96 --epochs 4,3
  featbench transfer --stage 1 --backbone tv:resnet18 --folds 5
  featbench transfer --expr-root ~/RAF-DB/aligned --subject-rule prefix:_ --expr-aligned \\
                     --dataset affwild2 --root ~/AffWild2
"""


def add_parser(subparsers):
    """Register ``featbench transfer``."""
    import argparse

    p = subparsers.add_parser(
        "transfer", help="two-stage expression -> AU transfer (Method B)",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description=DESCRIPTION)
    p.add_argument("--backbone", default=None, metavar="NAME",
                   help="registry network (default: resnet50, the paper's, when its ImageNet "
                        "file is here, else dlib_face, dlib's face ResNet shipped with featbench: "
                        "a pretrained start on every machine; tv:resnet18 or tv:mobilenet_v2 are "
                        "practical on a CPU; featbench models lists all)")
    p.add_argument("--weights", default="auto", metavar="auto|imagenet|random:S|PATH",
                   help="the backbone's starting weights: auto = its pretrained file when it is "
                        "here (a --backbone you name without its file starts from random:0, said "
                        "in the output); random:S is a seeded random init, labelled as such "
                        "everywhere (default: auto)")
    p.add_argument("--input-size", type=int, default=None, metavar="PX",
                   help="side the aligned faces are resized to (default: the backbone's, 224)")
    p.add_argument("--expr-dataset", default=None, metavar="synth-expression|manifest|subfolders",
                   help="stage-1 expression set layout: the embedded synth-expression, a CSV "
                        "manifest image,subject,expression, or one folder per class (default: "
                        "synth-expression; with --expr-root, guessed from what is there)")
    p.add_argument("--expr-root", default=None, metavar="DIR",
                   help="the expression set's folder (or manifest CSV)")
    p.add_argument("--subject-rule", default="prefix:_", metavar="RULE",
                   help="subfolders layout: the subject of an image: prefix:SEP (file name up to "
                        "SEP), regex:PATTERN (first group, on the path under the root) or dir "
                        "(<class>/<subject>/<image>) (default: prefix:_)")
    p.add_argument("--expr-aligned", action="store_true",
                   help="the expression images are aligned face crops already: resize, do not "
                        "detect (the embedded set always is)")
    p.add_argument("--dataset", default="synth-affwild2", metavar="NAME",
                   help="stage-2 AU data set: affwild2, synth-affwild2, or a DISFA-style set "
                        "(disfa, synth, folder) (default: synth-affwild2)")
    p.add_argument("--root", default=None, metavar="DIR",
                   help="the AU data set's folder (default: data/<dataset> in the workspace)")
    p.add_argument("--protocol", default=None, metavar="own|paper|kfold:K",
                   help="stage-2 split: own (the data set's: Aff-Wild2 tests on its Validation_Set) "
                        "or, for sets without one, paper (default: own when the set has a split)")
    p.add_argument("--stage", default="both", choices=("1", "2", "both"),
                   help="run stage 1, stage 2 (from a saved stage 1), or both (default: both)")
    p.add_argument("--no-control", dest="control", action="store_false",
                   help="skip the control run (stage 2 without stage 1)")
    p.add_argument("--folds", type=int, default=5, metavar="K",
                   help="stage-1 subject-independent folds (default: 5)")
    p.add_argument("--hidden", default="512,256", metavar="H1,H2",
                   help="stage-2 MLP hidden layer sizes (default: 512,256)")
    p.add_argument("--pos-weight", default="auto", choices=("auto", "none"),
                   help="weight each AU's positives by negatives/positives of the training frames "
                        "(auto, for Aff-Wild2's imbalance) or not (default: auto)")
    p.add_argument("--epochs", default="10", metavar="E|E1,E2",
                   help="at most this many epochs per training (stage 1, stage 2) (default: 10)")
    p.add_argument("--patience", type=int, default=3, metavar="N",
                   help="stop after N epochs without a better validation score (default: 3)")
    p.add_argument("--lr", type=float, default=3e-4, help="Adam learning rate (default: 3e-4)")
    p.add_argument("--batch-size", type=int, default=32, metavar="N", help="images per batch (default: 32)")
    p.add_argument("--seed", type=int, default=0, metavar="S",
                   help="seeds folds, splits, batches and heads (default: 0)")
    p.add_argument("--device", default="auto", metavar="auto|cpu|cuda",
                   help="where to train (default: auto = cuda when present; AMP there)")
    p.add_argument("--aus", default=None, metavar="AU01,AU02", help="only these AUs (default: all labelled)")
    p.add_argument("--task", default="occurrence", metavar="occurrence|intensity",
                   help="what stage 2 learns: occurrence (BCE, F1) or intensity (the head regresses "
                        "the 0-5 intensities: MSE, epoch by validation ICC, outputs clipped to 0-5; "
                        "needs an AU data set with intensities, e.g. --dataset synth; run-name tag "
                        "intensity; or a task registered in Python) (default: occurrence)")
    p.add_argument("--scheduler", default=None, metavar="ADDR",
                   help="train the networks (stage 1's folds, stage 2) on the Dask cluster at ADDR "
                        "(tcp://HOST:PORT, pip install 'featbench[dask]'; the workspace on a shared "
                        "file system); under torchrun each rank trains a share, rank 0 writes")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_run, interrupted="what was written so far is kept and a rerun resumes")


#: the paper's backbone, and the pretrained one every machine has (shipped with featbench)
PAPER_BACKBONE, SHIPPED_BACKBONE = "resnet50", "dlib_face"


def resolve_start(backbone, weights):
    """Return ``(backbone, weights, note)``: where stage 1 starts.

    ``weights`` ``auto`` becomes the backbone's pretrained file when it is here. Without a
    ``--backbone`` (None), the paper's ResNet-50 when its ImageNet file is cached, else
    ``dlib_face`` (pretrained on faces, shipped with featbench): Method B then starts from a
    pretrained network on every machine, never from random weights unless asked. A backbone
    the user named without its file starts from ``random:0``, said in the note.
    """
    from extract.registry import get_spec
    from extract.weights import parse_weights, pretrained_path

    named = backbone is not None
    backbone = backbone or PAPER_BACKBONE
    spec = get_spec(backbone)
    if weights not in (None, "", "auto"):  # parsed, not matched on its spelling (a file random.pt)
        random = parse_weights(weights, spec).mode == "random"
        return backbone, weights, ("random init, not pretrained" if random else "")
    path, cached = pretrained_path(spec)
    if cached:
        return backbone, "imagenet", f"pretrained ({path.name} cached)"
    why = f"{path.name} not cached in {path.parent}" if path else "no published weights"
    if not named:
        return (SHIPPED_BACKBONE, get_spec(SHIPPED_BACKBONE).default_weights,
                f"{backbone}'s {why}: starting from {SHIPPED_BACKBONE} instead (dlib's face "
                f"ResNet, pretrained on faces, shipped with featbench); --backbone {backbone} "
                "--weights random:0 runs the paper's backbone from random weights")
    return backbone, "random:0", (f"random init, not pretrained ({why}; --backbone "
                                  f"{SHIPPED_BACKBONE} starts from pretrained weights here)")


def _run(args):
    import sys

    from classify.run import resolve_aus
    from classify.task import get_task
    from classify.transfer import (TransferSettings, check_start, format_result, parse_sizes,
                                   transfer_run)
    from featbench.core.datasets import load_dataset
    from featbench.core.datasets.expression import guess_layout, load_expression_set

    ws = workspace_of(args)
    backbone, weights, note = resolve_start(args.backbone, args.weights)
    settings = TransferSettings(
        backbone=backbone, weights=weights, input_size=args.input_size, folds=args.folds,
        hidden=parse_sizes(args.hidden, flag="--hidden"), pos_weight=args.pos_weight,
        epochs=parse_sizes(args.epochs, flag="--epochs", count=2), lr=args.lr,
        batch_size=args.batch_size, patience=args.patience, seed=args.seed, device=args.device,
        task=args.task)
    check_start(settings)  # weights and input size, before data is read or synthesised
    expr_name = args.expr_dataset or (guess_layout(args.expr_root) if args.expr_root else "synth-expression")
    expr = load_expression_set(expr_name, root=args.expr_root, workspace=ws,
                               subject_rule=args.subject_rule,
                               pre_aligned=True if args.expr_aligned else None,
                               check_images=args.stage != "2", progress=not args.quiet)
    au_table, aus = None, None
    if args.stage != "1":
        au_table = load_dataset(args.dataset, root=args.root, workspace=ws, generate=True,
                                progress=not args.quiet)
        aus = resolve_aus(au_table, "own", args.aus)
        get_task(settings.task).check_table(au_table)  # a task the data set cannot give says so
    if note:  # said before any training, after every input was checked
        print(f"{backbone} starts from {weights}: {note}", file=sys.stderr)
    out = transfer_run(ws, expr_table=expr, au_table=au_table, settings=settings, stage=args.stage,
                       control=args.control, aus=aus, protocol=args.protocol, progress=not args.quiet,
                       scheduler=args.scheduler)
    if out is not None:  # None: a torchrun rank other than 0 (rank 0 writes and prints)
        print(format_result(out))
    return 0
