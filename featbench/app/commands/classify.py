"""``featbench classify``: per-AU LDA / linear SVM / LSTM on a network's codes, scored by the
protocol; with ``--task intensity``, per-AU ridge / linear SVR regression of the 0-5 intensities."""

from featbench.app.commands._common import (add_ci_args, add_dataset_args, ci_settings_of,
                                            load_table, workspace_of)


def add_parser(subparsers):
    """Register ``featbench classify``."""
    p = subparsers.add_parser(
        "classify", help="train and score per-AU classifiers on stored codes (results/<ds>/<run>.csv)",
        description="Train one binary classifier per AU on a network's codes (z-scored with the "
                    "training subjects' statistics), choose the SVM's C (and with --tune-threshold "
                    "the decision threshold) on the validation subjects, and score the test "
                    "subjects. Writes results/<ds>/<model>__<region>__<clf>[__tag].csv, its row in "
                    "summary.csv, per-frame predictions and the fitted models with their settings.")
    from classify.kinds import list_kinds  # names only: no estimator is imported

    p.add_argument("--clf", required=True,
                   metavar="|".join(list_kinds(trained_by="classify")),
                   help="lda (shrinkage LDA), svm (linear SVM, C chosen on validation) or lstm "
                        "(an LSTM over each subject's code sequence, epoch chosen on validation); "
                        "the run kinds of classify/kinds.py. --task intensity: ridge (alpha "
                        "chosen by ICC on validation), svr (linear SVR, C chosen so) or lstm "
                        "(a regression output, epoch chosen by validation ICC; tag intensity)")
    p.add_argument("--task", default=None, metavar="occurrence|intensity",
                   help="occurrence (present / absent, F1) or intensity (regression of the 0-5 "
                        "intensities: ICC(3,1), Pearson r, MAE, and F1 of rounded intensity >= 2; "
                        "needs a data set with intensities: disfa, synth, a folder manifest with "
                        "AUnn_int columns), or any task registered in Python "
                        "(classify.task.register_task) (default: the --clf's own: "
                        "occurrence; intensity for ridge and svr)")
    p.add_argument("--calibrate", default="none", metavar="none|median|neutral",
                   help="person-specific calibration: subtract from each person's codes (one "
                        "subject's video; at predict time one face track) their median code, or "
                        "the code of their most neutral frame (the one closest to the median); "
                        "from the codes alone, never a label (default: none)")
    p.add_argument("--model", default=None, metavar="NAME",
                   help="network whose codes to classify (default: the only one extracted for "
                        "the data set)")
    p.add_argument("--region", default="full", metavar="full|upper|middle|lower|auto",
                   help="codes of the whole face or one region; auto = each AU its own region "
                        "(needs featbench extract --region all) (default: full)")
    add_dataset_args(p)
    p.add_argument("--protocol", default="paper", metavar="P",
                   help="paper (12/6/9 subjects, 12 AUs), literature (DISFA 3 folds, 8 AUs), "
                        "kfold:K, or own (the data set's split); on BP4D paper and literature "
                        "are its 3 subject folds and 12 AUs; on a joined --dataset X+Y, cross "
                        "(train on X, test on Y) or within (Y's own); --repeats makes "
                        "kfold:K:rN (default: paper)")
    p.add_argument("--tune-threshold", action="store_true",
                   help="choose each AU's threshold by F1 on the validation subjects (default: 0)")
    balance = p.add_mutually_exclusive_group()  # both at once: one line, exit 2
    balance.add_argument("--no-balance", dest="balance", action="store_false", default=None,
                   help="train on every frame instead of all positives + as many random negatives "
                        "(the default of --task intensity)")
    balance.add_argument("--balance", dest="balance", action="store_true", default=None,
                   help="--task intensity: train on all frames with intensity >= --threshold and "
                        "as many random others (default there: every frame)")
    p.add_argument("--class-weight", default=None, choices=("balanced",),
                   help="weight classes inversely to their frequency (LDA: equal priors); "
                        "for --no-balance")
    p.add_argument("--seed", type=int, default=0, metavar="S",
                   help="seeds splits, balancing and the solver (default: 0)")
    p.add_argument("--jobs", type=int, default=None, metavar="N",
                   help="AUs trained at once (default: all cores)")
    p.add_argument("--aus", default=None, metavar="AU01,AU02",
                   help="only these AUs (default: the protocol's)")
    p.add_argument("--scheduler", default=None, metavar="ADDR",
                   help="run the per-AU fits on the Dask cluster at ADDR (tcp://HOST:PORT; "
                        "default: $DASK_SCHEDULER_ADDRESS, else local worker processes); the "
                        "workers need the workspace on a shared file system when the codes "
                        "exceed FEATBENCH_MEMORY_GB (default: half the RAM), above which they "
                        "are read from HDF5 in blocks and too-large training sets are fitted "
                        "out of core (SGD linear SVM)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--repeats", type=int, default=None, metavar="N",
                   help="with --protocol kfold:K: run N times, the subjects dealt into the K folds "
                        "anew each time (protocols kfold:K:r1 ... kfold:K:rN, each split seeded "
                        "by its number; --seed still seeds balancing and the solver), then print "
                        "mean F1 mean ± sd over the repeats and write the repeats table "
                        "(results/<ds>/repeats_kfoldK.csv / .md, also in featbench report)")
    add_ci_args(p)
    _add_lstm_args(p)
    p.set_defaults(func=_run)


