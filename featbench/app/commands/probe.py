"""``featbench probe identity``: how much identity a network's codes carry (classify/probe.py)."""

from featbench.app.commands._common import add_dataset_args, load_table, print_json, workspace_of

DESCRIPTION = """\
identity: fit a linear classifier (z-scored codes, multinomial logistic regression) that predicts
the subject from a network's stored codes. Every video is split in time: its first frames train,
its last frames test, frames between them are dropped, so the same (or neighbouring) frames never
train and test. Prints the test accuracy against chance (1 / subjects) with a 95 % interval from a
subject-level bootstrap, and writes the row to results/<dataset>/probe_identity.csv; featbench
report shows it beside the network's AU F1. Needs the codes: featbench extract --model M first.
"""


def add_parser(subparsers):
    """Register ``featbench probe``."""
    import argparse

    p = subparsers.add_parser("probe", help="probes of a network's codes (identity: how well they "
                                            "tell people apart)",
                              description=DESCRIPTION,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    psub = p.add_subparsers(dest="probe_command", metavar="PROBE")
    psub.required = True
    i = psub.add_parser("identity", help="predict the subject from the codes (accuracy vs chance)",
                        description=DESCRIPTION,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    i.add_argument("--model", required=True, metavar="NAME",
                   help="network whose stored codes to probe (featbench extract --model NAME)")
    i.add_argument("--region", default="full", metavar="full|upper|middle|lower",
                   help="codes of the whole face or of one region (default: full)")
    add_dataset_args(i)
    i.add_argument("--train-share", type=float, default=0.5, metavar="F",
                   help="share of each video's frames, from its start, that train (default: 0.5)")
    i.add_argument("--gap", type=float, default=0.1, metavar="F",
                   help="share of each video's frames after the training part that neither "
                        "trains nor tests (default: 0.1)")
    i.add_argument("--seed", type=int, default=0, metavar="S", help="seeds the bootstrap (default: 0)")
    i.add_argument("--json", action="store_true", help="print the result as one JSON object")
    i.set_defaults(func=_identity)


def _identity(args):
    from classify.probe import identity_probe

    table = load_table(args)
    out = identity_probe(workspace_of(args), table, model=args.model, region=args.region,
                         train_share=args.train_share, gap_share=args.gap, seed=args.seed)
    if args.json:
        print_json(out)
        return 0
    print(f"identity probe of {args.model} ({args.region}) on {table.dataset}: accuracy "
          f"{out['accuracy']:.3f} [{out['accuracy_lo']:.3f}, {out['accuracy_hi']:.3f}] over "
          f"{out['subjects']} subjects (chance {out['chance']:.3f}; balanced accuracy "
          f"{out['balanced_accuracy']:.3f}), {out['train_frames']} train / {out['test_frames']} "
          f"test frames, in {out['seconds']:.1f} s -> {out['path']}")
    return 0
