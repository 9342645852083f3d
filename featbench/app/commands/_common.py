"""Flags and helpers shared by several subcommands."""

from featbench.core.workspace import Workspace


def add_dataset_args(p, *, root_help=None):
    """Add ``--dataset``, ``--root``, ``--camera`` and ``--threshold`` to parser ``p``."""
    p.add_argument("--dataset", default="synth", metavar="NAME",
                   help="data set: synth (embedded, made on first use), disfa, affwild2, bp4d, "
                        "folder, synth-affwild2, synth-bp4d, synth-b (the second domain) "
                        "(default: synth)")
    p.add_argument("--root", default=None, metavar="DIR",
                   help=root_help or "the data set's folder (default: data/<dataset> in the workspace)")
    p.add_argument("--camera", choices=("left", "right", "both"), default="left",
                   help="DISFA: which camera's video to read (default: left)")
    p.add_argument("--threshold", type=int, default=2, metavar="I",
                   help="DISFA (and a folder manifest's AUnn_int columns): an AU is present when "
                        "its intensity >= I (default: 2, the protocol's)")


def workspace_of(args):
    """Return the :class:`Workspace` named by ``--workspace``."""
    return Workspace(getattr(args, "workspace", "."))


def load_table(args, **kwargs):
    """Load the frame table named by the dataset flags of ``args``."""
    from featbench.core.datasets import load_dataset

    kwargs.setdefault("generate", True)  # the CLI's embedded sets are made on first use
    return load_dataset(args.dataset, root=args.root, workspace=workspace_of(args),
                        camera=args.camera, threshold=args.threshold, **kwargs)


def print_json(obj):
    """Print ``obj`` as one JSON object on stdout."""
    import json

    print(json.dumps(obj, indent=None, sort_keys=False, default=str))


def add_ci_args(p):
    """Add ``--ci-resamples`` and ``--ci-level`` (also used by classify, run and report)."""
    from featbench.core.stats import DEFAULT_LEVEL, DEFAULT_RESAMPLES, MIN_RESAMPLES

    p.add_argument("--ci-resamples", type=int, default=None, metavar="N",
                   help=f"bootstrap resamples of the test subjects for every interval, and "
                        f"permutations of the paired test (default: {DEFAULT_RESAMPLES}; at "
                        f"least {MIN_RESAMPLES})")
    p.add_argument("--ci-level", type=float, default=None, metavar="L",
                   help=f"confidence level of the intervals; tests use alpha = 1 - L "
                        f"(default: {DEFAULT_LEVEL})")


def ci_settings_of(args):
    """The :class:`featbench.core.stats.CISettings` of ``args``' ``--ci-*`` flags (checked)."""
    from featbench.core.stats import check_settings

    return check_settings(getattr(args, "ci_level", None), getattr(args, "ci_resamples", None))


def check_sheet_out(out, table, *, command):
    """Refuse a picture's ``--out`` before any work: not a ``.png`` (the writers cannot make
    another format), one of the data set's own files (a frame of ``table``), or an existing file
    featbench did not write; one line, exit 2, nothing written."""
    from pathlib import Path

    from featbench.core.errors import UsageError
    from featbench.core.workspace import check_outputs

    path = Path(out)
    if path.suffix.lower() != ".png":
        raise UsageError(f"{out}: --out is written as a PNG image; give a name ending in .png")
    # only the sources with the same name can be the same file: no stat of every frame
    same_name = [s for s in table.frames["source"].unique() if Path(s).name == path.name]
    check_outputs({"--out": path}, inputs=same_name, command=command)
