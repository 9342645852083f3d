"""``featbench ensemble``: majority vote of classifier runs, written like a run with clf = vote."""

from featbench.app.commands._common import add_dataset_args, workspace_of

DESCRIPTION = """\
Per AU and test frame, the ensemble says present when more than half of its members do. With an
even number of members a tie is broken by the members' scores: each member's margin
(score - threshold) is divided by the std of that member's scores on the test frames, and the
ensemble says present when the mean of these standardised margins is > 0.

Intensity runs (featbench classify --task intensity) ensemble with --members only: the
ensemble's intensity is the mean of the members' predicted intensities (a member without a model
for an AU abstains), present when it rounds to >= 2. Members of the two tasks do not mix.

presets (one member per network family, each family's SVM run; every preset also takes the
families' LSTM runs where they exist, as the paper's first ensemble mixes SVM and LSTM members):
  fe             frozen-code runs on full faces (quick pipeline: hog, dlib_face, alexnet, cnn_f),
                 plus one LSTM run (<model>__full__lstm) per family where such runs exist
  fe+region      fe plus the region-based runs (<model>__auto__svm)
  fe+ft          fe with the fine-tuned CNN-F in place of AlexNet (needs featbench finetune)
  fe+ft+region   fe+ft plus the region-based runs
"""


def add_parser(subparsers):
    """Register ``featbench ensemble``."""
    import argparse

    from classify.ensemble import PRESETS

    p = subparsers.add_parser(
        "ensemble", help="majority vote of classifier runs (presets of the paper or --members)",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    group = p.add_mutually_exclusive_group()
    group.add_argument("--preset", choices=PRESETS, default=None,
                       help="the paper's ensembles (default: fe)")
    group.add_argument("--members", default=None, metavar="RUN,RUN,...",
                       help="comma-separated run names, e.g. alexnet__full__svm,hog__full__svm")
    p.add_argument("--name", default=None,
                   help="the ensemble's name (its model column); default ensemble-<preset> or "
                        "vote-<hash of the members>")
    p.add_argument("--protocol", default="paper", metavar="P",
                   help="with --preset: vote the members run under this split protocol (paper, "
                        "literature, kfold:K; default paper)")
    add_dataset_args(p)
    p.set_defaults(func=_run)


def _run(args):
    from classify.ensemble import ensemble_run

    members = args.members.split(",") if args.members else None
    tag = None
    if args.protocol != "paper":
        from classify.run import run_tag

        tag = run_tag(protocol=args.protocol)
    out = ensemble_run(workspace_of(args), args.dataset, members=members, preset=args.preset,
                       name=args.name, tag=tag)
    for note in out["notes"]:
        print(f"note: {note}")
    icc = f"mean ICC {out['mean_icc']:.3f} (mean of the members' intensities), " \
        if "mean_icc" in out else ""
    print(f"{out['run']}: {len(out['members'])} members ({', '.join(out['members'])}), "
          f"{out['frames']} frames, {len(out['aus'])} AUs: {icc}mean F1 {out['mean_f1']:.3f}, "
          f"accuracy {out['mean_accuracy']:.3f} -> {out['csv']}")
    return 0
