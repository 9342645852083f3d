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
import errno
import fcntl
import os
import re
import secrets
import shutil
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from featbench import __version__
from featbench.core.errors import BusyError, StoreError, UsageError, describe_os_error


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


#: a temporary file or folder of featbench's beside its target: ``.<name>.tmp<pid>-<host>-<token>``
#: (``.<name>.tmp<pid>`` before featbench 0.9; those count as this host's)
_TEMP_RE = re.compile(r"^\.(?P<name>.+)\.tmp(?P<pid>\d+)(?:-(?P<host>[A-Za-z0-9_]*)-[0-9a-f]+)?$")
#: a temporary file of another host (a shared file system) is stale after this many seconds
_FOREIGN_TEMP_AGE = 24 * 3600


def _host():
    return re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname())[:24]


def temp_sibling(path):
    """Return a new temporary path beside ``path``, unique to this call.

    ``.<name>.tmp<pid>-<host>-<token>``: two processes (or two threads) writing the same target
    never share a temporary file, and the name says whose it is, so that the leftovers of a
    process that died (``kill -9``, a power cut) are found and removed here, by the next
    process that writes the same target (:func:`remove_stale_temps`).
    """
    path = Path(path)
    remove_stale_temps(path.parent, path.name)
    return path.with_name(f".{path.name}.tmp{os.getpid()}-{_host()}-{secrets.token_hex(4)}")


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def stale_temps(folder, name=None):
    """Return featbench's temporary files and folders in ``folder`` whose writer is gone.

    ``name``: only those of that target. A temporary of this host is stale when its process
    no longer runs; one of another host (a shared file system) when untouched for a day.
    """
    folder = Path(folder)
    try:
        entries = list(folder.iterdir())
    except OSError:
        return []
    out, host = [], _host()
    for p in entries:
        m = _TEMP_RE.match(p.name)
        if not m or (name is not None and m.group("name") != name):
            continue
        if m.group("host") in (None, host):
            stale = int(m.group("pid")) != os.getpid() and not _alive(int(m.group("pid")))
        else:
            try:
                stale = time.time() - p.lstat().st_mtime > _FOREIGN_TEMP_AGE
            except OSError:
                stale = False
        if stale:
            out.append(p)
    return out


