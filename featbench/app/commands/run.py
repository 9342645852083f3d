"""``featbench run``: data → align → extract → classify → ensemble → report in one command."""

from featbench.app.commands._common import add_ci_args, ci_settings_of, workspace_of

DESCRIPTION = """\
Run Method A's frozen-feature protocol end to end, skipping what is already done (an existing
data set, aligned-face cache, complete feature file, or a classifier run newer than its features).

presets:
  quick  (default; about 10 min on a slow 2-core machine) what every machine has: hog and
         dlib_face (dlib's face ResNet, pretrained on faces, shipped), each on full faces and
         each AU's region; dlib's network fine-tuned for the AUs, an SVM on its codes;
         svm + lda; ensembles fe, fe+region, fe+ft, fe+ft+region; the report. ImageNet CNNs
         (alexnet, tv:mobilenet_v2) join when their files are cached or downloadable, else
         they are left out (said in one line and in the report).
  paper  every network of the paper with imagenet weights, all fetched before any long work
         (files that cannot be had are named; --weights random:0 runs it as a random-weight
         control). Offline clusters: featbench weights fetch --all on a login node, or
         featbench weights import PATH.

Random-init networks are controls: --controls runs them (flagged as random init in every
table and chart); they never vote in an ensemble preset.

Every mean and per-AU metric is stored and reported with its interval (a bootstrap over the
test subjects: --ci-level, --ci-resamples); the report's claims are decided by a paired test.
--repeats N (with --protocol kfold:K) runs the frozen-code classifiers and their votes (fe,
fe+region) again on N new assignments of the subjects to the K folds and reports how much the
ranking moves (the fine-tuned networks and the votes with them are not repeated).

Then read results/<dataset>/report.md (charts beside it) and results/<dataset>/summary.csv.
"""


def add_parser(subparsers):
    """Register ``featbench run``."""
    import argparse

    p = subparsers.add_parser("run", help="the whole protocol in one command (then read the report)",
                              description=DESCRIPTION,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=("quick", "paper"), default="quick",
                   help="quick (default): a handful of networks in minutes; paper: every network")
    p.add_argument("--dataset", default="synth", metavar="NAME",
                   help="data set (default: synth, the embedded set, generated on first use)")
    p.add_argument("--root", default=None, metavar="DIR",
                   help="the data set's folder (default: data/<dataset> in the workspace)")
    p.add_argument("--weights", default=None, metavar="W",
                   help="weights of every CNN: imagenet, random[:SEED] or a file (default: quick "
                        "uses imagenet when cached or downloadable, else leaves the network out; "
                        "paper needs imagenet)")
    p.add_argument("--protocol", default=None, metavar="P",
                   help="split protocol of the classifiers: paper (12/6/9, default), literature, "
                        "kfold:K; on BP4D paper and literature are its 3 subject folds; a joined "
                        "--dataset X+Y runs within, then cross (train on X, test on Y), unless "
                        "one is named")
    p.add_argument("--controls", action="store_true",
                   help="also run the random-init controls: CNNs whose pretrained file is not "
                        "here from random:0, and the fine-tuned network from random:0 (flagged "
                        "as random init; never ensemble members)")
    p.add_argument("--repeats", type=int, default=None, metavar="N",
                   help="with --protocol kfold:K: also run every frozen-code classifier and the "
                        "fe / fe+region votes on N new splits (kfold:K:r1 ... rN, each seeded by "
                        "its number) and report mean ± sd over them and how stable the ranking "
                        "is (results/<ds>/repeats_kfoldK.csv / .md); fine-tuned networks are not "
                        "repeated")
    add_ci_args(p)
    p.add_argument("--quiet", action="store_true", help="no stage headers or progress bars")
    p.set_defaults(func=_run, interrupted="what was written so far is kept and a rerun resumes")


def _run(args):
    settings = ci_settings_of(args)
    if args.repeats is not None:  # refused before the pipeline's heavy imports
        from featbench.core.splits import repeat_protocols

        repeat_protocols(args.protocol or "paper", args.repeats)
    from featbench.app.pipeline import run_pipeline
    from featbench.core.datasets.joined import split_name

    # a joined set X+Y: the within runs, then the cross ones, so the report pairs them
    protocols = [args.protocol] if args.protocol or not split_name(args.dataset) else ["within", "cross"]
    for protocol in protocols:
        out = run_pipeline(workspace_of(args), preset=args.preset, dataset=args.dataset,
                           root=args.root, weights=args.weights, protocol=protocol,
                           controls=args.controls, progress=not args.quiet, repeats=args.repeats,
                           ci=settings)
        if args.quiet:
            print(f"featbench run --preset {args.preset}{' --protocol ' + protocol if protocol else ''}: "
                  f"{len(out['runs'])} runs, {len(out['failed'])} failed, "
                  f"{out['elapsed'] / 60:.1f} min; report: {out['report']}")
    return 0
