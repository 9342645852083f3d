"""Where featbench reads and writes: the workspace's folders and file names.

The workspace is the current directory by default (``--workspace DIR`` moves it)::

    data/<dataset>/                         the embedded synthetic set lives here (real sets: --root)
    data/<dataset>/aligned/faces.h5         aligned faces, landmarks and region boxes (featbench align)
    data/features/<dataset>/<model>.h5      fc-layer codes (featbench extract)
    results/<dataset>/<run>.csv             per-AU metrics of one run
    results/<dataset>/summary.csv           one row per run
    results/<dataset>/predictions/<run>.h5  per-frame scores and decisions
    results/<dataset>/models/<run>/         fitted models and the resolved settings
    results/<dataset>/report.md + *.png     tables and charts

Every path featbench uses is built here, so that the layout is stated once.
"""

import contextlib
import fcntl
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from featbench.core.errors import BusyError


def safe_name(name):
    """Return ``name`` usable as a file name: ``timm:convnext_tiny`` -> ``timm-convnext_tiny``."""
    return str(name).replace(":", "-").replace("/", "-").replace(os.sep, "-")


@dataclass(frozen=True)
class Workspace:
    """The folder under which ``data/`` and ``results/`` live."""

    root: Path = Path(".")

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))

    # data -------------------------------------------------------------------------------
    def data_dir(self, dataset):
        """``data/<dataset>``: the default root of a data set (and its caches)."""
        return self.root / "data" / safe_name(dataset)

    def aligned_path(self, dataset):
        """``data/<dataset>/aligned/faces.h5``: the aligned-face cache."""
        return self.data_dir(dataset) / "aligned" / "faces.h5"

    def features_path(self, dataset, model):
        """``data/features/<dataset>/<model>.h5``: the codes of one network."""
        return self.root / "data" / "features" / safe_name(dataset) / f"{safe_name(model)}.h5"

    # results ----------------------------------------------------------------------------
    def results_dir(self, dataset):
        """``results/<dataset>``."""
        return self.root / "results" / safe_name(dataset)

    def run_csv(self, dataset, run):
        """``results/<dataset>/<run>.csv``: per-AU metrics of one run."""
        return self.results_dir(dataset) / f"{safe_name(run)}.csv"

    def summary_csv(self, dataset):
        """``results/<dataset>/summary.csv``: one row per run."""
        return self.results_dir(dataset) / "summary.csv"

    def predictions_path(self, dataset, run):
        """``results/<dataset>/predictions/<run>.h5``: per-frame scores and decisions."""
        return self.results_dir(dataset) / "predictions" / f"{safe_name(run)}.h5"

    def models_dir(self, dataset, run):
        """``results/<dataset>/models/<run>/``: fitted models and the resolved settings."""
        return self.results_dir(dataset) / "models" / safe_name(run)

    def report_path(self, dataset):
        """``results/<dataset>/report.md``."""
        return self.results_dir(dataset) / "report.md"


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; rename it onto ``path`` when the block succeeds.

    A crash or error inside the block removes the temporary file and leaves any previous
    ``path`` as it was, so a reader never sees half a file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path, text):
    """Write ``text`` to ``path`` through a temporary file, so a crash never leaves half a file."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


@contextlib.contextmanager
def file_lock(path, *, wait=True, what="writing"):
    """Hold an exclusive lock on ``path`` for the block (a ``.<name>.lock`` file beside it).

    Every featbench process that writes a shared file (the aligned-face cache, a feature file,
    ``summary.csv``) takes this lock first, so that two commands started together never write
    one file at once: the second waits (saying so once on stderr) and then finds the first's
    result, or, with ``wait=False``, stops with :class:`~featbench.core.errors.BusyError`. The lock
    is ``flock``'s: the kernel releases it when its holder exits, even after ``kill -9``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fh = open(path.with_name(f".{path.name}.lock"), "a")
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                raise BusyError(f"{path}: another featbench process is {what} it (wait for it "
                                "to finish, or stop it)") from None
            print(f"featbench: waiting for another featbench process {what} {path}",
                  file=sys.stderr, flush=True)
            fcntl.flock(fh, fcntl.LOCK_EX)
        yield
    finally:
        fh.close()  # closing the descriptor releases the lock
