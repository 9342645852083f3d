"""``featbench transfer``: Method B's expression -> AU two-stage transfer — not built yet."""

from ..errors import UsageError
from ._common import add_dataset_args


def add_parser(subparsers):
    """Register ``featbench transfer`` (its flags, so scripts can be written against them)."""
    p = subparsers.add_parser("transfer", help="two-stage expression -> AU transfer (not built yet)",
                              description="Method B: pre-train a backbone on posed expressions, "
                                          "then fine-tune it for AU occurrence. Not built yet: "
                                          "tracked separately.")
    p.add_argument("--backbone", default="resnet50", metavar="NAME",
                   help="backbone network (default: resnet50)")
    add_dataset_args(p)
    p.set_defaults(func=_run)


def _run(args):
    raise UsageError("featbench transfer is not built yet (tracked separately)")
