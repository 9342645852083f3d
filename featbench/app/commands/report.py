"""``featbench report``: results/<dataset>/report.md and its charts, from summary.csv."""

from featbench.app.commands._common import add_ci_args, add_dataset_args, ci_settings_of, workspace_of


def add_parser(subparsers):
    """Register ``featbench report``."""
    p = subparsers.add_parser(
        "report", help="write results/<dataset>/report.md + charts from summary.csv",
        description="Write results/<dataset>/report.md: runs sorted by mean F1, each mean and "
                    "per-AU F1 with its interval (a bootstrap over the test subjects; runs written "
                    "without one get it now, from their predictions files), the runs a paired "
                    "test cannot tell apart from the top one, the paper's claims decided by that "
                    "test (holds / reversed / not decided), per-AU F1 beside the all-positive "
                    "baseline 2p/(1+p) and the F1 of saying present at random at the base rate "
                    "(p), the weights each run used (random-weight runs flagged 'random init, not "
                    "pretrained'), repeated splits (--repeats), failed runs with their error, and "
                    "two PNG charts (mean F1 per network and classifier with error bars; per-AU "
                    "F1 of the best runs). Prints the report's path and the top runs.")
    add_dataset_args(p)
    p.add_argument("--latex", action="store_true",
                   help="also write results/<dataset>/report_runs.tex: the runs table for a paper "
                        "(booktabs; mean F1 with its interval, the best in bold, the runs not "
                        "distinguishable from it marked)")
    add_ci_args(p)
    p.set_defaults(func=_run)


def _run(args):
    from featbench.app.report import LATEX_TABLE, headline, make_report

    given = args.ci_level is not None or args.ci_resamples is not None
    settings = ci_settings_of(args)
    ws = workspace_of(args)
    # settings given on the command line renew intervals stored with other ones
    path = make_report(ws, args.dataset, settings=settings if given else None, latex=args.latex)
    print(headline(ws, args.dataset))
    print(f"report: {path}")
    if args.latex:
        print(f"latex:  {path.parent / LATEX_TABLE}")
    return 0