def remove_path(path):
    """Remove a file or a folder (a link itself, never what it points to); quietly, if gone."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


def remove_stale_temps(folder, name=None):
    """Remove :func:`stale_temps` of ``folder`` (of target ``name``); return what was removed."""
    gone = stale_temps(folder, name)
    for p in gone:
        remove_path(p)
    return gone


#: OS errors of writing a file, reported against the file written (not its temporary)
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM,
                 errno.EISDIR, errno.ENOTDIR, errno.EIO}


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; rename it onto ``path`` when the block succeeds.

    The temporary name is unique (:func:`temp_sibling`). A crash, an error or Ctrl-C inside the
    block removes the temporary file (or folder) and leaves any previous ``path`` as it was,
    so a reader never sees half a file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:
        if exc.errno in _WRITE_ERRNOS and getattr(exc, "filename", None) in (None, str(tmp), tmp):
            # the OS names no file, or the temporary one: say the file the user knows
            raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from None
        raise
    finally:
        if tmp.exists() or tmp.is_symlink():
            remove_path(tmp)


@contextlib.contextmanager
def writing(path, what="writing it"):
    """Turn an ``OSError`` of the block (a full disk, a read-only folder) into one
    :class:`~featbench.core.errors.StoreError` line that names ``path``.

    For blocks that only write ``path`` (through :func:`atomic_path`: the previous file, if
    any, is kept): the OS's own error names no file, or the temporary one.
    """
    try:
        yield
    except OSError as exc:
        raise StoreError(f"{path}: {describe_os_error(exc)} while {what}; nothing was written "
                         "(a previous file is unchanged)") from None


#: kept free beyond what a write needs: HDF5's chunk cache and metadata are written at close
FREE_MARGIN_BYTES = 8 << 20


def check_free_space(path, need, doing):
    """Refuse (one :class:`StoreError` line) to write ``need`` bytes into ``path``'s folder
    when its file system has less free (plus :data:`FREE_MARGIN_BYTES`).

    Checked before HDF5 writes: an HDF5 file whose write fails for space cannot be closed, and
    the library then crashes the process on cleanup (exit 139). The check cannot see another
    process filling the disk at the same moment; the writers' own error handling covers that.
    """
    folder = Path(path).parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return
    if free < int(need) + FREE_MARGIN_BYTES:
        raise StoreError(f"{path}: disk full: {doing} needs {_mb(need + FREE_MARGIN_BYTES)} free, "
                         f"{_mb(free)} left on its file system; free space and rerun (nothing "
                         "written so far is lost)")


def reserve_space(h5file, need, doing, *, name=None):
    """Allocate on disk the bytes the next ``need`` bytes of writes into the open HDF5 file
    ``h5file`` will take, before HDF5 writes them; a full disk is one :class:`StoreError` line.

    A write that fails for space inside HDF5 leaves the library unable to close the file, and
    it crashes the process on its way out (exit 139, whatever the error handling did before).
    :func:`check_free_space` cannot see another process filling the disk at the same moment;
    blocks allocated here (``posix_fallocate`` up to HDF5's end of allocated space plus
    ``need`` and a margin) are the file's whatever happens next, so HDF5's own writes never
    meet a full disk. The file may end with up to that many unused bytes (:func:`trim_h5`).
    ``name``: the file the message names (default the HDF5 file's).
    """
    path = h5file.filename
    want = int(h5file.id.get_filesize()) + int(need) + FREE_MARGIN_BYTES
    fd = os.open(path, os.O_RDWR)
    try:
        if os.fstat(fd).st_size < want:
            os.posix_fallocate(fd, 0, want)
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL):  # a file system without it
                return check_free_space(path, need, doing)
            raise
        raise StoreError(f"{name or path}: disk full: {doing} needs "
                         f"{_mb(need + FREE_MARGIN_BYTES)} free; free space and rerun (nothing written so far is lost)") from None
    finally:
        os.close(fd)


def trim_h5(path):
    """Cut the unused bytes :func:`reserve_space` left at the end of a closed HDF5 file.

    HDF5 cuts a file it has open for writing back to the end of the space it uses when it
    closes it, but only when it saw the file grow: blocks allocated behind its back stay, and
    its ``get_filesize`` reports them as the file's (so comparing the two never trimmed).
    Opening the file for writing again and closing it lets HDF5 cut them; nothing else changes.
    """
    import h5py

    with h5py.File(path, "r+"):
        pass


def _mb(n):
    return f"{n / (1 << 20):.1f} MB" if n < 1 << 30 else f"{n / (1 << 30):.2f} GB"


def atomic_write_text(path, text):
    """Write ``text`` to ``path`` through a temporary file, so a crash never leaves half a file."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def replace_together(pairs, then=None):
    """Rename each ``(new, final)`` of ``pairs`` onto ``final``, all of them or none.

    Each ``final`` that exists (a file or a folder) is first renamed aside, to a temporary
    sibling, never deleted before its replacement is in place; ``then()`` (the summary row) runs
    once every new one is in. When a rename or ``then`` fails, the new ones are removed and the
    old ones renamed back, so ``final`` is as it was; the old ones are deleted only at the end.
    A crash in between leaves an old one as a temporary sibling, removed by the next writer
    (:func:`remove_stale_temps`).

    Parameters
    ----------
    pairs : sequence of (Path, Path)
        Every ``new`` beside its ``final`` (same file system: a rename).
    then : callable, optional
        The last step of the swap; its exception undoes the swap, then rises.
    """
    done = []  # (new, final, aside or None), in order
    try:
        for new, final in pairs:
            final = Path(final)
            aside = None
            if final.exists() or final.is_symlink():
                aside = temp_sibling(final)
                os.replace(final, aside)
            done.append((new, final, aside))
            os.replace(new, final)
        if then is not None:
            then()
    except BaseException:
        for new, final, aside in reversed(done):
            if (final.exists() or final.is_symlink()) and not Path(new).exists():
                remove_path(final)  # the new one, renamed in
            if aside is not None:
                os.replace(aside, final)
        raise
    for _, _, aside in done:
        if aside is not None:
            remove_path(aside)


#: the ``Software`` text of every PNG featbench writes (:func:`made_by_featbench` reads it)
PNG_SOFTWARE = f"featbench {__version__}"


def save_figure(fig, path, **kw):
    """Save a matplotlib figure as PNG through a temporary file, marked as featbench's.

    The PNG's ``Software`` text says ``featbench <version>``: :func:`made_by_featbench`
    recognises it, so a rerun may replace it while a user's own picture is never replaced.
    """
    with writing(path, "saving the chart"), atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", metadata={"Software": PNG_SOFTWARE}, **kw)
    return Path(path)


def save_png(rgb, path):
    """Save an (H, W, 3) uint8 RGB array as a PNG marked as featbench's, as :func:`save_figure`."""
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("Software", PNG_SOFTWARE)
    with writing(path, "saving the picture"), atomic_path(path) as tmp:
        Image.fromarray(rgb).save(tmp, format="png", pnginfo=info)
    return Path(path)


# --- outputs a user names ---------------------------------------------------------------------------
def _png_software(path):
    """The ``Software`` text of a PNG file, or None (reads only the chunks before the pixels)."""
    import struct

    with open(path, "rb") as fh:
        if fh.read(8) != b"\x89PNG\r\n\x1a\n":
            return None
        for _ in range(64):
            head = fh.read(8)
            if len(head) < 8:
                return None
            n, kind = struct.unpack(">I4s", head)
            if kind == b"IDAT" or n > 1 << 20:
                return None
            data = fh.read(n)
            fh.seek(4, 1)
            if kind == b"tEXt" and data.startswith(b"Software\0"):
                return data[9:].decode("latin-1")
    return None


def made_by_featbench(path):
    """Whether the existing file ``path`` is one featbench wrote (so a rerun may replace it).

    Recognised by content: a PNG whose ``Software`` text starts with ``featbench``
    (:func:`save_figure`), a JSON object with a ``featbench_version`` (predict's sidecar), a
    CSV whose header is predict's (``frame,face_id,timestamp,confidence,success,...``), a
    model file that names its format (``featbench-model``) in its first bytes (export).
    """
    import json

    path = Path(path)
    try:
        suffix = path.suffix.lower()
        if suffix == ".png":
            return (_png_software(path) or "").startswith("featbench")
        if path.stat().st_size > 64 << 20 and suffix == ".json":
            return False
        with open(path, "rb") as fh:
            head = fh.read(4096)
        if head.startswith(PREDICTIONS_HEADER.encode()) or _names_model_format(path, head):
            return True
        if suffix == ".json" or head.lstrip().startswith(b"{"):
            obj = json.loads(path.read_text())
            return isinstance(obj, dict) and "featbench_version" in obj
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return False


def featbench_data_file(path):
    """What a data file featbench wrote is, in words (a feature file, a predictions file, an
    aligned-face cache, a model file), or None for any other file; told by the attributes each
    HDF5 file carries, and a model file by the format name it keeps."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4096)
        if head[:8] != b"\x89HDF\r\n\x1a\n":
            text = head.lstrip().startswith(b"{") or head.startswith(PREDICTIONS_HEADER.encode())
            return ("a featbench model file" if not text and _names_model_format(path, head)
                    else None)
        import h5py

        with h5py.File(path, "r") as f:
            attrs = {k: f.attrs[k] for k in ("featbench_version", "layer", "model", "run",
                                               "thresholds", "fingerprint", "settings")
                     if k in f.attrs}
    except (OSError, ValueError):
        return None
    text = {k: v.decode() if isinstance(v, bytes) else str(v) for k, v in attrs.items()}
    if "featbench_version" in text and "layer" in text:
        return f"a featbench feature file (codes of {text.get('model', '?')})"
    if "run" in text and "thresholds" in text:
        return f"a featbench predictions file (run {text['run']})"
    if "fingerprint" in text and "settings" in text:
        return "a featbench aligned-face cache"
    return None


def _names_model_format(path, head):
    """Whether a file names featbench's model-file format (``featbench export``) where that
    format keeps it: in a safetensors header's metadata (read up to 16 MB), or near the start
    of a joblib file (raw or zlib-compressed, featbench before 0.2)."""
    import struct
    import zlib

    if MODEL_FORMAT_NAME in head:
        return True
    if len(head) > 9 and head[8:9] == b"{":  # safetensors: 8-byte header length, JSON header
        (n,) = struct.unpack("<Q", head[:8])
        if n <= 16 << 20:
            with open(path, "rb") as fh:
                fh.seek(8)
                return MODEL_FORMAT_NAME in fh.read(n)
    try:
        return MODEL_FORMAT_NAME in zlib.decompressobj().decompress(head, 1 << 16)
    except zlib.error:
        return False


#: the format name every featbench model file carries near its start
MODEL_FORMAT_NAME = b"featbench-model"
#: how a predictions CSV of featbench begins (OpenFace's first columns)
PREDICTIONS_HEADER = "frame,face_id,timestamp,confidence,success,"


def _real(path):
    try:
        return Path(os.path.realpath(path))
    except (OSError, ValueError):
        return Path(os.path.abspath(path))


def _same_file(a, b):
    if _real(a) == _real(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_outputs(outputs, *, inputs=(), force=False, ours=made_by_featbench, command="featbench"):
    """Refuse outputs that would replace an input or a file featbench did not write.

    Parameters
    ----------
    outputs : dict of str -> path
        What each output is (``--out``, ``--plot``, ``the sidecar``) -> where it goes.
    inputs : iterable of path
        Every file the command reads (each image of a folder, the video): no output may
        resolve to one of them, whatever ``force`` says.
    force : bool
        Replace an existing file that ``ours`` does not recognise (``--force``).
    ours : callable
        ``ours(path)`` is true for a file featbench made (:func:`made_by_featbench`).

    Raises
    ------
    UsageError
        One line naming the output and what is wrong; nothing has been written.
    """
    seen = {}
    items = [(what, Path(p)) for what, p in outputs.items() if p is not None]
    inputs = [Path(p) for p in inputs]
    for what, path in items:
        if path.is_dir():
            raise UsageError(f"{path}: {what} is a folder; give a file name")
        for other_what, other in seen.items():
            if _same_file(path, other):
                raise UsageError(f"{path}: {what} and {other_what} are the same file; give "
                                 "each its own name")
        seen[what] = path
        hit = next((p for p in inputs if _same_file(path, p)), None)
        if hit is not None:
            raise UsageError(f"{path}: {what} is an input of this {command} ({hit}); featbench "
                             "never writes over its input: give another file name")
        if (path.exists() or path.is_symlink()) and not force and not ours(path):
            made = featbench_data_file(path)
            if made:  # featbench's own, but not an output of this command: say what it is
                raise UsageError(f"{path}: {what} exists and is {made}, not a {command} output; "
                                 "not replaced (give another name, or --force to replace it)")
            raise UsageError(f"{path}: {what} exists and was not written by featbench; not "
                             "replaced (give another name, or --force to replace it)")


@contextlib.contextmanager
def output_lock(paths, *, what="writing"):
    """Hold :func:`file_lock` on each of ``paths`` without waiting, and remove the lock files after.

    Two commands that write the same file (``predict --out same.csv`` twice) never interleave:
    the second stops at once with :class:`~featbench.core.errors.BusyError`. The lock files sit
    beside the outputs, in the user's folder, so they are removed when released.
    """
    with contextlib.ExitStack() as stack:
        for p in paths:
            if p is not None:
                stack.enter_context(file_lock(p, wait=False, what=what, keep=False))
        yield


_HELD_RUNS = set()


def _torchrun_rank():
    """This process's rank under torchrun (``RANK`` of a ``WORLD_SIZE`` > 1), else 0."""
    try:
        return int(os.environ.get("RANK", "0")) if int(os.environ.get("WORLD_SIZE", "1")) > 1 else 0
    except ValueError:
        return 0


@contextlib.contextmanager
def run_lock(folder):
    """Hold the lock of a run folder (``results/<ds>/models/<run>/``) from a run's start to its end.

    A second command making the same run is refused at once (:class:`BusyError`), before it
    trains anything, instead of failing later on the first one's temporary files. Within one
    process the lock is re-entrant: a command that holds it while it prepares (fine-tuning's
    network check, transfer's stages) keeps it through the driver's own hold.
    """
    key = str(Path(folder).resolve())
    if key in _HELD_RUNS or _torchrun_rank() > 0:  # torchrun: rank 0 holds it for every rank
        yield
        return
    with file_lock(folder, wait=False, what="making"):
        _HELD_RUNS.add(key)
        try:
            yield
        finally:
            _HELD_RUNS.discard(key)


@contextlib.contextmanager
def file_lock(path, *, wait=True, what="writing", keep=False):
    """Hold an exclusive lock on ``path`` for the block (a ``.<name>.lock`` file beside it).

    Every featbench process that writes a shared file (the aligned-face cache, a feature file,
    ``summary.csv``, a run folder) takes this lock first, so that two commands started together
    never write one file at once: the second waits (saying so once on stderr) and then finds the
    first's result, or, with ``wait=False``, stops with :class:`~featbench.core.errors.BusyError`.
    The lock is ``flock``'s: the kernel releases it when its holder exits, even after ``kill -9``.
    The lock file is removed on release, so no empty ``.lock`` file stays in ``results/`` or
    ``data/`` (``keep=True`` leaves it); a process that then finds the file it locked unlinked
    takes the new one, so only one process ever holds the lock of the file at ``path``'s name.
    ``what`` completes "another featbench process is <what> it".
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.with_name(f".{path.name}.lock")
    while True:
        fh = open(lock, "a")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                fh.close()
                raise BusyError(f"{path}: another featbench process is {what} it (wait for it "
                                "to finish, or stop it)") from None
            print(f"featbench: waiting for another featbench process {what} {path}",
                  file=sys.stderr, flush=True)
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            same = os.fstat(fh.fileno()).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        fh.close()  # its holder removed the file as we took it: lock the new one
    try:
        yield
    finally:
        if not keep:
            with contextlib.suppress(OSError):
                lock.unlink()
        fh.close()  # closing the descriptor releases the lock
