"""``featbench classify``: per-AU LDA / linear SVM on a network's codes, scored by the protocol."""

from ._common import add_dataset_args, load_table, workspace_of


def add_parser(subparsers):
    """Register ``featbench classify``."""
    p = subparsers.add_parser(
        "classify", help="train and score per-AU classifiers on stored codes (results/<ds>/<run>.csv)",
        description="Train one binary classifier per AU on a network's codes (z-scored with the "
                    "training subjects' statistics), choose the SVM's C (and with --tune-threshold "
                    "the decision threshold) on the validation subjects, and score the test "
                    "subjects. Writes results/<ds>/<model>__<region>__<clf>[__tag].csv, its row in "
                    "summary.csv, per-frame predictions and the fitted models with their settings.")
    from classify.registry import list_classifiers  # names only: no estimator is imported

    p.add_argument("--clf", required=True, metavar="|".join(list_classifiers()),
                   help="lda (shrinkage LDA) or svm (linear SVM, C chosen on validation); "
                        "the registry's entries (classify/registry.py)")
    p.add_argument("--model", default=None, metavar="NAME",
                   help="network whose codes to classify (default: the only one extracted for "
                        "the data set)")
    p.add_argument("--region", default="full", metavar="full|upper|middle|lower|auto",
                   help="codes of the whole face or one region; auto = each AU its own region "
                        "(needs featbench extract --region all) (default: full)")
    add_dataset_args(p)
    p.add_argument("--protocol", default="paper", metavar="P",
                   help="paper (12/6/9 subjects, 12 AUs), literature (DISFA 3 folds, 8 AUs), "
                        "kfold:K, or own (the data set's split) (default: paper)")
    p.add_argument("--tune-threshold", action="store_true",
                   help="choose each AU's threshold by F1 on the validation subjects (default: 0)")
    p.add_argument("--no-balance", dest="balance", action="store_false",
                   help="train on every frame instead of all positives + as many random negatives")
    p.add_argument("--class-weight", default=None, choices=("balanced",),
                   help="weight classes inversely to their frequency (LDA: equal priors); "
                        "for --no-balance")
    p.add_argument("--seed", type=int, default=0, metavar="S",
                   help="seeds splits, balancing and the solver (default: 0)")
    p.add_argument("--jobs", type=int, default=None, metavar="N",
                   help="AUs trained at once (default: all cores)")
    p.add_argument("--aus", default=None, metavar="AU01,AU02",
                   help="only these AUs (default: the protocol's)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_run)


def _run(args):
    from classify.registry import check_clf
    from classify.run import check_features, classify_run, default_model, format_result

    check_clf(args.clf)  # bad names and missing codes fail before any data is read
    ws = workspace_of(args)
    model = args.model or default_model(ws, args.dataset)
    check_features(ws, args.dataset, model)
    result = classify_run(ws, args.dataset, model=model, clf=args.clf, region=args.region,
                          protocol=args.protocol, tune_threshold=args.tune_threshold,
                          balance=args.balance, class_weight=args.class_weight, seed=args.seed,
                          n_jobs=args.jobs, table=load_table(args), aus=args.aus,
                          progress=not args.quiet)
    print(format_result(result))
    return 0
