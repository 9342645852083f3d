"""The ``featbench`` command line: a thin shell over the library.

Each subcommand lives in ``featbench/app/commands/<name>.py`` with two functions:
``add_parser(subparsers)`` declares its flags and sets ``func``; ``func(args)`` calls one
library function. Heavy imports (torch, timm, dlib) happen inside those functions, so
``featbench --help`` is instant.

Any :class:`~featbench.core.errors.FeatbenchError` ends the command with one line on stderr
(``featbench: error: ...``) and exit status 2, never a traceback.
"""

import argparse
import importlib
import os
import sys

from featbench import __version__
from featbench.core.errors import FeatbenchError

#: subcommand modules under featbench.app.commands, in --help order
COMMANDS = ("data", "models", "weights", "align", "extract", "bench", "classify", "finetune",
            "transfer", "ensemble", "report", "compare", "run", "predict", "export", "probe")

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


class _Parser(argparse.ArgumentParser):
    """argparse with featbench's error contract: a bad flag is one line and exit status 2.

    argparse's own ``error`` prints the whole usage (seven lines for ``extract``) first; here
    the line says what is wrong and where the full usage is.
    """

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser():
    """Return the argparse parser with every subcommand registered."""
    parser = _Parser(
        prog="featbench",
        description="Facial action unit recognition by transfer learning: extract CNN codes of "
                    "aligned faces and face regions, train per-AU classifiers, vote, report.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"featbench {__version__}")
    _add_global_flags(parser, default=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"featbench.app.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"featbench.app.commands.{name}":
                raise
            continue  # a command not built yet
        module.add_parser(sub)
    _global_flags_everywhere(parser)
    return parser


def _add_global_flags(parser, *, default):
    """``--workspace`` and ``--offline``: featbench's own flags, which users also type after
    the subcommand (``featbench run --workspace W``). Below the top level their default is
    argparse.SUPPRESS, so a value given before the subcommand stands unless given again."""
    keep = {} if default else {"default": argparse.SUPPRESS}
    parser.add_argument("--workspace", metavar="DIR", **({"default": "."} if default else keep),
                        help="folder holding data/ and results/ (default: the current directory)")
    parser.add_argument("--offline", action="store_true", **keep,
                        help="never touch the network: pretrained weights come from the cache only "
                             "(also FEATBENCH_OFFLINE=1 or HF_HUB_OFFLINE=1)")


def _global_flags_everywhere(parser):
    """Give every subcommand (and sub-subcommand: ``data synth``) the global flags."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):  # aliases: one parser, once
                _add_global_flags(sub, default=False)
                _global_flags_everywhere(sub)


def main(argv=None):
    """Run the command line; return the exit status (0 ok, 2 bad input, 130 interrupted)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.offline:
        from extract.download import set_offline

        set_offline()
    previous = _catch_sigterm()
    try:
        _check_workspace(args.workspace)
        from featbench.core.interrupt import stop_at_next_batch

        with stop_at_next_batch():  # Ctrl-C stops at the next batch, never half-swallowed
            status = args.func(args)
    except FeatbenchError as exc:
        print(f"featbench: error: {_one_line(exc)}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:
        # `featbench ... --json | head`: the reader has gone; say nothing more (Python would
        # print a second error flushing stdout at exit), as head's other writers do
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except OSError as exc:
        # the one place an OS error the code did not expect (a read-only workspace, a file
        # without read permission, a symlink loop, a full disk) becomes one line naming the
        # file; one without a file name is a bug, and keeps its traceback
        if not getattr(exc, "filename", None):
            raise
        from featbench.core.errors import os_error

        print(f"featbench: error: {_one_line(os_error(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        note = getattr(args, "interrupted", None) or ("finished files are kept, unfinished "
                                                      "ones removed")
        print(f"featbench: interrupted; {note}", file=sys.stderr)
        return 130
    except _Terminated:
        print("featbench: stopped (SIGTERM); finished files are kept, unfinished ones removed",
              file=sys.stderr)
        return 143
    finally:
        _restore_sigterm(previous)
    return int(status or 0)


class _Terminated(BaseException):
    """SIGTERM (``kill``, a batch system's time limit), raised so that every ``finally`` runs."""


def _catch_sigterm():
    """Turn SIGTERM into :class:`_Terminated` in the main thread: temporary files are removed
    on the way out, as on Ctrl-C (the default action would end the process where it stands)."""
    import signal
    import threading

    def stop(signum, frame):
        raise _Terminated()

    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, stop)


def _restore_sigterm(previous):
    import signal

    if previous is not None:
        signal.signal(signal.SIGTERM, previous)


def _one_line(exc):
    return " ".join(str(exc).split("\n"))


def _check_workspace(path):
    """Refuse a ``--workspace`` that is not a folder before any command reads or writes in it."""
    from pathlib import Path

    from featbench.core.errors import UsageError

    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UsageError(f"{p}: --workspace must be a folder, this is a file")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
