"""``featbench report``: results/<dataset>/report.md and its charts, from summary.csv."""

from featbench.app.commands._common import add_dataset_args, workspace_of


def add_parser(subparsers):
    """Register ``featbench report``."""
    p = subparsers.add_parser(
        "report", help="write results/<dataset>/report.md + charts from summary.csv",
        description="Write results/<dataset>/report.md: runs sorted by mean F1 (with the weights "
                    "each used: random-weight runs are flagged 'random init, not pretrained'), "
                    "per-AU F1 beside the all-positive baseline 2p/(1+p), failed runs with their "
                    "error, and two PNG charts (mean F1 per network and classifier; per-AU F1 of "
                    "the best runs). Prints the report's path and the top runs.")
    add_dataset_args(p)
    p.set_defaults(func=_run)


def _run(args):
    from featbench.app.report import headline, make_report

    ws = workspace_of(args)
    path = make_report(ws, args.dataset)
    print(headline(ws, args.dataset))
    print(f"report: {path}")
    return 0