def _add_lstm_args(p):
    """The LSTM's flags (``--clf lstm`` only); None = the paper's default (classify.lstm)."""
    g = p.add_argument_group(
        "--clf lstm", "the LSTM over code sequences (defaults: the paper's; training and validation "
        "sequences are cut around each run of activation, test scores whole sequences; "
        "--no-balance trains on whole sequences, --class-weight balanced weights positive frames)")
    g.add_argument("--hidden", type=int, default=None, metavar="N",
                   help="units of the LSTM layer (default: 200)")
    g.add_argument("--epochs", type=int, default=None, metavar="N",
                   help="at most N epochs; the epoch is chosen by F1 on the validation subjects "
                        "(default: 40)")
    g.add_argument("--patience", type=int, default=None, metavar="N",
                   help="stop after N epochs without a better validation F1 (default: 10)")
    g.add_argument("--lr", type=float, default=None, metavar="LR",
                   help="SGD learning rate, momentum 0.9, loss summed over a batch's frames "
                        "(default: 1e-4)")
    g.add_argument("--weight-noise", type=float, default=None, metavar="STD",
                   help="std of the Gaussian noise put on the weights for each training batch, "
                        "never at evaluation (default: 0.1; 0 = none)")
    g.add_argument("--bidirectional", action="store_true", default=None,
                   help="a bidirectional LSTM (default: forward only)")
    g.add_argument("--context", type=int, default=None, metavar="N",
                   help="frames kept before and after each run of activation (default: 3)")
    g.add_argument("--drop-gap", type=int, default=None, metavar="N",
                   help="inactive stretches of N frames or more are dropped from training and "
                        "validation sequences (default: 500)")
    g.add_argument("--batch", type=int, default=None, metavar="N",
                   help="sequences per batch (default: 4)")
    g.add_argument("--multilabel", action="store_true", default=None,
                   help="one network with an output per AU instead of one network per AU")
    g.add_argument("--device", default=None, metavar="auto|cpu|cuda",
                   help="where the LSTM trains (default: auto = cuda when available)")


LSTM_FLAGS = ("hidden", "epochs", "patience", "lr", "weight_noise", "bidirectional", "context",
              "drop_gap", "batch", "multilabel", "device")


