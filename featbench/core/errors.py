"""The error hierarchy of featbench.

Every problem caused by the user's input (a missing folder, a malformed label file, an unknown
model, weights that do not fit) is raised as a :class:`FeatbenchError` subclass with a message
that names the file or value and what is wrong with it. The CLI turns any of them into one
line on stderr and exit status 2, with no traceback (see ``featbench.app.cli.main``).
"""


class FeatbenchError(Exception):
    """Base class of every error featbench reports to the user as bad input."""

    exit_code = 2


class UsageError(FeatbenchError, ValueError):
    """A bad argument value: unknown name, out-of-range number, incompatible options."""


class DataError(FeatbenchError):
    """A data set on disk is missing, of the wrong layout, or holds a malformed file."""


class LayoutError(DataError):
    """A data-set root does not have the on-disk layout its reader expects."""


class LabelFileError(DataError):
    """A label or manifest file has a malformed line or an out-of-range value."""


class WeightsError(FeatbenchError):
    """Pretrained weights are unavailable offline, or do not fit the network."""


class StoreError(FeatbenchError):
    """An HDF5 file or cache does not match what is asked (other weights, frames, format)."""


class BusyError(FeatbenchError):
    """Another featbench process holds the lock of a file this command must write."""


class MissingRunError(FeatbenchError):
    """A result that a command needs (a classifier run, a feature file) has not been made."""


def describe_os_error(exc):
    """Return what an ``OSError`` (Python's or h5py's) means, in a few words, without the path.

    The one translation of OS errors for messages: permission, disk full, symlink loops,
    read-only file systems and the rest read the same wherever featbench meets them.
    """
    import errno

    code = h5_errno(exc)  # h5py puts the errno inside its text: "..., errno = 28, ..."
    words = {
        errno.ENOSPC: "disk full (no space left on device)",
        errno.EDQUOT: "disk quota exceeded",
        errno.EACCES: "permission denied",
        errno.EPERM: "permission denied",
        errno.EROFS: "read-only file system",
        errno.ELOOP: "a symbolic link loop (too many levels of symbolic links)",
        errno.ENOTDIR: "not a folder (a file is in the way)",
        errno.EISDIR: "a folder, not a file",
        errno.ENOENT: "does not exist",
        errno.EIO: "input/output error (a failing disk or network share?)",
        errno.EAGAIN: "in use by another process (locked)",
        errno.ENAMETOOLONG: "file name too long",
    }
    if code in words:
        return words[code]
    text = getattr(exc, "strerror", None) or (str(exc).splitlines() or [""])[0]
    return (text or type(exc).__name__)[:160]


def h5_errno(exc):
    """The OS error number inside an h5py exception's text (``..., errno = 28, ...``), or None.

    h5py raises ``ValueError`` or ``RuntimeError`` as well as ``OSError`` for a failed write.
    """
    import re

    code = getattr(exc, "errno", None)
    if code is not None:
        return code
    m = re.search(r"errno = (\d+)", str(exc))
    return int(m.group(1)) if m and int(m.group(1)) else None


def os_error(exc, path=None, cls=None):
    """Return a :class:`FeatbenchError` (``cls``, default :class:`DataError`) naming the file.

    ``path`` defaults to the error's own ``filename``.
    """
    cls = cls or DataError
    where = path if path is not None else (getattr(exc, "filename", None) or "?")
    return cls(f"{where}: {describe_os_error(exc)}")


def did_you_mean(name, choices, *, what, hint=None):
    """Return an ``unknown <what> 'name'`` message with the closest choice and a hint.

    Parameters
    ----------
    name : str
        The value the user gave.
    choices : iterable of str
        The valid values.
    what : str
        What kind of thing ``name`` is ("model", "data set", ...).
    hint : str, optional
        Where to see all choices, e.g. ``"featbench models lists all"``.
    """
    import difflib

    choices = sorted(choices)
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.5)
    msg = f"unknown {what} {name!r}"
    if close:
        msg += f"; did you mean {close[0]!r}?"
    if hint:
        msg += f" ({hint})"
    else:
        msg += f" (choices: {', '.join(choices)})"
    return msg
