"""Reading the data sets' text files (label files, manifests): one way, one set of errors.

Every reader goes through :func:`read_lines`, so a file that is not UTF-8, cannot be read
(permission, a symlink loop, a folder where a file should be) says so in one
:class:`~featbench.core.errors.LabelFileError` line naming the file (and the line, for a decode
error), never with Python's traceback.
"""

from featbench.core.errors import LabelFileError, os_error


def read_lines(path):
    """Return the lines of the text file ``path`` (without line ends).

    Raises
    ------
    LabelFileError
        Not UTF-8 (the message names the line), or not readable (why: permission, a symlink
        loop, ...).
    """
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise os_error(exc, path, LabelFileError) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise LabelFileError(f"{path}:{line}: not UTF-8 text (byte 0x{raw[exc.start]:02x}; "
                             "save the file as UTF-8)") from None
    return text.splitlines()


def parse_label(raw, *, allowed, where, expect=None):
    """Return the integer label ``raw`` spells (``"1"``, ``"1.0"``, ``"-1"``), one of ``allowed``.

    ``0.7`` is an error, never rounded to 0: a label that is not one of the values the format
    allows is a malformed file. ``where`` (``file:line: column``) starts the message.
    """
    try:
        value = float(raw)
    except ValueError:
        raise LabelFileError(f"{where}: non-numeric value {raw!r}") from None
    if value not in allowed:
        expect = expect or ", ".join(map(str, allowed))
        raise LabelFileError(f"{where} must be {expect}, got {raw!r}")
    return int(value)
