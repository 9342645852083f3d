"""``featbench finetune``: fine-tuning CNN-F for AUs (Method A) — not built yet."""

from ..errors import UsageError
from ._common import add_dataset_args


def add_parser(subparsers):
    """Register ``featbench finetune`` (its flags, so scripts can be written against them)."""
    p = subparsers.add_parser("finetune", help="fine-tune a CNN for the AUs (not built yet)",
                              description="Fine-tune CNN-F with 2-way AU outputs (Method A). "
                                          "Not built yet: tracked separately.")
    p.add_argument("--model", default="cnn_f", metavar="NAME", help="network (default: cnn_f)")
    p.add_argument("--reinit", default="fc", choices=("fc", "fc6-fc7"),
                   help="re-initialise all FC layers, or fc6 and fc7 only (default: fc)")
    p.add_argument("--region", default="full", metavar="full|upper|middle|lower|auto",
                   help="face region (default: full)")
    add_dataset_args(p)
    p.set_defaults(func=_run)


def _run(args):
    raise UsageError("featbench finetune is not built yet (tracked separately); "
                     "use featbench classify --clf svm on extracted codes")