def _run(args):
    from featbench.core.stats import using_settings

    settings = ci_settings_of(args)  # bad --ci-* values fail before any data is read
    protocols = [args.protocol]
    if args.repeats is not None:
        from featbench.core.splits import repeat_protocols

        protocols = repeat_protocols(args.protocol, args.repeats)
    results = []
    with using_settings(settings):  # every run written here stores its intervals so
        for protocol in protocols:
            args.protocol = protocol
            results.append(_run_one(args))
    if args.repeats is not None and results[0] is not None:  # None: not torchrun's rank 0
        _print_repeats(args, results)
    return 0


def _print_repeats(args, results):
    """Mean F1 mean ± sd of this run over the repeats, and the workspace's repeats tables."""
    import numpy as np

    from featbench.app.repeats import write_repeats
    from featbench.core.results import read_summary_rows

    f1 = np.array([r["mean"]["f1"] for r in results], dtype=float)
    print(f"{len(results)} repeated splits: mean F1 {np.nanmean(f1):.3f} ± "
          f"{np.nanstd(f1, ddof=1):.3f} (sd over repeats; min {np.nanmin(f1):.3f}, max "
          f"{np.nanmax(f1):.3f})")
    ws = workspace_of(args)
    if write_repeats(ws, args.dataset, read_summary_rows(ws.summary_csv(args.dataset))):
        print(f"repeats tables: {ws.results_dir(args.dataset)}/repeats_*.md (and .csv)")


def _run_one(args):
    """One classify run of ``args`` (its protocol set); returns its result (None on a torchrun
    rank other than 0)."""
    from classify.kinds import classifier_kind
    from classify.task import get_task
    from classify.run import check_args, check_features, classify_run, default_model, format_result
    from featbench.core.calibrate import check_calibration
    from featbench.core.errors import MissingRunError, UsageError

    check_calibration(args.calibrate)
    kind = classifier_kind(args.clf)  # bad names, bad flags and missing codes fail before any data is read
    task = get_task(args.task or kind.task)  # a registered task's name works here
    if args.repeats is not None and not task.classes:
        raise UsageError(f"--repeats: runs of binary decisions only (the repeats table ranks by "
                         f"F1; --task {task.name} regresses)")
    lstm = {k: getattr(args, k) for k in LSTM_FLAGS if getattr(args, k) is not None}
    if kind.options is not None:
        lstm = kind.options(lstm)
    elif lstm:
        flags = ", ".join("--" + k.replace("_", "-") for k in lstm)
        raise UsageError(f"{flags}: only for --clf lstm")
    else:
        lstm = None
    if args.scheduler:
        from classify.scale import probe_scheduler

        probe_scheduler(args.scheduler)  # seconds, not minutes, for an address that is no Dask
    if args.jobs is not None and args.jobs < 1 and args.jobs != -1:
        raise UsageError(f"--jobs {args.jobs}: must be at least 1 (or -1: every core)")
    check_args(args.clf, args.region, args.class_weight, lstm, args.calibrate, task,
               args.tune_threshold)
    ws = workspace_of(args)
    try:
        model = args.model or default_model(ws, args.dataset)
        check_features(ws, args.dataset, model)
    except MissingRunError:
        if task.needs_table:  # a data set the task cannot use says so first (no intensities)
            task.check_table(load_table(args))
        raise
    table = load_table(args)
    task.check_table(table)
    result = classify_run(ws, args.dataset, model=model, clf=args.clf, region=args.region,
                          protocol=args.protocol, tune_threshold=args.tune_threshold,
                          balance=args.balance, class_weight=args.class_weight,
                          seed=args.seed, n_jobs=args.jobs, table=table, aus=args.aus,
                          progress=not args.quiet, lstm=lstm, scheduler=args.scheduler,
                          calibrate=args.calibrate, task=task)
    if result is not None:  # None: a torchrun rank other than 0 (rank 0 writes and prints)
        print(format_result(result))
    return result
