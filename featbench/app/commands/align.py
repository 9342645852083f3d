"""``featbench align``: build the aligned-face cache, or draw a sheet to check its geometry."""

from featbench.app.commands._common import add_dataset_args, check_sheet_out, load_table, workspace_of


def add_parser(subparsers):
    """Register ``featbench align``."""
    p = subparsers.add_parser(
        "align", help="align every face once and cache it (data/<dataset>/aligned/faces.h5)",
        description="Align each frame's face onto a canonical template (a similarity transform "
                    "from eye corners, nose and mouth corners), cut the upper / middle / lower "
                    "regions from the aligned landmarks, and cache it all in one HDF5 file that "
                    "extraction reads. Landmarks come from the data set, or from dlib where it "
                    "has none; frames without a face are skipped and counted. Rerunning with an "
                    "up-to-date cache does nothing; a changed data set is rebuilt.")
    add_dataset_args(p)
    p.add_argument("--force", action="store_true", help="rebuild the cache even if up to date")
    p.add_argument("--compress", action="store_true",
                   help="lzf-compress the faces: 40%% less disk, reads and builds 2-10x slower "
                        "(applies when the cache is built)")
    p.add_argument("--show", action="store_true",
                   help="draw a PNG sheet: frames with landmarks, aligned faces, region crops "
                        "(builds the cache first if needed)")
    p.add_argument("--out", metavar="FILE.png", default=None,
                   help="where --show writes (default: results/<dataset>/align_sheet.png)")
    p.add_argument("--n", type=int, default=8, metavar="N",
                   help="--show: how many frames, spread over the data set, 1-64 (default: 8)")
    p.set_defaults(func=_run, interrupted="what was written so far is kept and a rerun resumes")


def _run(args):
    from featbench.core.align import MAX_SHEET_ROWS, align_dataset, render_sheet
    from featbench.core.errors import UsageError

    if args.show and not 1 <= args.n <= MAX_SHEET_ROWS:  # before any long work
        raise UsageError(f"--n must be 1-{MAX_SHEET_ROWS} (rows of the sheet), got {args.n}")
    table = load_table(args)
    ws = workspace_of(args)
    if args.show:  # the sheet's --out is checked before the long work
        out = args.out or ws.results_dir(table.dataset) / "align_sheet.png"
        check_sheet_out(out, table, command="align")
    report = align_dataset(table, ws.aligned_path(table.dataset), force=args.force,
                           compression="lzf" if args.compress else None)
    if not args.show:
        print(report.summary())
        return 0
    print(render_sheet(table, report.path, out, n=args.n))
    return 0
