"""The ``featbench`` command line: a thin shell over the library.

Each subcommand lives in ``featbench/commands/<name>.py`` with two functions:
``add_parser(subparsers)`` declares its flags and sets ``func``; ``func(args)`` calls one
library function. Heavy imports (torch, timm, dlib) happen inside those functions, so
``featbench --help`` is instant.

Any :class:`~featbench.errors.FeatbenchError` ends the command with one line on stderr
(``featbench: error: ...``) and exit status 2, never a traceback.
"""

import argparse
import importlib
import sys

from . import __version__
from .errors import FeatbenchError

#: subcommand modules under featbench.commands, in --help order
COMMANDS = ("data", "models", "weights", "align", "extract", "bench", "classify", "finetune",
            "transfer", "ensemble", "report", "run", "predict", "export")

EPILOG = """\
typical session on the embedded synthetic data (made on first use):
  featbench run                              # the whole quick protocol, then read results/synth/report.md
  featbench data info --dataset synth
  featbench extract --model alexnet --weights random:0 --region all
  featbench weights list                     # pretrained files: cached?, source, licence
  featbench classify --clf svm --model alexnet --region auto
  featbench ensemble --preset fe && featbench report
your own footage:  featbench predict clip.mp4 --run best --plot clip.png
on DISFA:  featbench data info --dataset disfa --root /path/to/DISFA
"""


def build_parser():
    """Return the argparse parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="featbench",
        description="Facial action unit recognition by transfer learning: extract CNN codes of "
                    "aligned faces and face regions, train per-AU classifiers, vote, report.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"featbench {__version__}")
    parser.add_argument("--workspace", default=".", metavar="DIR",
                        help="folder holding data/ and results/ (default: the current directory)")
    parser.add_argument("--offline", action="store_true",
                        help="never touch the network: pretrained weights come from the cache only "
                             "(also FEATBENCH_OFFLINE=1 or HF_HUB_OFFLINE=1)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"featbench.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"featbench.commands.{name}":
                raise
            continue  # a command not built yet
        module.add_parser(sub)
    return parser


def main(argv=None):
    """Run the command line; return the exit status (0 ok, 2 bad input, 130 interrupted)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.offline:
        from extract.download import set_offline

        set_offline()
    try:
        status = args.func(args)
    except FeatbenchError as exc:
        print(f"featbench: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("featbench: interrupted; what was written so far is kept and a rerun resumes",
              file=sys.stderr)
        return 130
    return int(status or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
